"""Throughput of the full training step per resolution, and our own eager baseline.

    python benchmarks/train_step.py                  # CUDA: pggan-celebahq-1024, 4..1024
    python benchmarks/train_step.py --fade --out benchmarks/out/run1    # + mid-fade; files
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --device cpu --config demo-cpu --fade

Each case builds a fresh `pggan.training.loop.Trainer` (single process, the built-in synthetic
source) for one configuration and calls its `train_step` at a fixed schedule point of one
resolution: the stabilisation point (alpha = 1) and, with --fade, the middle of the fade-in
(alpha = 0.5). A step is the real one: reals to the device and faded, every due D phase (WGAN-GP
penalty and drift for the PGGAN presets), the G phase, Adam, G_ema, at the scheduled global
batch of that resolution (micro-batches and gradient accumulation as the schedule splits it for
one process). The step's reals are rendered once before timing and reused: the data loader is
not part of this figure (benchmarks/data_loader.py measures it).

Timing: `--warmup` untimed steps (Triton compilation, allocator growth), then `--steps` timed
steps (rounded up to whole cycles of the phase pattern, e.g. lazy R1's interval), each cycle
between CUDA synchronisations; ms/step is the median over cycles, `spread %` is (slowest -
fastest) / median. Peak memory: CUDA max_memory_allocated over the timed steps; on CPU the
whole process's peak RSS over the timed steps (VmHWM after a reset through
/proc/self/clear_refs).

The grid is impl x precision x layout x fused_scale x compile (--impls, --precisions,
--layouts, --fused-scales, --compiles). Always included:
  baseline  impl=ref, fp32, NCHW, fused_scale never: the same network and step, eager,
            reference ops, resampling as separate ops (the path before fused_scale existed)
  default   impl=auto (Triton on CUDA, the reference on CPU), the default mixed precision
            (bf16 on CUDA, fp32 on CPU), fused_scale auto (else always, else never, whichever
            is measured), in whichever of the measured layouts is faster at that resolution
            ("channels_last if it helps"); its speedup over the baseline is the summary table.
With two or more fused_scale settings a third table sets them side by side: the same network
(same weights), impl, precision and layout, fused vs unfused, ms/step and executed FLOPs.
With a train.compile backend in --compiles (e.g. off,inductor) a table sets each compiled case
beside its eager twin; the compile time falls in the warm-up steps, whose wall time it lists
(the compiled graphs are cached per process, so a later case may reuse an earlier one's).
On CPU, Triton would be the interpreter and is never timed; bf16 is not the CPU training
precision and is left out by default.

FLOPs are analytic model FLOPs (benchmarks/flops.py: dense conv / linear MACs x 2; a step is
4 F_G + 12 F_D per image for WGAN-GP): TFLOP/s = model FLOPs per image x images/s, compared
with the torch.matmul rate measured at start (bf16 and fp32, N x N x N). `executed/model` is the
ratio of the conv + matmul FLOPs torch actually dispatches (counted over one extra untimed
cycle of steps; --no-count skips it) to the model FLOPs.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import itertools
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import count_executed_flops, phase_cycle, step_flops  # noqa: E402
from benchmarks.report import cpu_model, markdown_table, write_atomic  # noqa: E402
from pggan.config import (COMPILE_MODES, Config, ConfigError, apply_override,  # noqa: E402
                          load_preset, validate)
from pggan.nets.features import resolutions  # noqa: E402
from pggan.ops._dispatch import interpreter_enabled, triton_available  # noqa: E402

PROG = "benchmarks/train_step.py"
PRECISIONS = {"fp32": "no", "bf16": "bf16"}          # label -> Engine.mixed_precision
LAYOUTS = {"nchw": False, "channels_last": True}      # label -> train.channels_last
IMPLS = ("ref", "triton", "auto")
FUSED_SCALES = ("never", "always", "auto")
COMPILES = COMPILE_MODES                              # train.compile values
FADE_ALPHA = 0.5
ENV_VARS = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET")


class BenchError(Exception):
    """A bad option: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Device facts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured torch.matmul rate for [n, n] @ [n, n] in `dtype`, TFLOP/s (2 n^3 per product;
    median of 20 timed products after 20 untimed ones on CUDA (clocks up), 3 after 1 on CPU)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 20 if device.type == "cuda" else 3
    for _ in range(20 if device.type == "cuda" else 1):
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def machine_name(device: torch.device) -> str:
    host = f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {host})"
    return f"{host}, no GPU used"


