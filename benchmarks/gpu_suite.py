"""The GPU suite's driver (benchmarks/gpu_suite.sh runs it): every check that needs a CUDA GPU,
within a fixed time budget, on a bare offline GPU machine.

    python benchmarks/gpu_suite.py RESULTS_DIR [--wheels DIR] [--budget-s 480]

1. Wheels: the packages a bare GPU machine (torch, triton, accelerate) lacks are installed from
   the folder `--wheels` (default: $PGGAN_WHEELS, else ./wheels) with pip --no-index. Prepare
   that folder on any machine with network access (CPython 3.12, manylinux x86_64):

       pip download --only-binary=:all: --no-deps --python-version 3.12 \\
           --implementation cp --abi cp312 --platform manylinux_2_17_x86_64 \\
           --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \\
           -d wheels kornia==0.9.0 kornia_rs==0.2.0 webdataset==1.0.2 braceexpand==0.1.7

   (kornia, webdataset and braceexpand are pure-Python wheels; kornia_rs is the compiled one.
   Their other dependencies, numpy, PyYAML and packaging, come with accelerate.)
2. The steps below, in order, each with its own time budget (seconds) and never more than what
   is left of the total; a step over its budget is killed and reported, the next one runs.
   Each step writes its tables into RESULTS_DIR/<step>/ when it finishes, and the summary
   RESULTS_DIR/summary.md is rewritten after every step, so a suite stopped early keeps what
   it measured.

The CUDA check and each step's command are plain data, so tests/benchmarks/test_gpu_suite.py
runs this driver on a CPU with `--fake-cuda`: the CUDA check is skipped and every step runs its
real command with CPU overrides appended (tiny networks, --device cpu; pytest only collects),
so a typo in a flag fails there and not on the GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
PROG = "benchmarks/gpu_suite.sh"
TOTAL_BUDGET_S = 480                    # 8 minutes of the 10-15 a GPU is often lent for
# import name -> wheel (project) name
NEEDED = {"kornia": "kornia", "kornia_rs": "kornia_rs", "webdataset": "webdataset",
          "braceexpand": "braceexpand"}

# A tiny CPU network for --fake-cuda (appended after the real flags: argparse keeps the last
# value of a repeated option, and --set accumulates).
_TINY = ["--device", "cpu", "--config", "demo-cpu", "--max-res", "8", "--warmup", "0",
         "--set", "model.fmap_base=32", "--set", "model.fmap_max=8",
         "--set", "model.latent_dim=8", "--set", "schedule.batch_by_res={4: 4, 8: 4}"]


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    argv: List[str]                     # run from the repository root; {out} = its folder
    fake_argv: Optional[List[str]]      # --fake-cuda: appended to argv (None: replace below)
    fake_replace: Optional[List[str]] = None   # --fake-cuda: run this instead
    env: Optional[Dict[str, str]] = None        # extra environment (--fake-cuda only)


def steps(python: str) -> List[Step]:
    ts = [python, "benchmarks/train_step.py"]
    return [
        # The gpu-marked tests: compiled Triton kernels, sync-free step, fused convs on CUDA.
        # A module that fails to import must not cost the other GPU tests their run.
        Step("pytest-gpu", 120, [python, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rs",
                                 "--continue-on-collection-errors"],
             None, [python, "-m", "pytest", "-m", "gpu", "tests", "-q", "--collect-only",
                    "--continue-on-collection-errors"]),
        # Fused vs unfused, our eager fp32 baseline vs the default configuration (bf16,
        # Triton, channels_last): the 1024 target (>= 2.5x) and % of the bf16 matmul rate.
        Step("train_step", 150, ts + [
            "--res", "64,256,1024", "--impls", "auto", "--precisions", "bf16",
            "--layouts", "channels_last", "--fused-scales", "never,always", "--warmup", "2",
            "--steps", "5", "--no-count", "--out", "{out}"],
            _TINY + ["--res", "8", "--steps", "1", "--matmul-size", "32"]),
        Step("profile-1024", 60, [python, "benchmarks/profile_step.py", "--res", "1024",
                                  "--out", "{out}"], _TINY + ["--res", "8"]),
        # Penalties in bf16 (loss.penalty_precision) at 1024, for the default's choice.
        Step("penalty-bf16", 50, ts + [
            "--res", "1024", "--impls", "auto", "--precisions", "bf16",
            "--layouts", "channels_last", "--fused-scales", "always",
            "--set", "loss.penalty_precision=bf16", "--warmup", "2", "--steps", "5",
            "--no-count", "--out", "{out}"],
            _TINY + ["--res", "8", "--steps", "1", "--matmul-size", "32"]),
        # Elementwise Triton ops vs copy bandwidth (the training step is measured above).
        Step("ops", 60, [python, "benchmarks/ops.py", "--no-step", "--no-compile",
                         "--out", "{out}"],
             ["--smoke", "--ops", "bias_act", "--dtypes", "fp32"],
             env={"TRITON_INTERPRET": "1"}),
        # train.compile (inductor) vs eager at 16 px, where launches rather than convolutions
        # bound the step: does compiling pay? The compile time is the warm-up's column. Last,
        # with the 40 s the other steps leave: a compile that takes longer times out alone.
        Step("compile", 40, ts + [
            "--res", "16", "--impls", "auto", "--precisions", "bf16",
            "--layouts", "channels_last", "--fused-scales", "auto",
            "--compiles", "off,inductor", "--warmup", "2", "--steps", "4", "--no-count",
            "--out", "{out}"],
            _TINY + ["--res", "8", "--steps", "1", "--matmul-size", "32",
                     "--compiles", "off,aot_eager"]),
    ]


# ---------------------------------------------------------------------------------------------


def cuda_available(python: str) -> bool:
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([python, "-c", code]).returncode == 0


def missing_modules(names=NEEDED) -> List[str]:
    return [m for m in names if importlib.util.find_spec(m) is None]


def install_wheels(python: str, wheels: Path, missing: List[str], log) -> bool:
    """pip install --no-index from `wheels` the projects of the missing modules."""
    if not missing:
        log("wheels: kornia, kornia_rs, webdataset, braceexpand already importable")
        return True
    if not wheels.is_dir():
        log(f"wheels: missing {', '.join(missing)} and no wheel folder {wheels} (see "
            f"benchmarks/gpu_suite.py for the pip download line)")
        return False
    cmd = [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
           "--no-deps"] + [NEEDED[m] for m in missing]
    log("wheels: " + " ".join(shlex.quote(c) for c in cmd))
    return subprocess.run(cmd, timeout=120).returncode == 0


@dataclasses.dataclass
class Outcome:
    name: str
    status: str                         # ok | failed (rc N) | timed out | skipped (reason)
    wall_s: float
    budget_s: float
    log: str


def run_step(step: Step, out: Path, budget_s: float, fake: bool) -> Outcome:
    folder = out / step.name
    folder.mkdir(parents=True, exist_ok=True)
    argv = step.argv
    if fake:
        argv = step.fake_replace if step.fake_replace is not None else \
            argv + (step.fake_argv or [])
    argv = [a.replace("{out}", str(folder)) for a in argv]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)   # compiled kernels, never the interpreter, on the GPU
    if fake and step.env:
        env.update(step.env)
    log_path = out / f"{step.name}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(a) for a in argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, budget_s))
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)     # the step and its children
            proc.wait()
            status = f"timed out after {budget_s:.0f} s"
    return Outcome(step.name, status, time.monotonic() - t0, budget_s, str(log_path))


def write_summary(out: Path, header: List[str], outcomes: List[Outcome]) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import markdown_table, write_atomic
    table = markdown_table(["step", "status", "wall s", "budget s", "tables", "log"], (
        [o.name, o.status, f"{o.wall_s:.0f}", f"{o.budget_s:.0f}", f"{o.name}/",
         Path(o.log).name] for o in outcomes), left={"step", "status", "tables", "log"})
    write_atomic(out / "summary.md", "\n".join(
        ["# GPU suite", ""] + [f"- {h}" for h in header] + ["", table, ""]))


def machine_lines(python: str, fake: bool) -> List[str]:
    lines = [f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"host: {os.uname().nodename}"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lines.append(f"commit: {commit or 'unknown'}")
    code = ("import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, "
            "'|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    lines.append(r.stdout.strip() or r.stderr.strip()[-200:])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,"
                              "driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            lines.append("nvidia-smi: " + smi.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    if fake:
        lines.append("FAKE CUDA (--fake-cuda): CPU stand-ins, no figure here is a GPU figure")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", help="folder for the tables, logs and summary.md")
    p.add_argument("--wheels", default=os.environ.get("PGGAN_WHEELS", "wheels"),
                   help="folder of wheels for the missing packages (default: $PGGAN_WHEELS "
                        "or ./wheels)")
    p.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S,
                   help="total wall-clock budget of the steps (default %(default)s)")
    p.add_argument("--only", default=None, metavar="LIST", help="comma list of step names")
    p.add_argument("--fake-cuda", action="store_true",
                   help="testing on CPU: skip the CUDA check, run CPU stand-ins of each step")
    args = p.parse_args(argv)
    python = sys.executable
    out = Path(args.results_dir).resolve()

    def log(msg: str) -> None:
        print(f"{PROG}: {msg}", flush=True)

    if not args.fake_cuda and not cuda_available(python):
        log("no CUDA device visible to torch; run it on a GPU machine")
        return 2
    all_steps = steps(python)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [w for w in wanted if w not in {s.name for s in all_steps}]
        if bad:
            log(f"--only: unknown step(s) {', '.join(bad)} (steps: "
                f"{', '.join(s.name for s in all_steps)})")
            return 2
        all_steps = [s for s in all_steps if s.name in wanted]
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    header = machine_lines(python, args.fake_cuda)
    (out / "machine.txt").write_text("\n".join(header) + "\n")
    for line in header:
        log(line)
    wheels_ok = install_wheels(python, Path(args.wheels).resolve(), missing_modules(), log)
    outcomes: List[Outcome] = []
    if not wheels_ok:
        log("continuing: steps that import the missing packages will fail")
    for step in all_steps:
        left = args.budget_s - (time.monotonic() - t_start)
        if left < 5:
            outcomes.append(Outcome(step.name, "skipped (total budget spent)", 0.0, 0.0, "-"))
        else:
            log(f"== {step.name} (budget {min(step.budget_s, left):.0f} s)")
            outcomes.append(run_step(step, out, min(step.budget_s, left), args.fake_cuda))
            log(f"== {step.name}: {outcomes[-1].status} in {outcomes[-1].wall_s:.0f} s")
        write_summary(out, header, outcomes)
    total = time.monotonic() - t_start
    failed = [o.name for o in outcomes if o.status != "ok"]
    log(f"{'failed: ' + ', '.join(failed) if failed else 'all steps passed'}; "
        f"{total:.0f} s; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
