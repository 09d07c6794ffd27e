"""Where in training we are: a pure function of `cur_nimg` (images shown) and the config.

PGGAN (Karras et al. 2018, sec. 3 and the official configuration) grows from `start_res`:

  start_res:      stabilise for stab_kimg                           (no fade: nothing to fade)
  each later res: fade the new block in over fade_kimg (alpha 0 -> 1), then stabilise for
                  stab_kimg (alpha = 1)
  max_res:        fade in, then stabilise until total_kimg

Stage lengths can be set per resolution (`fade_kimg_by_res`, `stab_kimg_by_res`). Everything
else the loop needs at a given `cur_nimg` comes from here too: the global minibatch of the
resolution (`batch_by_res`), its split into per-GPU micro-batches (capped by
`batch_per_gpu_by_res` / `batch_per_gpu_max`, the rest reached by gradient accumulation) and
the learning rate (`lr_by_res`). A resumed run restores `cur_nimg` and gets the same answers.

The hyper-parameters that R3GAN (Huang et al. 2024) ramps are answered here too, each a
`config.Cosine` of the global `cur_nimg` when its ramp is set (`kimg > 0`) and the constant
setting otherwise: the base lr (`schedule.lr_ramp`), Adam's beta2 (`optim.beta2_ramp`), the
R1/R2 weight gamma (`loss.gamma_ramp`), the EMA half-life (`ema.ema_kimg_ramp`) and, with
`augment.mode fixed`, the augmentation probability (`augment.p_ramp`). The ramps run over
images shown, across stages: a new resolution still starts with its fade-in, with whatever
lr / gamma the ramp has reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .config import Config, ConfigError
from .nets.features import resolutions


class ScheduleError(ConfigError):
    """A schedule that cannot run (e.g. a batch that does not split over the processes)."""


def kimg_to_nimg(kimg: float) -> int:
    return int(round(float(kimg) * 1000))


@dataclass(frozen=True)
class Stage:
    res: int
    index: int              # 0 for start_res
    start_nimg: int         # first image of the stage (the fade-in starts here)
    fade_nimg: int          # 0 at start_res
    end_nimg: int           # first image of the next stage; total_nimg for the last stage

    @property
    def fade_end_nimg(self) -> int:
        return self.start_nimg + self.fade_nimg


@dataclass(frozen=True)
class SchedulePoint:
    """The schedule's answer for one `cur_nimg` and world size."""
    cur_nimg: int
    res: int
    alpha: float            # fade-in weight of the newest block, in [0, 1]
    phase: str              # "fade" | "stab"
    stage_index: int
    stage_start_nimg: int
    fade_end_nimg: int
    stage_end_nimg: int     # exclusive; total_nimg for the last stage reached
    batch: int              # global images per optimizer step (all processes, all rounds)
    batch_per_gpu: int      # images per process per forward/backward (micro-batch)
    accum_rounds: int       # micro-batches per process per step: batch_per_gpu * rounds *
                            # world_size == batch
    lr: float               # this resolution's learning rate at cur_nimg (ramped when set)
    beta2: float            # Adam beta2
    gamma: float            # R1 (logistic-r1) / R1 + R2 (r3gan) weight
    ema_kimg: float         # G_ema half-life, thousands of images (before its ramp-up)
    augment_p: Optional[float]  # augmentation probability when fixed; None: ADA decides


def fade_ended_before(point: SchedulePoint) -> bool:
    """True for the first step of a stage's stabilisation: the step before it (within the
    stage, the same batch earlier) was still fading. Pure in (cur_nimg, config), so an
    uninterrupted and a resumed run reset Adam on the same step (optim.reset_on_stab)."""
    prev = point.cur_nimg - point.batch
    return (point.phase == "stab" and point.fade_end_nimg > point.stage_start_nimg
            and point.stage_start_nimg <= prev < point.fade_end_nimg)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    d = max(1, min(n, cap))
    while n % d:
        d -= 1
    return d


