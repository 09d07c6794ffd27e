"""GAN objectives and their regularisers, and the training phases they imply.

  wgan-gp      D: D(fake) - D(real) + lambda * (|grad D(x_hat)| - target)^2 / target^2
                  + drift_eps * D(real)^2                          (PGGAN; Gulrajani et al. 2017)
               G: -D(fake)
  logistic-r1  D: softplus(D(fake)) + softplus(-D(real)),  R1 = gamma/2 * |grad_x D(real)|^2
               G: softplus(-D(fake))                (non-saturating; StyleGAN2, lazy R1)
  r3gan        D: softplus(-(D(real) - D(fake))) + gamma/2 * (R1 + R2),
                  R1 = |grad_x D(real)|^2, R2 = |grad_x D(fake)|^2, on every D step (or lazily,
                  every loss.r1_interval steps)
               G: softplus(-(D(fake) - D(real)))    (relativistic pairing loss, RpGAN + R1 + R2;
                                                    Huang et al., NeurIPS 2024, eq. 5-6)
  lsgan        D: ((D(real) - 1)^2 + D(fake)^2) / 2,  G: (D(fake) - 1)^2 / 2
  hinge        D: relu(1 - D(real)) + relu(1 + D(fake)),  G: -D(fake)

When D returns class logits besides the score (model.cond_d = acgan), cross-entropy on the real
labels (reals and fakes, for D) and on the generating labels (fakes, for G) is added with weight
loss.acgan_weight (Odena et al. 2017, as in PGGAN's conditional runs).

Gradient penalties run in float32 with autocast off: squared gradient norms lose too much in
bfloat16.

R3GAN pairs real image i with fake image i of the same micro-batch (row i of the reals with row i
of the latents). The rows of a micro-batch are the same global rows whatever the number of
processes (the loop assigns each rank its slice of the global batch), so 1 and N processes form
the same pairs. D's scores are only defined up to a constant under this loss (it sees
differences only), so ADA's overfitting signal for r3gan is sign(D(real) - D(fake)) of the
pairs, not sign(D(real)).

A training step is a list of `Phase`s (data, not branches): which network a phase updates, on
which steps it runs and which terms it computes. Lazy R1 (StyleGAN2 sec. 4) is a `D_reg` phase
every `r1_interval` D steps whose loss is multiplied by the interval; D's Adam then runs with
lr * c and betas ** c, c = interval / (interval + 1), to keep the effective step the same.
r3gan with `r1_interval` N > 0 does the same with R1 + R2: D_main has the pairing loss alone,
D_reg every N steps the two penalties times N (R2 on fakes of fresh latents), which saves the
double backward on N - 1 of N D steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import DEFAULT_R1_INTERVAL, LOSS_KINDS, LossConfig
from .stats import report


# --------------------------------------------------------------------------------------------
# Per-sample terms. Scores are D's first output column, [N] float.


def d_adversarial(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor):
    """-> [N] D loss per sample."""
    if kind == "wgan-gp":
        return fake_scores - real_scores
    if kind == "logistic-r1":
        return F.softplus(fake_scores) + F.softplus(-real_scores)
    if kind == "lsgan":
        return 0.5 * ((real_scores - 1.0).square() + fake_scores.square())
    if kind == "hinge":
        return F.relu(1.0 - real_scores) + F.relu(1.0 + fake_scores)
    if kind == "r3gan":
        return F.softplus(fake_scores - real_scores)          # softplus(-(real - fake))
    raise ValueError(f"loss.kind must be one of {', '.join(LOSS_KINDS)} (got {kind!r})")


def g_adversarial(kind: str, fake_scores: torch.Tensor,
                  real_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-> [N] G loss per sample. `real_scores` (constant for G) only for r3gan's pairs."""
    if kind == "r3gan":
        if real_scores is None:
            raise ValueError("g_adversarial: r3gan pairs each fake with a real score")
        return F.softplus(real_scores - fake_scores)          # softplus(-(fake - real))
    if kind in ("wgan-gp", "hinge"):
        return -fake_scores
    if kind == "logistic-r1":
        return F.softplus(-fake_scores)
    if kind == "lsgan":
        return 0.5 * (fake_scores - 1.0).square()
    raise ValueError(f"loss.kind must be one of {', '.join(LOSS_KINDS)} (got {kind!r})")


