"""Learning quality at equal compute: train configurations side by side, evaluate G_ema along the
way, write a table, a metric-vs-minutes plot and sample grids.

    python benchmarks/quality.py --suite main --seeds 0 1
    python benchmarks/quality.py --suite fashion-mnist --seeds 0 1 --variants r3gan
    python benchmarks/quality.py --preset demo-cpu --kimg 20 \\
        --variant "base=" --variant "r3gan=loss.kind=r3gan;loss.r1_gamma=0.2" --seeds 0 1

Each (variant, seed) is one `pggan/train.py` run in its own directory under --work-dir (run
again: finished runs are kept, unfinished ones resume). Every network snapshot (G_ema) is then
scored with multi-scale SWD x 1e3 against --eval-images real images at the final resolution
(a snapshot of an earlier stage is nearest-upsampled, so missing detail counts against it), and
with KID / FID when the packaged Inception weights are installed (--inception). Budgets are in
images (--kimg), so a comparison does not depend on what else the machine runs; the wall-clock
minutes of each run (launch to snapshot, evaluation excluded) are measured and reported beside.
With --minutes M (the fashion-mnist suite's default: 25) the budget is wall clock instead: each
run is stopped M minutes after its launch and scored by the newest snapshot written by then, so
run it alone on its core (`taskset -c 1`) for a fair clock.

Writes into --work-dir: quality-<suite>.json (every record); into --docs: quality-<suite>.png
(SWD vs minutes, one line per run) and quality-<suite>-<variant>.png (the 8x8 G_ema grid of
seed 0's last snapshot, cells >= 64 px); into --results (benchmarks/RESULTS.md) the table
between the markers of the suite, replacing an earlier table of the same suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.report import cpu_model, markdown_table, write_atomic  # noqa: E402
from pggan.config import DataConfig  # noqa: E402
from pggan.metrics.runner import generate, generated_indices  # noqa: E402
from pggan.metrics.swd import SWDAccumulator  # noqa: E402
from pggan.ops import upsample2d  # noqa: E402
from pggan.snapshot import load_snapshot, read_snapshot  # noqa: E402


@dataclass
class Suite:
    """A preset, the data it trains on and the variants compared on it."""
    preset: str
    kimg: Optional[float]           # images shown per run, thousands (None: the preset's)
    data_source: Optional[str]      # data_prep built-in source prepared into --data-root
    max_res: int
    variants: Dict[str, List[str]]  # name -> --set assignments on top of the preset
    snapshot_kimg: float
    prep_args: List[str] = field(default_factory=list)
    minutes: Optional[float] = None  # wall-clock budget per run (None: kimg only)


LOSS_VARIANTS = {
    "wgan-gp": ["loss.kind=wgan-gp"],
    "logistic-r1": ["loss.kind=logistic-r1"],
    "hinge": ["loss.kind=hinge"],
}

SUITES = {
    # The README's main job: built-in synthetic images, 32 px.
    "main": Suite(preset="demo-cpu", kimg=None, data_source=None, max_res=32, snapshot_kimg=10,
                  variants={"r3gan": [], **LOSS_VARIANTS,
                            # the preset before this benchmark chose its objective
                            "previous-preset": ["loss.kind=logistic-r1", "schedule.lr=0.001"],
                            # one setting changed each, measured against r3gan above
                            "pyramid-render": ["data.synthetic_pyramid=render"],
                            "ema-per-step": ["ema.beta_per_step=0.999", "ema.ema_rampup=null"],
                            "reset-on-stab": ["optim.reset_on_stab=true"]}),
    # 25 minutes of training per run (the budget); 400 kimg is only an upper bound.
    "fashion-mnist": Suite(preset="demo-fashion-mnist", kimg=400, data_source="fashion-mnist",
                           max_res=32, snapshot_kimg=5, variants={"r3gan": []}, minutes=25),
    # 30 minutes per run (the budget); 200 kimg is only an upper bound.
    "emoji-64": Suite(preset="demo-emoji-64", kimg=200, data_source="emoji", max_res=64,
                      snapshot_kimg=5, variants={"r3gan-ada": []}, minutes=30),
}

MARK = "<!-- quality:{suite} {end} -->"
# Part of each run's score cache name: bump when what a score compares changes.
# 2: the real set is spread over the dataset (make_epoch_stream), not its first images.
EVAL_VERSION = 2


def parse_variant(text: str) -> tuple:
    """'name=a.b=1;c.d=2' -> ('name', ['a.b=1', 'c.d=2'])."""
    if "=" not in text:
        raise SystemExit(f"quality: --variant {text!r}: expected NAME=section.key=value;...")
    name, rest = text.split("=", 1)
    if not name or "/" in name:
        raise SystemExit(f"quality: --variant {text!r}: the name must be non-empty, no '/'")
    return name, [a for a in rest.split(";") if a.strip()]


# --------------------------------------------------------------------------------------------
# Training.


def train(run_dir: Path, suite: Suite, data: Optional[Path], assignments: List[str], seed: int,
          kimg: float, log, minutes: Optional[float] = None) -> float:
    """One run (resumed if unfinished) -> its wall-clock seconds so far (launch to finish).
    With `minutes`, the run is stopped with SIGUSR1 (state saved, exit 3) once that much wall
    clock has passed since this launch; `kimg` is then only an upper bound. (The timing file is
    written when a run ends, so a run whose benchmark was interrupted resumes on a fresh clock
    and its minutes are not comparable: delete its directory to measure it again.)"""
    timing = run_dir / "quality-timing.json"
    done = json.loads(timing.read_text()) if timing.is_file() else {}
    if done.get("finished"):
        return done["seconds"]
    cmd = [sys.executable, str(REPO / "pggan" / "train.py"), "--config", suite.preset,
           "--run-dir", str(run_dir), "--seed", str(seed), "--total-kimg", str(kimg),
           "--snapshot-kimg", str(suite.snapshot_kimg), "--resume", "auto"]
    if data is not None:
        cmd += ["--data", str(data)]
    for a in assignments:
        cmd += ["--set", a]
    log("+ " + " ".join(cmd))
    t0 = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    budget_s = None if minutes is None else minutes * 60.0
    stopped = False
    with open(run_dir / "quality-train.log", "a", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = proc.wait(timeout=None if budget_s is None else
                               max(0.0, t0 + budget_s - time.time()))
                break
            except subprocess.TimeoutExpired:       # the budget is spent: stop, state saved
                proc.send_signal(signal.SIGUSR1)
                stopped, budget_s = True, None
    seconds = time.time() - t0
    # Stopped: exit 3 (state saved), or killed by the signal if it came before the trainer's
    # handler was installed; either way the snapshots written so far are what is scored.
    if rc != 0 and not (stopped and rc in (3, -signal.SIGUSR1)):
        raise SystemExit(f"quality: training failed (exit {rc}); see "
                         f"{run_dir / 'quality-train.log'}")
    write_atomic(timing, json.dumps({"finished": True, "seconds": seconds,
                                     "start": t0, "budget_minutes": minutes,
                                     "stopped_at_budget": stopped}))
    return seconds


def snapshot_minutes(run_dir: Path) -> Dict[str, float]:
    """Snapshot file -> minutes from the run's launch (the training log's first mtime)."""
    start = json.loads((run_dir / "quality-timing.json").read_text())["start"]
    return {p.name: (p.stat().st_mtime - start) / 60
            for p in run_dir.glob("network-snapshot-*.pt")}


# --------------------------------------------------------------------------------------------
# Evaluation.


def real_swd(data: Optional[Path], res: int, num_images: int, seed: int, channels: int):
    from pggan.data.stream import make_epoch_stream
    acc = SWDAccumulator(seed=seed, device=torch.device("cpu"))
    cfg = DataConfig(path=None if data is None else str(data), num_workers=0)
    stream = make_epoch_stream(cfg, res, batch_size=250, rank=0, world_size=1,
                               num_images=num_images, seed=seed, with_index=True,
                               img_channels=channels, top_res=res)
    for images, _labels, index in stream:
        acc.add("real", images.contiguous(), index)
    return acc


def fake_images(G, snap: dict, res: int, num_images: int, seed: int):
    """G_ema images upsampled to `res`: yields (uint8 [B, C, res, res], indices [B])."""
    idx = generated_indices(num_images, 0, 1)
    for images, chunk in generate(G, idx, res=snap["res"], alpha=snap["alpha"], seed=seed,
                                  device=torch.device("cpu"), batch_size=250):
        factor = res // images.shape[-1]
        if factor > 1:                                  # [B, C, r, r] -> [B, C, res, res]
            images = upsample2d(images, factor=factor, mode="nearest")
        yield images, chunk


def evaluate(path: Path, real, res: int, num_images: int, seed: int, inception) -> dict:
    G, snap = load_snapshot(path)
    acc = SWDAccumulator(seed=seed, device=torch.device("cpu"))
    acc.rows["real"], acc.index["real"], acc.channels = real.rows["real"], \
        real.index["real"], real.channels
    feats = []
    for images, chunk in fake_images(G, snap, res, num_images, seed):
        acc.add("fake", images, chunk)
        if inception is not None:
            feats.append(inception["net"](images))
    out = acc.compute()
    rec = {"snapshot": path.name, "kimg": snap["cur_nimg"] / 1000, "res": snap["res"],
           "alpha": snap["alpha"], "swd": out["value"], "swd_per_level": out["per_level"]}
    if inception is not None:
        from pggan.metrics.fid import fid_from_features, kid_from_features
        fake = torch.cat(feats).double()
        rec["fid"] = float(fid_from_features(inception["real"], fake))
        rec["kid_x1e3"] = 1e3 * float(kid_from_features(inception["real"], fake))
    return rec


def within_budget(snaps: List[Path], minutes: Dict[str, float],
                  budget: Optional[float]) -> List[Path]:
    """The snapshots written within `budget` minutes of the run's launch (all when None): the
    newest of them is what the run reached on that budget."""
    return list(snaps) if budget is None else [q for q in snaps if minutes[q.name] <= budget]


def pick_evenly(items: list, n: int) -> list:
    """n of `items`, evenly spaced, always including the last (all when n >= len)."""
    if n >= len(items) or n < 1:
        return items
    step = len(items) / n
    return [items[min(len(items) - 1, int(round((k + 1) * step)) - 1)] for k in range(n)]


def inception_setup(data: Optional[Path], res: int, num_images: int, seed: int, channels: int):
    """Inception features of the reals, or None when the weights are not installed."""
    from pggan.metrics.fid import InceptionFeatures, find_inception_weights
    weights = find_inception_weights(None)
    if weights is None:
        return None
    net = InceptionFeatures(weights, torch.device("cpu"))
    from pggan.data.stream import make_epoch_stream
    cfg = DataConfig(path=None if data is None else str(data), num_workers=0)
    feats = [net(images) for images, _l in make_epoch_stream(
        cfg, res, batch_size=100, rank=0, world_size=1, num_images=num_images, seed=seed,
        img_channels=channels, top_res=res)]
    return {"net": net, "real": torch.cat(feats).double()}


# --------------------------------------------------------------------------------------------
# Output.


def save_grid(snapshot: Path, png: Path, seed: int = 0) -> None:
    from pggan.files import save_png
    from pggan.stats import image_grid
    G, snap = load_snapshot(snapshot)
    z = torch.randn([64, G.latent_dim], generator=torch.Generator().manual_seed(seed))
    c = torch.arange(64) % G.num_classes if getattr(G, "num_classes", 0) else None
    with torch.no_grad():
        img = G(z, c, snap["res"], snap["alpha"])                   # [64, C, R, R] in [-1, 1]
    factor = max(1, 64 // img.shape[-1])                            # cells >= 64 px
    if factor > 1:
        img = upsample2d(img, factor=factor, mode="nearest")
    save_png(png, image_grid(img, cols=8))


def plot(records: List[dict], png: Path, title: str, metric: str = "swd") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    names = sorted({r["variant"] for r in records})
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for (name, seed), rows in sorted(_group(records).items()):
        rows = sorted(rows, key=lambda r: r["kimg"])
        ax.plot([r["minutes"] for r in rows], [r[metric] for r in rows],
                "o-" if seed == min(r["seed"] for r in records) else "s--",
                color=colours[name], label=f"{name} seed {seed}", ms=3, lw=1.2)
    ax.set_xlabel("minutes of training (wall clock, this CPU)")
    ax.set_ylabel(f"{metric.upper()} x 1e3 of G_ema" if metric == "swd" else metric)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from pggan.files import atomic_write
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"), fsync=False)
    plt.close(fig)


def _group(records: List[dict]) -> dict:
    out: Dict[tuple, list] = {}
    for r in records:
        out.setdefault((r["variant"], r["seed"]), []).append(r)
    return out


def table(records: List[dict], variants: Dict[str, List[str]]) -> str:
    rows = []
    finals = {}
    for (name, seed), rs in _group(records).items():
        finals.setdefault(name, []).append(max(rs, key=lambda r: r["kimg"]))
    has_fid = any("fid" in r for r in records)
    for name in variants:
        fs = sorted(finals.get(name, []), key=lambda r: r["seed"])
        if not fs:
            continue
        swd = [r["swd"] for r in fs]
        kimgs = sorted({f"{r['kimg']:g}" for r in fs})
        row = [name, "; ".join(variants[name]) or "(preset)",
               kimgs[0] if len(kimgs) == 1 else " / ".join(f"{r['kimg']:g}" for r in fs),
               " / ".join(f"{r['minutes']:.1f}" for r in fs),
               " / ".join(f"{v:.1f}" for v in swd),
               f"{statistics.mean(swd):.1f}", f"{max(swd) - min(swd):.1f}",
               f"{min(min(r['swd'] for r in rs) for (n, _s), rs in _group(records).items() if n == name):.1f}"]
        if has_fid:
            row.append(" / ".join(f"{r['kid_x1e3']:.1f}" if "kid_x1e3" in r else "-"
                                  for r in fs))
        rows.append(row)
    header = ["variant", "--set on the preset", "kimg (final snapshot)", "minutes per seed", "final SWD per seed",
              "mean", "spread", "best snapshot"] + (["KID x1e3 per seed"] if has_fid else [])
    return markdown_table(header, rows, left=("variant", "--set on the preset"))


def write_results(results: Path, suite_name: str, body: str) -> None:
    begin, end = MARK.format(suite=suite_name, end="begin"), MARK.format(suite=suite_name,
                                                                          end="end")
    text = results.read_text(encoding="utf-8") if results.is_file() else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_atomic(results, text)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="main", help=f"{', '.join(SUITES)} or a name for "
                   "--preset runs (default: %(default)s)")
    p.add_argument("--preset", help="train this preset instead of the suite's")
    p.add_argument("--data", type=Path, help="prepared dataset (default: the suite's built-in "
                   "source prepared under --data-root; none: the synthetic source)")
    p.add_argument("--data-root", type=Path, default=REPO / "data")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=K=V;K=V",
                   help="a configuration: --set assignments on the preset (repeatable; "
                        "default: the suite's)")
    p.add_argument("--variants", nargs="*", help="run only these of the suite's variants")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--kimg", type=float, help="images per run, thousands (default: suite's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget per run: stop it (SIGUSR1, state saved) after this "
                        "many minutes and score the newest snapshot written within them; "
                        "--kimg is then an upper bound (default: the suite's; 0: none)")
    p.add_argument("--snapshot-kimg", type=float, help="evaluation interval (default: suite's)")
    p.add_argument("--eval-images", type=int, default=2000, help="images per SWD set")
    p.add_argument("--eval-points", type=int, default=4,
                   help="snapshots scored per run, evenly spaced, the last always (SWD of "
                        "2,000 images at 32 px takes about a minute on one core)")
    p.add_argument("--inception", action="store_true",
                   help="also KID/FID (needs the packaged Inception weights)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "quality")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: evaluate and tabulate the runs that have finished")
    p.add_argument("--command", default=None, help="command line to print with the table "
                   "(default: this one)")
    args = p.parse_args(argv)

    if args.suite in SUITES and not args.preset:
        suite = SUITES[args.suite]
    elif args.preset:
        suite = Suite(preset=args.preset, kimg=args.kimg or 10, data_source=None,
                      max_res=0, variants={}, snapshot_kimg=args.snapshot_kimg or 5)
    else:
        raise SystemExit(f"quality: --suite must be one of {', '.join(SUITES)} (or give "
                         f"--preset)")
    variants = dict(parse_variant(v) for v in args.variant) if args.variant else \
        dict(suite.variants)
    if args.variants:
        unknown = [v for v in args.variants if v not in variants]
        if unknown:
            raise SystemExit(f"quality: --variants {' '.join(unknown)}: not in this suite "
                             f"({', '.join(variants)})")
        variants = {k: variants[k] for k in args.variants}
    if not variants:
        raise SystemExit("quality: no variants to run (give --variant NAME=...)")
    kimg = args.kimg or suite.kimg
    budget = suite.minutes if args.minutes is None else (args.minutes or None)
    if budget is not None and budget <= 0:
        raise SystemExit(f"quality: --minutes must be > 0 (got {budget})")
    if args.snapshot_kimg:
        suite.snapshot_kimg = args.snapshot_kimg

    from pggan.config import load_preset
    preset_cfg = load_preset(suite.preset)
    res = suite.max_res or preset_cfg.model.max_res
    kimg = kimg or preset_cfg.train.total_kimg
    channels = preset_cfg.model.img_channels
    data = args.data
    if data is None and suite.data_source is not None:
        data = args.data_root / f"{suite.data_source}-{res}"
        if not (data / "dataset.json").is_file():
            subprocess.run([sys.executable, "-m", "data_prep", "--source", suite.data_source,
                            "--out", str(data), "--max-res", str(res), *suite.prep_args],
                           cwd=REPO, check=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    work = args.work_dir / args.suite
    records = []
    runs = []                                               # (variant, seed) that finished
    for name, assignments in variants.items():
        for seed in args.seeds:
            run_dir = work / f"{name}-s{seed}"
            if args.no_train:
                if (run_dir / "quality-timing.json").is_file():
                    runs.append((name, seed))
                continue
            seconds = train(run_dir, suite, data, assignments, seed, kimg, log, budget)
            runs.append((name, seed))
            log(f"  {name} seed {seed}: trained {seconds / 60:.1f} min (at most {kimg:g} "
                f"kimg)")
    # Evaluation after all training, so no run's minutes include another's evaluation.
    real = real_swd(data, res, args.eval_images, 0, channels)
    inception = inception_setup(data, res, min(args.eval_images, 1000), 0, channels) \
        if args.inception else None
    for name, seed in runs:
        run_dir = work / f"{name}-s{seed}"
        cache = run_dir / f"quality-eval-{args.eval_images}-v{EVAL_VERSION}.json"
        done = {r["snapshot"]: r for r in json.loads(cache.read_text())} \
            if cache.is_file() else {}
        minutes = snapshot_minutes(run_dir)
        snaps = pick_evenly(within_budget(sorted(run_dir.glob("network-snapshot-*.pt"),
                                                 key=lambda q: read_snapshot(q)["cur_nimg"]),
                                          minutes, budget), args.eval_points)
        if not snaps:
            raise SystemExit(f"quality: {run_dir}: no snapshot written within the budget; "
                             f"lower --snapshot-kimg or raise --minutes")
        out = []
        for snap in snaps:
            rec = done.get(snap.name)
            if rec is None or (inception is not None and "fid" not in rec):
                rec = evaluate(snap, real, res, args.eval_images, 0, inception)
            rec.update(variant=name, seed=seed, minutes=minutes[snap.name])
            out.append(rec)
        done.update({r["snapshot"]: r for r in out})
        write_atomic(cache, json.dumps(list(done.values()), indent=1))
        log(f"  {name} seed {seed}: SWD " + " ".join(f"{r['swd']:.1f}" for r in out))
        records += out
        if seed == min(s for n, s in runs if n == name) and snaps:
            args.docs.mkdir(parents=True, exist_ok=True)
            save_grid(snaps[-1], args.docs / f"quality-{args.suite}-{name}.png")
    write_atomic(work / f"quality-{args.suite}.json", json.dumps(records, indent=1))
    args.docs.mkdir(parents=True, exist_ok=True)
    plot(records, args.docs / f"quality-{args.suite}.png",
         f"{args.suite}: {suite.preset}, " + (f"{budget:g} min" if budget else f"{kimg:g} kimg")
         + " per run, G_ema snapshots")

    command = args.command or "python benchmarks/quality.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    body = "\n".join([
        f"### Quality: {args.suite} ({suite.preset}, {res} px"
        f"{', ' + str(data.name) if data else ', built-in synthetic source'})",
        "",
        f"Machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores, no GPU. "
        f"Date: {time.strftime('%Y-%m-%d')}. Command: `{command}`.",
        f"SWD x 1e3 of G_ema, {args.eval_images} generated vs {args.eval_images} real images "
        f"at {res} px; minutes: wall clock from launch to the last snapshot, evaluation not "
        f"included. "
        + (f"Budget: {budget:g} minutes of wall clock per run (stopped then); the newest "
           f"snapshot written within it is the final one. " if budget else "")
        + f"Curve: [docs/quality-{args.suite}.png](../docs/quality-{args.suite}.png); "
        f"grids: docs/quality-{args.suite}-<variant>.png (seed {args.seeds[0]}).",
        "",
        table(records, variants),
    ])
    write_results(args.results, args.suite, body)
    log(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
