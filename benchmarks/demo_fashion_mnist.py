"""Real-data demo on a CPU: Fashion-MNIST at 32 px, one command.

    python benchmarks/demo_fashion_mnist.py

1. prepares the shards once (data_prep, Debian's dataset-fashion-mnist) into --data;
2. trains with the `demo-fashion-mnist` preset into --run-dir (re-running continues the run:
   --resume auto);
3. evaluates every network snapshot with multi-scale SWD against real images on one common
   scale (32 px: a snapshot of an earlier stage is nearest-upsampled to 32 px, so its missing
   detail counts against it), and writes
   docs/demo-swd.json, docs/demo-swd.png (SWD vs. kimg) and docs/demo-samples.png (G_ema of the
   last snapshot, 8x8 grid).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pggan.config import DataConfig  # noqa: E402
from pggan.metrics.runner import generate, generated_indices  # noqa: E402
from pggan.metrics.swd import SWDAccumulator  # noqa: E402
from pggan.ops import upsample2d  # noqa: E402
from pggan.snapshot import load_snapshot, read_snapshot  # noqa: E402

EVAL_RES = 32


def run(cmd, env=None) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, env=env)


def real_descriptors(data: Path, num_images: int, seed: int) -> SWDAccumulator:
    from pggan.data.stream import make_epoch_stream
    acc = SWDAccumulator(seed=seed, device=torch.device("cpu"))
    stream = make_epoch_stream(DataConfig(path=str(data), num_workers=0), EVAL_RES,
                               batch_size=250, rank=0, world_size=1, num_images=num_images,
                               seed=seed, with_index=True)
    for images, _labels, index in stream:
        acc.add("real", images.contiguous(), index)
    return acc


def evaluate_snapshot(path: Path, real: SWDAccumulator, num_images: int, seed: int) -> dict:
    G, snap = load_snapshot(path)
    acc = SWDAccumulator(seed=seed, device=torch.device("cpu"))
    acc.rows["real"], acc.index["real"], acc.channels = real.rows["real"], \
        real.index["real"], real.channels
    idx = generated_indices(num_images, 0, 1)
    for images, chunk in generate(G, idx, res=snap["res"], alpha=snap["alpha"], seed=seed,
                                  device=torch.device("cpu"), batch_size=250):
        factor = EVAL_RES // images.shape[-1]
        if factor > 1:                                  # [B, C, res, res] -> 32 px
            images = upsample2d(images, factor=factor, mode="nearest")
        acc.add("fake", images, chunk)
    out = acc.compute()
    return {"snapshot": path.name, "kimg": snap["cur_nimg"] / 1000, "res": snap["res"],
            "alpha": snap["alpha"], "swd": out["value"], "per_level": out["per_level"]}


def plot(records: list, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    kimg = [r["kimg"] for r in records]
    ax.plot(kimg, [r["swd"] for r in records], "o-", label="average")
    for level in records[0]["per_level"]:
        ax.plot(kimg, [r["per_level"][level] for r in records], ".--", alpha=0.6,
                label=f"{level} px level")
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("SWD x 1e3 at 32 px")
    ax.set_title("Fashion-MNIST 32 px, CPU demo: SWD of G_ema snapshots")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(png)


def sample_grid(snapshot: Path, png: Path, seed: int) -> None:
    from PIL import Image
    G, snap = load_snapshot(snapshot)
    z = torch.randn([64, G.latent_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        img = G(z, res=snap["res"], alpha=snap["alpha"])           # [64, C, R, R]
    img = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    img = upsample2d(img, factor=4, mode="nearest")                 # 32 px -> 128 px cells
    n, c, h, w = img.shape
    grid = img.reshape(8, 8, c, h, w).permute(0, 3, 1, 4, 2).reshape(8 * h, 8 * w, c)
    arr = grid.squeeze(-1).numpy() if c == 1 else grid.numpy()
    tmp = png.with_name(png.stem + ".tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(png)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "fashion-mnist-32")
    p.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo-fashion-mnist")
    p.add_argument("--out", type=Path, default=REPO / "docs")
    p.add_argument("--num-images", type=int, default=2000, help="images per SWD set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="only evaluate and plot")
    args = p.parse_args(argv)

    if not (args.data / "dataset.json").is_file():
        run([sys.executable, "-m", "data_prep", "--source", "fashion-mnist", "--out", args.data,
             "--max-res", EVAL_RES])
    if not args.skip_train:
        # One BLAS thread: on a 2-core machine shared with data workers, 2 threads per
        # process measured 7x slower per step than 1 (2026-11-22, /tmp/stepbench).
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        t0 = time.time()
        run([sys.executable, "pggan/train.py", "--config", "demo-fashion-mnist", "--data",
             args.data, "--run-dir", args.run_dir, "--resume", "auto", "--num-workers", "1",
             "--seed", args.seed], env=env)
        print(f"training: {time.time() - t0:.0f} s", flush=True)

    snapshots = sorted(args.run_dir.glob("network-snapshot-*.pt"),
                       key=lambda q: read_snapshot(q)["cur_nimg"])
    if not snapshots:
        print(f"demo: no snapshots in {args.run_dir}", file=sys.stderr)
        return 2
    real = real_descriptors(args.data, args.num_images, args.seed)
    records = []
    for snap in snapshots:
        rec = evaluate_snapshot(snap, real, args.num_images, args.seed)
        print(f"  {rec['snapshot']}: kimg {rec['kimg']:.1f} res {rec['res']} "
              f"SWD {rec['swd']:.2f}", flush=True)
        records.append(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "demo-swd.json.tmp"
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(args.out / "demo-swd.json")
    plot(records, args.out / "demo-swd.png")
    sample_grid(snapshots[-1], args.out / "demo-samples.png", args.seed)
    print(f"wrote {args.out / 'demo-swd.png'}, {args.out / 'demo-samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