ScoreFn = Callable[[torch.Tensor], torch.Tensor]   # images [N, C, H, W] -> scores [N]


def _penalty_autocast(device_type: str, precision: str):
    """loss.penalty_precision -> the autocast context of a penalty's D passes: fp32 turns
    autocast off; bf16 runs D's forward, the input gradient and (recorded in that graph) the
    double backward in bfloat16. Only the squared norm needs fp32: it sums C x H x W squares."""
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    raise ValueError(f"loss.penalty_precision must be fp32 or bf16 (got {precision!r})")


def gradient_penalty(score_fn: ScoreFn, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor, target: float = 1.0,
                     precision: str = "fp32") -> torch.Tensor:
    """WGAN-GP on x_hat = real + eps * (fake - real), eps [N, 1, 1, 1] in [0, 1):
    (|grad D(x_hat)|_2 - target)^2 / target^2 per sample, [N], float32, differentiable
    (create_graph) so D's parameters get its gradient. precision: that of D's passes
    (fp32 | bf16); the squared norm is always summed in fp32."""
    with _penalty_autocast(real.device.type, precision):
        x_hat = torch.lerp(real.float(), fake.float(), eps.float()).detach().requires_grad_(True)
        scores = score_fn(x_hat).float()
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    with torch.autocast(real.device.type, enabled=False):
        norm = grad.float().flatten(1).norm(2, dim=1)               # [N], fp32
        return (norm - target).square() / (target ** 2)


