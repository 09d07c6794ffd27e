"""pggan-train with a fault injected, for the fault tests and benchmarks/faults.py (test-only:
the package has no injection switch).

    [torchrun ...] fault_worker.py [pggan-train arguments]

Environment: FAULT_NAN_NIMG=N[,N2...] makes D's output NaN in the step that starts at
cur_nimg N on rank FAULT_NAN_RANK (default 0), so that rank's D loss is NaN there.
FAULT_NAN_FROM=1 makes it NaN at every step from the first N on (for "N in a row").
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pggan.train import main  # noqa: E402
from pggan.training.loop import Trainer  # noqa: E402

_NIMG = [int(v) for v in os.environ.get("FAULT_NAN_NIMG", "").split(",") if v]
_RANK = int(os.environ.get("FAULT_NAN_RANK", "0"))
_FROM = os.environ.get("FAULT_NAN_FROM") == "1"
_original_run_D = Trainer._run_D


def _run_D(self, img, c, alpha):
    out = _original_run_D(self, img, c, alpha)
    hit = (self.cur_nimg >= _NIMG[0]) if (_FROM and _NIMG) else (self.cur_nimg in _NIMG)
    if hit and self.engine.rank == _RANK:
        out = out * float("nan")
    return out


Trainer._run_D = _run_D

if __name__ == "__main__":
    sys.exit(main())
