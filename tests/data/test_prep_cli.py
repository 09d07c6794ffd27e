"""`python -m data_prep` end to end: the bad-input folder and its summary, clear errors, no
overwrite, determinism, resume after a kill, labels, archives, formats and shard sizes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import main
from pggan.data import load_dataset_info

from .sample_files import (BAD_CONVERTS, BAD_SKIPS, read_shard_set, run_prep, smooth_image,
                       write_bad_folder)

REPO = Path(__file__).resolve().parents[2]


def prep(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"data_prep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture()
def cli(capsys):
    """data_prep's main() in this process (the subprocess start costs seconds per run)."""
    def run(*args, check=True) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"data_prep failed ({code}): {err[-2000:]}")
        return Result(code, out, err)
    return run


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data_prep: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- bad input


def test_bad_input_folder_is_converted_or_skipped_and_summarised(tmp_path):
    src = write_bad_folder(tmp_path / "src")
    (src / ".DS_Store").write_bytes(b"\x00\x01junk")                # hidden: ignored
    out = tmp_path / "out"
    proc = prep("--source", src, "--out", out, "--max-res", 32, "--max-pixels", 1_000_000,
                "--workers", 2, "--shard-images", 4)
    n_ok, n_bad = len(BAD_CONVERTS), len(BAD_SKIPS)
    by_cat = {}
    for cat in BAD_SKIPS.values():
        by_cat[cat] = by_cat.get(cat, 0) + 1
    cats = ", ".join(f"{k} {v}" for k, v in sorted(by_cat.items()))
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"data_prep: wrote {n_ok} images at 4 resolutions (4..32 px) to {out}"
    assert lines[1] == f"data_prep: skipped {n_bad} of {n_ok + n_bad} entries ({cats})"
    assert lines[2] == ("data_prep: converted: 16-bit 2, animated 1, cmyk 1, exif-rotated 1, "
                        "grayscale 2, palette 1, transparency 2")
    # One stderr line per skipped file, naming it and the reason.
    skipped_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("skipped ")]
    assert sorted(ln.split(":")[0][len("skipped "):] for ln in skipped_lines) == sorted(BAD_SKIPS)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["num_images"] == n_ok and meta["source"]["entries"] == n_ok + n_bad
    assert meta["skipped"]["by_category"] == dict(sorted(by_cat.items()))
    assert {f["name"]: f["category"] for f in meta["skipped"]["files"]} == BAD_SKIPS
    assert all("\n" not in f["reason"] and f["reason"] for f in meta["skipped"]["files"])
    assert meta["converted"]["by_note"] == {"16-bit": 2, "animated": 1, "cmyk": 1,
                                            "exif-rotated": 1, "grayscale": 2, "palette": 1,
                                            "transparency": 2}
    # The kept images, in sorted order, and a few pixels that prove the conversions.
    kept = sorted(BAD_CONVERTS)
    top = read_shard_set(out, 32)
    assert sorted(top) == list(range(n_ok))
    px = {name: top[i][0].astype(int) for i, name in enumerate(kept)}
    assert (np.abs(px["ok/cmyk.jpg"] - (255, 0, 0)) <= 3).all()
    assert (px["ok/gray16.png"] == 128).all()
    assert (px["ok/rgb16.png"] == (255, 128, 1)).all()
    assert (px["ok/gray.png"] == 77).all()
    assert (px["ok/rgba.png"] == 255).all()                     # transparent -> white
    assert (px["ok/palette_alpha.png"][:, :14] == 255).all()
    assert (px["ok/palette_alpha.png"][:, 18:] == (200, 10, 10)).all()
    assert (px["ok/animated.gif"] == (255, 0, 0)).all()         # the first frame
    assert (np.abs(px["ok/exif_rotated.jpg"][:, -2:] - (0, 255, 0)) <= 40).all()


def test_clear_errors_for_unusable_input_and_options(tmp_path, cli):
    def err(source, *extra):
        return error_line(cli("--source", source, "--out", tmp_path / "o", "--workers", 1,
                              *extra, check=False))

    (tmp_path / "empty").mkdir()
    assert "no images found (it is empty)" in err(tmp_path / "empty", "--max-res", 8)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    assert "no images found (1 files, none usable)" in err(tmp_path / "texts", "--max-res", 8)
    assert "no such file or folder" in err(tmp_path / "missing", "--max-res", 8)
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a folder, zip or tar archive" in err(tmp_path / "junk.zip", "--max-res", 8)
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "a.png").write_bytes(b"")
    (tmp_path / "allbad" / "b.jpg").write_bytes(b"garbage" * 30)
    line = err(tmp_path / "allbad", "--max-res", 8, "--quiet")
    assert "no usable images; all 2 entries were skipped (empty 1, corrupt 1)" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
    assert "--max-res is required" in err(tmp_path / "allbad")
    assert "power of two" in err("synthetic", "--max-res", 48)
    assert "--format-at 12=jpeg" in err("synthetic", "--max-res", 16, "--format-at", "12=jpeg")
    assert "quality must be in 1..100" in err("synthetic", "--max-res", 16, "--format", "webp:0")
    assert "apt-get install dataset-fashion-mnist" in err("fashion-mnist", "--source-dir",
                                                         tmp_path / "nope")
    assert "apt-get install fonts-noto-color-emoji" in err("emoji", "--source-dir",
                                                          tmp_path / "nope")


