"""Analytic FLOPs of the generator and discriminator forward passes and of one training step,
per image, from the model config alone (no network is built).

Counted: the multiply-accumulates (MACs) of every dense convolution, linear layer and matmul of
the active part of the network at (res, alpha), times 2. Every conv is counted at its output
size with the padded border (as a GEMM computes it). StyleGAN-style networks add the affine
layers, the mapping network (plus style mixing's second mapping pass, expected:
style_mixing_prob x mapping) and the demodulation matmul ([N, I] @ [I, O] per conv).
Not counted: elementwise work (bias, activation, pixel norm, noise, fade-in lerp), box and
nearest resampling, and minibatch-stddev. The depthwise FIR filters of StyleGAN-style
resampling are listed as their own kind ("filter") and left out of the model FLOPs: they are
bandwidth-bound and cannot run at the matmul rate these figures are compared with.

One training step, in multiples of the forward FLOPs per image F_G and F_D (the phases are those
of pggan.losses.make_phases; a phase that runs every k-th step counts 1/k per step):

  backward (w.r.t. weights and activations)           2 x forward
  backward w.r.t. activations only (D in the G step)  1 x forward
  gradient penalty (WGAN-GP on x_hat, R1 on reals)    4 x F_D = forward 1 + input gradient
      (create_graph) 1 + double backward 2: the backward of the input-gradient graph
      w.r.t. its incoming gradient and w.r.t. D's weights

  D adversarial phase  F_G (fakes, no grad) + 2 F_D (reals, fakes) + 4 F_D (their backward)
                       [+ 4 F_D penalty for wgan-gp, or for logistic-r1 with r1_interval 0]
  D_reg phase (lazy R1, every r1_interval steps)      4 F_D
                 [r3gan: + F_G (fakes) + 4 F_D (R2)]
  r3gan D phase with R1 + R2 on every step: the adversarial phase + 2 x 3 F_D (the penalties
                 share the adversarial forwards)
  G phase              F_G + F_D + 1 F_D (D's input gradient) + 2 F_G (G's backward)

  PGGAN's WGAN-GP step: (F_G + 10 F_D) + (3 F_G + 2 F_D) = 4 F_G + 12 F_D per image.

These are the FLOPs the algorithm needs, counted for the unfused network (model.fused_scale
never): a fused resampling conv computes the same function with fewer multiply-adds, so with
fused layers the TFLOP/s built on these counts is an effective rate for the same work, and
`executed_step_flops` (`--executed`) counts what each setting dispatches. What torch actually
runs can also be more:
`ExecutedFlops` counts the convolutions and matmuls dispatched in a real step (with torch's
own per-op formulas), and benchmarks/train_step.py reports the ratio (executed/model; see
benchmarks/RESULTS.md). With WGAN-GP it is above 1 because the double backward of leaky ReLU
returns a zero tensor for its input and autograd carries those zeros back through the whole
forward graph of D(x_hat): about 2 F_D of convolutions on zeros per step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple

if __name__ == "__main__":                  # run as a file: the repository root first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from pggan.config import Config, ModelConfig  # noqa: E402
from pggan.losses import make_phases  # noqa: E402
from pggan.nets.features import log2_res, nf_res, nf_stage, resolutions  # noqa: E402

BACKWARD_MULT = 2           # dL/dx and dL/dW: two GEMMs of the forward's size per forward GEMM
INPUT_GRAD_MULT = 1         # dL/dx only (D's weights frozen in the G step)
PENALTY_MULT = 1 + 1 + 2    # forward on x_hat + input gradient + double backward


@dataclass(frozen=True)
class Layer:
    name: str
    macs: float             # multiply-accumulates per image
    kind: str = "dense"     # dense (conv / linear / matmul) | filter (depthwise FIR)


def conv_macs(c_in: int, c_out: int, kernel: int, out_hw: int) -> int:
    """A dense conv producing [c_out, out_hw, out_hw] from c_in channels, per image."""
    return c_in * c_out * kernel * kernel * out_hw * out_hw


def _check(model: ModelConfig, res: int, alpha: float) -> None:
    log2_res(res)                                   # raises for a non-power of two
    if not 4 <= res <= model.max_res:
        raise ValueError(f"flops: resolution {res} is not a stage of a network built for "
                         f"max_res {model.max_res}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"flops: alpha must be in [0, 1] (got {alpha})")


def _nf(model: ModelConfig):
    return lambda r: nf_res(r, model.fmap_base, model.fmap_max, model.fmap_min)


def _fading(res: int, alpha: float) -> bool:
    return res > 4 and alpha < 1.0


# --------------------------------------------------------------------------------------------
# Generator


def _pggan_generator(m: ModelConfig, res: int, alpha: float) -> List[Layer]:
    nf = _nf(m)
    layers = []
    in_dim = m.latent_dim
    if m.num_classes:
        layers.append(Layer("embed", m.num_classes * m.latent_dim))
        in_dim += m.latent_dim
    layers += [Layer("input.dense", in_dim * nf(4) * 16),
               Layer("input.conv", conv_macs(nf(4), nf(4), 3, 4))]
    for r in resolutions(res)[1:]:
        layers += [Layer(f"blocks.{r}.conv0", conv_macs(nf(r // 2), nf(r), 3, r)),
                   Layer(f"blocks.{r}.conv1", conv_macs(nf(r), nf(r), 3, r))]
    layers.append(Layer(f"torgb.{res}", conv_macs(nf(res), m.img_channels, 1, res)))
    if _fading(res, alpha):
        layers.append(Layer(f"torgb.{res // 2}",
                            conv_macs(nf(res // 2), m.img_channels, 1, res // 2)))
    return layers


def _fir_taps(m: ModelConfig) -> int:
    return len(m.fir_filter)


def _style_conv(m: ModelConfig, name: str, c_in: int, c_out: int, res: int,
                up: bool) -> List[Layer]:
    k = _fir_taps(m)
    affine_out = c_in if m.modulation == "demod" else 2 * c_out
    layers = [Layer(f"{name}.affine", m.w_dim * affine_out)]
    if up:                  # zero insertion to [c_in, res, res], then a k x k depthwise filter
        layers.append(Layer(f"{name}.fir_up", c_in * k * k * res * res, "filter"))
    layers.append(Layer(f"{name}.conv", conv_macs(c_in, c_out, 3, res)))
    if m.modulation == "demod":
        layers.append(Layer(f"{name}.demod", c_in * c_out))   # [1, I] @ [I, O] per image
    return layers


def _style_torgb(m: ModelConfig, name: str, c_in: int, res: int) -> List[Layer]:
    conv = Layer(f"{name}.conv", conv_macs(c_in, m.img_channels, 1, res))
    if m.modulation == "demod":
        return [Layer(f"{name}.affine", m.w_dim * c_in), conv]
    return [conv]


def _stylegan_generator(m: ModelConfig, res: int, alpha: float,
                        style_mixing: bool) -> List[Layer]:
    nf = _nf(m)
    mapping = []
    in_dim = m.latent_dim
    if m.num_classes:
        mapping.append(Layer("mapping.embed", m.num_classes * m.w_dim))
        in_dim += m.w_dim
    for i in range(m.mapping_layers):
        mapping.append(Layer(f"mapping.layers.{i}", (in_dim if i == 0 else m.w_dim) * m.w_dim))
    layers = list(mapping)
    if style_mixing and m.style_mixing_prob > 0:
        # Training mode: with probability p a second latent goes through the mapping network.
        layers += [Layer(lay.name + ".mix", m.style_mixing_prob * lay.macs) for lay in mapping]
    layers += _style_conv(m, "input.conv", nf(4), nf(4), 4, up=False)
    for r in resolutions(res)[1:]:
        layers += _style_conv(m, f"blocks.{r}.conv0", nf(r // 2), nf(r), r, up=True)
        layers += _style_conv(m, f"blocks.{r}.conv1", nf(r), nf(r), r, up=False)
    layers += _style_torgb(m, f"torgb.{res}", nf(res), res)
    if _fading(res, alpha):
        layers += _style_torgb(m, f"torgb.{res // 2}", nf(res // 2), res // 2)
    return layers


def generator_layers(model: ModelConfig, res: int, alpha: float = 1.0,
                     style_mixing: bool = True) -> List[Layer]:
    """The counted layers of G's forward at stage `res` and fade weight `alpha`, per image.
    style_mixing: count StyleGAN's expected second mapping pass (training mode)."""
    _check(model, res, alpha)
    if model.arch == "pggan":
        return _pggan_generator(model, res, alpha)
    if model.arch == "stylegan":
        return _stylegan_generator(model, res, alpha, style_mixing)
    raise ValueError(f"flops: model.arch must be pggan or stylegan (got {model.arch!r})")


