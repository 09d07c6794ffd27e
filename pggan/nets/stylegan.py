"""A StyleGAN-style generator that grows progressively like PGGAN (arch: stylegan).

  z [N, latent] --pixel norm--(++ pixel-normed embed(c))--> mapping: `mapping_layers` FC,
  lr x0.01 --> w [N, w_dim] --broadcast--> ws [N, num_ws, w_dim]   (truncation, style mixing)

  const [nf(4), 4, 4] --conv(ws[0])--> h4                          toRGB_4(h4, ws[1])
  h_r = conv1(conv0_up(h_{r/2}, ws[2k-5]), ws[2k-4]),  k = log2(r)  toRGB_r(h_r, ws[2k-3])

Each synthesis conv is StyleGAN2's modulated 3x3 conv with weight demodulation (sec. 2.2) or
StyleGAN's conv followed by AdaIN (`model.modulation`), then per-pixel noise with a learned
strength, bias and leaky ReLU (the fused `noise_bias_act` op). Upsampling is zero insertion
followed by the FIR filter `model.fir_filter` ([1,3,3,1]). toRGB_r shares its w with the next
block's first conv, as in StyleGAN2, so num_ws(res) = 2 log2(res) - 2 (18 at 1024x1024).

Progressive growing and fade-in are PGGAN's (the whole network exists from construction):

  img = lerp(nearest_up(toRGB_{r/2}(h_{r/2})), toRGB_r(h_r), alpha)

so at alpha = 0 the output is exactly the half-resolution stage's output, upsampled (with
noise_mode 'const' or 'none'; 'random' draws fresh noise each call).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MODULATIONS, ModelConfig
from ..ops import bias_act, fade_in, pixel_norm, upsample2d
from ..ops.demod import demod_coefficients
from ..ops.noise_bias_act import noise_bias_act
from ..ops.resample_conv import conv3x3_fir_up, use_fused
from .features import log2_res, nf_res, resolutions
from .layers import FUSED_SCALE_AUTO_RES, SQRT2, EqualizedLinear, label_onehot, to_rgb
from .pggan import _check_stage

NOISE_MODES = ("random", "const", "none")


def num_ws_at(res: int) -> int:
    """Number of per-layer styles the synthesis network reads at stage `res`."""
    return 2 * log2_res(res) - 2


def conv_w_indices(res: int) -> tuple:
    """w indices of the convs of stage `res`: (conv,) at 4, (conv0, conv1) above."""
    k = log2_res(res)
    return (0,) if res == 4 else (2 * k - 5, 2 * k - 4)


def torgb_w_index(res: int) -> int:
    return 2 * log2_res(res) - 3


class MappingNetwork(nn.Module):
    """z (+ label) -> w, broadcast to ws; tracks w_avg for the truncation trick."""

    def __init__(self, cfg: ModelConfig, num_ws: int):
        super().__init__()
        if cfg.mapping_layers < 1:
            raise ValueError(f"model.mapping_layers must be >= 1 for arch stylegan "
                             f"(got {cfg.mapping_layers})")
        self.latent_dim, self.w_dim, self.num_ws = cfg.latent_dim, cfg.w_dim, num_ws
        self.num_classes, self.impl, self.w_avg_beta = cfg.num_classes, cfg.impl, cfg.w_avg_beta
        in_dim = cfg.latent_dim
        if cfg.num_classes:
            # Label -> learned embedding, normalised like z and concatenated (StyleGAN2-ADA).
            self.embed = EqualizedLinear(cfg.num_classes, cfg.w_dim, impl=cfg.impl)
            in_dim += cfg.w_dim
        self.layers = nn.ModuleList([
            EqualizedLinear(in_dim if i == 0 else cfg.w_dim, cfg.w_dim, gain=SQRT2,
                            lr_mult=cfg.mapping_lr_mult, act="lrelu", impl=cfg.impl)
            for i in range(cfg.mapping_layers)])
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))     # [w_dim], float32

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                update_w_avg: bool = True) -> torch.Tensor:
        """z [N, latent] -> ws [N, num_ws, w_dim]. In training mode w_avg tracks the batch
        mean of w (rate 1 - w_avg_beta per call) unless update_w_avg is False."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be [N, {self.latent_dim}] (got {tuple(z.shape)})")
        x = pixel_norm(z, impl=self.impl)                           # [N, latent]
        if self.num_classes:
            e = self.embed(label_onehot(c, self.num_classes, z.device, z.dtype))
            x = torch.cat([x, pixel_norm(e, impl=self.impl)], dim=1)
        for layer in self.layers:
            x = layer(x)                                            # [N, w_dim]
        if update_w_avg and self.training:
            with torch.no_grad():
                batch_mean = x.detach().float().mean(dim=0)
                self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))
        ws = x[:, None, :].expand(-1, self.num_ws, -1)              # [N, num_ws, w_dim]
        if truncation_psi != 1.0:
            cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
            head = self.w_avg.to(ws.dtype).lerp(ws[:, :cutoff], float(truncation_psi))
            ws = torch.cat([head, ws[:, cutoff:]], dim=1)
        return ws


