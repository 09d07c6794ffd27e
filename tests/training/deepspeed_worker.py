"""Runs pggan-train's Trainer exactly as the CLI does (same arguments, same files written) with
the DeepSpeed engine, then saves this rank's G, D, G_ema and its own slices of the ZeRO-sharded
Adam states to OUT/rank<r>.pt, so a test can compare ranks.

    torchrun --nproc_per_node 2 tests/training/deepspeed_worker.py OUT [pggan-train arguments]
"""
import sys
from pathlib import Path

import torch

from pggan.config import config_from_args
from pggan.train import build_parser, create_trainer


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    args = build_parser().parse_args(argv)
    trainer = create_trainer(config_from_args(args), args)
    code = trainer.run()
    rank = trainer.engine.rank
    torch.save({"G": trainer.G.state_dict(), "D": trainer.D.state_dict(),
                "G_ema": trainer.G_ema.state_dict(),
                "G_shard": trainer.opt["G"].shard_state(),
                "D_shard": trainer.opt["D"].shard_state(),
                "cur_nimg": trainer.cur_nimg, "step_index": trainer.step_index,
                "world_size": trainer.engine.world_size},
               out / f"rank{rank}.pt")
    trainer.engine.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
