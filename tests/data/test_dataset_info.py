"""dataset.json: reading it back, one-line errors, and datasets behind http(s) and pipe:."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading

import pytest

from pggan.config import ConfigError, DataConfig
from pggan.data import DatasetError, load_dataset_info, make_epoch_stream, make_train_stream

from .sample_files import read_shard_set


def test_info_describes_the_dataset(labelled_dataset):
    info = load_dataset_info(str(labelled_dataset))
    assert info.num_images == 36 and info.channels == 3 and info.max_res == 32
    assert info.resolutions == (4, 8, 16, 32)
    assert info.num_classes == 3 and info.label_names == ("cat", "dog", "emu")
    assert info.image_formats == {4: "png", 8: "png", 16: "png", 32: "png"}
    shards = info.shards[16]
    assert [s.num_images for s in shards] == [5] * 7 + [1]
    assert [s.first_index for s in shards] == list(range(0, 36, 5))
    assert all(len(s.sha256) == 64 for s in shards)
    assert info.shard_urls(16)[0] == str(labelled_dataset / "res-0016" / "shard-000000.tar")
    # The dataset.json file itself is accepted too.
    assert load_dataset_info(str(labelled_dataset / "dataset.json")).num_images == 36


def one_line_error(path, match):
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset_info(str(path))
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ConfigError)            # the CLIs print these as one line
    return str(e.value)


def test_missing_and_invalid_dataset_json(tmp_path, labelled_dataset):
    one_line_error(tmp_path / "nowhere", "no such directory.*data_prep")
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "dataset.json: not found")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{not json")
    one_line_error(bad, "not valid JSON")
    (bad / "dataset.json").write_text(json.dumps({"kind": "something-else"}))
    one_line_error(bad, "not a dataset.json written by data_prep")
    meta = json.loads((labelled_dataset / "dataset.json").read_text())
    for key in ("num_images", "resolutions"):
        broken = dict(meta)
        del broken[key]
        (bad / "dataset.json").write_text(json.dumps(broken))
        one_line_error(bad, f"missing field '{key}'")
    broken = json.loads(json.dumps(meta))
    broken["resolutions"]["8"]["shards"].pop()
    (bad / "dataset.json").write_text(json.dumps(broken))
    one_line_error(bad, "shards hold 35 images but num_images is 36")
    broken = dict(meta, version=99)
    (bad / "dataset.json").write_text(json.dumps(broken))
    one_line_error(bad, "newer than this pggan reads")


def test_missing_resolution_is_a_clear_error(labelled_dataset):
    info = load_dataset_info(str(labelled_dataset))
    with pytest.raises(DatasetError, match=r"resolution 128 is not in the dataset \(it has "
                                           r"4, 8, 16, 32\); run data_prep again"):
        info.shard_urls(128)


@pytest.fixture()
def http_dataset(labelled_dataset):
    """Serve the dataset folder over http://127.0.0.1 (a thread, no network)."""
    handler = functools.partial(_QuietHandler, directory=str(labelled_dataset))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def epoch_pixels(path, res):
    out = {}
    for images, labels, index in make_epoch_stream(DataConfig(path=path, num_workers=1), res,
                                                   batch_size=8, rank=0, world_size=1,
                                                   with_index=True):
        for img, lab, i in zip(images, labels, index.tolist()):
            out[i] = (img.permute(1, 2, 0).numpy().tobytes(), int(lab))
    return out


def test_dataset_over_http(http_dataset, labelled_dataset):
    assert shutil.which("curl"), "http(s) shards are read through curl (apt-get install curl)"
    info = load_dataset_info(http_dataset)
    assert info.shard_urls(8)[0] == f"{http_dataset}/res-0008/shard-000000.tar"
    written = read_shard_set(labelled_dataset, 8)
    got = epoch_pixels(http_dataset, 8)
    assert got == {i: (a.tobytes(), lab) for i, (a, lab) in written.items()}
    images, labels = next(make_train_stream(DataConfig(path=http_dataset, num_workers=1), 8,
                                            batch_per_gpu=4, seed=0, rank=0, world_size=1,
                                            start_nimg=0, img_channels=3))
    assert images.shape == (4, 3, 8, 8) and labels.shape == (4,)


def test_dataset_through_a_pipe_command(labelled_dataset):
    pipe = f"pipe:cat {labelled_dataset}/{{}}"
    info = load_dataset_info(pipe)
    assert info.shard_urls(4)[1] == f"pipe:cat {labelled_dataset}/res-0004/shard-000001.tar"
    written = read_shard_set(labelled_dataset, 4)
    assert epoch_pixels(pipe, 4) == {i: (a.tobytes(), lab) for i, (a, lab) in written.items()}
    with pytest.raises(DatasetError, match="needs '\\{\\}'"):
        load_dataset_info("pipe:cat /somewhere/dataset.json")
    with pytest.raises(DatasetError, match="command failed with exit code"):
        load_dataset_info(f"pipe:cat {labelled_dataset}/missing/{{}}")


def test_damaged_shard_fails_the_epoch_stream(tmp_path, labelled_dataset):
    copy = tmp_path / "copy"
    shutil.copytree(labelled_dataset, copy)
    shard = copy / "res-0008" / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[:700])            # cut inside the second member
    with pytest.raises(DatasetError, match=r"shard-000002.tar: cannot read shard "
                                           r"\(ShardReadError: (unexpected end of data|shard is 700 bytes)"):
        list(make_epoch_stream(DataConfig(path=str(copy), num_workers=0), 8, batch_size=4,
                               rank=0, world_size=1))
