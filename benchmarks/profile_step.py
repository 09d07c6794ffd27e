"""Profile one training step: top kernels, device-busy vs wall time, time per phase.

    python benchmarks/profile_step.py --res 1024 --out RESULTS_DIR       # CUDA, 1024 preset
    python benchmarks/profile_step.py --device cpu --config demo-cpu --res 8 --out /tmp/p

The step is benchmarks/train_step.py's (a fresh Trainer at the stabilisation point of `--res`,
pre-rendered reals, the default configuration: impl auto, bf16 on CUDA, fused_scale from the
config, channels_last on CUDA), after `--warmup` untimed steps; one step runs under
torch.profiler. Reported (profile.md, profile.json):

  wall ms       the profiled step between two device synchronisations
  busy ms       union of the device kernel intervals (CUDA; on CPU: the top-level ops' self
                time), and busy / wall: the share of the step the GPU had work
  top kernels   by total device time, with calls and share of busy time
  phases        host-side wall time of each loss phase's forward (record_function around
                GANLoss.phase_loss), of each optimizer step, and of autograd's backward work
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import markdown_table, write_atomic  # noqa: E402

PROG = "benchmarks/profile_step.py"


def _union_ms(intervals) -> float:
    """Total length of the union of [start, end) intervals (microseconds in, ms out)."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


def _instrument(trainer) -> None:
    """Label each loss phase's forward and each optimizer step (instance attributes only)."""
    phase_loss = trainer.loss.phase_loss

    def labelled(phase, *args, **kwargs):
        with record_function(f"phase {phase.name} forward"):
            return phase_loss(phase, *args, **kwargs)

    trainer.loss.phase_loss = labelled
    for name, opt in trainer.opt.items():
        step = opt.step

        def labelled_step(*a, _step=step, _name=name, **k):
            with record_function(f"optimizer {_name} step"):
                return _step(*a, **k)

        opt.step = labelled_step


def profile_step(cfg, point, device: torch.device, warmup: int) -> dict:
    from benchmarks.train_step import (Variant, make_trainer, prerendered_stream,
                                       synchronize)
    cuda = device.type == "cuda"
    variant = Variant("auto", "triton" if cuda else "ref", "bf16" if cuda else "fp32",
                      "channels_last" if cuda else "nchw", cfg.model.fused_scale)
    with tempfile.TemporaryDirectory(prefix="profile-step-") as run_dir:
        trainer = make_trainer(cfg, variant, device, Path(run_dir))
        trainer.enter_stage(point)
        trainer.stream = prerendered_stream(cfg, point, device)
        trainer.cur_nimg = point.cur_nimg
        for _ in range(warmup):
            trainer.train_step(point)
        _instrument(trainer)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        synchronize(device)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            trainer.train_step(point)
            synchronize(device)
            wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = _union_ms([(e.time_range.start, e.time_range.end) for e in kernels])
        per = {}
        for e in kernels:
            t = per.setdefault(e.name, [0, 0.0])
            t[0] += 1
            t[1] += e.time_range.elapsed_us() / 1e3
    else:
        # No device: the ops' own CPU time stands in for "busy".
        per = {}
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0 and not e.key.startswith(("phase ", "optimizer ")):
                per[e.key] = [e.count, e.self_cpu_time_total / 1e3]
        busy_ms = sum(v[1] for v in per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1][1])[:15]
    phases = {}
    for e in events:
        if e.name.startswith(("phase ", "optimizer ")) or e.name.startswith(
                "autograd::engine::evaluate_function"):
            key = e.name if not e.name.startswith("autograd::") else "backward (autograd)"
            if e.device_type == torch.autograd.DeviceType.CPU:
                phases[key] = phases.get(key, 0.0) + e.time_range.elapsed_us() / 1e3
    return dict(res=point.res, batch=point.batch, batch_per_gpu=point.batch_per_gpu,
                accum_rounds=point.accum_rounds, variant=variant.label, wall_ms=wall_ms,
                busy_ms=busy_ms, busy_pct=100 * busy_ms / wall_ms,
                top=[dict(name=k, calls=v[0], ms=v[1], pct_busy=100 * v[1] / busy_ms)
                     for k, v in top],
                phases=phases)


def report_md(r: dict, header) -> str:
    lines = ["# One training step, profiled", ""] + [f"- {h}" for h in header] + [
        "", f"res {r['res']}, batch {r['batch']} = {r['batch_per_gpu']} x {r['accum_rounds']}, "
        f"{r['variant']}", "",
        f"wall {r['wall_ms']:.1f} ms, device busy {r['busy_ms']:.1f} ms "
        f"({r['busy_pct']:.0f}% of wall)", "", "## Top kernels", "",
        markdown_table(["kernel", "calls", "ms", "% of busy"],
                       ([t["name"][:90], str(t["calls"]), f"{t['ms']:.2f}", f"{t['pct_busy']:.1f}"]
                        for t in r["top"]), left={"kernel"}),
        "", "## Phases (host wall time; backward summed over autograd's nodes)", "",
        markdown_table(["phase", "ms"], ([k, f"{v:.1f}"] for k, v in
                                         sorted(r["phases"].items())), left={"phase"}), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks.train_step import (BenchError, build_config, machine_name, resolve_device,
                                       schedule_points)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--config", default=None, metavar="PRESET|FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--max-res", type=int, default=None)
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, metavar="DIR")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        cfg = build_config(args, device)
        if args.res not in range(cfg.schedule.start_res, cfg.model.max_res + 1) or \
                args.res & (args.res - 1):
            raise BenchError(f"--res {args.res}: not a stage of this config")
        point = schedule_points(cfg, args.res, False)[0][1]
    except (BenchError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    header = [f"machine: {machine_name(device)}", f"torch {torch.__version__}",
              f"command: python {PROG} " + " ".join(sys.argv[1:] if argv is None else argv)]
    r = profile_step(cfg, point, device, args.warmup)
    md = report_md(r, header)
    print(md, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "profile.md", md)
        write_atomic(out / "profile.json", json.dumps(dict(header=header, **r), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