def _instance_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    x = x - x.mean(dim=(2, 3), keepdim=True)                        # [N, C, H, W]
    return x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + eps)


class StyleConv(nn.Module):
    """(FIR 2x up) 3x3 conv driven by one style vector w, + noise + bias + leaky ReLU.

    demod: x * s -> (up) -> conv -> * d,  s = affine(w) [N, Cin], d = demod(weight, s)
    adain: (up) -> conv -> noise/bias/act -> instance norm -> * (1 + ys) + yb   (StyleGAN)
    """

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, res: int, up: bool,
                 cfg: ModelConfig):
        super().__init__()
        self.in_ch, self.out_ch, self.res, self.up = in_ch, out_ch, res, up
        self.modulation, self.use_noise, self.impl = cfg.modulation, cfg.use_noise, cfg.impl
        self.fir = tuple(float(t) for t in cfg.fir_filter)
        # fused (model.fused_scale): StyleGAN2's transposed conv + FIR once (conv3x3_fir_up);
        # else the FIR up at 2R, then a zero-padded conv (they differ in the 1-pixel border).
        self.fused = up and use_fused(cfg.fused_scale, res, FUSED_SCALE_AUTO_RES)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.weight_scale = 1.0 / math.sqrt(in_ch * 9)              # He constant (fan_in)
        self.bias = nn.Parameter(torch.zeros(out_ch))
        if cfg.modulation == "demod":
            # Styles start at 1 so that at init the layer is a plain (demodulated) conv.
            self.affine = EqualizedLinear(w_dim, in_ch, bias_init=1.0, impl=cfg.impl)
        else:
            self.affine = EqualizedLinear(w_dim, 2 * out_ch, impl=cfg.impl)   # [ys | yb]
        if cfg.use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
            self.register_buffer("noise_const", torch.randn(res, res))   # [res, res]

    def noise(self, x: torch.Tensor, noise_mode: str) -> Optional[torch.Tensor]:
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "const":
            return self.noise_const.to(x.dtype)[None, None]        # [1, 1, H, W]
        return torch.randn([x.shape[0], 1, self.res, self.res], device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        weight = self.weight * self.weight_scale                    # [Cout, Cin, 3, 3]
        if self.modulation == "demod":
            styles = self.affine(w)                                 # [N, Cin]
            # Scaling the input channels equals scaling the weights per sample (StyleGAN2's
            # non-fused path) and keeps one shared weight for the whole batch.
            x = x * styles.to(x.dtype)[:, :, None, None]
        if self.fused:
            x = conv3x3_fir_up(x, weight.to(x.dtype), self.fir, fused=True)   # [N, Cout, ..]
        else:
            if self.up:
                x = upsample2d(x, mode="fir", taps=self.fir)        # [N, Cin, res, res]
            x = F.conv2d(x, weight.to(x.dtype), padding=1)          # [N, Cout, res, res]
        if self.modulation == "demod":
            d = demod_coefficients(weight, styles, impl=self.impl)  # [N, Cout], float32
            x = x * d.to(x.dtype)[:, :, None, None]
        strength = self.noise_strength if self.use_noise else None
        x = noise_bias_act(x, self.noise(x, noise_mode), strength, self.bias, act="lrelu",
                           impl=self.impl)
        if self.modulation == "adain":
            ys, yb = self.affine(w).to(x.dtype).chunk(2, dim=1)     # [N, Cout] each
            x = _instance_norm(x) * (1.0 + ys[:, :, None, None]) + yb[:, :, None, None]
        return x


class StyleToRGB(nn.Module):
    """1x1 conv to image space. demod: modulated by w without demodulation (StyleGAN2);
    adain: PGGAN's plain toRGB (StyleGAN), which leaves its w unused."""

    def __init__(self, in_ch: int, w_dim: int, cfg: ModelConfig):
        super().__init__()
        self.modulated, self.impl = cfg.modulation == "demod", cfg.impl
        if self.modulated:
            self.affine = EqualizedLinear(w_dim, in_ch, bias_init=1.0, impl=cfg.impl)
            self.weight = nn.Parameter(torch.randn(cfg.img_channels, in_ch, 1, 1))
            self.weight_scale = 1.0 / math.sqrt(in_ch)
            self.bias = nn.Parameter(torch.zeros(cfg.img_channels))
        else:
            self.conv = to_rgb(in_ch, cfg.img_channels, cfg.impl)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self.modulated:
            return self.conv(x)                                     # [N, C_img, H, W]
        styles = self.affine(w) * self.weight_scale                 # [N, Cin]
        x = x * styles.to(x.dtype)[:, :, None, None]
        x = F.conv2d(x, self.weight.to(x.dtype))                    # [N, C_img, H, W]
        return bias_act(x, self.bias, dim=1, impl=self.impl)


class SynthesisInput(nn.Module):
    """Learned constant 4x4 input followed by one style conv."""

    def __init__(self, ch: int, w_dim: int, cfg: ModelConfig):
        super().__init__()
        self.const = nn.Parameter(torch.randn(ch, 4, 4))           # [C, 4, 4]
        self.conv = StyleConv(ch, ch, w_dim, 4, up=False, cfg=cfg)

    def forward(self, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.const[None].expand(w.shape[0], -1, -1, -1)        # [N, C, 4, 4]
        return self.conv(x, w, noise_mode)


class SynthesisBlock(nn.Module):
    """FIR 2x up + style conv -> style conv: [N, Cin, R/2, R/2] -> [N, Cout, R, R]."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, res: int, cfg: ModelConfig):
        super().__init__()
        self.conv0 = StyleConv(in_ch, out_ch, w_dim, res, up=True, cfg=cfg)
        self.conv1 = StyleConv(out_ch, out_ch, w_dim, res, up=False, cfg=cfg)

    def forward(self, h: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor,
                noise_mode: str) -> torch.Tensor:
        return self.conv1(self.conv0(h, w0, noise_mode), w1, noise_mode)


class StyleGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig, start_res: int = 4):
        super().__init__()
        if cfg.modulation not in MODULATIONS:
            raise ValueError(f"model.modulation must be one of {', '.join(MODULATIONS)} (got "
                             f"{cfg.modulation!r})")
        self.cfg = cfg
        self.max_res, self.start_res = cfg.max_res, start_res
        self.latent_dim, self.w_dim, self.num_classes = cfg.latent_dim, cfg.w_dim, cfg.num_classes
        self.img_channels, self.impl = cfg.img_channels, cfg.impl
        self.style_mixing_prob = cfg.style_mixing_prob
        self.num_ws = num_ws_at(cfg.max_res)
        nf = lambda r: nf_res(r, cfg.fmap_base, cfg.fmap_max, cfg.fmap_min)  # noqa: E731
        self.mapping = MappingNetwork(cfg, self.num_ws)
        self.input = SynthesisInput(nf(4), cfg.w_dim, cfg)
        self.blocks = nn.ModuleDict()
        self.torgb = nn.ModuleDict({"4": StyleToRGB(nf(4), cfg.w_dim, cfg)})
        for r in resolutions(cfg.max_res)[1:]:
            self.blocks[str(r)] = SynthesisBlock(nf(r // 2), nf(r), cfg.w_dim, r, cfg)
            self.torgb[str(r)] = StyleToRGB(nf(r), cfg.w_dim, cfg)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def stage_modules(self, res: int) -> list:
        """Modules that take part at stage `res` (fading in): what G's step updates."""
        mods = [self.mapping, self.input]
        mods += [self.blocks[str(r)] for r in resolutions(res)[1:]]
        mods += [self.torgb[str(res)]] + ([self.torgb[str(res // 2)]] if res > 4 else [])
        return mods

    def synthesis(self, ws: torch.Tensor, res: Optional[int] = None, alpha: float = 1.0,
                  noise_mode: str = "random") -> torch.Tensor:
        """ws [N, >= num_ws_at(res), w_dim] (or one w [N, w_dim]) -> image [N, C, res, res]."""
        res = self.max_res if res is None else int(res)
        _check_stage(res, self.max_res)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES} (got {noise_mode!r})")
        need = num_ws_at(res)
        if ws.ndim == 2:
            ws = ws[:, None, :].expand(-1, need, -1)
        if ws.ndim != 3 or ws.shape[1] < need or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, >= {need}, {self.w_dim}] at res {res} "
                             f"(got {tuple(ws.shape)})")
        h = self.input(ws[:, 0], noise_mode)                        # [N, nf(4), 4, 4]
        h_prev = h
        for r in resolutions(res)[1:]:
            h_prev = h
            i0, i1 = conv_w_indices(r)
            h = self.blocks[str(r)](h, ws[:, i0], ws[:, i1], noise_mode)   # [N, nf(r), r, r]
        img = self.torgb[str(res)](h, ws[:, torgb_w_index(res)])   # [N, C, res, res]
        if res > 4 and alpha < 1.0:
            old = self.torgb[str(res // 2)](h_prev, ws[:, torgb_w_index(res // 2)])
            img = fade_in(upsample2d(old, mode="nearest"), img, alpha, impl=self.impl)
        return img

    def mix_styles(self, ws: torch.Tensor, z: torch.Tensor, c: Optional[torch.Tensor],
                   res: int, truncation_psi: float = 1.0,
                   truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """Style-mixing regularisation (StyleGAN sec. 3.1): with probability
        style_mixing_prob, layers [cutoff, num_ws) take the w of a second random latent;
        cutoff is uniform over the layers active at `res`. Draws from the global torch RNG."""
        cutoff = int(torch.randint(1, num_ws_at(res), ()))
        if float(torch.rand(())) >= self.style_mixing_prob:
            return ws
        ws2 = self.mapping(torch.randn_like(z), c, truncation_psi, truncation_cutoff,
                           update_w_avg=False)
        return torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None,
                res: Optional[int] = None, alpha: float = 1.0, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None,
                noise_mode: str = "random") -> torch.Tensor:
        res = self.max_res if res is None else int(res)
        _check_stage(res, self.max_res)
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)  # [N, num_ws, w_dim]
        if self.training and self.style_mixing_prob > 0:
            ws = self.mix_styles(ws, z, c, res, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, res, alpha, noise_mode)
