"""Hostile input: bad --set values, flags and YAML presets, malformed dataset.json, hostile
zip/tar archives. Every one gives exit 2 (or, for archives, a skip with a reason), never a
traceback, and nothing is written outside --out / --run-dir."""
import json
import os
import random

import pytest

import data_prep.sources as sources
from data_prep.cli import main as prep_main
from fuzzkit import BAD_FLAGS, BAD_YAML, bad_set_args, hostile_archive, random_bad_set_args
from pggan.train import main as train_main
from trainkit import write_tiny_config


def call(main, argv, capsys):
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:             # argparse: usage line + error line, exit 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_rejected(code, err, what):
    assert code == 2, (what, code, err[-500:])
    assert "Traceback" not in err and err.strip(), (what, err[-500:])


def test_the_two_reported_values_are_rejected(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    for arg, fragment in (("data.num_workers=99999999999999999999", "out of range"),
                          ("model.fir_filter=[]", "model.fir_filter must be")):
        code, _, err = call(train_main, ["--config", config, "--set", arg, "--dry-run"], capsys)
        assert_rejected(code, err, arg)
        assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_config_fuzz_all_exit_2_without_traceback(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    cases = bad_set_args() + [f for f in BAD_FLAGS] + random_bad_set_args(random.Random(0), 160)
    for i, text in enumerate(BAD_YAML):
        p = tmp_path / f"bad{i}.yaml"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        cases.append(["--config", p])
    assert len(cases) >= 300
    for args in cases:
        argv = (["--config", config] if "--config" not in args else []) + list(args) + \
            ["--run-dir", tmp_path / "run", "--dry-run"]
        code, _, err = call(train_main, argv, capsys)
        assert_rejected(code, err, args)
    assert not (tmp_path / "run").exists()


BAD_DATASET_JSON = ["", "{", "[]", '{"kind": "other"}', '{"kind": "pggan-shards"}',
                    '{"kind": "pggan-shards", "version": 1, "num_images": "x"}',
                    '{"kind": "pggan-shards", "version": 1, "num_images": 4, "channels": 3, '
                    '"max_res": 16, "resolutions": {"x": {}}}',
                    '{"kind": "pggan-shards", "version": 1, "num_images": 4, "channels": 3, '
                    '"max_res": 16, "resolutions": {"4": {"format": "png", "shards": [{}]}}}',
                    '{"kind": "pggan-shards", "version": 1, "num_images": 4, "channels": 3, '
                    '"max_res": 16, "resolutions": {"4": {"format": "png", "shards": 5}}}',
                    '{"kind": "pggan-shards", "version": 1, "num_images": 4, "channels": 3, '
                    '"max_res": 16, "resolutions": {"4": []}}',
                    '{"kind": "pggan-shards", "version": 99}', "\xff\xfe"]


def test_malformed_dataset_json_is_one_line(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    for i, text in enumerate(BAD_DATASET_JSON):
        data = tmp_path / f"ds{i}"
        data.mkdir()
        (data / "dataset.json").write_bytes(text.encode("latin-1"))
        run_dir = tmp_path / f"run{i}"
        code, _, err = call(train_main, ["--config", config, "--data", data,
                                         "--run-dir", run_dir], capsys)
        assert_rejected(code, err, text)
        assert len(err.strip().splitlines()) == 1 and "dataset.json" in err, err
        assert not run_dir.exists()


def test_archive_fuzz_never_traces_back_or_writes_outside_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 64 << 10)
    rng = random.Random(1)
    work = tmp_path / "work"
    work.mkdir()
    kinds = []
    for i in range(50):
        tag = f"t{os.getpid()}-{i}"
        archive = tmp_path / f"in{i}.bin"
        kinds.append(hostile_archive(archive, rng, tag, 64 << 10))
        out = work / f"out{i}"
        code, stdout, err = call(prep_main, ["--source", archive, "--out", out, "--max-res", "8",
                                             "--small", "upscale", "--workers", "1",
                                             "--quiet"], capsys)
        assert code in (0, 2), (kinds[-1], code, err)
        assert "Traceback" not in err + stdout, (kinds[-1], err)
        assert sorted(p.name for p in work.iterdir()) == sorted(f"out{j}" for j in range(i + 1)
                                                                if (work / f"out{j}").exists())
        assert not any(p.name.startswith("pggan-fuzz") for p in tmp_path.iterdir())
        assert not any(p.startswith("pggan-fuzz") for p in os.listdir("/tmp"))
        if code == 0:
            meta = json.loads((out / "dataset.json").read_text())
            reasons = json.dumps(meta.get("skipped", {}))
            if not kinds[-1].startswith("truncated"):
                assert "unsafe" in reasons, (kinds[-1], reasons)
            if "+bomb" in kinds[-1] and not kinds[-1].startswith("truncated"):
                assert "archive bomb guard" in reasons, reasons
    assert sum(k.startswith(("zip", "tar", "tgz")) for k in kinds) >= 15
