"""Built-in sources read from Debian packages (no download):
dataset-fashion-mnist and fonts-noto-color-emoji must be installed (apt-get install ...)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from data_prep.sources import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, NOTO_EMOJI_FONT,
                               EmojiSource, IdxSource, read_idx)
from pggan.data.pyramid import box_pyramid_uint8
from pggan.data import load_dataset_info

from .sample_files import read_shard_set, run_prep

FMNIST = Path(FASHION_MNIST_DIR)


@pytest.fixture(scope="module")
def fmnist_files():
    train = FMNIST / "train-images-idx3-ubyte.gz"
    assert train.is_file(), ("Debian package dataset-fashion-mnist is missing: "
                             "apt-get install dataset-fashion-mnist")
    return train


def test_fashion_mnist_source_lists_70000_labelled_images(fmnist_files):
    src = IdxSource.from_path(FMNIST, "fashion-mnist", FASHION_MNIST_CLASSES)
    entries = src.entries()
    assert len(entries) == 70_000
    assert entries[0].name == "train/00000" and entries[60_000].name == "t10k/00000"
    counts = {}
    for e in entries:
        counts[e.label] = counts.get(e.label, 0) + 1
    assert counts == {name: 7000 for name in FASHION_MNIST_CLASSES}


def test_fashion_mnist_prep_keeps_pixels_and_labels(tmp_path, fmnist_files):
    out = run_prep(tmp_path, "fm", source="fashion-mnist", num_images=40)
    info = load_dataset_info(str(out))
    assert info.channels == 1 and info.max_res == 32 and info.num_images == 40
    assert info.label_names == FASHION_MNIST_CLASSES
    images = read_idx(fmnist_files)
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")
    top = read_shard_set(out, 32)
    low = read_shard_set(out, 8)
    for i in range(40):
        # 28 px -> 32 px Lanczos upscale (--small upscale is the default for built-ins) ...
        up = Image.fromarray(images[i]).resize((32, 32), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(top[i][0][:, :, 0], np.asarray(up))
        # ... and the lower resolutions are its box pyramid (exact 2x2 means, twice).
        up_t = torch.from_numpy(np.array(up))[None]                         # [1, 32, 32]
        np.testing.assert_array_equal(low[i][0][:, :, 0],
                                      box_pyramid_uint8(up_t, [8])[8][0].numpy())
        assert top[i][1] == int(labels[i])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["converted"]["by_note"] == {"upscaled": 40}


def test_any_idx_path_is_a_source(tmp_path, fmnist_files):
    out = run_prep(tmp_path, "idx", source=str(FMNIST / "t10k-images-idx3-ubyte.gz"),
                   num_images=5, max_res=16, channels=3)
    info = load_dataset_info(str(out))
    assert info.channels == 3 and info.label_names == tuple(str(c) for c in range(10))
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    assert [v[1] for _, v in sorted(read_shard_set(out, 4).items())] == list(labels[:5])
    px = read_shard_set(out, 16)[0][0]
    assert px.shape == (16, 16, 3) and (px[..., 0] == px[..., 1]).all()


def test_read_idx_rejects_damaged_files(tmp_path):
    from data_prep.errors import PrepError
    bad = tmp_path / "x-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big")
                    + (28).to_bytes(4, "big") + b"\x00" * 100)
    with pytest.raises(PrepError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(PrepError, match="bad magic"):
        read_idx(bad)


def test_emoji_source_has_3926_colour_bitmaps(tmp_path):
    font = Path(NOTO_EMOJI_FONT)
    assert font.is_file(), ("Debian package fonts-noto-color-emoji is missing: "
                            "apt-get install fonts-noto-color-emoji")
    src = EmojiSource(font)
    entries = src.entries()
    assert len(entries) == 3926
    bitmaps = [p for _, p in src.work_items(entries, 3900)]
    assert all(Image.open(io.BytesIO(p[1])).size == (136, 128) for p in bitmaps)

    out = run_prep(tmp_path, "emoji", source="emoji", num_images=12)
    info = load_dataset_info(str(out))
    assert info.max_res == 128 and info.channels == 3 and info.num_images == 12
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["converted"]["by_note"].get("transparency") == 12
    top = read_shard_set(out, 128)
    # Centre crop 136x128 -> 128x128; transparent corners become the white background.
    for i in range(12):
        assert top[i][0].shape == (128, 128, 3)
        assert (top[i][0][0, 0] == 255).all() and (top[i][0][-1, -1] == 255).all()
        assert top[i][0].std() > 10                                # a picture, not blank


@pytest.mark.slow
def test_fashion_mnist_full_prep(tmp_path, fmnist_files):
    out = run_prep(tmp_path, "fm_full", source="fashion-mnist", workers=0)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["num_images"] == 70_000 and meta["labels"]["counts"] == [7000] * 10
    assert meta["skipped"]["count"] == 0
