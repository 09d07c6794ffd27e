"""Which maintenance is due at a pass of the training loop: a pure function of the position.

The loop passes `cur_nimg` (images shown now) and `prev_nimg` (images shown before the step that
led here; None at the first pass of a run, fresh or resumed). An interval event is due when
the step crossed a multiple of its interval, so ticks, snapshots and metrics fall on the same
images in an uninterrupted run and in any resumed one, whatever the batch size of each stage:

  tick        status line, TensorBoard, stats.jsonl, image grid: at the first pass of a run,
              at every multiple of train.tick_kimg crossed, and at the end
  snapshot    network snapshot: at every multiple of train.snapshot_kimg crossed, at the
              start of a stage (the network of the finished one), at the end
  metrics     metrics.names: at every multiple of metrics.interval_kimg crossed (0: never
              before the end), at the end
  checkpoint  training state at the same moments as the snapshot; its kind says why, in this
              order of precedence: boundary (a stage starts here), final, interval

Nothing is saved at the first pass of a run: a fresh run has trained nothing, and a resumed
one holds exactly the state it was started from. A stop signal's state is not decided here:
the loop writes it when the signal arrives (kind "signal").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import Config
from ..schedule import ResolutionSchedule, kimg_to_nimg


@dataclass(frozen=True)
class Maintenance:
    tick: bool
    snapshot: bool
    metrics: bool
    checkpoint: Optional[str]           # the state's kind, or None: no state now
    boundary_res: Optional[int]         # the resolution whose stage starts at cur_nimg

    @property
    def any_save(self) -> bool:
        return self.snapshot or self.checkpoint is not None


def interval_nimg(kimg: float) -> int:
    """An interval in kimg -> images; at least 1 image for a positive one, 0 for 0 (off)."""
    return max(1, kimg_to_nimg(kimg)) if kimg > 0 else 0


def crossed(prev_nimg: Optional[int], cur_nimg: int, every_nimg: int) -> bool:
    """True when (prev_nimg, cur_nimg] holds a multiple of `every_nimg` (0: never)."""
    return prev_nimg is not None and every_nimg > 0 and \
        cur_nimg // every_nimg > prev_nimg // every_nimg


def maintenance_due(schedule: ResolutionSchedule, cfg: Config, cur_nimg: int,
                    prev_nimg: Optional[int]) -> Maintenance:
    t = cfg.train
    done = cur_nimg >= schedule.total_nimg
    first = prev_nimg is None
    tick = first or done or crossed(prev_nimg, cur_nimg, interval_nimg(t.tick_kimg))
    if first:
        return Maintenance(tick=tick, snapshot=False, metrics=False, checkpoint=None,
                           boundary_res=None)
    res = schedule.stage_at(cur_nimg).res
    boundary = res != schedule.stage_at(prev_nimg).res
    at_interval = crossed(prev_nimg, cur_nimg, interval_nimg(t.snapshot_kimg))
    metrics = bool(cfg.metrics.names) and (
        done or crossed(prev_nimg, cur_nimg, interval_nimg(cfg.metrics.interval_kimg)))
    kind = "boundary" if boundary else "final" if done else "interval" if at_interval else None
    return Maintenance(tick=tick, snapshot=kind is not None, metrics=metrics, checkpoint=kind,
                       boundary_res=res if boundary else None)