class PeakMemory:
    """Peak memory over a stretch of work: CUDA max_memory_allocated, or on CPU the process's
    peak RSS (VmHWM), reset at start through /proc/self/clear_refs where the kernel allows it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.what = "peak CUDA memory allocated" if device.type == "cuda" else \
            "peak RSS of the whole process"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                         # 5: reset the peak RSS to the current RSS
        except OSError:
            self.what = "peak RSS of the whole process since it started"

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024          # kB -> MiB
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kB


# ---------------------------------------------------------------------------------------------
# One case: a configuration at one schedule point


@dataclasses.dataclass(frozen=True)
class Variant:
    impl: str               # as passed to model.impl
    impl_runs: str          # what it dispatches to on this device: ref | triton
    precision: str          # fp32 | bf16
    layout: str             # nchw | channels_last
    fused_scale: str = "never"   # model.fused_scale: never | always | auto
    compile: str = "off"         # train.compile: off | inductor | aot_eager

    @property
    def label(self) -> str:
        impl = self.impl if self.impl == self.impl_runs else f"{self.impl} ({self.impl_runs})"
        compiled = "" if self.compile == "off" else f", compile {self.compile}"
        return f"{impl}, {self.precision}, {self.layout}, fused {self.fused_scale}{compiled}"


def schedule_points(cfg: Config, res: int, with_fade: bool):
    """[(name, SchedulePoint)] at `res`: 'stab' (alpha 1) and, if asked and the stage fades,
    'fade' (alpha 0.5). Batch split and lr are the schedule's for this resolution."""
    from pggan.schedule import ResolutionSchedule
    sched = ResolutionSchedule(cfg, world_size=1)
    stage = sched.stage_of(res)
    base = sched.at(stage.start_nimg)
    points = [("stab", dataclasses.replace(base, cur_nimg=stage.fade_end_nimg, alpha=1.0,
                                           phase="stab"))]
    if with_fade and stage.fade_nimg > 0:
        points.append(("fade", dataclasses.replace(
            base, cur_nimg=stage.start_nimg + stage.fade_nimg // 2, alpha=FADE_ALPHA,
            phase="fade")))
    return points


def make_trainer(cfg: Config, variant: Variant, device: torch.device, run_dir: Path):
    from pggan.training.engine import Engine
    from pggan.training.loop import Trainer
    cfg = copy.deepcopy(cfg)
    cfg.model.impl = variant.impl
    cfg.model.fused_scale = variant.fused_scale
    cfg.train.compile = variant.compile
    cfg.train.mixed_precision = PRECISIONS[variant.precision]
    cfg.train.channels_last = LAYOUTS[variant.layout]
    cfg.data.num_workers = 0
    # One process: the base Engine (no collectives) on the chosen device and precision, the
    # same autocast the Accelerate engine hands the loop.
    engine = Engine()
    engine.device = device
    engine.mixed_precision = PRECISIONS[variant.precision]
    return Trainer(cfg, engine, run_dir, print_fn=lambda *a, **k: None)


