"""pggan.data streams: round trip through shards, epoch coverage, training-stream seeding,
the synthetic source, and the conversion of real images on the device."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.convert import ConvertSettings, convert_image
from pggan.config import DataConfig
from pggan.data import make_epoch_stream, make_train_stream, prepare_reals
from pggan.data.synthetic import synthetic_images
from pggan.data.synthetic_stream import synthetic_mirror_flags
from pggan.ops.resample import downsample2d, upsample2d

from .sample_files import read_shard_set, run_prep


def take(stream, n):
    return [next(stream) for _ in range(n)]


def cfg(path, **kw) -> DataConfig:
    return DataConfig(path=None if path is None else str(path), **kw)


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("res", [4, 8, 16, 32])
def test_round_trip_epoch_stream_yields_exactly_the_written_pixels(labelled_dataset, res):
    written = read_shard_set(labelled_dataset, res)
    assert sorted(written) == list(range(36))
    got = {}
    for images, labels, index in make_epoch_stream(cfg(labelled_dataset, num_workers=2), res,
                                                   batch_size=7, rank=0, world_size=1,
                                                   with_index=True):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, res, res)
        # The decoders' HWC order, viewed as [N, C, H, W]: channels_last memory.
        assert images.is_contiguous(memory_format=torch.channels_last)
        for img, lab, i in zip(images, labels, index.tolist()):
            assert i not in got
            got[i] = (img.permute(1, 2, 0).numpy(), int(lab))
    assert sorted(got) == sorted(written)
    for i, (arr, label) in written.items():
        np.testing.assert_array_equal(got[i][0], arr)
        assert got[i][1] == label


def test_written_pixels_are_the_conversion_of_the_source_files(labelled_dataset):
    """Independent of the shards: image k of class c is convert_image(file) at every res."""
    src = labelled_dataset.parent / "src"
    files = sorted(p for p in src.rglob("*.png"))            # the order data_prep uses
    settings = ConvertSettings(max_res=32)
    for res in (8, 32):
        written = read_shard_set(labelled_dataset, res)
        for i, f in enumerate(files):
            conv = convert_image(f.read_bytes(), settings)
            expect = np.asarray(Image.open(io.BytesIO(conv.encoded[res])))
            np.testing.assert_array_equal(written[i][0], expect)
            assert written[i][1] == ("cat", "dog", "emu").index(f.parent.name)


# ---------------------------------------------------------------------------- epoch mode


def epoch_indices(path, res, world_size, num_workers, num_images=None):
    per_rank = []
    for rank in range(world_size):
        seen = []
        for _, _, index in make_epoch_stream(cfg(path, num_workers=num_workers), res,
                                             batch_size=4, rank=rank, world_size=world_size,
                                             num_images=num_images, with_index=True):
            seen += index.tolist()
        per_rank.append(seen)
    return per_rank


def test_epoch_2_ranks_x_2_workers_sees_every_image_once_split_by_shard(labelled_dataset):
    per_rank = epoch_indices(labelled_dataset, 16, world_size=2, num_workers=2)
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == list(range(36))               # exactly once
    assert all(len(r) > 0 for r in per_rank)


@pytest.fixture(scope="module")
def one_shard_dataset(tmp_path_factory) -> Path:
    """23 synthetic images in a single shard per resolution (fewer shards than slots)."""
    return run_prep(tmp_path_factory.mktemp("one_shard"), "ds", source="synthetic",
                    num_images=23, max_res=8)


def test_epoch_2_ranks_x_2_workers_sees_every_image_once_split_by_sample(one_shard_dataset):
    per_rank = epoch_indices(one_shard_dataset, 8, world_size=2, num_workers=2)
    assert sorted(per_rank[0] + per_rank[1]) == list(range(23))
    assert sorted(len(r) for r in per_rank) == [11, 12]        # balanced to one image


def test_epoch_num_images_are_spread_over_the_whole_dataset(labelled_dataset,
                                                           one_shard_dataset):
    # floor(k * 36 / 13), k < 13; floor(k * 23 / 5), k < 5: from every part of the dataset,
    # not its first images (a class- or folder-ordered dataset would be sampled by class).
    per_rank = epoch_indices(labelled_dataset, 8, world_size=2, num_workers=2, num_images=13)
    assert sorted(per_rank[0] + per_rank[1]) == [0, 2, 5, 8, 11, 13, 16, 19, 22, 24, 27, 30, 33]
    per_rank = epoch_indices(one_shard_dataset, 4, world_size=2, num_workers=2, num_images=5)
    assert sorted(per_rank[0] + per_rank[1]) == [0, 4, 9, 13, 18]
    per_rank = epoch_indices(one_shard_dataset, 4, world_size=1, num_workers=0, num_images=99)
    assert sorted(per_rank[0]) == list(range(23))              # more than there are: all


# ---------------------------------------------------------------------------- training stream


def image_table(path: Path, res: int) -> dict:
    """bytes of an image (CHW) or of its mirror -> (index, label, mirrored)."""
    table = {}
    for i, (arr, label) in read_shard_set(path, res).items():
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
        table[chw.tobytes()] = (i, label, False)
        table.setdefault(np.ascontiguousarray(chw[:, :, ::-1]).tobytes(), (i, label, True))
    return table


def test_train_stream_yields_written_images_mirrored_and_labelled(labelled_dataset):
    table = image_table(labelled_dataset, 16)
    stream = make_train_stream(cfg(labelled_dataset, num_workers=2), 16,
                               batch_per_gpu=8, seed=5, rank=0, world_size=1, start_nimg=0,
                               img_channels=3)
    hits = []
    for images, labels in take(stream, 12):
        assert images.shape == (8, 3, 16, 16) and labels.dtype == torch.int64
        for img, lab in zip(images, labels):
            i, label, mirrored = table[img.numpy().tobytes()]   # KeyError: not a written image
            assert int(lab) == label
            hits.append((i, mirrored))
    assert len({i for i, _ in hits}) >= 25                      # drawn across shards
    flips = sum(m for _, m in hits)
    assert 20 <= flips <= 76                                    # ~half of 96 mirrored


def test_train_stream_without_mirror_yields_unflipped_images(labelled_dataset):
    table = image_table(labelled_dataset, 8)
    stream = make_train_stream(cfg(labelled_dataset, num_workers=0, mirror=False), 8,
                               batch_per_gpu=6, seed=1, rank=0, world_size=1, start_nimg=0,
                               img_channels=3)
    for images, _ in take(stream, 6):
        for img in images:
            i, _, mirrored = table[img.numpy().tobytes()]
            # A symmetric image is its own mirror; none of these smooth images is.
            assert not mirrored


def batches_equal(a, b) -> bool:
    def same(u, v):
        return u is v if u is None or v is None else torch.equal(u, v)
    return len(a) == len(b) and all(same(x[0], y[0]) and same(x[1], y[1]) for x, y in zip(a, b))


def test_train_stream_is_a_function_of_seed_rank_and_position(labelled_dataset):
    def run(**kw):
        args = dict(batch_per_gpu=4, seed=3, rank=0, world_size=2, start_nimg=0,
                    img_channels=3)
        args.update(kw)
        return take(make_train_stream(cfg(labelled_dataset, num_workers=2),
                                      8, **args), 8)
    base = run()
    assert batches_equal(base, run())                           # same inputs, same stream
    assert not batches_equal(base, run(rank=1))                 # ranks read other positions
    # Opened further on, the stream continues exactly: micro-step k of a stream started at
    # 8 * 3 is micro-step k + 3 of one started at 0 (world 2 x batch 4 = 8 images per step).
    assert batches_equal(base[3:], run(start_nimg=24)[:5])
    assert batches_equal(run(start_nimg=4096), run(start_nimg=4096))
    assert not batches_equal(base, run(seed=4))


def test_stream_leaves_the_global_random_state_alone(labelled_dataset):
    torch_state, py_state, np_state = (torch.get_rng_state(), random.getstate(),
                                       np.random.get_state())
    stream = make_train_stream(cfg(labelled_dataset, num_workers=2), 8, batch_per_gpu=4,
                               seed=0, rank=0, world_size=1, start_nimg=0, img_channels=3)
    take(stream, 3)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np_state[1:2], np.random.get_state()[1:2]))


def test_channel_mismatch_and_missing_resolution_are_clear_errors(labelled_dataset):
    from pggan.data import DatasetError
    with pytest.raises(DatasetError, match="has 3 channel"):
        make_train_stream(cfg(labelled_dataset), 8, batch_per_gpu=2, seed=0, rank=0,
                          world_size=1, start_nimg=0, img_channels=1)
    with pytest.raises(DatasetError, match="resolution 64 is not in the dataset"):
        make_train_stream(cfg(labelled_dataset), 64, batch_per_gpu=2, seed=0, rank=0,
                          world_size=1, start_nimg=0, img_channels=3)


# ---------------------------------------------------------------------------- synthetic source


@pytest.mark.parametrize("num_workers", [0, 2])
def test_synthetic_global_batch_is_the_same_for_1_and_2_processes(num_workers):
    data = cfg(None, num_workers=num_workers)
    one = take(make_train_stream(data, 8, batch_per_gpu=6, seed=9, rank=0, world_size=1,
                                 start_nimg=0, img_channels=3), 4)
    two = [take(make_train_stream(data, 8, batch_per_gpu=3, seed=9, rank=r, world_size=2,
                                  start_nimg=0, img_channels=3), 4) for r in range(2)]
    for k in range(4):
        assert one[k][1] is None
        assert torch.equal(one[k][0], torch.cat([two[0][k][0], two[1][k][0]]))


def test_synthetic_positions_mirror_and_resume():
    data = cfg(None, num_workers=0)
    stream = make_train_stream(data, 16, batch_per_gpu=4, seed=2, rank=1, world_size=2,
                               start_nimg=40, img_channels=3)
    batches = take(stream, 3)
    # Micro-step k of rank 1: positions 40 + 8k + 4 .. 40 + 8k + 7.
    for k, (images, _) in enumerate(batches):
        pos = torch.arange(44 + 8 * k, 48 + 8 * k)
        expect = synthetic_images(pos, 16, 3, 2)
        flip = synthetic_mirror_flags(pos, 2)
        expect[flip] = expect[flip].flip(-1)
        assert torch.equal(images, expect)
    flips = synthetic_mirror_flags(torch.arange(10_000), 2).float().mean().item()
    assert abs(flips - 0.5) < 0.02
    # Resuming at start_nimg = 40 + 8 continues exactly at micro-step 1.
    resumed = take(make_train_stream(data, 16, batch_per_gpu=4, seed=2, rank=1, world_size=2,
                                     start_nimg=48, img_channels=3), 2)
    assert batches_equal(resumed, batches[1:])
    plain = next(make_train_stream(cfg(None, mirror=False), 16, batch_per_gpu=4, seed=2,
                                   rank=0, world_size=1, start_nimg=0, img_channels=1))[0]
    assert torch.equal(plain, synthetic_images(torch.arange(4), 16, 1, 2))


def test_synthetic_epoch_stream_covers_positions_once():
    seen = []
    for rank in range(2):
        for images, labels, pos in make_epoch_stream(cfg(None), 8, batch_size=4, rank=rank,
                                                     world_size=2, num_images=11, seed=3,
                                                     with_index=True):
            assert torch.equal(images, synthetic_images(pos, 8, 3, 3))
            seen += pos.tolist()
    assert sorted(seen) == list(range(11))


# ---------------------------------------------------------------------------- prepare_reals


def test_prepare_reals_scales_and_fades_on_the_device():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    full = prepare_reals(x, 1.0, "cpu")
    assert full.dtype == torch.float32 and full.is_contiguous()
    assert full[0, 0, 0, 0].item() == -1.0 and full[0, 0, 0, 1].item() == 1.0
    torch.testing.assert_close(full, x.float() / 127.5 - 1, rtol=0, atol=1e-6)
    # The low-pass term is the uint8 pyramid's level below: (a + b + c + d + 2) // 4.
    s = x.long().reshape(3, 3, 4, 2, 4, 2).sum(dim=(3, 5))
    low = upsample2d(((s + 2) // 4).float() / 127.5 - 1, mode="nearest")
    torch.testing.assert_close(prepare_reals(x, 0.0, "cpu"), low, rtol=0, atol=1e-6)
    assert (low - upsample2d(downsample2d(full, mode="box"), mode="nearest")).abs().max() \
        <= 0.5 / 127.5 + 1e-6
    torch.testing.assert_close(prepare_reals(x, 0.25, "cpu"), low + 0.25 * (full - low),
                               rtol=0, atol=1e-6)
    cl = prepare_reals(x, 0.5, "cpu", channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        prepare_reals(full, 1.0, "cpu")


def test_epoch_exactly_once_with_torchrun_2_processes_x_2_workers(labelled_dataset, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "seen.json"
    script = Path(__file__).with_name("epoch_ranks_main.py")
    # Own process group: on a hang, torchrun and both ranks are stopped together.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", str(script), str(labelled_dataset),
                             str(out)], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in 180 s: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    per_rank = json.loads(out.read_text())
    assert len(per_rank) == 2 and all(per_rank)
    assert sorted(per_rank[0] + per_rank[1]) == list(range(36))


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_box_pyramid_fade_at_alpha_0_is_the_previous_stage_exactly(impl):
    """At alpha = 0 the 2R reals, box-downsampled as D's fade path does, are bit for bit the
    R reals of the previous stage: for the synthetic source's pyramid and any uint8 image."""
    from pggan.data.pyramid import box_down_uint8
    from pggan.data.synthetic_stream import synthetic_pyramid_images
    pos = torch.arange(6)
    for top in (32, 16):
        x16 = synthetic_pyramid_images(pos, 16, 3, seed=5, top_res=top)
        x8 = synthetic_pyramid_images(pos, 8, 3, seed=5, top_res=top)
        assert torch.equal(box_down_uint8(x16), x8)
        faded = prepare_reals(x16, 0.0, "cpu", impl=impl)
        assert torch.equal(downsample2d(faded, mode="box"), prepare_reals(x8, 1.0, "cpu"))
    # Rendering each resolution directly (synthetic_pyramid: render) is not a box pyramid.
    assert not torch.equal(box_down_uint8(synthetic_pyramid_images(pos, 16, 3, 5)),
                           synthetic_pyramid_images(pos, 8, 3, 5))
