"""The collectives metrics need, written so that one process and N processes give one answer.

Every rank computes rows (descriptors, Inception features, per-pair scores) for its share of the
global image indices; `gather_rows` brings all rows to every rank and puts them in global-index
order, so what follows (sorting, subset sampling, sums) does not depend on the world size.
Without an initialised process group everything degrades to local operations.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_world(rank: int, world_size: int) -> None:
    """The caller's rank / world size must be the process group's (or 0 / 1 without one)."""
    if is_distributed():
        if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
            raise ValueError(f"metrics: rank {rank} / world size {world_size} do not match the "
                             f"process group ({dist.get_rank()} / {dist.get_world_size()})")
    elif world_size != 1 or rank != 0:
        raise ValueError(f"metrics: world size {world_size} needs an initialised "
                         f"torch.distributed process group")


def comm_device(fallback: torch.device) -> torch.device:
    """Where tensors must live for the collectives of the current backend."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if is_distributed():
        return torch.device("cpu")
    return fallback


def gather_rows(rows: torch.Tensor, index: torch.Tensor,
                out_device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """rows [n_local, ...] with global image indices index [n_local] (int64) on each rank ->
    (rows [n_total, ...], index [n_total]) on every rank, sorted by index.

    Ranks may hold different row counts: every rank pads to the largest count before the
    all_gather and the padding is dropped afterwards. Rows of one index stay in their order
    (the sort is stable), so several rows per image (e.g. 128 SWD descriptors) are fine.
    """
    out_device = rows.device if out_device is None else out_device
    if rows.shape[0] != index.shape[0]:
        raise ValueError(f"gather_rows: {rows.shape[0]} rows but {index.shape[0]} indices")
    if is_distributed():
        dev = comm_device(rows.device)
        counts = [torch.zeros((), dtype=torch.int64, device=dev)
                  for _ in range(dist.get_world_size())]
        dist.all_gather(counts, torch.tensor(rows.shape[0], dtype=torch.int64, device=dev))
        counts = [int(c) for c in counts]
        max_rows = max(counts)
        pad = max_rows - rows.shape[0]
        send = torch.cat([rows.to(dev), rows.new_zeros((pad,) + rows.shape[1:], device=dev)])
        send_idx = torch.cat([index.to(dev), index.new_zeros(pad, device=dev)])
        parts = [torch.empty_like(send) for _ in counts]
        parts_idx = [torch.empty_like(send_idx) for _ in counts]
        dist.all_gather(parts, send.contiguous())
        dist.all_gather(parts_idx, send_idx.contiguous())
        rows = torch.cat([p[:c].to(out_device) for p, c in zip(parts, counts)])
        index = torch.cat([p[:c].to(out_device) for p, c in zip(parts_idx, counts)])
    else:
        rows, index = rows.to(out_device), index.to(out_device)
    order = torch.sort(index, stable=True).indices
    return rows[order], index[order]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks (a new tensor on x's device)."""
    if not is_distributed():
        return x.clone()
    dev = comm_device(x.device)
    y = x.to(dev).clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def broadcast_object(obj: Any, device: torch.device) -> Any:
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=comm_device(device))
    return box[0]


def barrier(device: torch.device) -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[comm_device(device).index])
        else:
            dist.barrier()