def test_existing_output_is_never_overwritten_without_overwrite(tmp_path, cli):
    out = tmp_path / "ds"
    synth = ("--source", "synthetic", "--max-res", 8, "--workers", 1, "--quiet")
    cli(*synth, "--num-images", 6, "--out", out)
    before = (out / "dataset.json").read_text()
    line = error_line(cli(*synth, "--num-images", 7, "--out", out, check=False))
    assert "already holds a prepared dataset; pass --overwrite" in line
    assert (out / "dataset.json").read_text() == before
    cli(*synth, "--num-images", 7, "--out", out, "--overwrite")
    assert load_dataset_info(str(out)).num_images == 7
    assert not (tmp_path / "ds.replaced").exists() and not (tmp_path / "ds.partial").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    line = error_line(cli(*synth, "--num-images", 3, "--out", foreign, "--overwrite",
                          check=False))
    assert "not empty and holds no data_prep dataset" in line
    assert (foreign / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------------------- determinism, resume


def test_output_is_deterministic(tmp_path):
    common = dict(source="synthetic", num_images=40, max_res=16, shard_images=16)
    a_dir = run_prep(tmp_path, "a", workers=2, **common)
    b_dir = run_prep(tmp_path, "b", workers=1, **common)
    a = json.loads((a_dir / "dataset.json").read_text())
    b = json.loads((b_dir / "dataset.json").read_text())
    assert a == b                                   # includes every shard's sha256
    for res in ("4", "16"):
        for s in a["resolutions"][res]["shards"]:
            assert (a_dir / s["path"]).read_bytes() == (b_dir / s["path"]).read_bytes()


def test_interrupted_run_resumes_to_identical_output(tmp_path, cli):
    args = ["--source", "synthetic", "--num-images", 400, "--max-res", 32,
            "--shard-images", 20, "--workers", 1]
    cli(*args, "--quiet", "--out", tmp_path / "clean")
    out = tmp_path / "resumed"
    journal = tmp_path / "resumed.partial" / "progress.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args), "--quiet",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count('"event": "shard"') >= 6:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not out.exists() and journal.is_file()
    # A torn journal line and a stray temp shard, as a kill at a bad moment would leave.
    with open(journal, "a") as f:
        f.write('{"event": "shard", "res": 8, "pa')
    (tmp_path / "resumed.partial" / "res-0004" / "shard-000999.tar.tmp").write_bytes(b"x")
    res = cli(*args, "--out", out)
    assert "resuming" in res.stderr
    start = int(res.stderr.split("at entry ")[1].split()[0])
    assert 0 < start < 400
    clean = json.loads((tmp_path / "clean" / "dataset.json").read_text())
    resumed = json.loads((out / "dataset.json").read_text())
    assert resumed == clean
    assert sorted(p.name for p in (out / "res-0004").iterdir()) == \
        [f"shard-{k:06d}.tar" for k in range(20)]


def test_a_changed_command_does_not_resume_someone_elses_partial_run(tmp_path, cli):
    out = tmp_path / "ds"
    partial = tmp_path / "ds.partial"
    partial.mkdir()
    (partial / "progress.jsonl").write_text('{"event": "start", "fingerprint": "x"}\n')
    line = error_line(cli("--source", "synthetic", "--num-images", 5, "--max-res", 8,
                          "--out", out, "--workers", 1, check=False))
    assert "interrupted run with other options" in line
    cli("--source", "synthetic", "--num-images", 5, "--max-res", 8, "--out", out,
        "--overwrite", "--quiet", "--workers", 1)
    assert load_dataset_info(str(out)).num_images == 5


# ---------------------------------------------------------------------------- labels, archives


def make_class_folder(root: Path) -> Path:
    for c, cls in enumerate(("b_bird", "a_ant")):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            smooth_image(24, 20, 10 * c + k).save(root / cls / f"{k}.png")
    return root


def test_labels_from_folders_csv_and_json_and_archives(tmp_path):
    src = make_class_folder(tmp_path / "src")
    smooth_image(24, 24, 99).save(src / "loose.png")            # no class folder
    common = dict(max_res=16, small="upscale")
    by_folder = run_prep(tmp_path, "f", source=str(src), labels="folders", **common)
    info = load_dataset_info(str(by_folder))
    assert info.label_names == ("a_ant", "b_bird") and info.num_images == 6
    meta = json.loads((by_folder / "dataset.json").read_text())
    assert meta["labels"]["counts"] == [3, 3]
    assert meta["skipped"]["files"] == [{"name": "loose.png", "category": "no-label",
                                         "reason": "not inside a class sub-folder "
                                                   "(--labels folders)"}]
    folder_px = read_shard_set(by_folder, 16)
    assert [folder_px[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]

    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("file,label\n" + "".join(
        f"{c}/{k}.png,{7 if c == 'a_ant' else 3}\n" for c in ("a_ant", "b_bird")
        for k in range(3)) + "loose.png,11\n")
    by_csv = run_prep(tmp_path, "c", source=str(src), labels=str(csv_file), **common)
    info = load_dataset_info(str(by_csv))
    assert info.label_names == ("3", "7", "11") and info.num_images == 7
    assert [read_shard_set(by_csv, 16)[i][1] for i in range(7)] == [1, 1, 1, 0, 0, 0, 2]

    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"0.png": "x", "a_ant/1.png": "y"}))
    by_json = run_prep(tmp_path, "j", source=str(src), labels=str(json_file), **common)
    meta = json.loads((by_json / "dataset.json").read_text())
    # "0.png" is not a unique base name (two class folders hold one) and matches nothing.
    assert meta["num_images"] == 1 and meta["labels"]["names"] == ["y"]
    assert meta["skipped"]["by_category"] == {"no-label": 6}

    (src / "loose.png").unlink()
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(src.rglob("*.png"), reverse=True):      # stored out of order
            zf.write(p, p.relative_to(src).as_posix())
    tpath = tmp_path / "src.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for p in sorted(src.rglob("*.png")):
            tf.add(p, p.relative_to(src).as_posix())
    by_folder = run_prep(tmp_path, "f2", source=str(src), labels="folders", **common)
    by_zip = run_prep(tmp_path, "z", source=str(zpath), labels="folders", **common)
    by_tar = run_prep(tmp_path, "t", source=str(tpath), labels="folders", workers=2, **common)
    for res in (4, 16):
        ref = read_shard_set(by_folder, res)
        for other in (by_zip, by_tar):
            got = read_shard_set(other, res)
            assert sorted(got) == sorted(ref)
            for i in ref:
                np.testing.assert_array_equal(got[i][0], ref[i][0])
                assert got[i][1] == ref[i][1]


