"""Runs pggan-train's Trainer exactly as the CLI does (same arguments, same files written), then
saves this rank's G, D, G_ema and Adam states to OUT/rank<r>.pt, so a test can compare ranks.
Under --engine deepspeed the Adam states are this rank's own ZeRO slices (G_shard, D_shard).

    torchrun --nproc_per_node 2 tests/training/dist_worker.py OUT [pggan-train arguments]
"""
import sys
from pathlib import Path

import torch

from pggan.config import config_from_args
from pggan.train import build_parser, create_trainer
from pggan.training.checkpoint import optimizer_state_by_name


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    args = build_parser().parse_args(argv)
    trainer = create_trainer(config_from_args(args), args)
    code = trainer.run()
    rank = trainer.engine.rank
    state = {"G": trainer.G.state_dict(), "D": trainer.D.state_dict(),
             "G_ema": trainer.G_ema.state_dict(),
             "cur_nimg": trainer.cur_nimg, "step_index": trainer.step_index,
             "world_size": trainer.engine.world_size}
    for name, net in (("G", trainer.G), ("D", trainer.D)):
        opt = trainer.opt[name]
        if hasattr(opt, "shard_state"):                 # DeepSpeed ZeRO: this rank's slices
            state[f"{name}_shard"] = opt.shard_state()
        else:
            state[f"{name}_opt"] = optimizer_state_by_name(opt, net)
    torch.save(state, out / f"rank{rank}.pt")
    trainer.engine.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
