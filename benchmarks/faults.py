"""Fault-injection trials, repeated with random offsets, and their figures in RESULTS.md.

    python benchmarks/faults.py --results benchmarks/RESULTS.md

Trials (each a real run of pggan/train.py or data_prep, as a user would start it):
  kill     SIGKILL of the whole run at a random moment while a training state is being written
           (a network large enough that a write takes >= 1 s); then `--resume auto` must
           continue and checkpoints/index.json must be valid
  lock     2 trainers started at once on one run dir: exactly one may train
  nan      NaN injected into D's output at a random step (tests/faults/fault_worker.py), 1 and
           2 processes (torchrun, gloo): exit 4 at that step, no state after it, all finite
  disk     a tmpfs of a few hundred kB as the run dir (root only): exit 5, no temp files,
           every indexed state loads
  config   >= 300 bad --set values, flags and YAML presets: exit 2, no traceback
  archive  >= 50 hostile zip/tar inputs through data_prep: no traceback, no file outside --out
  verify   `data_prep --verify` throughput (sha256 of every shard)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "training"), str(REPO / "tests" / "faults")]

import torch  # noqa: E402

from benchmarks.report import cpu_model  # noqa: E402
from pggan.files import load_torch  # noqa: E402
from trainkit import (cli_env, index_entries, kill_run, run_train, start_train,  # noqa: E402
                      train_cmd, write_tiny_config)

FAULT_WORKER = REPO / "tests" / "faults" / "fault_worker.py"
SECTION = "## Faults"

# A 16 px PGGAN with the paper's feature maps (512 channels at 4-16 px): a training state of
# G, D, G_ema and both Adam states is 297 MB, about 1-2 s to write and fsync here.
BIG_YAML = """\
model: {max_res: 16, fmap_base: 8192, fmap_max: 512, latent_dim: 512, mbstd_group: 4}
schedule:
  fade_kimg: 10
  stab_kimg: 10
  batch_by_res: {4: 4, 8: 4, 16: 4}
  batch_default: 4
  batch_per_gpu_by_res: {}
  lr_by_res: {}
data: {num_workers: 0}
train: {total_kimg: 10, snapshot_kimg: 0.008, tick_kimg: 0.008, grid_size: 4, keep_last: 2}
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def index_valid(run_dir: Path) -> bool:
    path = run_dir / "checkpoints" / "index.json"
    try:
        meta = json.loads(path.read_text())
        return meta["format"] == "pggan-checkpoint-index" and all(
            (run_dir / "checkpoints" / e["file"]).is_file() for e in meta["checkpoints"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def temp_states(run_dir: Path) -> list:
    return list((run_dir / "checkpoints").glob(".training-state-*.tmp-*"))


# ---- SIGKILL during a checkpoint write ---------------------------------------------------


def kill_trials(work: Path, n: int, rng: random.Random) -> dict:
    config = work / "big.yaml"
    config.write_text(BIG_YAML)
    results, write_secs, phases = [], [], []
    for t in range(n):
        run_dir = work / f"kill{t}"
        args = ["--config", config, "--run-dir", run_dir, "--resume", "auto"]
        proc = start_train(args, log_path=work / f"kill{t}.log")
        try:
            # Time the first write (temp file present -> renamed away), then kill the run at a
            # random offset into a later one.
            deadline = time.time() + 600
            while not temp_states(run_dir) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.005)
            t0 = time.time()
            while temp_states(run_dir) and proc.poll() is None:
                time.sleep(0.005)
            write_sec = time.time() - t0
            write_secs.append(write_sec)
            while not temp_states(run_dir) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.005)
            offset = rng.uniform(0, write_sec)
            time.sleep(offset)
            during = bool(temp_states(run_dir))
            phases.append(during)
            kill_run(proc)
            proc.wait()
        finally:
            if proc.poll() is None:
                kill_run(proc)
        valid = index_valid(run_dir)
        # What --resume auto will take: the index, plus a state renamed into place but not yet
        # indexed when the kill came (it is read from its contents).
        from pggan.training.checkpoint import CheckpointIndex
        found = CheckpointIndex.load(run_dir / "checkpoints").latest()
        latest = found.cur_nimg if found else 0
        resumed = run_train(args + ["--total-kimg", f"{(latest + 8) / 1000:g}"], timeout=600)
        ok = resumed.returncode == 0 and "resuming from" in resumed.stdout and valid
        results.append(ok)
        log(f"kill {t}: write {write_sec:.2f} s, killed at +{offset:.2f} s "
            f"({'during' if during else 'after'} the write), index valid {valid}, resumed "
            f"exit {resumed.returncode} -> {'ok' if ok else 'FAIL'}")
        if not ok:
            log(resumed.stderr[-1500:])
    return {"trials": n, "ok": sum(results), "during": sum(phases),
            "write_s": statistics.median(write_secs) if write_secs else float("nan"),
            "write_min_s": min(write_secs) if write_secs else float("nan")}


