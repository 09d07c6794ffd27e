"""The exponential moving average of the generator's weights (G_ema).

G_ema is what snapshots, image grids and metrics use. Its half-life is given in images
(ema.ema_kimg thousand), so the per-step decay depends on the batch:

    beta = 0.5 ** (batch / ema_nimg)                  (Karras et al. 2019/2020 convention)
    ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup)   while ramping up (rampup set)

so early in training, when G changes fast, G_ema follows it closely (beta = 0 at cur_nimg 0).
`ema.beta_per_step` replaces this with a fixed decay per optimizer step, as the PGGAN paper did
(0.999, Karras et al. 2018 sec. A.1): a half-life of 693 steps, i.e. more images at the large
low-resolution batches than at the small high-resolution ones. The half-life itself may follow
a cosine ramp (ema.ema_kimg_ramp, R3GAN); the loop passes the schedule's value.
Only the parameters of the active stage are averaged (blocks that do not train do not change,
so averaging them is wasted work that grows with max_res); buffers (e.g. StyleGAN's w_avg) are
copied.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
import torch.nn as nn


def ema_beta(cur_nimg: int, batch: int, ema_kimg: float, ema_rampup: Optional[float],
             beta_per_step: Optional[float] = None) -> float:
    """Per-step decay for a step of `batch` images taken at `cur_nimg`."""
    if beta_per_step is not None:
        return float(beta_per_step)
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G in eval mode."""
    return copy.deepcopy(G).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float,
               modules: Optional[Iterable[str]] = None,
               keep: Optional[torch.Tensor] = None) -> None:
    """G_ema <- lerp(G, G_ema, beta) for the parameters of `modules` (names of submodules of G,
    e.g. from the stage's active modules; None: all), then copy every buffer.

    keep: a bool [] on the device; False leaves G_ema exactly as it is (a step the non-finite
    guard dropped), decided on the device without a host read. The weight is then the tensor
    keep * (1 - beta): with keep True the same float32 as the number 1 - beta (bit for bit the
    same update), with False 0, and lerp(a, b, 0) is a."""
    ema_params = dict(G_ema.named_parameters())
    if modules is None:
        names = list(ema_params)
    else:
        prefixes = tuple(m + "." for m in modules)
        names = [n for n in ema_params if n.startswith(prefixes)]
    src = dict(G.named_parameters())
    dst_list = [ema_params[n] for n in names]
    src_list = [src[n].detach() for n in names]
    if dst_list:
        # ema + (1 - beta) * (p - ema) == lerp(p, ema, beta)
        if keep is None:
            torch._foreach_lerp_(dst_list, src_list, 1.0 - beta)
        else:
            # A list of 0-dim weights: a single tensor weight would be read on the host as a
            # number (.item(), a sync); this overload lerps tensor by tensor on the device.
            weight = keep.to(torch.float32) * (1.0 - beta)
            torch._foreach_lerp_(dst_list, src_list, [weight] * len(dst_list))
    for (name, b_ema), (_, b) in zip(G_ema.named_buffers(), G.named_buffers()):
        b_ema.copy_(b if keep is None else torch.where(keep, b, b_ema))


def module_names(root: nn.Module, modules: Iterable[nn.Module]) -> list:
    """Qualified names of `modules` inside `root` (for update_ema's `modules`)."""
    by_id = {id(m): n for n, m in root.named_modules()}
    return [by_id[id(m)] for m in modules]
