"""Training on a prepared shard dataset (data_prep output): class-conditional ACGAN training
with the dataset's labels, exact continuation through a checkpoint (the image at each stream
position is a function of (seed, position)), and one-line errors when the dataset does not
fit the model or the schedule."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from pggan.data.synthetic import synthetic_images
from pggan.train import main
from trainkit import (REPO, assert_states_equal, cli_env, final_state, index_entries,
                      write_tiny_config)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 labelled 16x16 RGB images (two class folders) -> shards at 4, 8, 16 px."""
    base = tmp_path_factory.mktemp("shards")
    images = synthetic_images(range(40), 16, 3, seed=5)
    for i in range(40):
        folder = base / "images" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    out = base / "ds"
    proc = subprocess.run([sys.executable, "-m", "data_prep", "--source", str(base / "images"),
                           "--out", str(out), "--max-res", "16", "--labels", "folders",
                           "--workers", "1", "--quiet"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "dataset.json").read_text())["labels"]["num_classes"] == 2
    return out


def conditional_args(config, dataset, run_dir, total_kimg):
    return ["--config", str(config), "--data", str(dataset), "--run-dir", str(run_dir),
            "--num-classes", "2", "--set", "model.cond_d=acgan", "--total-kimg", total_kimg,
            "--resume", "auto"]


def test_acgan_on_shards_continues_exactly_through_a_checkpoint(dataset, tmp_path, one_thread,
                                                                capsys):
    config = write_tiny_config(tmp_path)
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    assert main(conditional_args(config, dataset, run_a, "0.4")) == 0
    ticks = [json.loads(x) for x in (run_a / "stats.jsonl").read_text().splitlines()]
    assert any("Loss/D_real/class" in t and "Loss/G/class" in t for t in ticks)
    # B stops at kimg 0.3 (its last stage simply ends earlier: the schedule up to there is A's)
    # exactly where A wrote an interval checkpoint, then continues to 0.4 like A.
    assert main(conditional_args(config, dataset, run_b, "0.3")) == 0
    assert index_entries(run_b)[-1]["cur_nimg"] == 304
    assert 304 in [e["cur_nimg"] for e in index_entries(run_a)]
    assert main(conditional_args(config, dataset, run_b, "0.4")) == 0
    assert "resuming at kimg 0.304" in capsys.readouterr().out
    assert_states_equal(final_state(run_a), final_state(run_b))


@pytest.mark.parametrize("extra,message", [
    (["--set", "model.img_channels=1"], "3 channel(s) but model.img_channels is 1"),
    (["--max-res", "32"], "resolution 32 is not in the dataset"),
    (["--num-classes", "3"], "2 classes but model.num_classes is 3"),
])
def test_dataset_that_does_not_fit_is_a_one_line_error(dataset, tmp_path, capsys, extra,
                                                       message):
    config = write_tiny_config(tmp_path)
    code = main(["--config", str(config), "--data", str(dataset),
                 "--run-dir", str(tmp_path / "r")] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_labels_need_a_dataset(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    code = main(["--config", str(config), "--run-dir", str(tmp_path / "r"),
                 "--num-classes", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a labelled dataset (--data)" in err
