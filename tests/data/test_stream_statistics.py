"""Statistics of the training stream (make_train_stream), for the built-in synthetic source and
for shard data: mirror flips at rate 1/2, independent across ranks, seeds and repeats of an
image; shard images uniformly used and well mixed (no runs of dataset order, no runs inside a
shard). Only the public entry point is used, and the checks hold for a resampled shuffled
stream (independent draws) as for a permutation per epoch with position-hashed flips.

Shard data: 32 RGB 8x8 images in 4 shards of 8. Image i has green = i everywhere (read back
after any flip) and a red column 255 at x = 0 and 0 at x = 7 (which side it is on says whether
the image was flipped). Synthetic images carry no index: the image at a stream position (the
documented layout: micro-step k of rank r holds positions k * world * B + r * B + [0, B)) is
compared with the unmirrored one of make_epoch_stream; the few left-right symmetric ones are
left out.

Bounds. Every count below is Binomial(n, p) under the stream's contract (independent fair
flips; independent uniform draws), or, for a permutation per epoch, a sampling without
replacement whose tails are no heavier than the binomial's (Hoeffding 1963, theorem 4), so
the binomial quantiles bound both. Each check allows a false alarm of ALPHA = 1e-4 (two-sided
checks split it over both tails). The streams are deterministic, so a pass is not luck that
can run out on the next run: a false alarm would fail every run of that code.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pggan.config import DataConfig
from pggan.data.stream import make_epoch_stream, make_train_stream

ALPHA = 1e-4
N_IMAGES, SHARD_IMAGES, RES, B = 32, 8, 8, 8
STEPS = 128                        # micro-steps drawn per stream: 1024 images


def binom_pmf(n: int, p: float) -> list:
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                     + k * math.log(p) + (n - k) * math.log1p(-p)) for k in range(n + 1)]


def binom_upper(n: int, p: float, alpha: float = ALPHA) -> int:
    """Smallest h with P(X > h) <= alpha, X ~ Binomial(n, p)."""
    pmf, tail = binom_pmf(n, p), 0.0
    for h in range(n, -1, -1):
        if tail + pmf[h] > alpha:
            return h
        tail += pmf[h]
    return 0


def binom_interval(n: int, p: float, alpha: float = ALPHA) -> tuple:
    """(lo, hi) with P(X < lo) <= alpha / 2 and P(X > hi) <= alpha / 2."""
    return n - binom_upper(n, 1 - p, alpha / 2), binom_upper(n, p, alpha / 2)


def test_binomial_bounds_are_the_quantiles():
    # n = 16, p = 1/2: P(X = 16) = 2^-16 = 1.5e-5 <= 1e-4 < P(X >= 15) = 17 / 2^16 = 2.6e-4.
    assert binom_upper(16, 0.5) == 15
    assert binom_interval(16, 0.5) == (1, 15)
    # Normal approximation for n = 1024: 512 +- 3.89 * 16 (two-sided 1e-4).
    lo, hi = binom_interval(1024, 0.5)
    assert abs(lo - (512 - 3.89 * 16)) <= 2 and abs(hi - (512 + 3.89 * 16)) <= 2


# ---- sources ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coded_dataset(tmp_path_factory) -> Path:
    from PIL import Image
    from data_prep.prepare import PrepOptions, prepare
    root = tmp_path_factory.mktemp("coded")
    src = root / "src"
    src.mkdir()
    for i in range(N_IMAGES):
        a = np.full((RES, RES, 3), 128, np.uint8)
        a[..., 1] = i
        a[:, 0, 0], a[:, RES - 1, 0] = 255, 0
        Image.fromarray(a).save(src / f"{i:03d}.png")
    prepare(PrepOptions(source=str(src), out=str(root / "ds"), max_res=RES, workers=1,
                        progress=False, shard_images=SHARD_IMAGES))
    return root / "ds"


def shard_draws(path, seed=0, rank=0, world_size=1):
    """-> (image index [M], flipped [M]) of one rank's first STEPS micro-steps."""
    stream = make_train_stream(DataConfig(path=str(path), num_workers=0), RES, batch_per_gpu=B,
                               seed=seed, rank=rank, world_size=world_size, start_nimg=0,
                               img_channels=3)
    index, flipped = [], []
    for _ in range(STEPS):
        images = next(stream)[0]
        left, right = images[:, 0, 0, 0], images[:, 0, 0, RES - 1]
        assert bool((((left == 255) & (right == 0)) | ((left == 0) & (right == 255))).all())
        green = images[:, 1, 0, 0]
        assert bool((images[:, 1] == green[:, None, None]).all())
        index.append(green.long())
        flipped.append(left == 0)
    return torch.cat(index).numpy(), torch.cat(flipped).numpy()


def synthetic_draws(seed=0, rank=0, world_size=1):
    """-> (positions [M], flipped [M] with -1 where the image is symmetric)."""
    stream = make_train_stream(DataConfig(num_workers=0), RES, batch_per_gpu=B, seed=seed,
                               rank=rank, world_size=world_size, start_nimg=0, img_channels=3)
    total = STEPS * world_size * B
    plain = torch.cat([b[0] for b in make_epoch_stream(DataConfig(), RES, batch_size=256,
                                                       rank=0, world_size=1, img_channels=3,
                                                       num_images=total, seed=seed)])
    positions, flipped = [], []
    for k in range(STEPS):
        images = next(stream)[0]
        pos = k * world_size * B + rank * B + torch.arange(B)
        ref = plain[pos]
        same = (images == ref).flatten(1).all(1)
        mirrored = (images == ref.flip(-1)).flatten(1).all(1)
        assert bool((same | mirrored).all()), "a stream image is neither its position's " \
                                              "image nor its mirror"
        f = torch.where(same & mirrored, -1, mirrored.long())
        positions.append(pos)
        flipped.append(f)
    return torch.cat(positions).numpy(), torch.cat(flipped).numpy()