# --------------------------------------------------------------------------------------------
# Discriminator (shared by both architectures; StyleGAN-style runs FIR-filter before the 2x down)


def discriminator_layers(model: ModelConfig, res: int, alpha: float = 1.0) -> List[Layer]:
    """The counted layers of D's forward on [N, C, res, res] images at fade weight `alpha`."""
    _check(model, res, alpha)
    m, nf = model, _nf(model)
    k = _fir_taps(m)
    layers = [Layer(f"fromrgb.{res}", conv_macs(m.img_channels, nf(res), 1, res))]
    for r in reversed(resolutions(res)[1:]):
        layers += [Layer(f"blocks.{r}.conv0", conv_macs(nf(r), nf(r), 3, r)),
                   Layer(f"blocks.{r}.conv1", conv_macs(nf(r), nf(r // 2), 3, r))]
        if m.arch == "stylegan":
            # one strided depthwise conv: k x k taps at the (r/2)^2 pixels that are kept
            layers.append(Layer(f"blocks.{r}.fir_down", nf(r // 2) * k * k * (r // 2) ** 2,
                                "filter"))
        if r == res and _fading(res, alpha):
            layers.append(Layer(f"fromrgb.{res // 2}",
                                conv_macs(m.img_channels, nf(res // 2), 1, res // 2)))
    ch = nf(4)
    ch_out = nf_stage(0, m.fmap_base, m.fmap_max, m.fmap_min)
    extra = m.mbstd_channels if m.mbstd_group > 0 else 0
    n_out = 1 + (m.num_classes if m.num_classes and m.cond_d == "acgan" else 0)
    layers += [Layer("output.conv", conv_macs(ch + extra, ch, 3, 4)),
               Layer("output.dense", ch * 16 * ch_out),
               Layer("output.out", ch_out * n_out)]
    if m.num_classes and m.cond_d == "projection":
        layers.append(Layer("output.project", m.num_classes * ch_out))
    return layers


def flops_of(layers: List[Layer], kind: str = "dense") -> float:
    """2 x the MACs of the layers of `kind` (dense | filter | all)."""
    return 2.0 * sum(lay.macs for lay in layers if kind == "all" or lay.kind == kind)


def forward_flops(model: ModelConfig, res: int, alpha: float = 1.0) -> Tuple[float, float]:
    """-> (F_G, F_D): model FLOPs of one image through G and through D (dense layers, training
    mode)."""
    return (flops_of(generator_layers(model, res, alpha)),
            flops_of(discriminator_layers(model, res, alpha)))


# --------------------------------------------------------------------------------------------
# One training step


@dataclass(frozen=True)
class StepFlops:
    """Model FLOPs per image of the global batch."""
    g_forward: float            # F_G
    d_forward: float            # F_D
    d_phases: float             # every D phase, amortised over its interval
    g_phase: float

    @property
    def total(self) -> float:
        return self.d_phases + self.g_phase


def step_flops(cfg: Config, res: int, alpha: float = 1.0) -> StepFlops:
    """Model FLOPs per image of one training step (D phases + G phase) at (res, alpha)."""
    f_g, f_d = forward_flops(cfg.model, res, alpha)
    penalty = PENALTY_MULT * f_d
    d_total = g_total = 0.0
    for phase in make_phases(cfg.loss):
        if phase.net == "G":
            cost = (1 + BACKWARD_MULT) * f_g + (1 + INPUT_GRAD_MULT) * f_d
            g_total += cost / phase.interval
            continue
        cost = 0.0
        if phase.adversarial:
            cost += f_g + 2 * (1 + BACKWARD_MULT) * f_d
            if cfg.loss.kind == "wgan-gp":
                cost += penalty
        if phase.adversarial and phase.r2:
            cost += 2 * (penalty - f_d)     # R1 + R2 on the adversarial forwards (r3gan)
        elif phase.r1:
            cost += penalty * (2 if phase.r2 else 1) + (f_g if phase.r2 else 0.0)
        d_total += cost / phase.interval
    return StepFlops(g_forward=f_g, d_forward=f_d, d_phases=d_total, g_phase=g_total)


def phase_cycle(cfg: Config) -> int:
    """Steps after which the pattern of phases repeats (lazy R1: r1_interval)."""
    cycle = 1
    for phase in make_phases(cfg.loss):
        cycle = cycle * phase.interval // _gcd(cycle, phase.interval)
    return cycle


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# --------------------------------------------------------------------------------------------
# What torch actually runs


class ExecutedFlops(TorchDispatchMode):
    """Counts the FLOPs of the convolutions and matmuls dispatched inside the context, with
    torch.utils.flop_counter's formulas (forward, backward and double-backward ops alike).

    torch's FlopCounterMode does the same but also tracks modules with autograd hooks that make
    torch.autograd.grad on a leaf input fail (the gradient penalty does exactly that); this mode
    only counts. Work inside Triton kernels is not seen (none of them is a conv or matmul)."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.by_op: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            n = int(flop_registry[packet](*args, **kwargs, out_val=out))
            self.flops += n
            self.by_op[str(packet)] = self.by_op.get(str(packet), 0) + n
        return out


def count_executed_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the convs and matmuls that fn() dispatches."""
    with ExecutedFlops() as counter:
        fn()
    return counter.flops


def executed_step_flops(cfg: Config, res: int, alpha: float = 1.0, batch: int = 4) -> float:
    """Conv + matmul FLOPs per image that torch dispatches in one step of every loss phase
    (pggan.losses.GANLoss.phase_loss forward + backward, as the loop runs them; a lazy phase
    counted 1/interval) at (res, alpha), for the network cfg.model describes (its fused_scale
    included). Runs under FakeTensorMode: shapes and op dispatch are real, no arithmetic is
    done, so the 1024 px paper network is counted in seconds on a CPU."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pggan.losses import GANLoss, MicroBatch
    from pggan.nets import build_discriminator, build_generator

    m = cfg.model
    if m.num_classes:
        raise ValueError("executed_step_flops: class-conditional networks are not counted")
    total = 0.0
    with FakeTensorMode(allow_non_fake_inputs=True):
        G, D = build_generator(m).train(), build_discriminator(m).train()
        loss = GANLoss(cfg.loss, m.num_classes, m.cond_d)
        for phase in make_phases(cfg.loss):
            G.requires_grad_(phase.net == "G")
            D.requires_grad_(phase.net == "D")
            mb = MicroBatch(real=torch.randn(batch, m.img_channels, res, res), real_c=None,
                            z=torch.randn(batch, m.latent_dim),
                            gp_eps=torch.rand(batch, 1, 1, 1), res=res, alpha=alpha)
            with ExecutedFlops() as counter:
                out = loss.phase_loss(phase, mb, lambda z, c, r, a: G(z, c, r, a),
                                      lambda x, c, a: D(x, c, a), contextlib.nullcontext)
                out.loss.backward()
            total += counter.flops / phase.interval
    return total / batch


# --------------------------------------------------------------------------------------------
# Command line: the counts of a preset, per resolution


def main(argv=None) -> int:
    import argparse

    from pggan.config import ConfigError, apply_override, load_preset, validate
    from pggan.schedule import ResolutionSchedule

    p = argparse.ArgumentParser(prog="benchmarks/flops.py",
                                description="Model FLOPs per image of G, D and one training "
                                            "step at each resolution of a preset.")
    p.add_argument("--config", default="pggan-celebahq-1024", metavar="PRESET|FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--alpha", type=float, default=1.0, help="fade weight (default 1: stable)")
    p.add_argument("--executed", action="store_true",
                   help="also count the conv + matmul FLOPs torch dispatches per step "
                        "(FakeTensorMode, no arithmetic), unfused vs fused "
                        "(model.fused_scale never vs always)")
    p.add_argument("--res", default=None, metavar="LIST",
                   help="comma list: only these resolutions")
    args = p.parse_args(argv)
    try:
        cfg = load_preset(args.config)
        for assignment in args.set:
            apply_override(cfg, assignment)
        validate(cfg)
        sched = ResolutionSchedule(cfg, world_size=1)
        stages = resolutions(cfg.model.max_res, cfg.schedule.start_res)
        if args.res:
            wanted = [int(r) for r in args.res.split(",") if r.strip()]
            if any(r not in stages for r in wanted):
                raise ValueError(f"--res {args.res}: not all stages of this config "
                                 f"({', '.join(map(str, stages))})")
            stages = [r for r in stages if r in wanted]
        rows = []
        for res in stages:
            s = step_flops(cfg, res, args.alpha if res > cfg.schedule.start_res else 1.0)
            rows.append((res, s, sched.batch_of(res)))
    except (ConfigError, ValueError) as e:
        print(f"benchmarks/flops.py: {e}", file=sys.stderr)
        return 2
    if args.executed:
        return _print_executed(cfg, rows, args)
    print(f"{args.config}: {cfg.model.arch}, loss {cfg.loss.kind}, alpha {args.alpha:g}; "
          f"GFLOP per image (dense conv / linear MACs x 2)")
    print("| res | F_G | F_D | step (D phases + G phase) | batch | step TFLOP at batch |")
    print("|---:|---:|---:|---:|---:|---:|")
    for res, s, batch in rows:
        print(f"| {res} | {s.g_forward / 1e9:.4g} | {s.d_forward / 1e9:.4g} | "
              f"{s.total / 1e9:.4g} | {batch} | {s.total * batch / 1e12:.4g} |")
    return 0


def _print_executed(cfg: Config, rows, args) -> int:
    import copy
    print(f"{args.config}: {cfg.model.arch}, loss {cfg.loss.kind}, alpha {args.alpha:g}; "
          f"GFLOP per image: model (analytic, the unfused network) and executed (conv + "
          f"matmul FLOPs torch dispatches in one step, FakeTensorMode, batch 4)")
    print("| res | model step | executed, fused_scale never | executed, fused_scale always "
          "| never / always |")
    print("|---:|---:|---:|---:|---:|")
    for res, s, _ in rows:
        alpha = args.alpha if res > cfg.schedule.start_res else 1.0
        counts = {}
        for setting in ("never", "always"):
            c = copy.deepcopy(cfg)
            c.model.fused_scale = setting
            counts[setting] = executed_step_flops(c, res, alpha)
        print(f"| {res} | {s.total / 1e9:.4g} | {counts['never'] / 1e9:.4g} | "
              f"{counts['always'] / 1e9:.4g} | {counts['never'] / counts['always']:.3f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
