"""MS-SSIM: identical pairs give 1, independent noise is low, a hand-computed constant case, the
relation to single-scale SSIM, and the pair bookkeeping of the diversity score."""
import pytest
import torch
import torch.nn.functional as F

from pggan.metrics.msssim import MSSSIM_WEIGHTS, MSSSIMAccumulator, ms_ssim

from .helpers import fashion_mnist


def rand_images(n, c, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("size", [28, 64, 200])
def test_identical_pairs_are_exactly_one(size):
    x = rand_images(4, 3, size, seed=size)
    assert torch.equal(ms_ssim(x, x), torch.ones(4))


def test_independent_noise_is_low_and_a_noisy_copy_high():
    x, y = rand_images(32, 3, 64, seed=1), rand_images(32, 3, 64, seed=2)
    noise = ms_ssim(x, y)
    # Measured: mean 0.06 (about half of the pairs hit 0 through a negative coarse-scale cs).
    assert noise.mean() < 0.1 and noise.min() >= 0.0
    g = torch.Generator().manual_seed(3)
    copy = (x.float() + 10 * torch.randn(x.shape, generator=g)).clamp(0, 255)
    assert ms_ssim(x, copy).min() > 0.95


def test_constant_images_by_hand():
    # Flat images: sigma = 0 at every scale, so cs = C2 / C2 = 1, and only the luminance of the
    # coarsest scale remains: MS-SSIM = l^w5, l = (2ab + C1) / (a^2 + b^2 + C1).
    a = torch.full((1, 1, 32, 32), 100, dtype=torch.uint8)
    b = torch.full((1, 1, 32, 32), 150, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    lum = (2 * 100 * 150 + c1) / (100 ** 2 + 150 ** 2 + c1)
    assert float(ms_ssim(a.double(), b.double())) == pytest.approx(lum ** MSSSIM_WEIGHTS[-1],
                                                                   rel=1e-12)
    # uint8 input is computed in float32 (window sums of 121 taps: ~1e-6 relative).
    assert float(ms_ssim(a, b)) == pytest.approx(lum ** MSSSIM_WEIGHTS[-1], rel=1e-5)


def _ssim_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Single-scale SSIM with an 11-tap Gaussian (sigma 1.5), valid filtering, written out with
    a dense 2-D window and conv2d, independently of the code under test."""
    ar = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-ar ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    c = x.shape[1]
    win = w.expand(c, 1, 11, 11)

    def f(t):
        return F.conv2d(t, win, groups=c)

    x, y = x.double(), y.double()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def test_single_scale_weights_give_ssim():
    # With all weight on the finest scale, MS-SSIM is the ordinary SSIM.
    x = rand_images(3, 3, 48, seed=4)
    y = (x.float() * 0.7 + 40 + 8 * torch.randn(x.shape, generator=torch.Generator()
                                                 .manual_seed(5))).clamp(0, 255)
    got = ms_ssim(x.double(), y.double(), weights=(1.0,))
    assert torch.allclose(got, _ssim_reference(x, y), rtol=1e-9)


def test_diversity_of_a_collapsed_set_is_one_and_of_real_images_lower():
    real = fashion_mnist("train", 64)
    acc = MSSSIMAccumulator()
    acc.add(real, torch.arange(64))
    diverse = acc.compute()
    collapsed = MSSSIMAccumulator()
    collapsed.add(real[:1].expand(64, -1, -1, -1), torch.arange(64))
    assert diverse["num_pairs"] == 32
    assert collapsed.compute()["value"] == 1.0
    assert diverse["value"] < 0.5


def test_pairs_must_be_complete():
    acc = MSSSIMAccumulator()
    with pytest.raises(ValueError, match="pairs"):
        acc.add(rand_images(2, 1, 16, seed=0), torch.tensor([1, 2]))
