"""Where a loader worker's time goes, per sample: tar reading + shuffle buffer, decode, and
writing into the batch (RGB conversion, with and without mirroring), against the raw decode of
the same bytes (benchmarks/data_loader.py's baseline). One process, CPU time.

    python benchmarks/data_stages.py --data /tmp/bench_data/large --res 1024 256
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pggan.data import load_dataset_info  # noqa: E402
from pggan.data.dataset_info import IMAGE_EXTS  # noqa: E402
from pggan.data.decode import decode_image, decode_native, store_rgb  # noqa: E402
from pggan.data.shard_stream import ErrorBudget, ExpandShards  # noqa: E402


def SeededShuffle(bufsize: int, seed: int):
    """The shuffle buffer of the loader before the stream was a permutation per epoch (kept
    here to time that stage against the tar reading it hid)."""
    return wds.shuffle(bufsize, initial=min(bufsize, 100), rng=random.Random(seed))


def per_item_us(fn, items) -> float:
    """CPU microseconds per item of fn over items."""
    t0 = time.process_time()
    for item in items:
        fn(item)
    return 1e6 * (time.process_time() - t0) / len(items)


def stages(path: str, res: int, samples: int, shuffle_buffer: int) -> dict:
    info = load_dataset_info(path)
    ext = IMAGE_EXTS[info.image_formats[res]]
    pipeline = [wds.ResampledShards(info.shard_urls(res), worker_seed=lambda: 1,
                                    deterministic=True), ExpandShards(ErrorBudget(10))]
    if shuffle_buffer > 1:
        pipeline.append(SeededShuffle(shuffle_buffer, 3))
    it = iter(wds.DataPipeline(*pipeline))
    for _ in range(min(shuffle_buffer, 100) + 10):     # past the buffer's initial fill
        next(it)
    t0 = time.process_time()
    got = [next(it) for _ in range(samples)]
    read_us = 1e6 * (time.process_time() - t0) / samples
    blobs = [s[ext] for s in got]
    native = [decode_native(b, info.channels) for b in blobs]
    out = np.empty_like(native[0])
    return {"read+shuffle": read_us,
            "decode": per_item_us(lambda b: decode_native(b, info.channels), blobs),
            "write RGB": per_item_us(lambda a: store_rgb(a, out, False), native),
            "write RGB mirrored": per_item_us(lambda a: store_rgb(a, out, True), native),
            "raw decode_image": per_item_us(lambda b: decode_image(b, info.channels), blobs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a data_prep output folder")
    p.add_argument("--res", type=int, nargs="+", required=True)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--shuffle-buffer", type=int, default=1000)
    args = p.parse_args()
    for res in args.res:
        row = stages(args.data, res, args.samples, args.shuffle_buffer)
        print(f"res {res}: " + ", ".join(f"{k} {v:.0f} us" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