def r1_penalty(score_fn: ScoreFn, real: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """R1 (Mescheder et al. 2018): |grad_x D(real)|^2 per sample, [N], float32,
    differentiable. Multiply by gamma / 2. precision: that of D's passes (fp32 | bf16);
    the squared norm is always summed in fp32."""
    return scores_and_grad_sq(lambda x: score_fn(x)[:, None], real, precision)[1]


def scores_and_grad_sq(run_D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       precision: str = "fp32"):
    """One forward of D on `x` that serves both the adversarial term and a zero-centred
    gradient penalty (R1 on reals, R2 on fakes): -> (D output [N, 1 (+K)] float32,
    |grad_x D(x)[:, 0]|^2 per sample [N] float32), both differentiable w.r.t. D's parameters
    (create_graph). precision: that of D's passes (fp32 | bf16); the squared norm is always
    summed in fp32. R3GAN uses the same forward for its loss and its penalty, which saves the
    separate penalty forward of each."""
    with _penalty_autocast(x.device.type, precision):
        x = x.float().detach().requires_grad_(True)
        out = run_D(x).float()
        (grad,) = torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
    with torch.autocast(x.device.type, enabled=False):
        return out, grad.float().square().flatten(1).sum(dim=1)     # [N, 1 (+K)], [N] fp32


# --------------------------------------------------------------------------------------------
# Phases.


@dataclass(frozen=True)
class Phase:
    name: str               # D_main | D_reg | D_both | G_main
    net: str                # "D" or "G": the network this phase's optimizer step updates
    interval: int           # runs on the steps with step_index % interval == 0
    gain: float             # loss multiplier (lazy regularisation: the interval)
    adversarial: bool       # adversarial term (+ drift, GP and class terms that go with it)
    r1: bool                # R1 term (on reals)
    r2: bool = False        # R2 term (the same penalty on fakes; r3gan)


def lazy_r1_interval(cfg: LossConfig) -> int:
    """The penalties (R1; R1 + R2 for r3gan) every N D steps in a D_reg phase (lazy) when
    > 0; 0 when the kind has no R1 or computes it on every step."""
    if cfg.kind not in DEFAULT_R1_INTERVAL:
        return 0
    k = DEFAULT_R1_INTERVAL[cfg.kind] if cfg.r1_interval is None else cfg.r1_interval
    return max(k, 0)


def d_optimizer_ratio(cfg: LossConfig) -> float:
    """c = interval / (interval + 1): D's Adam uses lr * c and betas ** c under lazy R1."""
    k = lazy_r1_interval(cfg)
    return k / (k + 1) if k else 1.0


def make_phases(cfg: LossConfig) -> Tuple[Phase, ...]:
    """D phases first, then G (PGGAN alternates one D step and one G step)."""
    k = lazy_r1_interval(cfg)
    r2 = cfg.kind == "r3gan"
    if cfg.kind == "r3gan" and k == 0:  # R1 and R2 ride on the adversarial forwards
        d = (Phase("D_main", "D", 1, 1.0, adversarial=True, r1=True, r2=True),)
    elif cfg.kind == "logistic-r1" and k == 0:
        d = (Phase("D_both", "D", 1, 1.0, adversarial=True, r1=True),)
    elif k:
        d = (Phase("D_main", "D", 1, 1.0, adversarial=True, r1=False),
             Phase("D_reg", "D", k, float(k), adversarial=False, r1=True, r2=r2))
    else:
        d = (Phase("D_main", "D", 1, 1.0, adversarial=True, r1=False),)
    return d + (Phase("G_main", "G", 1, 1.0, adversarial=True, r1=False),)


# --------------------------------------------------------------------------------------------
# One phase on one micro-batch.


@dataclass
class MicroBatch:
    real: torch.Tensor                  # [B, C, R, R] float in [-1, 1], faded like G's output
    real_c: Optional[torch.Tensor]      # [B] int64 labels or None
    z: torch.Tensor                     # [B, latent] latents for this phase's fakes
    gp_eps: torch.Tensor                # [B, 1, 1, 1] WGAN-GP mixing weights in [0, 1)
    res: int
    alpha: float
    gamma: Optional[float] = None       # R1 / R2 weight at this step (the schedule's; None:
                                        # loss.r1_gamma)


@dataclass
class PhaseOutput:
    loss: torch.Tensor                  # scalar: mean over the micro-batch, times phase.gain
    real_scores: Optional[torch.Tensor]  # [B] D(real) (detached) when computed
    ada_signal: Optional[torch.Tensor] = None   # [B] whose sign feeds ADA: D(real), or
                                                # D(real) - D(fake) of the pairs for r3gan


class GANLoss:
    """Computes a phase's loss on a micro-batch and reports every term (pggan.stats)."""

    def __init__(self, cfg: LossConfig, num_classes: int = 0, cond_d: str = "projection"):
        if cfg.kind not in LOSS_KINDS:
            raise ValueError(f"loss.kind must be one of {', '.join(LOSS_KINDS)}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.acgan = num_classes > 0 and cond_d == "acgan"

    def _split(self, out: torch.Tensor):
        """D output [N, 1 (+K)] -> (scores [N] float32, class logits [N, K] or None)."""
        out = out.float()
        return out[:, 0], (out[:, 1:] if self.acgan else None)

    def _class_loss(self, logits, labels, tag: str) -> torch.Tensor:
        if logits is None:
            return 0.0
        ce = F.cross_entropy(logits, labels, reduction="none")      # [N]
        report(f"Loss/{tag}/class", ce)
        return self.cfg.acgan_weight * ce

    def phase_loss(self, phase: Phase, mb: MicroBatch, G, run_D, autocast) -> PhaseOutput:
        """G(z, c, res, alpha) -> images; run_D(images, c, alpha) -> D output [N, 1 (+K)];
        autocast() -> the mixed-precision context for the networks' forward passes."""
        cfg = self.cfg
        c = mb.real_c                                               # fakes use the reals' labels
        gamma = cfg.r1_gamma if mb.gamma is None else mb.gamma
        if phase.net == "G":
            real_scores = None
            with autocast():
                if cfg.kind == "r3gan":                             # D(real): a constant for G
                    with torch.no_grad():
                        real_scores = self._split(run_D(mb.real, c, mb.alpha))[0]
                fake = G(mb.z, c, mb.res, mb.alpha)
                scores, logits = self._split(run_D(fake, c, mb.alpha))
            g_adv = g_adversarial(cfg.kind, scores, real_scores)
            report("Loss/G/adv", g_adv)
            report("Scores/fake_G", scores)
            total = g_adv + self._class_loss(logits, c, "G")
            report("Loss/G/total", total)
            return PhaseOutput(total.mean() * phase.gain, None)

        terms = torch.zeros(mb.real.shape[0], device=mb.real.device)   # [B] float32
        real_scores = None
        ada_signal = None
        if phase.adversarial and cfg.kind == "r3gan":
            with torch.no_grad(), autocast():
                fake = G(mb.z, c, mb.res, mb.alpha)
            run = lambda x: run_D(x, c, mb.alpha)                  # noqa: E731
            if phase.r1:                # R1 and R2 ride on these forwards
                real_out, r1 = scores_and_grad_sq(run, mb.real, cfg.penalty_precision)
                fake_out, r2 = scores_and_grad_sq(run, fake, cfg.penalty_precision)
            else:                       # lazy: they come in the D_reg phase
                with autocast():
                    real_out, fake_out = run(mb.real), run(fake)
            real_scores, real_logits = self._split(real_out)
            fake_scores, fake_logits = self._split(fake_out)
            d_adv = d_adversarial(cfg.kind, real_scores, fake_scores)
            report("Loss/D/adv", d_adv)
            report("Scores/real", real_scores)
            report("Scores/fake", fake_scores)
            terms = terms + d_adv + self._class_loss(real_logits, c, "D_real") \
                + self._class_loss(fake_logits, c, "D_fake")
            if phase.r1:
                report("Loss/D/r1", r1)
                report("Loss/D/r2", r2)
                terms = terms + (gamma / 2) * (r1 + r2)
            ada_signal = (real_scores - fake_scores).detach()
            real_scores = real_scores.detach()
        elif phase.adversarial:
            with torch.no_grad(), autocast():
                fake = G(mb.z, c, mb.res, mb.alpha)
            with autocast():
                real_scores, real_logits = self._split(run_D(mb.real, c, mb.alpha))
                fake_scores, fake_logits = self._split(run_D(fake.detach(), c, mb.alpha))
            d_adv = d_adversarial(cfg.kind, real_scores, fake_scores)
            report("Loss/D/adv", d_adv)
            report("Scores/real", real_scores)
            report("Scores/fake", fake_scores)
            terms = terms + d_adv
            terms = terms + self._class_loss(real_logits, c, "D_real") \
                + self._class_loss(fake_logits, c, "D_fake")
            if cfg.kind == "wgan-gp":
                drift = real_scores.square()
                report("Loss/D/drift", drift)
                terms = terms + cfg.drift_eps * drift
                score_fn = lambda x: run_D(x, c, mb.alpha)[:, 0]   # noqa: E731
                gp = gradient_penalty(score_fn, mb.real, fake, mb.gp_eps, cfg.gp_target,
                                      cfg.penalty_precision)
                report("Loss/D/gp", gp)
                terms = terms + cfg.gp_lambda * gp
            real_scores = real_scores.detach()
            ada_signal = real_scores
        if phase.r1 and not (phase.adversarial and cfg.kind == "r3gan"):
            score_fn = lambda x: run_D(x, c, mb.alpha)[:, 0]        # noqa: E731
            r1 = r1_penalty(score_fn, mb.real, cfg.penalty_precision)
            report("Loss/D/r1", r1)
            terms = terms + (gamma / 2) * r1
            if phase.r2:                # lazy r3gan: R2 on fakes of this phase's latents
                with torch.no_grad(), autocast():
                    fake = G(mb.z, c, mb.res, mb.alpha)
                r2 = r1_penalty(score_fn, fake, cfg.penalty_precision)
                report("Loss/D/r2", r2)
                terms = terms + (gamma / 2) * r2
        report(f"Loss/{phase.name}/total", terms)
        return PhaseOutput(terms.mean() * phase.gain, real_scores, ada_signal)