class ResolutionSchedule:
    """cur_nimg -> SchedulePoint. Construct once per run (per world size); `at` is pure."""

    def __init__(self, cfg: Config, world_size: int = 1):
        s = cfg.schedule
        self.cfg = cfg
        self.world_size = int(world_size)
        self.total_nimg = kimg_to_nimg(cfg.train.total_kimg)
        res_list = resolutions(cfg.model.max_res, s.start_res)
        stages: List[Stage] = []
        start = 0
        for i, res in enumerate(res_list):
            fade = 0 if i == 0 else kimg_to_nimg(s.fade_kimg_by_res.get(res, s.fade_kimg))
            stab = kimg_to_nimg(s.stab_kimg_by_res.get(res, s.stab_kimg))
            last = i == len(res_list) - 1
            end = max(self.total_nimg, start + fade) if last else start + fade + stab
            stages.append(Stage(res=res, index=i, start_nimg=start, fade_nimg=fade,
                                end_nimg=end))
            start = end
        self.stages = stages
        for st in self.reached_stages():            # fail at start, not hours in
            self.batch_split(st.res)

    # ---- stages --------------------------------------------------------------------------

    def reached_stages(self) -> List[Stage]:
        """Stages that get at least one step before total_nimg (zero-length ones skipped)."""
        return [st for st in self.stages
                if st.start_nimg < self.total_nimg and st.end_nimg > st.start_nimg]

    def stage_at(self, cur_nimg: int) -> Stage:
        found = self.stages[0]
        for st in self.stages:
            if st.start_nimg <= cur_nimg and st.end_nimg > st.start_nimg:
                found = st
        return found

    def stage_of(self, res: int) -> Optional[Stage]:
        for st in self.stages:
            if st.res == res:
                return st
        return None

    # ---- batch and learning rate per resolution -----------------------------------------

    def batch_of(self, res: int) -> int:
        s = self.cfg.schedule
        return int(s.batch_by_res.get(res, s.batch_default))

    def batch_split(self, res: int) -> tuple:
        """-> (global batch, batch_per_gpu, accum_rounds) at `res` for this world size."""
        s = self.cfg.schedule
        batch = self.batch_of(res)
        if batch % self.world_size:
            raise ScheduleError(
                f"schedule: the {res}x{res} batch of {batch} images does not split over "
                f"{self.world_size} processes; set schedule.batch_by_res[{res}] (or "
                f"schedule.batch_default) to a multiple of {self.world_size}")
        per_process = batch // self.world_size
        cap = per_process
        if res in s.batch_per_gpu_by_res:
            cap = min(cap, int(s.batch_per_gpu_by_res[res]))
        if s.batch_per_gpu_max > 0:
            cap = min(cap, s.batch_per_gpu_max)
        # Micro-batches are all the same size: the largest divisor of the per-process share
        # not above the cap (e.g. 24 per process, cap 16 -> 2 rounds of 12).
        batch_per_gpu = _largest_divisor_at_most(per_process, cap)
        return batch, batch_per_gpu, per_process // batch_per_gpu

    def lr_of(self, res: int, cur_nimg: int = 0) -> float:
        s = self.cfg.schedule
        lr = float(s.lr_by_res.get(res, s.lr))
        return lr * s.lr_ramp.at(cur_nimg) / s.lr if s.lr_ramp.active else lr

    def hyper_at(self, cur_nimg: int) -> dict:
        """The ramped (or constant) beta2, gamma, ema_kimg and augment_p at `cur_nimg`."""
        c = self.cfg

        def ramped(ramp, constant: float) -> float:
            return float(ramp.at(cur_nimg)) if ramp.active else float(constant)
        p = None
        if c.augment.mode == "fixed":
            p = ramped(c.augment.p_ramp, c.augment.p)
        return {"beta2": ramped(c.optim.beta2_ramp, c.optim.beta2),
                "gamma": ramped(c.loss.gamma_ramp, c.loss.r1_gamma),
                "ema_kimg": ramped(c.ema.ema_kimg_ramp, c.ema.ema_kimg),
                "augment_p": p}

    # ---- the answer ----------------------------------------------------------------------

    def at(self, cur_nimg: int) -> SchedulePoint:
        cur_nimg = int(cur_nimg)
        if cur_nimg < 0:
            raise ValueError(f"cur_nimg must be >= 0 (got {cur_nimg})")
        st = self.stage_at(cur_nimg)
        if st.fade_nimg > 0 and cur_nimg < st.fade_end_nimg:
            alpha, phase = (cur_nimg - st.start_nimg) / st.fade_nimg, "fade"
        else:
            alpha, phase = 1.0, "stab"
        batch, batch_per_gpu, rounds = self.batch_split(st.res)
        return SchedulePoint(cur_nimg=cur_nimg, res=st.res, alpha=float(alpha), phase=phase,
                             stage_index=st.index, stage_start_nimg=st.start_nimg,
                             fade_end_nimg=st.fade_end_nimg,
                             stage_end_nimg=min(st.end_nimg, self.total_nimg),
                             batch=batch, batch_per_gpu=batch_per_gpu, accum_rounds=rounds,
                             lr=self.lr_of(st.res, cur_nimg), **self.hyper_at(cur_nimg))

    def describe(self) -> List[str]:
        """One line per reached stage, for the start of a run's log."""
        lines = []
        for st in self.reached_stages():
            batch, per_gpu, rounds = self.batch_split(st.res)
            end = min(st.end_nimg, self.total_nimg)
            lines.append(f"{st.res:>4}x{st.res:<4} kimg {st.start_nimg / 1000:9.1f} .. "
                         f"{end / 1000:9.1f}  fade {st.fade_nimg / 1000:7.1f} kimg  batch "
                         f"{batch} = {self.world_size} x {per_gpu} x {rounds}  "
                         f"lr {self.lr_of(st.res, st.start_nimg):g}")
        return lines
