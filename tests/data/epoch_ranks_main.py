"""Run by torchrun (2 processes, gloo): each rank reads its epoch stream with 2 workers and
rank 0 writes every rank's global indices to argv[2] as JSON."""
import json
import os
import sys

import torch.distributed as dist

from pggan.config import DataConfig
from pggan.data import make_epoch_stream


def main() -> None:
    dataset, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == int(os.environ["WORLD_SIZE"]) == 2
    seen = []
    for _, _, index in make_epoch_stream(DataConfig(path=dataset, num_workers=2), 8,
                                         batch_size=3, rank=rank, world_size=world,
                                         with_index=True):
        seen += index.tolist()
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
