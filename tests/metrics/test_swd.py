"""Multi-scale SWD: pyramid values by hand, per-level SWD on a hand-checkable case, invariances,
determinism, and the ordering held-out < blurred < noise on Fashion-MNIST."""
import math

import pytest
import torch
from kornia.filters import gaussian_blur2d

from pggan.metrics.swd import (NHOODS_PER_IMAGE, SWDAccumulator, binomial_kernel,
                               image_descriptors, laplacian_pyramid, level_resolutions,
                               neighbourhood_positions, pyr_up, pyramid_input, swd_directions)

from .helpers import quality_ladder


def checkerboard(size: int) -> torch.Tensor:
    ar = torch.arange(size)
    return ((ar[:, None] + ar[None, :]) % 2 * 2 - 1).float()        # +-1, [size, size]


def swd_of(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> dict:
    acc = SWDAccumulator(seed, "cpu")
    acc.add("real", a, torch.arange(a.shape[0]))
    acc.add("fake", b, torch.arange(b.shape[0]))
    return acc.compute()


def test_kernel_and_levels():
    k = binomial_kernel()[0]
    assert k.sum() == 1.0
    assert torch.equal(k[2], torch.tensor([6.0, 24.0, 36.0, 24.0, 6.0]) / 256)
    assert level_resolutions(128) == [128, 64, 32, 16]
    assert level_resolutions(16) == [16]
    assert level_resolutions(4) == [16]                  # small images are upsampled to 16
    with pytest.raises(ValueError):
        level_resolutions(24)


def test_pyramid_by_hand():
    # Constant image: every detail level is exactly 0, the low-pass level keeps the constant.
    flat = torch.full((1, 1, 64, 64), 100, dtype=torch.uint8)
    levels = laplacian_pyramid(pyramid_input(flat))
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    assert all(torch.equal(lv, torch.zeros_like(lv)) for lv in levels[:-1])
    assert torch.equal(levels[-1], torch.full_like(levels[-1], 100.0))
    # Constant + 20 * checkerboard: [1,4,6,4,1] sums to 0 with alternating signs, so the
    # blur removes the checkerboard exactly; it stays whole in the finest detail level.
    img = (100 + 20 * checkerboard(32)).to(torch.uint8)[None, None]
    levels = laplacian_pyramid(pyramid_input(img))
    assert torch.equal(levels[0], 20 * checkerboard(32)[None, None])
    assert torch.equal(levels[1], torch.full_like(levels[1], 100.0))


def test_pyramid_reconstructs_the_image():
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g)
    levels = laplacian_pyramid(pyramid_input(img))
    rec = levels[-1]
    for detail in reversed(levels[:-1]):
        rec = pyr_up(rec) + detail
    assert torch.allclose(rec, img.float(), atol=1e-3)


def test_small_images_use_a_16px_level():
    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4) * 10
    d = image_descriptors(img, torch.tensor([0]), seed=0)
    assert list(d) == [16] and d[16].shape == (NHOODS_PER_IMAGE, 49)


def test_neighbourhoods_are_pure_functions_of_the_index():
    idx = torch.tensor([5, 9, 1000])
    p = neighbourhood_positions(idx, 32, seed=0, level_res=32)
    assert p.shape == (3, NHOODS_PER_IMAGE, 2) and p.min() >= 0 and p.max() <= 32 - 7
    assert torch.equal(p[1], neighbourhood_positions(torch.tensor([9]), 32, 0, 32)[0])
    assert not torch.equal(p, neighbourhood_positions(idx, 32, seed=1, level_res=32))
    # The 128 corners are spread over the 26 x 26 possible ones, not a few repeated.
    assert len({tuple(t) for t in p[0].tolist()}) > 100


def test_descriptor_rows_are_the_image_patches():
    g = torch.Generator().manual_seed(4)
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
    idx = torch.tensor([7, 3])
    d = image_descriptors(img, idx, seed=2)[16]                       # 16 px: the image itself
    pos = neighbourhood_positions(idx, 16, seed=2, level_res=16)
    y, x = pos[1, 5].tolist()
    expect = img[1, :, y:y + 7, x:x + 7].float().reshape(-1)           # channel-major
    assert torch.equal(d[NHOODS_PER_IMAGE + 5], expect)


