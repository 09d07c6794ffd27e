"""The progressive GAN of Karras et al. 2018 (PGGAN), built whole for max_res.

Every block from 4x4 to max_res exists from construction; `res` (G) or the image size (D)
selects the active part and `alpha` fades the newest block in:

  G: img = lerp(up(toRGB[res/2](h[res/2])), toRGB[res](block[res](h[res/2])), alpha)
  D: h   = lerp(fromRGB[res/2](down(img)),  block[res](fromRGB[res](img)),    alpha)

At alpha = 0 both compute exactly what the half-resolution networks computed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..ops import downsample2d, fade_in, pixel_norm, upsample2d
from .features import nf_res, nf_stage, resolutions
from .layers import (FUSED_SCALE_AUTO_RES, SQRT2, EqualizedConv2d, EqualizedLinear,
                     MinibatchStd, PixelNorm, from_rgb, label_onehot, to_rgb)
from ..ops.resample_conv import use_fused


def _check_stage(res: int, max_res: int, start_res: int = 4) -> None:
    if res < start_res or res > max_res or res & (res - 1):
        raise ValueError(f"resolution {res} is not a stage of this network "
                         f"({start_res}..{max_res}, powers of two)")


class GInputBlock(nn.Module):
    """latent -> dense 4x4 -> conv3x3, each followed by leaky ReLU and PixelNorm."""

    def __init__(self, in_dim: int, ch: int, impl: str):
        super().__init__()
        self.ch = ch
        # The dense layer is PGGAN's 4x4 conv on a 1x1 input; gain sqrt(2)/4 as in the paper code.
        self.dense = EqualizedLinear(in_dim, ch * 16, gain=SQRT2 / 4, act="lrelu", impl=impl)
        self.conv = EqualizedConv2d(ch, ch, 3, act="lrelu", impl=impl)
        self.norm = PixelNorm(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:             # [N, in] -> [N, ch, 4, 4]
        h = self.norm(self.dense(x).reshape(-1, self.ch, 4, 4))
        return self.norm(self.conv(h))


class GBlock(nn.Module):
    """nearest 2x up -> conv3x3 -> conv3x3, each followed by leaky ReLU and PixelNorm.
    fused: the up + first conv run as one transposed stride-2 conv (the same function)."""

    def __init__(self, in_ch: int, out_ch: int, impl: str, fused: bool = False):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, out_ch, 3, act="lrelu", impl=impl, resample="up",
                                     fused=fused)
        self.conv1 = EqualizedConv2d(out_ch, out_ch, 3, act="lrelu", impl=impl)
        self.norm = PixelNorm(impl)

    def forward(self, h: torch.Tensor) -> torch.Tensor:             # [N, Cin, R/2, R/2]
        h = self.norm(self.conv0(h))                                # [N, Cout, R, R]
        return self.norm(self.conv1(h))                             # [N, Cout, R, R]


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig, start_res: int = 4):
        super().__init__()
        self.cfg = cfg
        self.max_res, self.start_res = cfg.max_res, start_res
        self.latent_dim, self.num_classes = cfg.latent_dim, cfg.num_classes
        self.img_channels, self.impl = cfg.img_channels, cfg.impl
        nf = lambda r: nf_res(r, cfg.fmap_base, cfg.fmap_max, cfg.fmap_min)  # noqa: E731
        in_dim = cfg.latent_dim
        if cfg.num_classes:
            # Labels enter as a learned embedding, normalised like z and concatenated to it.
            self.embed = EqualizedLinear(cfg.num_classes, cfg.latent_dim, impl=cfg.impl)
            in_dim += cfg.latent_dim
        self.input = GInputBlock(in_dim, nf(4), cfg.impl)
        self.blocks = nn.ModuleDict()
        self.torgb = nn.ModuleDict({"4": to_rgb(nf(4), cfg.img_channels, cfg.impl)})
        for r in resolutions(cfg.max_res)[1:]:
            self.blocks[str(r)] = GBlock(nf(r // 2), nf(r), cfg.impl,
                                         use_fused(cfg.fused_scale, r, FUSED_SCALE_AUTO_RES))
            self.torgb[str(r)] = to_rgb(nf(r), cfg.img_channels, cfg.impl)

    def stage_modules(self, res: int) -> list:
        """Modules that take part at stage `res` (fading in): what G's step updates."""
        mods = [self.input] + ([self.embed] if self.num_classes else [])
        mods += [self.blocks[str(r)] for r in resolutions(res)[1:]]
        mods += [self.torgb[str(res)]] + ([self.torgb[str(res // 2)]] if res > 4 else [])
        return mods

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                res: Optional[int] = None, alpha: float = 1.0) -> torch.Tensor:
        res = self.max_res if res is None else int(res)
        _check_stage(res, self.max_res)
        x = pixel_norm(z, impl=self.impl)                           # [N, latent]
        if self.num_classes:
            e = self.embed(label_onehot(c, self.num_classes, z.device, z.dtype))
            x = torch.cat([x, pixel_norm(e, impl=self.impl)], dim=1)
        h = self.input(x)                                           # [N, nf(4), 4, 4]
        h_prev = h
        for r in resolutions(res)[1:]:
            h_prev = h
            h = self.blocks[str(r)](h)                              # [N, nf(r), r, r]
        img = self.torgb[str(res)](h)                               # [N, C, res, res]
        if res > 4 and alpha < 1.0:
            old = upsample2d(self.torgb[str(res // 2)](h_prev), mode="nearest")
            img = fade_in(old, img, alpha, impl=self.impl)
        return img


class DBlock(nn.Module):
    """conv3x3 -> conv3x3 -> 2x down, each conv followed by leaky ReLU.

    Down is PGGAN's 2x2 box, or the FIR filter (StyleGAN, [1,3,3,1]) when `taps` is given.
    fused (box only): the second conv and the box run as one stride-2 4x4 conv, with bias and
    leaky ReLU after the pool (PGGAN's fused_scale path)."""

    def __init__(self, in_ch: int, out_ch: int, impl: str, taps=None, fused: bool = False):
        super().__init__()
        self.taps = tuple(taps) if taps else None
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3, act="lrelu", impl=impl)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3, act="lrelu", impl=impl,
                                     resample=None if self.taps else "down",
                                     fused=fused and not self.taps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:             # [N, Cin, R, R]
        h = self.conv1(self.conv0(h))                               # box: [N, Cout, R/2, R/2]
        if self.taps:
            return downsample2d(h, mode="fir", taps=self.taps)      # [N, Cout, R/2, R/2]
        return h


class DOutputBlock(nn.Module):
    """minibatch-stddev -> conv3x3 -> dense 4x4 -> dense to score (+ class logits / projection)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = nf_res(4, cfg.fmap_base, cfg.fmap_max, cfg.fmap_min)
        ch_out = nf_stage(0, cfg.fmap_base, cfg.fmap_max, cfg.fmap_min)
        self.num_classes, self.cond_d = cfg.num_classes, cfg.cond_d
        self.mbstd = MinibatchStd(cfg.mbstd_group, cfg.mbstd_channels, cfg.impl) \
            if cfg.mbstd_group > 0 else None
        extra = cfg.mbstd_channels if cfg.mbstd_group > 0 else 0
        self.conv = EqualizedConv2d(ch + extra, ch, 3, act="lrelu", impl=cfg.impl)
        self.dense = EqualizedLinear(ch * 16, ch_out, gain=SQRT2, act="lrelu", impl=cfg.impl)
        n_out = 1 + (cfg.num_classes if cfg.num_classes and cfg.cond_d == "acgan" else 0)
        self.out = EqualizedLinear(ch_out, n_out, gain=1.0, impl=cfg.impl)
        if cfg.num_classes and cfg.cond_d == "projection":
            # Projection discriminator (Miyato & Koyama 2018): score += <embed(c), phi(x)>.
            self.project = EqualizedLinear(cfg.num_classes, ch_out, bias=False, impl=cfg.impl)

    def forward(self, h: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        if self.mbstd is not None:
            h = self.mbstd(h)                                       # [N, ch + F, 4, 4]
        h = self.conv(h)
        feat = self.dense(h.flatten(1))                             # [N, ch_out]
        out = self.out(feat)                                        # [N, 1 (+K)]
        if self.num_classes and self.cond_d == "projection":
            e = self.project(label_onehot(c, self.num_classes, feat.device, feat.dtype))
            out = out + (e * feat).sum(dim=1, keepdim=True) / (feat.shape[1] ** 0.5)
        return out


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.max_res, self.impl, self.num_classes = cfg.max_res, cfg.impl, cfg.num_classes
        nf = lambda r: nf_res(r, cfg.fmap_base, cfg.fmap_max, cfg.fmap_min)  # noqa: E731
        # StyleGAN-style runs blur before downsampling; the fade-in path stays a 2x2 box, the
        # same blend as the real images, so alpha = 0 still equals the half-resolution D.
        taps = cfg.fir_filter if cfg.arch == "stylegan" else None
        self.fromrgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for r in resolutions(cfg.max_res):
            self.fromrgb[str(r)] = from_rgb(cfg.img_channels, nf(r), cfg.impl)
            if r > 4:
                self.blocks[str(r)] = DBlock(
                    nf(r), nf(r // 2), cfg.impl, taps,
                    fused=use_fused(cfg.fused_scale, r, FUSED_SCALE_AUTO_RES))
        self.output = DOutputBlock(cfg)

    def stage_modules(self, res: int) -> list:
        mods = [self.output, self.fromrgb[str(res)]]
        mods += [self.blocks[str(r)] for r in resolutions(res)[1:]]
        return mods + ([self.fromrgb[str(res // 2)]] if res > 4 else [])

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None,
                alpha: float = 1.0) -> torch.Tensor:
        res = img.shape[-1]
        if img.ndim != 4 or img.shape[-2] != res or img.shape[1] != self.cfg.img_channels:
            raise ValueError(f"D expects [N, {self.cfg.img_channels}, R, R] images "
                             f"(got {tuple(img.shape)})")
        _check_stage(res, self.max_res)
        h = self.fromrgb[str(res)](img)                             # [N, nf(res), res, res]
        if res > 4:
            h = self.blocks[str(res)](h)                            # [N, nf(res/2), res/2, ..]
            if alpha < 1.0:
                old = self.fromrgb[str(res // 2)](downsample2d(img, mode="box"))
                h = fade_in(old, h, alpha, impl=self.impl)
            for r in reversed(resolutions(res // 2)[1:]):
                h = self.blocks[str(r)](h)
        return self.output(h, c)                                    # [N, 1 (+K)]
