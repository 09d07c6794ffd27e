"""Network construction by architecture name: the one place that maps model.arch to classes."""
from __future__ import annotations

import torch.nn as nn

from ..config import ModelConfig


def build_generator(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "pggan":
        from .pggan import Generator
        return Generator(cfg)
    if cfg.arch == "stylegan":
        from .stylegan import StyleGenerator
        return StyleGenerator(cfg)
    raise ValueError(f"model.arch must be pggan or stylegan (got {cfg.arch!r})")


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    # Both architectures share PGGAN's discriminator with minibatch-stddev.
    from .pggan import Discriminator
    return Discriminator(cfg)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