def test_per_level_values_on_a_hand_checkable_case():
    # Flat grey images: the 32 px detail level is 0 in both sets (SWD 0 there), and at 16 px
    # every descriptor of image i is v_i * ones(49). Normalised per set, A = {10, 10, 10, 20}
    # gives z = (-1/sqrt3, -1/sqrt3, -1/sqrt3, sqrt3) and B = {10, 20, 20, 20} gives
    # (-sqrt3, 1/sqrt3, 1/sqrt3, 1/sqrt3); after sorting, every pair of projections differs by
    # (2 / sqrt3) * |theta . 1|, so SWD_16 = 1e3 * 2/sqrt3 * mean over directions |sum theta|.
    a = torch.tensor([10, 10, 10, 20], dtype=torch.uint8)[:, None, None, None].expand(
        4, 1, 32, 32).contiguous()
    b = torch.tensor([10, 20, 20, 20], dtype=torch.uint8)[:, None, None, None].expand(
        4, 1, 32, 32).contiguous()
    result = swd_of(a, b, seed=5)
    dirs = swd_directions(49, seed=5, level_res=16)
    expect_16 = 1e3 * 2 / math.sqrt(3) * float(dirs.sum(0).abs().mean())
    assert result["per_level"]["32"] == 0.0
    assert result["per_level"]["16"] == pytest.approx(expect_16, rel=1e-5)
    assert result["value"] == pytest.approx(expect_16 / 2, rel=1e-5)
    # Unit directions, uniform on the sphere: E|theta . 1| = 7 * E|theta_1| =
    # 7 * Gamma(49/2) / (sqrt(pi) Gamma(25)) = 0.8019; the mean over 512 directions has a
    # standard error of 0.027 (4 SE below).
    e_abs = 7 * math.exp(math.lgamma(24.5) - math.lgamma(25.0)) / math.sqrt(math.pi)
    assert torch.allclose(dirs.norm(dim=0), torch.ones(512), atol=1e-6)
    assert abs(float(dirs.sum(0).abs().mean()) - e_abs) < 0.11


def test_identical_sets_are_zero_and_affine_changes_cancel():
    g = torch.Generator().manual_seed(6)
    a = torch.randint(0, 120, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    same = swd_of(a, a)
    assert same["value"] == 0.0 and all(v == 0.0 for v in same["per_level"].values())
    # Per-set, per-channel normalisation: 2a + 5 has the same SWD-normalised descriptors.
    scaled = swd_of(a, a * 2 + 5)
    assert all(v < 1e-3 for v in scaled["per_level"].values())
    # ... while a different image set does not.
    other = torch.randint(0, 120, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    assert all(v > 1.0 for v in swd_of(a, other)["per_level"].values())


def test_deterministic_and_independent_of_batching():
    g = torch.Generator().manual_seed(7)
    a = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    b = gaussian_blur2d(a.float(), (5, 5), (1.0, 1.0)).round().to(torch.uint8)
    first = swd_of(a, b, seed=3)
    assert first == swd_of(a, b, seed=3)
    # The same images added in other batches and order: the same descriptors and value.
    acc = SWDAccumulator(3, "cpu")
    perm = torch.randperm(12, generator=g)
    for part in perm.split(5):
        acc.add("real", a[part], part)
    for part in torch.arange(12).split(4):
        acc.add("fake", b[part], part)
    assert acc.compute() == first
    assert swd_of(a, b, seed=4)["value"] != first["value"]


def test_unequal_sets_are_refused():
    acc = SWDAccumulator(0, "cpu")
    acc.add("real", torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.arange(4))
    acc.add("fake", torch.zeros(3, 1, 16, 16, dtype=torch.uint8), torch.arange(3))
    with pytest.raises(ValueError, match="same number of images"):
        acc.compute()


def test_fashion_mnist_held_out_blurred_noise_ordering():
    n = 256
    real, held_out, blurred, noise = quality_ladder(n)
    s_held, s_blur, s_noise = (swd_of(real, x) for x in (held_out, blurred, noise))
    # Measured (n = 256): 20.6 < 60.3 < 217.5 on average; 15.3 < 101.5 < 189.1 at 32 px.
    assert s_held["value"] < s_blur["value"] < s_noise["value"]
    assert s_held["per_level"]["32"] < s_blur["per_level"]["32"] < s_noise["per_level"]["32"]
    assert s_held["value"] * 2 < s_blur["value"]
