"""The non-finite guard of the DDP engine's step, without a host read per step.

A NaN/Inf loss or gradient must never reach the weights, and the run must stop (on_nonfinite
stop) or drop the step (skip) on every rank alike. Reading a "was it finite?" flag on the host
after every phase would wait for the device to finish that phase: a host sync per phase, so the
host could never queue the next step's kernels while the device still runs this one.

So the decision is taken twice, once on each side:

  device, every phase   `phase_found_inf` reduces the phase's (all-reduced) gradients to one
                        flag, ORed with the earlier phases of the step (a bad phase drops the
                        rest of its step, as before), and hands it to torch's fused Adam as
                        `found_inf` (the hook torch.amp.GradScaler uses): with 1.0 the kernel
                        leaves the parameters, both moments and the step count as they were.
                        `keep` masks G_ema's update and ADA's sums of the step the same way.
                        Under on_nonfinite stop the flag is sticky: after a bad step nothing
                        updates any more, so the weights stay those of the last good step.
  host, at maintenance  `drain` copies the flags of every step since the last drain in one
                        transfer. The loop drains before anything that reads or writes state
                        (tick statistics, grid, snapshot, metrics, training state, stop), at
                        the same cur_nimg on every rank; the flags are equal on every rank
                        (computed from all-reduced gradients that a rank with a NaN loss
                        poisoned first), so every rank takes the same decision at the same
                        point and no extra collective is needed.

What this costs: a stop or a run of too many skips is noticed at the next tick or save (at most
train.tick_kimg thousand images later), not in the step itself; nothing is saved in between and
the weights do not move (stop) or only finite steps move them (skip), so the guarantees are
those of a check in the step. The DeepSpeed engine steps Adam inside ZeRO, which takes no
found_inf: there the loop keeps reading one flag per phase (Trainer._skip_nonfinite).
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """Where a step ran (host values, known when it was queued)."""
    step_index: int
    cur_nimg: int                       # images shown when the step started
    res: int
    phases: Tuple[Tuple[str, str], ...]  # (phase name, net) of the phases it ran, in order


def grads_nonfinite(params: Sequence[torch.Tensor], device) -> torch.Tensor:
    """bool [] on `device`: True if any gradient of `params` holds a NaN/Inf (no host read)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.bool, device=device)
    total = torch.stack(torch._foreach_norm(grads)).float().sum()   # NaN/Inf propagate
    return ~torch.isfinite(total)


class NonfiniteFlags:
    """Device-side flags of one run's steps, read by the host only in `drain`."""

    def __init__(self, device, sticky: bool):
        self.device = torch.device(device)
        self.sticky = bool(sticky)      # on_nonfinite stop: no update after a bad step
        self._halted = torch.zeros((), dtype=torch.bool, device=self.device)
        self._skip = self._halted
        self._phase_bad: List[torch.Tensor] = []
        self._pending: List[Tuple[torch.Tensor, StepRecord]] = []

    def begin_step(self) -> None:
        self._phase_bad = []
        self._skip = self._halted

    def phase_found_inf(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """After a phase's gradient all-reduce: float32 [] on the device, 1.0 if this phase
        or an earlier one of the step (or, sticky, an earlier step) was non-finite."""
        bad = grads_nonfinite(params, self.device)
        self._phase_bad.append(bad)
        self._skip = self._skip | bad
        return self._skip.to(torch.float32)

    def keep(self) -> torch.Tensor:
        """bool [] on the device: the step's updates stand (every phase was finite)."""
        return ~self._skip

    def end_step(self, record: StepRecord) -> None:
        if len(record.phases) != len(self._phase_bad):
            raise ValueError(f"end_step: {len(record.phases)} phases recorded, "
                             f"{len(self._phase_bad)} flagged")
        if self._phase_bad:
            self._pending.append((torch.stack(self._phase_bad), record))
        if self.sticky:
            self._halted = self._skip
        self._phase_bad = []

    @property
    def pending_steps(self) -> int:
        return len(self._pending)

    def drain(self) -> List[Tuple[StepRecord, List[bool]]]:
        """Every step flagged since the last drain, in order: (record, non-finite per phase).
        One device-to-host copy (a sync: call it where the loop synchronises anyway)."""
        if not self._pending:
            return []
        flags = torch.cat([f for f, _ in self._pending]).cpu().tolist()
        out, i = [], 0
        for f, record in self._pending:
            n = f.numel()
            out.append((record, [bool(v) for v in flags[i:i + n]]))
            i += n
        self._pending = []
        return out