# ---- lock ------------------------------------------------------------------------------


def lock_trials(work: Path, n: int) -> dict:
    config = write_tiny_config(work)
    exactly_one = 0
    for t in range(n):
        run_dir = work / f"lock{t}"
        args = ["--config", config, "--run-dir", run_dir, "--resume", "auto",
                "--total-kimg", "1"]
        env = cli_env()
        procs = [subprocess.Popen(train_cmd(args), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        trained = sum("pggan-train: starting" in o or "pggan-train: resuming" in o
                      for o, _ in outs)
        refused = sum(p.returncode == 2 and "in use by another trainer" in e
                      for p, (_, e) in zip(procs, outs))
        good = trained == 1 and refused == 1 and "Traceback" not in "".join(e for _, e in outs)
        exactly_one += good
        log(f"lock {t}: exits {[p.returncode for p in procs]}, trained {trained}, refused "
            f"{refused} -> {'ok' if good else 'FAIL'}")
    return {"trials": n, "ok": exactly_one}


# ---- NaN -------------------------------------------------------------------------------


def nan_trials(work: Path, n: int, nproc: int, rng: random.Random) -> dict:
    config = write_tiny_config(work)
    ok = 0
    for t in range(n):
        nimg = 8 * rng.randrange(14, 50)            # after the first interval state (104)
        rank = rng.randrange(nproc)
        run_dir = work / f"nan{nproc}-{t}"
        env = cli_env()
        env.update(FAULT_NAN_NIMG=str(nimg), FAULT_NAN_RANK=str(rank))
        proc = subprocess.run(train_cmd(["--config", config, "--run-dir", run_dir], nproc,
                                        FAULT_WORKER), env=env, capture_output=True, text=True,
                              timeout=600)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pggan-train: error:")]
        code4 = proc.returncode == 4 if nproc == 1 else "(exitcode: 4)" in proc.stderr
        states = index_entries(run_dir)
        finite = True
        for e in states:
            data = load_torch(run_dir / "checkpoints" / e["file"], "training state")
            finite &= all(bool(torch.isfinite(v).all()) for k in ("G", "D", "G_ema")
                          for v in data[k].values() if v.is_floating_point())
        # A state at exactly nimg is the one saved before that step (checkpoint, then step).
        # torchrun prints its own ChildFailedError traceback when a rank exits non-zero; a
        # traceback of ours would show a frame in pggan/.
        ours = f'File "{REPO / "pggan"}' in proc.stderr or f'File "{FAULT_WORKER}' in proc.stderr
        good = (code4 and len(lines) == 1 and f"kimg {nimg / 1000:g}" in lines[0] and finite
                and all(e["cur_nimg"] <= nimg for e in states) and not ours)
        ok += good
        log(f"nan {nproc}p {t}: NaN at cur_nimg {nimg} on rank {rank}: exit "
            f"{proc.returncode}, newest state {max((e['cur_nimg'] for e in states), default=0)}"
            f" -> {'ok' if good else 'FAIL'}  {lines[0][:160] if lines else proc.stderr[-800:]}")
    return {"trials": n, "ok": ok}


# ---- disk full -------------------------------------------------------------------------


def disk_trials(work: Path, sizes) -> dict:
    from pggan.training.checkpoint import CheckpointIndex, read_training_state
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a tmpfs"}
    config = write_tiny_config(work)
    out = []
    for t, size in enumerate(sizes):
        mnt = work / f"tmpfs{t}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            return {"skipped": f"cannot mount a tmpfs: {r.stderr.strip()}"}
        try:
            run_dir = mnt / "run"
            proc = run_train(["--config", config, "--run-dir", run_dir, "--set",
                              "train.keep_last=50", "--total-kimg", "4"], timeout=600)
            temps = [p for p in run_dir.rglob(".*tmp*")]
            index = CheckpointIndex.load(run_dir / "checkpoints")
            loads = 0
            for e in index.entries:
                read_training_state(run_dir / "checkpoints" / e.file)
                loads += 1
            line = [ln for ln in proc.stderr.splitlines() if ln.startswith("pggan-train:")]
            good = (proc.returncode == 5 and not temps and not index.unreadable and loads > 0
                    and "Traceback" not in proc.stderr and index_valid(run_dir))
            out.append(good)
            log(f"disk {size}: exit {proc.returncode}, temp files {len(temps)}, states load "
                f"{loads}/{len(index.entries)}, unreadable {len(index.unreadable)} -> "
                f"{'ok' if good else 'FAIL'}  {line[0][:200] if line else ''}")
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    return {"trials": len(sizes), "ok": sum(out)}


# ---- config and archive fuzz -----------------------------------------------------------


def _call(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        except BaseException as e:          # noqa: BLE001 (counted as a traceback)
            code, err = "raised", io.StringIO(f"Traceback: {e!r}")
    return code, out.getvalue(), err.getvalue()


def config_fuzz(work: Path, rng: random.Random, n_random: int) -> dict:
    from fuzzkit import BAD_FLAGS, BAD_YAML, bad_set_args, random_bad_set_args
    from pggan.train import main
    config = write_tiny_config(work)
    cases = bad_set_args() + BAD_FLAGS + random_bad_set_args(rng, n_random)
    for i, text in enumerate(BAD_YAML):
        p = work / f"bad{i}.yaml"
        p.write_text(text)
        cases.append(["--config", p])
    exit2 = tracebacks = 0
    for args in cases:
        argv = (["--config", config] if "--config" not in args else []) + list(args) + \
            ["--run-dir", work / "fuzz-run", "--dry-run"]
        code, _, err = _call(main, argv)
        exit2 += code == 2
        tracebacks += "Traceback" in err
        if code != 2:
            log(f"config fuzz: {args} -> exit {code}: {err[-300:]}")
    return {"cases": len(cases), "exit2": exit2, "tracebacks": tracebacks,
            "run_dir_written": (work / "fuzz-run").exists()}


def archive_fuzz(work: Path, rng: random.Random, n: int) -> dict:
    import data_prep.sources as sources
    from data_prep.cli import main
    from fuzzkit import hostile_archive
    cap = 64 << 10
    sources.MAX_MEMBER_BYTES = cap          # so a "bomb" here is 64 KiB + 1 of zeros
    outs = work / "outs"
    outs.mkdir()
    tracebacks = outside = 0
    codes = {}
    for i in range(n):
        archive = work / f"hostile{i}.bin"
        kind = hostile_archive(archive, rng, f"b{os.getpid()}-{i}", cap)
        before = set(os.listdir(work)) | {f"out{i}"}
        tmp_before = set(os.listdir("/tmp"))
        code, out, err = _call(main, ["--source", archive, "--out", outs / f"out{i}",
                                      "--max-res", "8", "--small", "upscale", "--workers", "1",
                                      "--quiet"])
        codes[code] = codes.get(code, 0) + 1
        tracebacks += "Traceback" in err + out
        new = (set(os.listdir(work)) - before) | {p for p in set(os.listdir("/tmp")) - tmp_before
                                                  if p.startswith("pggan-fuzz")}
        extra = [p for p in os.listdir(outs) if not p.startswith("out")]
        outside += bool(new or extra)
        if new or extra or "Traceback" in err:
            log(f"archive {i} ({kind}): exit {code}, new files {sorted(new) + extra} {err[-300:]}")
    return {"cases": n, "tracebacks": tracebacks, "outside": outside, "codes": codes}


def verify_rate(work: Path) -> dict:
    from data_prep.verify import verify_dataset
    ds = work / "verify-ds"
    subprocess.run([sys.executable, "-m", "data_prep", "--source", "synthetic", "--out", ds,
                    "--max-res", "128", "--num-images", "2000", "--quiet", "--workers", "1"],
                   check=True, cwd=REPO, env=cli_env())
    verify_dataset(str(ds), log=lambda s: None)                 # warm the page cache
    t0 = time.time()
    checked, nbytes, bad = verify_dataset(str(ds), log=lambda s: None)
    sec = time.time() - t0
    return {"shards": checked, "mib": nbytes / 2 ** 20, "sec": sec,
            "mib_per_s": nbytes / 2 ** 20 / sec}


# ---- RESULTS.md --------------------------------------------------------------------------


def write_results(path: Path, text: str) -> None:
    from pggan.files import atomic_write_text
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION + "\n")
    if start >= 0:
        end = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n\n" + old[end + 1:] if end >= 0 else "")
    atomic_write_text(path, old.rstrip("\n") + "\n\n" + text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kill-trials", type=int, default=20)
    p.add_argument("--lock-trials", type=int, default=10)
    p.add_argument("--nan-trials", type=int, default=5, help="per process count (1 and 2)")
    p.add_argument("--disk-sizes", default="400k,600k,1m")
    p.add_argument("--config-random", type=int, default=160)
    p.add_argument("--archive-cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="kill,lock,nan,disk,config,archive,verify")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None)
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="pggan-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    r = {}
    for name, fn in (("config", lambda d: config_fuzz(d, rng, a.config_random)),
                     ("archive", lambda d: archive_fuzz(d, rng, a.archive_cases)),
                     ("lock", lambda d: lock_trials(d, a.lock_trials)),
                     ("nan1", lambda d: nan_trials(d, a.nan_trials, 1, rng)),
                     ("nan2", lambda d: nan_trials(d, a.nan_trials, 2, rng)),
                     ("disk", lambda d: disk_trials(d, a.disk_sizes.split(","))),
                     ("verify", verify_rate),
                     ("kill", lambda d: kill_trials(d, a.kill_trials, rng))):
        if name.rstrip("12") not in only:
            continue
        d = work / name
        d.mkdir(exist_ok=True)
        t0 = time.time()
        r[name] = fn(d)
        log(f"== {name}: {r[name]} ({time.time() - t0:.0f} s)")
    if a.results:
        date = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True,
                              text=True).stdout.strip()
        cmd = "taskset -c 1 python benchmarks/faults.py " + " ".join(sys.argv[1:])
        write_results(a.results, render(r, date, cmd))
        log(f"wrote {a.results}")
    return 0


def render(r: dict, date: str, cmd: str) -> str:
    rows = []
    if "kill" in r:
        k = r["kill"]
        rows.append(f"- SIGKILL during a checkpoint write, random offset into the write "
                    f"(training state of 297 MB; a write took {k['write_s']:.2f} s median, "
                    f"{k['write_min_s']:.2f} s at least; {k['during']} kills landed while the "
                    f"temp file was open, the rest between its rename and the index update or "
                    f"just after): **{k['ok']}/{k['trials']}** resumed with `--resume auto`, "
                    f"index.json valid.")
    if "disk" in r:
        d = r["disk"]
        rows.append("- Disk full, tmpfs run dir: " + (f"skipped ({d['skipped']})" if "skipped"
                    in d else f"**{d['ok']}/{d['trials']}** stopped with exit 5 and one line "
                    f"naming the file, 0 temp files, every indexed state loads."))
    if "lock" in r:
        rows.append(f"- Lock, 2 trainers started at once on one run dir: exactly one trained "
                    f"in **{r['lock']['ok']}/{r['lock']['trials']}** trials (the other exit 2 "
                    f"naming the holder).")
    for n in ("nan1", "nan2"):
        if n in r:
            rows.append(f"- NaN in D's output at a random step, {n[-1]} process(es) (random "
                        f"rank): **{r[n]['ok']}/{r[n]['trials']}** stopped at that step with "
                        f"exit 4 naming term, resolution and kimg; no state after it; all "
                        f"saved states finite.")
    if "config" in r:
        c = r["config"]
        rows.append(f"- Config/CLI fuzz: {c['cases']} bad `--set` values, flags and YAML "
                    f"presets: **{c['exit2']}/{c['cases']} exit 2, {c['tracebacks']} "
                    f"tracebacks**, run dir written: {c['run_dir_written']}.")
    if "archive" in r:
        a = r["archive"]
        rows.append(f"- Archive fuzz: {a['cases']} hostile zip/tar/garbage inputs through "
                    f"data_prep (absolute paths, `..`, symlinks, hard links, devices, FIFOs, "
                    f"bombs over the member cap, truncation): **{a['tracebacks']} tracebacks, "
                    f"{a['outside']} inputs wrote outside --out**; exit codes {a['codes']}.")
    if "verify" in r:
        v = r["verify"]
        rows.append(f"- `data_prep --verify`: {v['shards']} shards, {v['mib']:.1f} MiB in "
                    f"{v['sec']:.2f} s = {v['mib_per_s']:.0f} MiB/s (sha256, warm page cache).")
    return (f"{SECTION}\n\nMeasured {date} on a 2-core x86_64 VM without a GPU ({cpu_model()}), "
            f"one core (the other was busy), with\n`{cmd}`:\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
