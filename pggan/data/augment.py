"""Differentiable augmentation of D's inputs, fixed or adaptive (ADA, Karras et al. 2020).

The same random pipeline runs on real and generated images before D. Every transform is
differentiable w.r.t. the images, so G's gradients pass through it, and each is applied to a
sample with probability p * (per-transform multiplier), independently per sample and
transform, so for p below ~0.8 the augmentations do not leak into G's outputs (ADA sec. 2).

Transforms (kornia.augmentation; images in [-1, 1], never clamped):
  xflip      horizontal flip
  translate  integer translation by up to 1/8 of the image (nearest resampling of a whole-
             pixel shift, reflected borders)
  rotate     rotation by a uniform angle in [-180, 180] degrees (reflected borders)
  scale      isotropic scaling by a uniform factor in [0.8, 1.25] (reflected borders)
  color      brightness (+ U[-0.2, 0.2]), contrast (x U[0.7, 1.4] about mid-grey) and, for RGB,
             saturation (lerp with luma by U[0.5, 1.5])

ADA's heuristic (sec. 3): r_t = E[sign(D(real))] over the last `interval` D steps; when it is
above `target` D is overfitting and p grows, otherwise it shrinks, at a rate that moves p by 1
in `ada_kimg` thousand images. p is a buffer so checkpoints carry it. `AdaController` keeps
the running [sum, count] of sign(D(real)) between updates and applies them to the pipe every
`interval` optimizer steps, over all processes.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import kornia.augmentation as K
from kornia.color import rgb_to_grayscale

from ..config import AUGMENT_MODES, AugmentConfig


class _LumaSaturation(K.RandomSaturation):
    """Saturation as a lerp with the luma axis (ADA's form), without kornia's clamp to [0, 1]
    and HSV round trip, so values outside [0, 1] and their gradients survive."""

    def apply_transform(self, input: torch.Tensor, params: Dict[str, torch.Tensor],
                        flags: Dict[str, Any],
                        transform: Optional[torch.Tensor] = None) -> torch.Tensor:
        factor = params["saturation_factor"].to(input.device, input.dtype)[:, None, None, None]
        gray = rgb_to_grayscale(input)                              # [N, 1, H, W]
        return gray + factor * (input - gray)


class AugmentPipe(nn.Module):
    def __init__(self, cfg: AugmentConfig, img_channels: int):
        super().__init__()
        if cfg.mode not in AUGMENT_MODES:
            raise ValueError(f"augment.mode must be one of {', '.join(AUGMENT_MODES)} (got "
                             f"{cfg.mode!r})")
        if cfg.mode == "ada" and cfg.ada_kimg <= 0:
            raise ValueError(f"augment.ada_kimg must be positive (got {cfg.ada_kimg})")
        if not 0.0 <= cfg.p <= 1.0:
            raise ValueError(f"augment.p must be in [0, 1] (got {cfg.p})")
        self.mode, self.target, self.ada_kimg = cfg.mode, float(cfg.target), float(cfg.ada_kimg)
        self.img_channels = img_channels
        # p lives in a buffer for checkpoints and in a Python float for the hot path (reading
        # a CUDA buffer every call would synchronise the device).
        self.register_buffer("p_buf", torch.tensor(float(cfg.p), dtype=torch.float64))
        self._p = float(cfg.p)
        self.register_load_state_dict_post_hook(AugmentPipe._sync_p_after_load)

        # (name, transform, probability multiplier) in ADA's order: pixel blitting, geometric,
        # colour. Held outside the module tree on purpose: kornia samples their parameters on
        # the CPU from the global torch RNG whatever the images' device, and state_dict()
        # carries only p, not kornia's internal range buffers.
        stages = [
            ("xflip", K.RandomHorizontalFlip(), cfg.xflip),
            ("translate", K.RandomTranslate(translate_x=(-0.125, 0.125),
                                            translate_y=(-0.125, 0.125), resample="nearest",
                                            padding_mode="reflection"), cfg.translate),
            ("scale", K.RandomAffine(degrees=0.0, scale=(0.8, 1.25), padding_mode="reflection"),
             cfg.scale),
            ("rotate", K.RandomAffine(degrees=180.0, padding_mode="reflection"), cfg.rotate),
            ("brightness", K.RandomBrightness(brightness=(0.8, 1.2), clip_output=False),
             cfg.color),
            ("contrast", K.RandomContrast(contrast=(0.7, 1.4), clip_output=False), cfg.color),
        ]
        if img_channels == 3:
            stages.append(("saturation", _LumaSaturation(saturation=(0.5, 1.5)), cfg.color))
        self._stages = tuple(stages)

    @staticmethod
    def _sync_p_after_load(module: "AugmentPipe", _incompatible) -> None:
        module._p = float(module.p_buf)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"augmentation probability p must be in [0, 1] (got {value})")
        self._p = value
        self.p_buf.fill_(value)

    def adjust(self, sign_mean: float, nimg: int) -> None:
        """ADA update after `nimg` real images whose D outputs had mean sign `sign_mean`:
        p += sign(sign_mean - target) * nimg / (ada_kimg * 1000), clamped to [0, 1]."""
        if self.mode != "ada":
            return
        sign_mean = float(sign_mean)
        if not math.isfinite(sign_mean):
            raise ValueError(f"AugmentPipe.adjust: sign_mean must be finite (got {sign_mean})")
        direction = (sign_mean > self.target) - (sign_mean < self.target)
        step = direction * float(nimg) / (self.ada_kimg * 1000.0)
        self.p = min(max(self._p + step, 0.0), 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> augmented [N, C, H, W], same dtype; the identity at p = 0."""
        if images.ndim != 4 or images.shape[1] != self.img_channels:
            raise ValueError(f"AugmentPipe expects [N, {self.img_channels}, H, W] images "
                             f"(got {tuple(images.shape)})")
        if self.mode == "off" or self._p <= 0.0:
            return images
        # kornia's warps and colour maths run in float32 (or float64 when given it).
        x = images if images.dtype in (torch.float32, torch.float64) else images.float()
        for _name, transform, mult in self._stages:
            prob = min(1.0, self._p * float(mult))
            if prob <= 0.0:
                continue
            transform.p = prob
            x = transform(x)
        return x.to(images.dtype)

    def extra_repr(self) -> str:
        names = ", ".join(f"{name} x{float(mult):g}" for name, _t, mult in self._stages)
        return f"mode={self.mode}, p={self._p:.4f}, target={self.target}, stages=[{names}]"


class AdaController:
    """ADA's bookkeeping for the training loop: the signs of D's outputs on real images are
    summed on the device as they come (no host sync per step); every `interval` optimizer
    steps the sums of all processes are reduced (one all-reduce of two float64) and move the
    pipe's p (AugmentPipe.adjust), then start again from zero.

    A training state holds one copy of the pending sums: `fold_` adds every process's into the
    main process's (the others are zeroed, so the next reduction still sees each sign once),
    `state()` is the main process's pair and `load_state` puts it back there."""

    def __init__(self, pipe: AugmentPipe, interval: int, device):
        if pipe.mode != "ada":
            raise ValueError(f"AdaController needs augment.mode ada (got {pipe.mode!r})")
        if interval < 1:
            raise ValueError(f"augment.interval must be >= 1 (got {interval})")
        self.pipe, self.interval = pipe, int(interval)
        self.accum = torch.zeros(2, dtype=torch.float64, device=device)    # [sum, count]

    def observe(self, d_real: torch.Tensor) -> None:
        """D's raw outputs on real images, any shape."""
        self.accum[0] += d_real.detach().sign().sum().to(torch.float64)
        self.accum[1] += d_real.numel()

    def after_step(self, step_index: int, engine) -> None:
        """Call on every process after optimizer step `step_index` (1-based: steps taken)."""
        if step_index % self.interval:
            return
        acc = engine.all_reduce_sum_(self.accum.clone())
        if acc[1] > 0:
            self.pipe.adjust(float(acc[0] / acc[1]), int(acc[1]))
        self.accum.zero_()

    def begin_step(self) -> None:
        """Remember the sums before a step whose signs the non-finite guard may drop."""
        self._before = self.accum.clone()

    def keep_step(self, keep: torch.Tensor) -> None:
        """After the step: keep (bool [] on the device) False puts back the sums of
        `begin_step`, on the device (no host read); True keeps what the step observed."""
        self.accum.copy_(torch.where(keep, self.accum, self._before))

    def drop_nonfinite(self) -> None:
        """After a skipped non-finite step: forget sums that a NaN/Inf output poisoned."""
        if not bool(torch.isfinite(self.accum).all()):
            self.accum.zero_()

    def fold_(self, engine) -> None:
        """Collective: sum every process's pending counts into the main process's."""
        if engine.distributed:
            engine.all_reduce_sum_(self.accum)
            if not engine.is_main:
                self.accum.zero_()

    def state(self) -> list:
        """[sum, count] pending on this process (after fold_: all of them, on the main one)."""
        return self.accum.cpu().tolist()

    def load_state(self, saved: Optional[list], is_main: bool) -> None:
        """Put saved sums back on the main process (the others start from zero)."""
        self.accum.zero_()
        if saved is not None and is_main:
            self.accum.copy_(torch.tensor(saved, dtype=torch.float64))