# ---------------------------------------------------------------------------- formats, shard size


def test_format_per_resolution_and_shard_size_target(tmp_path):
    out = run_prep(tmp_path, "ds", source="synthetic", num_images=60, max_res=32,
                   format="png", format_at=["16=jpeg:90", "32=webp:80"], shard_mb=0.03)
    info = load_dataset_info(str(out))
    assert info.image_formats == {4: "png", 8: "png", 16: "jpeg", 32: "webp"}
    meta = json.loads((out / "dataset.json").read_text())

    def member_bytes(size):                         # tar header + data padded to 512
        return 512 + -(-size // 512) * 512

    for res in ("4", "32"):
        shards = meta["resolutions"][res]["shards"]
        assert len(shards) >= 2
        used = []
        for s in shards:
            with tarfile.open(out / s["path"]) as tf:
                used.append([member_bytes(m.size) for m in tf.getmembers()])
        for k, members in enumerate(used):
            # Each shard's content + end-of-archive blocks stays within 30 kB ...
            assert sum(members) + 1024 <= 30_000
            # ... and is full: the first image of the next shard would not have fitted.
            if k + 1 < len(used):
                assert sum(members) + used[k + 1][0] + 1024 > 30_000
    names = {n for p in (out / "res-0032").iterdir() for n in tarfile.open(p).getnames()}
    assert all(n.endswith(".webp") for n in names)
    names = {n for p in (out / "res-0016").iterdir() for n in tarfile.open(p).getnames()}
    assert all(n.endswith(".jpg") for n in names)
    from pggan.config import DataConfig
    from pggan.data import make_epoch_stream
    for res in (16, 32):
        n = sum(x.shape[0] for x, _ in make_epoch_stream(DataConfig(path=str(out),
                                                                    num_workers=0),
                                                         res, batch_size=16, rank=0,
                                                         world_size=1))
        assert n == 60
