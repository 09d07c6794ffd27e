"""MS-SSIM (Wang, Simoncelli & Bovik 2003) and its use as a diversity score of generated images.

Diversity (Odena et al. 2017, used in the PGGAN paper): the mean MS-SSIM over pairs of
generated images (global indices 2k and 2k+1, independent latents). Lower means more diverse;
a generator that collapses to one image scores near 1.

Per scale j = 1..5 (pixel values 0..255, L = 255, K1 = 0.01, K2 = 0.03, Gaussian window 11 px,
sigma 1.5, 'valid' filtering):
    l  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)
    MS-SSIM = relu(mean(l * cs) at scale 5)^w5 * prod_{j<5} relu(mean(cs_j))^wj
with w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Between scales images are averaged over
2x2 blocks (an odd edge pixel is averaged with itself). Two choices for small images, as in the
multi-scale SSIM code that PGGAN used: where a scale is smaller than 11 px the window shrinks to
the image size and sigma shrinks with it (sigma = 1.5 * size / 11); negative means are clipped
to 0 (as TensorFlow's ssim_multiscale does) so the power stays defined.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from kornia.filters import filter2d_separable, get_gaussian_kernel1d

from .dist import gather_rows

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _window(size: int, device, dtype) -> torch.Tensor:
    """[1, size] Gaussian window centred between the middle taps when size is even (sums to
    1); sigma shrinks with the window below 11 px."""
    sigma = WINDOW_SIGMA * size / WINDOW_SIZE
    return get_gaussian_kernel1d(size, sigma, force_even=True, device=device, dtype=dtype)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, data_range: float):
    """float [N, C, H, W] pair -> (mean(l * cs), mean(cs)) per image, each [N]."""
    size = min(WINDOW_SIZE, x.shape[-2], x.shape[-1])
    win = _window(size, x.device, x.dtype)

    def blur(t):
        return filter2d_separable(t, win, win, padding="valid")

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x * mu_x
    sigma_yy = blur(y * y) - mu_y * mu_y
    sigma_xy = blur(x * y) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0,
            weights: Sequence[float] = MSSSIM_WEIGHTS) -> torch.Tensor:
    """MS-SSIM of image pairs: x, y [N, C, H, W] (uint8 or float in 0..data_range) -> [N]."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim: expected two [N, C, H, W] batches of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    w = torch.tensor(weights, dtype=torch.float64, device=x.device)
    cs_all = []
    for j in range(len(weights)):
        ssim_j, cs_j = _ssim_terms(x, y, data_range)
        cs_all.append(cs_j)
        if j + 1 < len(weights):
            x = F.avg_pool2d(x, 2, ceil_mode=True)
            y = F.avg_pool2d(y, 2, ceil_mode=True)
    values = torch.stack(cs_all[:-1] + [ssim_j], dim=1).double().clamp(min=0)   # [N, scales]
    return (values ** w).prod(dim=1).to(dtype)


class MSSSIMAccumulator:
    """Mean MS-SSIM over pairs (2k, 2k+1) of generated images. `add` takes images whose global
    indices come in complete pairs (the runner's shards keep pairs on one rank)."""

    def __init__(self):
        self.values, self.pairs = [], []

    def add(self, images_uint8: torch.Tensor, indices: torch.Tensor) -> None:
        idx = indices.cpu()
        if idx.numel() % 2 or not torch.equal(idx[0::2] + 1, idx[1::2]) or (idx[0::2] % 2).any():
            raise ValueError("msssim: images must come as pairs of global indices (2k, 2k+1)")
        self.values.append(ms_ssim(images_uint8[0::2], images_uint8[1::2]).double().cpu())
        self.pairs.append(idx[0::2] // 2)

    def compute(self) -> dict:
        if not self.values:
            raise ValueError("msssim: no image pairs were added on this rank")
        values, _ = gather_rows(torch.cat(self.values), torch.cat(self.pairs),
                                out_device=torch.device("cpu"))
        return {"value": float(values.mean()), "num_pairs": int(values.numel())}