def flips_of(source, coded_dataset, **kw):
    if source == "shards":
        return shard_draws(coded_dataset, **kw)[1].astype(np.int64)
    return synthetic_draws(**kw)[1]


def assert_fair(flips: np.ndarray, what: str) -> None:
    known = flips[flips >= 0]
    assert known.size >= 0.9 * flips.size, f"{what}: too many symmetric images"
    lo, hi = binom_interval(known.size, 0.5)
    assert lo <= int(known.sum()) <= hi, \
        f"{what}: {int(known.sum())} of {known.size} flipped, outside [{lo}, {hi}]"


def assert_independent(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Two flip sequences agree at about half of the places both are known."""
    known = (a >= 0) & (b >= 0)
    agree = int((a[known] == b[known]).sum())
    lo, hi = binom_interval(int(known.sum()), 0.5)
    assert lo <= agree <= hi, f"{what}: flips agree at {agree} of {int(known.sum())} places, " \
                              f"outside [{lo}, {hi}]"


# ---- mirror flips -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["synthetic", "shards"])
def test_mirror_flip_rate_is_one_half(coded_dataset, source):
    assert_fair(flips_of(source, coded_dataset), f"{source}, rank 0 of 1")
    for rank in (0, 1):
        assert_fair(flips_of(source, coded_dataset, rank=rank, world_size=2),
                    f"{source}, rank {rank} of 2")


@pytest.mark.parametrize("source", ["synthetic", "shards"])
def test_mirror_flips_independent_across_ranks_and_seeds(coded_dataset, source):
    r0 = flips_of(source, coded_dataset, rank=0, world_size=2)
    r1 = flips_of(source, coded_dataset, rank=1, world_size=2)
    assert_independent(r0, r1, f"{source}: rank 0 vs rank 1")
    s0 = flips_of(source, coded_dataset, seed=0)
    s1 = flips_of(source, coded_dataset, seed=1)
    assert_independent(s0, s1, f"{source}: seed 0 vs seed 1")


def test_mirror_flips_independent_of_the_image(coded_dataset):
    """Shards: successive appearances of the same image are flipped independently (the flip
    belongs to the draw, not to the image)."""
    index, flipped = shard_draws(coded_dataset)
    last, agree, pairs = {}, 0, 0
    for i, f in zip(index.tolist(), flipped.tolist()):
        if i in last:
            pairs += 1
            agree += int(last[i] == f)
        last[i] = f
    lo, hi = binom_interval(pairs, 0.5)
    assert pairs >= 900 and lo <= agree <= hi, (agree, pairs, lo, hi)


# ---- shard images: use and mixing ---------------------------------------------------------------


def test_every_image_is_used_uniformly(coded_dataset):
    """Per-image counts in 1024 draws of 32 images: each Binomial(1024, 1/32) (mean 32), bounded
    together by a union bound (ALPHA / 32 per image, both tails). An epoch permutation gives
    exactly 32 each."""
    index, _ = shard_draws(coded_dataset)
    counts = np.bincount(index, minlength=N_IMAGES)
    assert counts.size == N_IMAGES
    lo, hi = binom_interval(index.size, 1 / N_IMAGES, ALPHA / N_IMAGES)
    assert lo <= counts.min() and counts.max() <= hi, (counts.tolist(), lo, hi)


def test_order_is_mixed(coded_dataset):
    """Shuffling: the next image is the dataset's next one (i + 1 mod 32) at a rate of 1/32
    for independent draws, 1/31 within an epoch's permutation, and from the same shard at 1/4
    (the same image allowed), 7/31 within a permutation; an unshuffled stream reads 7 of 8
    images right after their predecessor in the same shard. Counts over the 1023 neighbours of
    one stream against Binomial(1023, 1/31) and Binomial(1023, 1/4) upper bounds."""
    index, _ = shard_draws(coded_dataset)
    prev, nxt = index[:-1], index[1:]
    successor = int(((nxt - prev) % N_IMAGES == 1).sum())
    hi = binom_upper(prev.size, 1 / (N_IMAGES - 1))
    assert successor <= hi, f"{successor} of {prev.size} images follow their predecessor " \
                            f"in dataset order (at most {hi})"
    same_shard = int((nxt // SHARD_IMAGES == prev // SHARD_IMAGES).sum())
    hi = binom_upper(prev.size, 1 / 4)
    assert same_shard <= hi, f"{same_shard} of {prev.size} neighbours from one shard (at most " \
                             f"{hi})"


def test_ranks_and_seeds_draw_different_images(coded_dataset):
    """Rank 0 and rank 1 (and seed 0 and seed 1) hold the same image at the same place of
    their streams at most at the Binomial(1024, 1/32) rate of independent uniform draws (a
    split of one permutation per epoch: never within an epoch)."""
    a, _ = shard_draws(coded_dataset, rank=0, world_size=2)
    b, _ = shard_draws(coded_dataset, rank=1, world_size=2)
    hi = binom_upper(a.size, 1 / N_IMAGES)
    assert int((a == b).sum()) <= hi, f"ranks: {int((a == b).sum())} equal (at most {hi})"
    s0, _ = shard_draws(coded_dataset, seed=0)
    s1, _ = shard_draws(coded_dataset, seed=1)
    assert int((s0 == s1).sum()) <= hi, f"seeds: {int((s0 == s1).sum())} equal (at most {hi})"
