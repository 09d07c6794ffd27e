"""benchmarks/quality.py as a command, on a tiny configuration (seconds): two variants x two
seeds trained, their snapshots scored, the table written between its markers (replacing an
earlier table of the same suite, leaving the rest of the results file alone), the plot and
the grids written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = """\
model: {max_res: 8, fmap_base: 32, fmap_max: 8, latent_dim: 8}
schedule: {fade_kimg: 0.032, stab_kimg: 0.032, batch_by_res: {4: 8, 8: 8}, batch_default: 8,
           batch_per_gpu_by_res: {}, lr_by_res: {}}
loss: {kind: r3gan, r1_gamma: 1.0}
ema: {ema_kimg: 0.05}
data: {num_workers: 0}
train: {tick_kimg: 0.05, grid_size: 4}
"""


def test_quality_smoke_writes_table_plot_and_grids(tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept above\n\n<!-- quality:smoke begin -->\nOLD TABLE\n"
                       "<!-- quality:smoke end -->\n\nkept below\n")
    docs = tmp_path / "docs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--suite", "smoke",
           "--preset", str(preset), "--kimg", "0.128", "--snapshot-kimg", "0.064",
           "--variant", "r3gan=", "--variant", "hinge=loss.kind=hinge",
           "--seeds", "0", "1", "--eval-images", "64", "--eval-points", "2",
           "--work-dir", str(tmp_path / "work"), "--docs", str(docs),
           "--results", str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = results.read_text()
    assert "OLD TABLE" not in text and "kept above" in text and "kept below" in text
    assert text.count("<!-- quality:smoke begin -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| r3gan") or
            line.startswith("| hinge")]
    assert len(rows) == 2
    records = json.loads((tmp_path / "work" / "smoke" / "quality-smoke.json").read_text())
    assert {(r["variant"], r["seed"]) for r in records} == {
        (v, s) for v in ("r3gan", "hinge") for s in (0, 1)}
    for r in records:
        assert r["swd"] > 0 and r["minutes"] > 0 and r["kimg"] > 0
    # Two snapshots per run (0.064 and 0.128 kimg), both scored; seeds differ.
    finals = {(r["variant"], r["seed"]): r["swd"] for r in records if r["kimg"] >= 0.128}
    assert len(finals) == 4 and finals[("r3gan", 0)] != finals[("r3gan", 1)]
    assert (docs / "quality-smoke.png").stat().st_size > 1000
    for v in ("r3gan", "hinge"):
        assert (docs / f"quality-smoke-{v}.png").is_file()
    # Run again: nothing is retrained (finished runs are kept), the same numbers come back.
    proc2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0 and "+ " not in proc2.stdout
    again = json.loads((tmp_path / "work" / "smoke" / "quality-smoke.json").read_text())
    assert [r["swd"] for r in again] == [r["swd"] for r in records]


def test_within_budget_keeps_the_snapshots_written_in_time():
    sys.path.insert(0, str(ROOT))
    from benchmarks.quality import within_budget
    snaps = [Path(f"network-snapshot-{k:06d}.pt") for k in (5, 10, 15)]
    minutes = {"network-snapshot-000005.pt": 8.0, "network-snapshot-000010.pt": 24.9,
               "network-snapshot-000015.pt": 25.2}
    assert within_budget(snaps, minutes, 25.0) == snaps[:2]
    assert within_budget(snaps, minutes, None) == snaps
    assert within_budget(snaps, minutes, 1.0) == []


@pytest.mark.slow
def test_quality_minutes_budget_stops_the_run_and_scores_a_snapshot_in_time(tmp_path):
    """--minutes: the run is stopped by SIGUSR1 once its wall clock is spent (far before its
    kimg), and only snapshots written within the budget are scored."""
    preset = tmp_path / "tiny.yaml"       # 4x4 for 100 kimg: fast steps; snapshots at whole kimg
    preset.write_text(TINY.replace("stab_kimg: 0.032", "stab_kimg: 100"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    budget = 0.75                                           # minutes (45 s, ~3 s of start-up)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--suite", "budget",
           "--preset", str(preset), "--kimg", "1000", "--snapshot-kimg", "1",
           "--minutes", str(budget), "--variant", "r3gan=", "--seeds", "0",
           "--eval-images", "64", "--eval-points", "1", "--work-dir", str(tmp_path / "work"),
           "--docs", str(tmp_path / "docs"), "--results", str(tmp_path / "RESULTS.md")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "work" / "budget" / "r3gan-s0"
    timing = json.loads((run / "quality-timing.json").read_text())
    assert timing["stopped_at_budget"] and timing["budget_minutes"] == budget
    assert budget * 60 <= timing["seconds"] < budget * 60 + 60     # stopped, not run to the end
    assert "stopped by signal SIGUSR1" in (run / "quality-train.log").read_text()
    (rec,) = json.loads((tmp_path / "work" / "budget" / "quality-budget.json").read_text())
    assert 0 < rec["minutes"] <= budget and 0 < rec["kimg"] < 1000
    # The scored snapshot is the newest one written in time.
    start = timing["start"]
    in_time = [q for q in run.glob("network-snapshot-*.pt")
               if (q.stat().st_mtime - start) / 60 <= budget]
    assert rec["snapshot"] == max(in_time, key=lambda q: q.name).name
    assert "Budget: 0.75 minutes" in (tmp_path / "RESULTS.md").read_text()
