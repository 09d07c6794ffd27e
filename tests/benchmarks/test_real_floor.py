"""benchmarks/real_floor.py: the SWD of two real sets, and what mirroring a handed set costs."""
from __future__ import annotations

import torch

from benchmarks import real_floor


def handed_images(n: int, seed: int) -> torch.Tensor:
    """uint8 [n, 1, 16, 16]: a bright left part of random width, noise elsewhere (every image
    has its mass on the left, as Fashion-MNIST's shoes point left)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 40
    width = torch.randint(3, 8, (n,), generator=g)
    cols = torch.arange(16)
    x += 200 * (cols[None, :] < width[:, None]).float()[:, None, None, :]
    return x.clamp(0, 255).to(torch.uint8)


def test_half_mirrored_flips_about_half_and_only_left_right():
    x = handed_images(200, 0)
    m = real_floor.half_mirrored(x, seed=3)
    flipped = [(m[i] == x[i].flip(-1)).all().item() for i in range(200)]
    kept = [(m[i] == x[i]).all().item() for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_mirroring_a_handed_set_scores_far_above_the_real_floor():
    a, b = handed_images(300, 1), handed_images(300, 2)
    floor = real_floor.swd(a, b, seed=0)["value"]
    mirrored = real_floor.swd(a, real_floor.half_mirrored(b, seed=0), seed=0)["value"]
    assert mirrored > 4 * floor
