"""What SWD a perfect generator would score, and what mirror augmentation alone costs.

Two disjoint sets of real images are compared with the quality benchmark's SWD (the floor any
trained G is measured against), then the second set with a random half of its images flipped
left-right: the distribution a G trained with `data.mirror: true` learns. On a dataset with a
handedness (Fashion-MNIST: every shoe points left) that second figure is what mirroring costs
before any training; on a left-right symmetric source it stays at the floor.

    python benchmarks/real_floor.py --data data/fashion-mnist-32 --res 32 --num-images 2000
    python benchmarks/real_floor.py --data none --res 32        # the built-in synthetic source
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pggan.config import DataConfig  # noqa: E402
from pggan.data.dataset_info import DatasetError, load_dataset_info  # noqa: E402
from pggan.data.stream import make_epoch_stream  # noqa: E402
from pggan.metrics.swd import SWDAccumulator  # noqa: E402


def real_sets(data, res: int, n: int, channels: int):
    """Two disjoint sets of n real images: the even and the odd members of 2n images spread
    over the dataset (the synthetic source: positions 0 .. 2n-1)."""
    cfg = DataConfig(path=data, num_workers=0)
    images = []
    for batch, _labels, _index in make_epoch_stream(cfg, res, batch_size=250, rank=0,
                                                    world_size=1, num_images=2 * n,
                                                    with_index=True, img_channels=channels,
                                                    top_res=res):
        images.append(batch.contiguous())
    both = torch.cat(images)
    if both.shape[0] < 2 * n:
        raise SystemExit(f"real_floor: {data} has {both.shape[0]} images; --num-images must be "
                         f"at most half of that ({both.shape[0] // 2})")
    return both[0::2], both[1::2]


def swd(a: torch.Tensor, b: torch.Tensor, seed: int) -> dict:
    acc = SWDAccumulator(seed=seed, device=torch.device("cpu"))
    acc.add("real", a, torch.arange(a.shape[0]))
    acc.add("fake", b, torch.arange(b.shape[0]))
    return acc.compute()


def half_mirrored(x: torch.Tensor, seed: int) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5
    out = x.clone()
    out[flip] = out[flip].flip(-1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory, or none")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--num-images", type=int, default=2000, help="images per set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = None if args.data == "none" else args.data
    channels = 3
    if data is not None:
        try:
            channels = load_dataset_info(data).channels
        except DatasetError as e:
            raise SystemExit(f"real_floor: {e}") from None
    a, b = real_sets(data, args.res, args.num_images, channels)
    rows = [("two disjoint real sets", swd(a, b, args.seed)),
            ("real vs half-mirrored real", swd(a, half_mirrored(b, args.seed), args.seed))]
    levels = list(rows[0][1]["per_level"])
    print(f"| {args.data} {args.res} px, {args.num_images} vs {args.num_images} | SWD | "
          + " | ".join(f"{lv}-px level" for lv in levels) + " |")
    print("|---|---:|" + "---:|" * len(levels))
    for name, out in rows:
        print(f"| {name} | {out['value']:.1f} | "
              + " | ".join(f"{out['per_level'][lv]:.1f}" for lv in levels) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