def prerendered_stream(cfg: Config, point, device: torch.device):
    """One step's micro-batches of the built-in synthetic source (uint8, pinned on CUDA like the
    shard loader's), repeated forever."""
    from pggan.data.stream import make_train_stream
    data_cfg = dataclasses.replace(cfg.data, path=None, num_workers=0)
    stream = make_train_stream(data_cfg, point.res, batch_per_gpu=point.batch_per_gpu,
                               seed=cfg.train.seed, rank=0, world_size=1,
                               start_nimg=point.cur_nimg, img_channels=cfg.model.img_channels)
    batches = []
    for _ in range(point.accum_rounds):
        images, labels = next(stream)
        if device.type == "cuda":
            images = images.pin_memory()
        batches.append((images, labels))
    return itertools.cycle(batches)


def time_steps(trainer, point, device: torch.device, warmup: int, steps: int, cycle: int,
               count_flops: bool) -> dict:
    """Warm-up, one counted cycle (optional), then the timed cycles of `trainer.train_step`."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(point)
    synchronize(device)
    warmup_s = time.perf_counter() - t0         # with train.compile: the compile time
    executed = None
    if count_flops:            # one more untimed cycle of steps, counted op by op

        def one_cycle():
            for _ in range(cycle):
                trainer.train_step(point)

        executed = count_executed_flops(one_cycle) / cycle
    synchronize(device)
    memory = PeakMemory(device)
    memory.start()
    cycle_ms = []
    for _ in range(max(1, -(-steps // cycle))):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(cycle):
            trainer.train_step(point)
        synchronize(device)
        cycle_ms.append((time.perf_counter() - t0) * 1e3 / cycle)
    ms = statistics.median(cycle_ms)
    return dict(ms_per_step=ms, img_per_s=point.batch / (ms * 1e-3),
                spread_pct=100 * (max(cycle_ms) - min(cycle_ms)) / ms, cycle_ms=cycle_ms,
                sec_per_kimg=ms * 1e-3 * 1000 / point.batch, peak_mib=memory.peak_mib(),
                executed_flops_per_img=None if executed is None else executed / point.batch,
                timed_steps=len(cycle_ms) * cycle, warmup_s=warmup_s)


def run_case(cfg: Config, variant: Variant, point, device: torch.device, warmup: int,
             steps: int, cycle: int, count_flops: bool) -> dict:
    """A fresh Trainer for `variant`, positioned at `point` with pre-rendered reals, timed."""
    with tempfile.TemporaryDirectory(prefix="train-step-bench-") as run_dir:
        trainer = make_trainer(cfg, variant, device, Path(run_dir))
        trainer.enter_stage(point)
        trainer.stream = prerendered_stream(cfg, point, device)
        trainer.cur_nimg = point.cur_nimg
        result = time_steps(trainer, point, device, warmup, steps, cycle, count_flops)
    trainer = None                  # free this case's networks before the next one is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run_paired(cfg: Config, a: Variant, b: Variant, point, device: torch.device, warmup: int,
               pairs: int, cycle: int) -> dict:
    """Two trainers (same seed, so the same weights) stepped in turns, A B B A A B ..., one
    cycle of steps each turn: on a machine whose speed drifts (shared cores) both see the same
    load, and the median of the per-turn ratios A / B is far steadier than two separate runs."""
    with tempfile.TemporaryDirectory(prefix="train-step-ab-") as run_dir:
        trainers = []
        for v, sub in ((a, "a"), (b, "b")):
            t = make_trainer(cfg, v, device, Path(run_dir) / sub)
            t.enter_stage(point)
            t.stream = prerendered_stream(cfg, point, device)
            t.cur_nimg = point.cur_nimg
            for _ in range(warmup):
                t.train_step(point)
            trainers.append(t)
        ms = ([], [])
        for i in range(2 * pairs):
            order = (0, 1) if i % 4 in (0, 3) else (1, 0)
            for k in order:
                synchronize(device)
                t0 = time.perf_counter()
                for _ in range(cycle):
                    trainers[k].train_step(point)
                synchronize(device)
                ms[k].append((time.perf_counter() - t0) * 1e3 / cycle)
    trainers = None
    gc.collect()
    ratios = [x / y for x, y in zip(*ms)]
    return dict(a=a.label, b=b.label, a_ms=statistics.median(ms[0]),
                b_ms=statistics.median(ms[1]), a_min_ms=min(ms[0]), b_min_ms=min(ms[1]),
                ratio_median=statistics.median(ratios), ratio_min=min(ms[0]) / min(ms[1]),
                ratio_q25=statistics.quantiles(ratios, n=4)[0] if len(ratios) > 1 else
                ratios[0], turns=len(ratios), a_ms_all=ms[0], b_ms_all=ms[1])


# ---------------------------------------------------------------------------------------------
# Tables


COLUMNS = ["res", "point", "alpha", "batch", "impl", "precision", "layout", "fused_scale",
           "compile", "ms/step", "spread %", "img/s",
           "sec/kimg", "peak MiB", "GFLOP/img", "TFLOP/s", "% bf16 mm", "% fp32 mm",
           "executed/model", "vs baseline"]


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main_table(rows: List[dict]) -> str:
    return markdown_table(COLUMNS, (
        [str(r["res"]), r["point"], f"{r['alpha']:g}", r["batch"], r["impl"],
         r["precision"], r["layout"], r["fused_scale"], r["compile"],
         _fmt(r["ms_per_step"], ".1f"),
         _fmt(r["spread_pct"], ".0f"),
         _fmt(r["img_per_s"], ".1f"), _fmt(r["sec_per_kimg"], ".2f"),
         _fmt(r["peak_mib"], ".0f"), _fmt(r["gflop_per_img"], ".4g"),
         _fmt(r["tflops"], ".3g"), _fmt(r["pct_bf16_mm"], ".1f"),
         _fmt(r["pct_fp32_mm"], ".1f"), _fmt(r["executed_ratio"], ".3f"),
         _fmt(r["vs_baseline"], ".2f") + ("x" if r["vs_baseline"] is not None else "")]
        for r in rows), left={"point", "impl", "precision", "layout", "fused_scale", "compile",
                              "batch"})


def summary_rows(rows: List[dict], baseline: Variant, defaults: List[Variant]) -> List[dict]:
    out = []
    keys = []
    for r in rows:
        if (r["res"], r["point"]) not in keys:
            keys.append((r["res"], r["point"]))
    for res, point in keys:
        here = [r for r in rows if (r["res"], r["point"]) == (res, point)]
        base = next(r for r in here if r["variant"] == baseline)
        cands = [r for r in here if r["variant"] in defaults]
        best = max(cands, key=lambda r: r["img_per_s"])
        out.append(dict(res=res, point=point, baseline_img_s=base["img_per_s"],
                        default=best["variant"].label, default_img_s=best["img_per_s"],
                        speedup=best["img_per_s"] / base["img_per_s"],
                        default_pct_bf16=best["pct_bf16_mm"]))
    return out


def fused_rows(rows: List[dict]) -> List[dict]:
    """Each row measured with fused_scale always or auto beside its fused_scale never twin
    (same res, point, impl, precision, layout)."""
    out = []
    for r in rows:
        if r["fused_scale"] == "never":
            continue
        v = r["variant"]
        twin = next((q for q in rows if (q["res"], q["point"]) == (r["res"], r["point"]) and
                     q["variant"] == dataclasses.replace(v, fused_scale="never")), None)
        if twin is None:
            continue
        ex = None
        if r["executed_flops_per_img"] and twin["executed_flops_per_img"]:
            ex = twin["executed_flops_per_img"] / r["executed_flops_per_img"]
        out.append(dict(res=r["res"], point=r["point"], variant=dataclasses.replace(
            v, fused_scale="-").label.rsplit(", fused", 1)[0], fused_scale=r["fused_scale"],
            never_ms=twin["ms_per_step"], fused_ms=r["ms_per_step"],
            speedup=twin["ms_per_step"] / r["ms_per_step"], executed_ratio=ex))
    return out


def compiled_rows(rows: List[dict]) -> List[dict]:
    """Each row measured with a train.compile backend beside its eager twin (same res, point,
    impl, precision, layout, fused_scale)."""
    out = []
    for r in rows:
        v = r["variant"]
        if v.compile == "off":
            continue
        twin = next((q for q in rows if (q["res"], q["point"]) == (r["res"], r["point"]) and
                     q["variant"] == dataclasses.replace(v, compile="off")), None)
        if twin is None:
            continue
        out.append(dict(res=r["res"], point=r["point"],
                        variant=dataclasses.replace(v, compile="off").label,
                        compile=v.compile, eager_ms=twin["ms_per_step"],
                        compiled_ms=r["ms_per_step"],
                        speedup=twin["ms_per_step"] / r["ms_per_step"],
                        eager_warmup_s=twin["warmup_s"], compiled_warmup_s=r["warmup_s"]))
    return out


def compiled_table(rows: List[dict]) -> str:
    return markdown_table(
        ["res", "point", "impl, precision, layout, fused", "compile", "ms/step eager",
         "ms/step compiled", "speedup", "warm-up s eager", "warm-up s compiled"],
        ([str(r["res"]), r["point"], r["variant"], r["compile"], f"{r['eager_ms']:.1f}",
          f"{r['compiled_ms']:.1f}", f"{r['speedup']:.2f}x", f"{r['eager_warmup_s']:.1f}",
          f"{r['compiled_warmup_s']:.1f}"] for r in rows),
        left={"point", "impl, precision, layout, fused", "compile"})


def fused_table(rows: List[dict]) -> str:
    return markdown_table(
        ["res", "point", "impl, precision, layout", "fused_scale", "ms/step never",
         "ms/step fused", "speedup", "executed FLOPs never / fused"],
        ([str(r["res"]), r["point"], r["variant"], r["fused_scale"], f"{r['never_ms']:.1f}",
          f"{r['fused_ms']:.1f}", f"{r['speedup']:.2f}x",
          _fmt(r["executed_ratio"], ".3f") + ("x" if r["executed_ratio"] else "")]
         for r in rows), left={"point", "impl, precision, layout", "fused_scale"})


def paired_table(rows: List[dict]) -> str:
    return markdown_table(
        ["res", "point", "A", "B", "turns", "A ms (median)", "B ms (median)",
         "A / B median of turns", "A / B lower quartile", "A / B of the fastest turns"],
        ([str(r["res"]), r["point"], r["a"], r["b"], str(r["turns"]), f"{r['a_ms']:.1f}",
          f"{r['b_ms']:.1f}", f"{r['ratio_median']:.2f}x", f"{r['ratio_q25']:.2f}x",
          f"{r['ratio_min']:.2f}x"] for r in rows), left={"point", "A", "B"})


def summary_table(rows: List[dict]) -> str:
    return markdown_table(
        ["res", "point", "baseline img/s (ref, fp32, nchw, fused never)",
         "default configuration",
         "default img/s", "speedup", "default % bf16 mm"],
        ([str(r["res"]), r["point"], f"{r['baseline_img_s']:.1f}", r["default"],
          f"{r['default_img_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['default_pct_bf16']:.1f}"]
         for r in rows), left={"point", "default configuration"})


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: CUDA when visible, else CPU")
    p.add_argument("--config", default=None, metavar="PRESET|FILE",
                   help="preset or YAML file (default: pggan-celebahq-1024 on CUDA, demo-cpu "
                        "on CPU)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field (repeatable)")
    p.add_argument("--max-res", type=int, default=None,
                   help="model.max_res; resolutions start_res..max-res are measured")
    p.add_argument("--res", default=None, metavar="LIST",
                   help="comma list: only these resolutions (default: all stages)")
    p.add_argument("--impls", default=None, metavar="LIST",
                   help="comma list of ref, triton, auto (default: ref,auto on CUDA; ref on CPU)")
    p.add_argument("--precisions", default=None, metavar="LIST",
                   help="comma list of fp32, bf16 (default: fp32,bf16 on CUDA; fp32 on CPU)")
    p.add_argument("--layouts", default="nchw,channels_last", metavar="LIST",
                   help="comma list of nchw, channels_last (default: %(default)s)")
    p.add_argument("--fused-scales", default="never,always", metavar="LIST",
                   help="comma list of model.fused_scale settings: never, always, auto "
                        "(default: %(default)s, side by side)")
    p.add_argument("--compiles", default="off", metavar="LIST",
                   help=f"comma list of train.compile settings: {', '.join(COMPILES)} (default: "
                        f"%(default)s; e.g. off,inductor side by side)")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="also time each fused_scale setting against never in N x 2 "
                        "alternating turns of two live trainers (A B B A ...; see run_paired)")
    p.add_argument("--fade", action="store_true",
                   help="also measure the middle of each fade-in (alpha 0.5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per case (default: 3 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per case, rounded up to whole phase cycles (default: 10 "
                        "on CUDA, 5 on CPU)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="N of the N x N x N matmul rate (default: 8192 on CUDA, 2048 on CPU)")
    p.add_argument("--no-count", action="store_true",
                   help="skip the counted cycle of steps (the executed/model column)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for train_step.md and train_step.json")
    return p.parse_args(argv)


def _list(value: str, allowed, flag: str) -> List[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise BenchError(f"{flag} {value!r}: choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is visible to torch; use --device "
                             "cpu")
        if interpreter_enabled():
            raise BenchError("TRITON_INTERPRET=1 is set, which would time the Triton "
                             "interpreter; unset it (or TRITON_INTERPRET=0) for GPU figures")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_config(args, device: torch.device) -> Config:
    name = args.config or ("pggan-celebahq-1024" if device.type == "cuda" else "demo-cpu")
    cfg = load_preset(name)
    if args.max_res is not None:
        cfg.model.max_res = args.max_res
    for assignment in args.set:
        apply_override(cfg, assignment)
    validate(cfg)
    if cfg.data.path is not None:
        raise BenchError(f"data.path {cfg.data.path}: this benchmark feeds the built-in "
                         f"synthetic source (the data loader has benchmarks/data_loader.py)")
    if cfg.model.num_classes:
        raise BenchError(f"model.num_classes={cfg.model.num_classes}: a class-conditional run "
                         f"needs a labelled dataset; the built-in synthetic source has no labels")
    return cfg


def build_grid(args, device: torch.device, notes: List[str]):
    cuda = device.type == "cuda"
    auto_runs = "triton" if cuda and triton_available() else "ref"
    impls = _list(args.impls or ("ref,auto" if cuda else "ref"), IMPLS, "--impls")
    precisions = _list(args.precisions or ("fp32,bf16" if cuda else "fp32"), PRECISIONS,
                       "--precisions")
    layouts = _list(args.layouts, LAYOUTS, "--layouts")
    fused = _list(args.fused_scales, FUSED_SCALES, "--fused-scales")
    compiles = _list(args.compiles, COMPILES, "--compiles")
    if not cuda:
        impls = [i for i in impls if i != "triton"]
        notes.append("CPU: impl=triton is not timed (on CPU it is the Triton interpreter, a "
                     "correctness tool); impl=auto runs the reference ops here.")
        if "bf16" not in precisions:
            notes.append("CPU: bf16 not measured by default (mixed-precision auto trains in "
                         "fp32 on CPU); --precisions fp32,bf16 adds it.")
    elif not triton_available():
        raise BenchError("the triton package is not importable: impl=triton/auto cannot run "
                         "the fused kernels (pip install triton)")

    def variant(impl, precision, layout, fused_scale, compile_="off"):
        runs = {"ref": "ref", "triton": "triton", "auto": auto_runs}[impl]
        return Variant(impl, runs, precision, layout, fused_scale, compile_)

    baseline = variant("ref", "fp32", "nchw", "never")
    default_precision = "bf16" if cuda else "fp32"
    default_fused = next(f for f in ("auto", "always", "never") if f in fused)
    defaults = [variant("auto", default_precision, lay, default_fused) for lay in layouts]

    def key(v):
        return (v.impl_runs, v.precision, v.layout, v.fused_scale, v.compile)

    grid, seen = [baseline], {key(baseline)}
    for v in [variant(i, p, lay, f, c) for i in impls for p in precisions for lay in layouts
              for f in fused for c in compiles] + defaults:
        if key(v) not in seen:                  # auto and its resolution run the same code
            seen.add(key(v))
            grid.append(v)
    # Rows that run the same code as a default variant stand for it.
    by_key = {key(v): v for v in grid}
    defaults = [by_key[key(d)] for d in defaults]
    return grid, baseline, defaults


def main(argv=None) -> int:
    args = parse_args(argv)
    # The environment that changes what is measured is part of the command.
    env = [f"{k}={shlex.quote(os.environ[k])} " for k in ENV_VARS if k in os.environ]
    command = "".join(env) + "python " + PROG + " " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    notes: List[str] = []
    try:
        device = resolve_device(args.device)
        cfg = build_config(args, device)
        grid, baseline, defaults = build_grid(args, device, notes)
        stages = resolutions(cfg.model.max_res, cfg.schedule.start_res)
        if args.res:
            try:
                wanted = [int(r) for r in args.res.split(",") if r.strip()]
            except ValueError:
                raise BenchError(f"--res {args.res!r}: expected a comma list of integers")
            bad = [r for r in wanted if r not in stages]
            if bad:
                raise BenchError(f"--res: {bad} not stages of this config "
                                 f"({', '.join(map(str, stages))})")
            stages = [r for r in stages if r in wanted]
        cuda = device.type == "cuda"
        warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
        steps = args.steps if args.steps is not None else (10 if cuda else 5)
        mm_n = args.matmul_size or (8192 if cuda else 2048)
        if warmup < 0 or steps < 1 or mm_n < 1:
            raise BenchError("--warmup must be >= 0, --steps >= 1 and --matmul-size >= 1")
        if warmup < 1 and not args.no_count:
            notes.append("--warmup 0: the counted cycle doubles as the warm-up.")
    except (BenchError, ConfigError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2

    cycle = phase_cycle(cfg)
    triton_version = __import__("triton").__version__ if triton_available() else "none"
    header = [f"machine: {machine_name(device)}",
              f"torch {torch.__version__}, triton {triton_version}, date "
              f"{datetime.date.today().isoformat()}",
              f"command: {command}",
              f"config: {args.config or ('pggan-celebahq-1024' if cuda else 'demo-cpu')} "
              f"({cfg.model.arch}, max_res {cfg.model.max_res}, fmap_base "
              f"{cfg.model.fmap_base}, fmap_max {cfg.model.fmap_max}, loss {cfg.loss.kind}); "
              f"data: pre-rendered synthetic batches; one process"]
    if cuda:
        header.append(f"fp32 convs may use TF32: torch.backends.cudnn.allow_tf32="
                      f"{torch.backends.cudnn.allow_tf32}, matmul.allow_tf32="
                      f"{torch.backends.cuda.matmul.allow_tf32}")
    for line in header:
        print(line, flush=True)
    mm_bf16 = matmul_tflops(device, torch.bfloat16, mm_n)
    mm_fp32 = matmul_tflops(device, torch.float32, mm_n)
    rates = (f"torch.matmul {mm_n}^3: bf16 {mm_bf16:.3g} TFLOP/s, fp32 {mm_fp32:.3g} TFLOP/s "
             f"(measured at start)")
    header.append(rates)
    print(rates, flush=True)
    timing = (f"timing: {warmup} warm-up step(s), then {max(1, -(-steps // cycle)) * cycle} "
              f"timed step(s) per case in cycles of {cycle} (median ms/step over cycles); "
              f"peak memory: {PeakMemory(device).what} over the timed steps")
    header.append(timing)
    print(timing, flush=True)
    for n in notes:
        print("note: " + n, flush=True)

    rows = []
    print("\n" + main_table([]), flush=True)
    for res in stages:
        for point_name, point in schedule_points(cfg, res, args.fade):
            flops = step_flops(cfg, res, point.alpha).total
            base_img_s = None
            for variant in grid:
                r = run_case(cfg, variant, point, device, warmup, steps, cycle,
                             count_flops=not args.no_count)
                tflops = flops * r["img_per_s"] / 1e12
                if variant == baseline:
                    base_img_s = r["img_per_s"]
                row = dict(res=res, point=point_name, alpha=point.alpha,
                           batch=f"{point.batch} = {point.batch_per_gpu} x {point.accum_rounds}",
                           impl=variant.impl if variant.impl == variant.impl_runs
                           else f"{variant.impl} ({variant.impl_runs})",
                           precision=variant.precision, layout=variant.layout,
                           fused_scale=variant.fused_scale, compile=variant.compile,
                           gflop_per_img=flops / 1e9, tflops=tflops,
                           pct_bf16_mm=100 * tflops / mm_bf16, pct_fp32_mm=100 * tflops / mm_fp32,
                           executed_ratio=None if r["executed_flops_per_img"] is None
                           else r["executed_flops_per_img"] / flops,
                           vs_baseline=r["img_per_s"] / base_img_s, variant=variant, **r)
                rows.append(row)
                print(main_table([row]).split("\n", 2)[2], flush=True)

    paired = []
    if args.paired > 0:
        print("\nPaired turns (A = fused_scale never, B = the fused setting)", flush=True)
        for res in stages:
            for point_name, point in schedule_points(cfg, res, args.fade):
                for v in grid:
                    if v.fused_scale == "never":
                        continue
                    a = dataclasses.replace(v, fused_scale="never")
                    r = run_paired(cfg, a, v, point, device, warmup, args.paired, cycle)
                    r.update(res=res, point=point_name)
                    paired.append(r)
                    print(paired_table([r]).split("\n", 2)[2], flush=True)
    summary = summary_rows(rows, baseline, defaults)
    fused = fused_rows(rows)
    compiled = compiled_rows(rows)
    title = "Default configuration (impl auto, " + \
        ("bf16" if cuda else "fp32") + ", the faster measured layout) vs our eager fp32 baseline"
    fused_title = "Fused resampling convolutions vs unfused (fused_scale never), same network"
    compiled_title = "train.compile vs eager, same network and step"
    report = "\n".join(
        ["# Training step throughput", ""] + [f"- {h}" for h in header] +
        [f"- note: {n}" for n in notes] +
        ["", "## All configurations", "", main_table(rows), "", f"## {title}", "",
         summary_table(summary), ""] +
        (["", f"## {fused_title}", "", fused_table(fused), ""] if fused else []) +
        (["", f"## {compiled_title}", "", compiled_table(compiled), ""] if compiled else []) +
        (["", "## Paired turns: fused_scale never (A) vs fused (B), two live trainers", "",
          paired_table(paired), ""] if paired else []))
    print("\n" + f"{title}\n" + summary_table(summary), flush=True)
    if fused:
        print("\n" + f"{fused_title}\n" + fused_table(fused), flush=True)
    if compiled:
        print("\n" + f"{compiled_title}\n" + compiled_table(compiled), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "train_step.md", report)
        plain = [{k: v for k, v in r.items() if k != "variant"} for r in rows]
        write_atomic(out / "train_step.json", json.dumps(
            dict(header=header, notes=notes, matmul_tflops={"bf16": mm_bf16, "fp32": mm_fp32},
                 rows=plain, summary=summary, fused=fused, compiled=compiled, paired=paired),
            indent=1))
        print(f"\nwrote {out / 'train_step.md'} and {out / 'train_step.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
