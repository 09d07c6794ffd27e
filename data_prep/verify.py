"""`python -m data_prep --verify DIR`: check every shard of a prepared dataset against the size
and sha256 that dataset.json records.

The trainer checks a local shard's size when it opens it (free) and hashes remote shards while
they stream (pggan/data/tar_reader.py); a full hash of every local shard is this command's job,
run once after copying a dataset or when a filesystem misbehaved. sha256 runs at about the
disk's sequential read rate on a warm cache (measured: see benchmarks/RESULTS.md, faults).
"""
from __future__ import annotations

import os
import time
from typing import Callable, List, Tuple

from pggan.data.dataset_info import DatasetError, load_dataset_info, resolve_url
from pggan.files import sha256_file

from .errors import PrepError


def _sha256(path: str) -> Tuple[int, str]:
    """-> (bytes hashed, hex sha256)."""
    return os.path.getsize(path), sha256_file(path)


def verify_dataset(root: str, log: Callable[[str], None] = print) -> Tuple[int, int, List[str]]:
    """-> (shards checked, bytes read, one line per damaged shard). Raises PrepError when
    dataset.json itself is unusable or the dataset is not local."""
    if str(root).startswith(("pipe:", "http://", "https://")):
        raise PrepError(f"--verify {root}: only local datasets are verified here (remote shards "
                        f"are verified by the trainer while they stream)")
    try:
        info = load_dataset_info(root)
    except DatasetError as e:
        raise PrepError(str(e)) from None
    bad, checked, total = [], 0, 0
    for res in info.resolutions:
        for shard in info.shards[res]:
            path = resolve_url(info.root, shard.path)
            checked += 1
            try:
                if not os.path.isfile(path):
                    bad.append(f"{path}: missing")
                    continue
                n, digest = _sha256(path)
            except OSError as e:
                bad.append(f"{path}: cannot read ({e.strerror or e})")
                continue
            total += n
            if n != shard.num_bytes:
                bad.append(f"{path}: {n} bytes, dataset.json records {shard.num_bytes} "
                           f"(truncated or replaced)")
            elif digest != shard.sha256:
                bad.append(f"{path}: sha256 {digest[:16]}... does not match dataset.json "
                           f"({shard.sha256[:16]}...): the bytes changed")
    for line in bad:
        log(f"data_prep: damaged shard {line}")
    return checked, total, bad


def main_verify(root: str) -> int:
    """0: every shard matches; 1: damaged shards (listed, one line each); 2: unusable input."""
    t0 = time.time()
    try:
        checked, total, bad = verify_dataset(root)
    except PrepError as e:
        print(f"data_prep: error: {e}", flush=True)
        return 2
    sec = time.time() - t0
    rate = total / sec / 2 ** 20 if sec > 0 else float("inf")
    print(f"data_prep: verified {checked} shards, {total / 2 ** 20:.1f} MiB in {sec:.2f} s "
          f"({rate:.0f} MiB/s): {len(bad)} damaged"
          + ("; run data_prep again to rebuild the dataset" if bad else ""), flush=True)
    return 1 if bad else 0
