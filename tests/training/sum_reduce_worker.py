"""pggan-train with one deliberate fault: gradients are summed over processes instead of
averaged. A negative control for test_two_process_state.py: its comparison must reject the
states this writes.

    torchrun --nproc_per_node 2 tests/training/sum_reduce_worker.py [pggan-train arguments]
"""
import sys

from pggan.train import main
from pggan.training.engine import Engine


def _sum_grads(self, params) -> None:
    if not self.distributed or not params:
        return
    for p in params:
        self.all_reduce_sum_(p.grad)


if __name__ == "__main__":
    Engine.sync_grads = _sum_grads
    sys.exit(main(sys.argv[1:]))
