"""The training loop: progressive growing, one readable class.

Every pass of the loop, in this order (as edm2 orders it); which of status, snapshot, metrics
and checkpoint are due is decided by maintenance.maintenance_due from cur_nimg alone:

  stage       the schedule says which resolution `cur_nimg` belongs to; on a new one the
              optimizer state is reset (optim.reset_on_grow) and the data stream rebuilt
  status      at each tick: reduce the reported statistics, console line, TensorBoard,
              stats.jsonl, fixed-latent image grid
  snapshot    network-snapshot-<kimg>.pt (G_ema) at each snapshot interval, stage boundary, end
  metrics     metrics.names on G_ema every metrics.interval_kimg (0: at the end only)
  checkpoint  training state (checkpoint.TrainingState) at the same moments as the snapshot
  done?       cur_nimg >= total: exit 0
  step        D phases, G phase, EMA, ADA (data.augment.AdaController); cur_nimg += global
              batch. A stop signal skips it: status, a "signal" training state, exit 3

Exact resume. A training state holds cur_nimg and the step counter besides weights and
optimizer states; everything else is a function of them: schedule position, the latents and
penalty weights of a step (a torch.Generator seeded by (seed, cur_nimg) that draws the global
batch, each rank taking its rows, so 1 and N processes draw the same numbers), the global torch
RNG for randomness inside modules (seeded each step by (seed, rank, cur_nimg)), and the data
stream: the image at each global position is a pure function of (seed, position)
(pggan/data/order.py), so the stream is opened at cur_nimg at the start and at each stage
change only, and a run resumed from any state, a stop signal's included, reads exactly the
images the uninterrupted run reads.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import resource
import signal
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from ..config import Config, ConfigError
from ..data.reals import prepare_reals
from ..data.seeds import derive_seed
from ..data.stream import make_train_stream, resolve_num_workers
from ..files import first_line
from ..stats import Collector, RunLog, append_line, format_duration, image_grid_tensor
from ..losses import GANLoss, MicroBatch, d_optimizer_ratio, make_phases
from ..nets import build_discriminator, build_generator
from ..schedule import ResolutionSchedule, SchedulePoint, fade_ended_before
from ..snapshot import save_snapshot
from .checkpoint import (CheckpointError, TrainingState, check_model_compatible, checkpoint_dir,
                         load_module_state, optimizer_state_by_name)
from .compile import CompiledModules, phase_has_penalty
from .cpu_threads import set_cpu_threads
from .ema import ema_beta, make_ema, module_names, update_ema
from .engine import Engine
from .grid_writer import GridWriter
from .maintenance import Maintenance, maintenance_due
from .nonfinite import NonfiniteFlags, StepRecord, grads_nonfinite

EXIT_DONE = 0
EXIT_STOPPED = 3            # a stop signal arrived; the state was saved; run again to continue
DATA_FAILED = 1000          # above every signal number: the all-reduced "go on?" code
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
TB_GRID_MAX_CELL = 256      # px: grid cells in TensorBoard are downscaled to this (PNGs are not)
EXIT_NONFINITE = 4          # a loss or gradient became NaN/Inf; nothing new was saved
EXIT_SAVE_FAILED = 5        # a file could not be written (disk full, I/O error)
EXIT_DATA = 6               # the data failed (damaged shards, a dead loader worker); state saved


class RunStopped(Exception):
    """Ends the run on every rank with `code` and a one-line `message` (main prints it)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StopSignals:
    """SIGTERM / SIGINT / SIGUSR1 set a flag; the loop checks it between steps. A second
    SIGINT (Ctrl-C twice) interrupts at once.

    The same signal usually reaches the data loader's worker processes too (Ctrl-C signals
    the whole process group, and so does a job scheduler); they ignore it
    (pggan/data/workers.py) and are stopped by the stream when the trainer drops it."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    def __init__(self, cfg: Config, engine: Engine, run_dir: Path,
                 resume_state=None, resume_path: Optional[Path] = None, print_fn=print):
        self.cfg, self.engine, self.run_dir = cfg, engine, Path(run_dir)
        self.print_fn = print_fn
        self.device = engine.device
        if resume_state is not None and not isinstance(resume_state, TrainingState):
            resume_state = TrainingState.from_payload(resume_state, resume_path)
        # Torch's CPU threads (cpu_threads.py): chosen for a new run, the saved count on resume.
        self.cpu_threads = set_cpu_threads(resume_state.cpu_threads if resume_state else None)
        self.schedule = ResolutionSchedule(cfg, engine.world_size)
        self.total_nimg = self.schedule.total_nimg
        m = cfg.model
        self._check_data()

        # Networks: the whole network for max_res exists from the start, identical on every
        # rank (same seed, then rank 0's weights broadcast).
        torch.manual_seed(cfg.train.seed)
        self.G = build_generator(m).to(self.device).train()
        self.D = build_discriminator(m).to(self.device).train()
        engine.broadcast_module_(self.G)
        engine.broadcast_module_(self.D)
        # NHWC on CUDA unless told otherwise (train.channels_last null): cuDNN's bf16 / TF32
        # convs run natively in NHWC, and no op of the networks drops the layout.
        self.channels_last = cfg.train.channels_last if cfg.train.channels_last is not None \
            else self.device.type == "cuda"
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # A stage's shapes are fixed: cuDNN times its algorithms once per shape and keeps
            # the fastest (a process-wide torch setting; training owns its process).
            torch.backends.cudnn.benchmark = True
        self.G_ema = make_ema(self.G)
        self.nets = {"G": self.G, "D": self.D}
        # train.compile: the stage's modules compiled where no double backward runs through
        # them (compile.py); G_ema, copied above, stays eager.
        self.compiled = CompiledModules(cfg.train.compile) if cfg.train.compile != "off" \
            else None
        self._penalty_phase = False     # the running phase differentiates D's input gradient

        self.loss = GANLoss(cfg.loss, m.num_classes, m.cond_d)
        self.phases = make_phases(cfg.loss)
        c = d_optimizer_ratio(cfg.loss)      # lazy R1: D's Adam runs with lr * c, betas ** c
        o = cfg.optim
        self.lr_mult = {"G": 1.0, "D": c}
        # torch's fused Adam (one kernel per step on CUDA, a vectorised loop on CPU): its
        # `found_inf` input lets the device drop a non-finite step without the host looking
        # (nonfinite.py). Its rounding differs from the multi-tensor Adam used before by about
        # one float32 ulp (measured on CPU: at most 6e-8 apart after 5 steps on N(0, 1)
        # weights), so runs are not bit for bit those of older versions; a resumed run still
        # equals the uninterrupted one bit for bit.
        self.opt = {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.schedule.lr,
                                  betas=(o.beta1, o.beta2), eps=o.eps, fused=True),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.schedule.lr * c,
                                  betas=(o.beta1 ** c, o.beta2 ** c), eps=o.eps, fused=True),
        }
        # The DeepSpeed engine swaps them for ZeRO-partitioned Adam with the same settings.
        first = self.schedule.at(0)
        self.opt = engine.prepare_optimizers(self.nets, self.opt,
                                             first.batch_per_gpu * first.accum_rounds)
        # The device-side non-finite guard needs the fused Adam above; ZeRO steps its own
        # partitions and takes no found_inf, so the DeepSpeed engine reads a flag per phase.
        self.nonfinite = NonfiniteFlags(self.device, sticky=cfg.train.on_nonfinite == "stop") \
            if cfg.train.engine == "ddp" else None

        self.augment = None
        self.ada = None                                 # ADA's controller (augment.mode ada)
        if cfg.augment.mode != "off":
            from ..data.augment import AdaController, AugmentPipe
            self.augment = AugmentPipe(cfg.augment, m.img_channels).to(self.device)
            if cfg.augment.mode == "ada":
                self.ada = AdaController(self.augment, cfg.augment.interval, self.device)

        # Position: cur_nimg and the step counter (what a TrainingState restores); the schedule
        # answers everything else from them. `active_res` is the stage whose optimizer state,
        # stream and active parameters are current.
        self.cur_nimg = 0
        self.step_index = 0
        self.active_res: Optional[int] = None
        self.steps_this_run = 0
        self.stop_signum = 0                            # set once all ranks agreed to stop
        if resume_state is not None:
            self._load_state(resume_state, resume_path)

        self.stream = None
        self.active_params: Dict[str, list] = {}
        self.ema_modules: list = []
        self.collector = Collector()
        self.signals = StopSignals()
        self.log: Optional[RunLog] = None
        self.grids: Optional[GridWriter] = None         # main process, while run() runs
        self._g_kwargs = {"noise_mode": "const"} \
            if "noise_mode" in inspect.signature(self.G.forward).parameters else {}
        gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "grid"))
        self.grid_z = torch.randn([cfg.train.grid_size, m.latent_dim], generator=gen)
        self.grid_c = torch.arange(cfg.train.grid_size) % m.num_classes if m.num_classes \
            else None

    def _check_data(self) -> None:
        """Dataset vs. model and schedule, with one-line errors before anything runs."""
        m, path = self.cfg.model, self.cfg.data.path
        if path is None:
            if m.num_classes:
                raise ConfigError(f"model.num_classes={m.num_classes} needs a labelled dataset "
                                  f"(--data); the built-in synthetic source has no labels")
            return
        from ..data.dataset_info import load_dataset_info
        info = load_dataset_info(path)
        if info.channels != m.img_channels:
            raise ConfigError(f"--data {path}: the images have {info.channels} channel(s) but "
                              f"model.img_channels is {m.img_channels}; add --set "
                              f"model.img_channels={info.channels}")
        for st in self.schedule.reached_stages():
            info.check_resolution(st.res)
        if m.num_classes and info.num_classes != m.num_classes:
            raise ConfigError(f"--data {path}: the dataset has {info.num_classes} classes but "
                              f"model.num_classes is {m.num_classes}; use --num-classes "
                              f"{info.num_classes}")

    # ---- state ---------------------------------------------------------------------------

    def training_state(self, kind: str, boundary_res: Optional[int],
                       trained: Optional[SchedulePoint], opt_states: Optional[dict] = None
                       ) -> TrainingState:
        """The training state as saved (CPU tensors; checkpoint.TrainingState). Distributed:
        call `self.ada.fold_` on every rank first. `trained`: the point of the last step (its
        res and alpha are recorded). `opt_states`: engine.save_optimizer_states' entries
        (default: both Adam states by name)."""
        if opt_states is None:
            opt_states = {"G_opt": optimizer_state_by_name(self.opt["G"], self.G),
                          "D_opt": optimizer_state_by_name(self.opt["D"], self.D)}
        optimizers = dict(opt_states)
        shards = optimizers.pop("optimizer_shards", None)
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}   # noqa: E731
        return TrainingState(
            cur_nimg=self.cur_nimg, step_index=self.step_index, res=self.active_res,
            nets={name: cpu(getattr(self, name).state_dict()) for name in TrainingState.NETS},
            optimizers=optimizers, model=dataclasses.asdict(self.cfg.model),
            config=self.cfg.to_dict(), kind=kind, boundary_res=boundary_res,
            augment=cpu(self.augment.state_dict()) if self.augment is not None else None,
            ada_accum=self.ada.state() if self.ada is not None else None,
            trained_res=trained.res if trained else self.active_res,
            trained_alpha=trained.alpha if trained else 1.0, optimizer_shards=shards,
            world_size=self.engine.world_size, torch_version=str(torch.__version__),
            cpu_threads=torch.get_num_threads())

    def _load_state(self, state, path) -> None:
        """Restore a TrainingState (or the dict read_training_state returns)."""
        if not isinstance(state, TrainingState):
            state = TrainingState.from_payload(state, path)
        try:
            self._load_state_unchecked(state, path)
        except CheckpointError:
            raise
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: training state does not load "
                                  f"({first_line(e, 160)})") from None

    def _load_state_unchecked(self, state: TrainingState, path) -> None:
        check_model_compatible(state.model, self.cfg.model, path)
        saved_max = int(state.model["max_res"])
        for name in TrainingState.NETS:
            load_module_state(getattr(self, name), state.nets[name], saved_max, name, path)
        self.engine.load_optimizer_states(self.opt, self.nets, state.optimizers, path)
        if self.augment is not None and state.augment is not None:
            self.augment.load_state_dict(state.augment)
        if self.ada is not None:
            self.ada.load_state(state.ada_accum, self.engine.is_main)
        self.cur_nimg, self.step_index, self.active_res = \
            state.cur_nimg, state.step_index, state.res

    # ---- the loop ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.cur_nimg >= self.total_nimg

    def run(self) -> int:
        """Train until total_kimg (-> EXIT_DONE) or a stop signal (-> EXIT_STOPPED)."""
        if self.finished:                   # resumed from the final state: write nothing
            if self.engine.is_main:
                self.print_fn(f"training is complete at kimg {self.cur_nimg / 1000:g} "
                              f"(total-kimg {self.cfg.train.total_kimg:g}); nothing to do",
                              flush=True)
            return EXIT_DONE
        if self.engine.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.run_dir, self.engine.is_main, self.print_fn)
        self.grids = GridWriter(self.log) if self.engine.is_main else None
        self.signals.install()
        try:
            with self.collector.active():
                return self._loop()
        except RunStopped as e:
            return self._report_stop(e)
        except OSError as e:            # a write outside the guarded save helpers
            return self._report_stop(self._save_failed(e))
        finally:
            self.stream = None                              # ends data-loader workers
            self.signals.restore()
            if self.grids is not None:  # joined on every way out; an error is reported above
                self.grids.close(raise_error=False)
            try:
                self.log.close()
            except OSError:             # a full disk already reported; nothing more to save
                pass

    def _loop(self) -> int:
        self._describe_start()
        self.tick_index = 0
        self.tick_start_nimg, self.tick_start_time = self.cur_nimg, time.time()
        self.maintenance_sec = 0.0
        self.run_start_time = time.time()
        prev_nimg: Optional[int] = None     # cur_nimg before the last step (None: no step yet)
        while True:
            point = self.schedule.at(self.cur_nimg)
            self.enter_stage(point)
            due = maintenance_due(self.schedule, self.cfg, self.cur_nimg, prev_nimg)
            self._maintain(point, due, prev_nimg)
            if self.finished:
                self._check_nonfinite()
                self._write_on_main(self._close_grids)      # every grid written, or exit 5
                self.log.console(f"done: kimg {self.cur_nimg / 1000:g} in "
                                 f"{format_duration(time.time() - self.run_start_time)}")
                return EXIT_DONE
            before = self.cur_nimg
            self.train_step(point)
            if self.stop_signum:            # the step was skipped: cur_nimg did not move
                return self._stop(point, due, prev_nimg)
            prev_nimg = before

    def _maintain(self, point: SchedulePoint, due: Maintenance,
                  prev_nimg: Optional[int]) -> None:
        """Status, snapshot, metrics, checkpoint: what `due` says (maintenance.py), in that
        order. Their time is not counted in the tick's images per second."""
        t0 = time.time()
        if due.tick or due.any_save or due.metrics:
            self._check_nonfinite()         # before any statistic is reduced or state saved
        if due.tick:
            self._status(point)
        trained = self.schedule.at(prev_nimg) if prev_nimg is not None else None
        if due.snapshot:
            self._save_snapshot(point, trained, due.checkpoint == "boundary")
        if due.metrics:
            self._evaluate_metrics(point, trained)
        if due.checkpoint is not None:
            self._save_checkpoint(due.checkpoint, due.boundary_res, trained)
        if due.tick:                    # the next tick's clock starts after this maintenance
            self.tick_start_nimg, self.tick_start_time = self.cur_nimg, time.time()
            self.maintenance_sec = 0.0
        else:
            self.maintenance_sec += time.time() - t0

    def _stop(self, point: SchedulePoint, due: Maintenance, prev_nimg: Optional[int]) -> int:
        """All ranks agreed to stop (a signal, or failed data): a status line unless this
        position just had one, a "signal" training state when this run trained, then the
        exit code."""
        self._check_nonfinite()
        if not due.tick:
            self._status(point)
        if self.steps_this_run > 0:
            self._save_checkpoint("signal", None, self.schedule.at(prev_nimg))
        self._write_on_main(self._close_grids)
        if self.stop_signum == DATA_FAILED:
            raise RunStopped(EXIT_DATA, self._data_stop_message())
        self.log.console(f"stopped by signal {signal.Signals(self.stop_signum).name} at "
                         f"kimg {self.cur_nimg / 1000:g}; run the same command with "
                         f"--resume auto to continue (exit code {EXIT_STOPPED})")
        return EXIT_STOPPED

    def _describe_start(self) -> None:
        e, n = self.engine, self.cfg.model
        how = f"resuming at kimg {self.cur_nimg / 1000:g}" if self.cur_nimg else "starting"
        workers = resolve_num_workers(self.cfg.data.num_workers)
        self.log.console(f"pggan-train: {how}; {n.arch} to {n.max_res}x{n.max_res}, "
                         f"{e.world_size} process(es) on {e.device.type} ({self.cpu_threads} "
                         f"CPU thread(s) and {workers} loader worker(s) each), precision "
                         f"{e.mixed_precision}, run dir {self.run_dir}")
        for line in self.schedule.describe():
            self.log.console("  stage " + line)

    def enter_stage(self, point: SchedulePoint) -> bool:
        """On a new resolution: reset optimizers (PGGAN), drop the stream, pick the active
        parameters. Where a fade ends: reset optimizers when optim.reset_on_stab.
        -> True when a stage starts here."""
        new = point.res != self.active_res
        if new:
            if self.active_res is not None and self.cfg.optim.reset_on_grow:
                self._reset_optimizers()
            self.active_res = point.res
            self.stream = None
        elif self.cfg.optim.reset_on_stab and fade_ended_before(point):
            self._reset_optimizers()
        if new and self.compiled is not None:
            self.compiled.wrap(self.G.stage_modules(point.res) + self.D.stage_modules(point.res))
        if new or not self.active_params:
            self.active_params = {
                name: [p for mod in net.stage_modules(point.res) for p in mod.parameters()]
                for name, net in self.nets.items()}
            self.ema_modules = module_names(self.G, self.G.stage_modules(point.res))
        return new

    def _reset_optimizers(self) -> None:
        for opt in self.opt.values():
            opt.state.clear()

    def _agree_to_go_on(self, data_error: Optional[BaseException]) -> bool:
        """One small all-reduce per step, after the data fetch and before anything changes:
        every rank learns whether any rank received a stop signal (-> skip this step, save,
        exit) or failed to read its data (-> every rank raises instead of hanging in the next
        collective). A data loader whose workers were killed by the same SIGTERM as this
        process counts as stopped, not as failed."""
        code = 0
        if data_error is not None:
            code = self.signals.received or DATA_FAILED
        elif self.signals.received:
            code = self.signals.received
        if self.engine.distributed:
            flag = torch.tensor([code], dtype=torch.int64, device=self.device)
            code = int(self.engine.all_reduce_max_(flag).item())
        if code == DATA_FAILED:         # stop as on a signal (state saved), then EXIT_DATA
            self.data_error = data_error
        self.stop_signum = code
        return code == 0

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, point: SchedulePoint) -> None:
        """One optimizer step of every due phase on `point.batch` images, then EMA and ADA.
        Skipped (nothing changes) when a stop signal arrived: `stop_signum` is then set.
        With the DDP engine nothing in it reads a device value on the host (the non-finite
        guard decides on the device, nonfinite.py); tests/test_step_sync.py checks that."""
        cfg, eng = self.cfg, self.engine
        B, rounds = point.batch_per_gpu, point.accum_rounds
        # Randomness inside modules (StyleGAN noise and style mixing, augmentation).
        torch.manual_seed(derive_seed(cfg.train.seed, eng.rank, self.cur_nimg, "modules"))
        if point.augment_p is not None and self.augment is not None:
            self.augment.p = point.augment_p            # augment.mode fixed (+ p_ramp)
        micro = []                      # this rank's micro-batches: reals, labels, local rows
        data_error = None
        try:
            if self.stream is None:
                self.stream = self._make_stream(point)
            for k in range(rounds):
                images, labels = next(self.stream)
                real = self._prepare_reals(images, point.alpha)
                c = self._to_device(labels) if labels is not None and cfg.model.num_classes \
                    else None
                micro.append((real, c, slice(k * B, (k + 1) * B)))
        except Exception as e:          # noqa: BLE001 (decided together with the other ranks)
            data_error = e
            self.stream = None
        if not self._agree_to_go_on(data_error):
            return
        draws = self._draws(point)      # this rank's rows, on the device

        guard = self.nonfinite
        if guard is not None:
            guard.begin_step()
            if self.ada is not None:
                self.ada.begin_step()
        ran = []                        # (phase name, net) of the phases this step runs
        for phase in self.phases:
            if self.step_index % phase.interval:
                continue
            opt = self.opt[phase.net]
            self._penalty_phase = phase_has_penalty(phase, cfg.loss.kind)
            for name, net in self.nets.items():
                net.requires_grad_(name == phase.net)
            opt.zero_grad(set_to_none=True)
            z = draws["z_" + phase.net]
            for real, c, rows in micro:
                mb = MicroBatch(real=real, real_c=c, z=z[rows], gp_eps=draws["gp_eps"][rows],
                                res=point.res, alpha=point.alpha, gamma=point.gamma)
                out = self.loss.phase_loss(phase, mb, self._run_G, self._run_D, eng.autocast)
                (out.loss / rounds).backward()
                if out.ada_signal is not None and self.ada is not None:
                    self.ada.observe(out.ada_signal)
            params = [p for p in self.active_params[phase.net] if p.grad is not None]
            self._poison_grads_if_nonfinite(out.loss, params)
            eng.sync_grads(params)
            if guard is not None:
                # 1.0: fused Adam leaves weights, moments and step count as they are.
                opt.found_inf = guard.phase_found_inf(params)
                ran.append((phase.name, phase.net))
            elif self._skip_nonfinite(phase, point, params):
                return
            c_lazy = self.lr_mult[phase.net]            # lazy R1: lr * c, betas ** c
            for group in opt.param_groups:
                group["lr"] = point.lr * c_lazy
                group["betas"] = (cfg.optim.beta1 ** c_lazy, point.beta2 ** c_lazy)
            opt.step()
        for net in self.nets.values():
            net.requires_grad_(False)

        keep = guard.keep() if guard is not None else None     # bool [] on the device
        beta = ema_beta(self.cur_nimg, point.batch, point.ema_kimg, cfg.ema.ema_rampup,
                        cfg.ema.beta_per_step)
        update_ema(self.G_ema, self.G, beta, self.ema_modules, keep=keep)
        if guard is not None:
            if self.ada is not None:
                self.ada.keep_step(keep)                # a dropped step's signs are dropped
            guard.end_step(StepRecord(self.step_index, self.cur_nimg, point.res, tuple(ran)))
        self.cur_nimg += point.batch
        self.step_index += 1
        self.steps_this_run += 1
        if self.ada is not None:
            self.ada.after_step(self.step_index, eng)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device. CUDA: staged in pinned memory and copied with
        non_blocking, so the host does not wait for the copy (a pageable source makes
        cudaMemcpy synchronous, and a blocking copy waits for the whole stream)."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _draws(self, point: SchedulePoint) -> Dict[str, torch.Tensor]:
        """The step's random numbers, drawn for the global batch from (seed, cur_nimg) alone
        (so 1 and N processes, and a resumed run, draw the same ones), then this rank's rows
        in micro-batch order, moved to the device in one copy per tensor per step.

        Micro-step k of rank r holds global rows (k * world + r) * B + [0, B); here they
        become local rows k * B + [0, B). Drawn on the host: a CUDA generator would give other
        numbers than a CPU run, and the copies (pinned, non_blocking) cost no sync."""
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, "step",
                                                        self.cur_nimg))
        latent = self.cfg.model.latent_dim
        drawn = {"z_D": torch.randn([point.batch, latent], generator=gen),   # [batch, latent]
                 "z_G": torch.randn([point.batch, latent], generator=gen),
                 "gp_eps": torch.rand([point.batch, 1, 1, 1], generator=gen)}
        B, rounds, world = point.batch_per_gpu, point.accum_rounds, self.engine.world_size
        rank = self.engine.rank
        out = {}
        for name, t in drawn.items():
            mine = t.view(rounds, world, B, *t.shape[1:])[:, rank]   # [rounds, B, ...]
            out[name] = self._to_device(mine.reshape(rounds * B, *t.shape[1:]))
        return out

    def _make_stream(self, point: SchedulePoint):
        return make_train_stream(self.cfg.data, point.res, batch_per_gpu=point.batch_per_gpu,
                                 seed=self.cfg.train.seed, rank=self.engine.rank,
                                 world_size=self.engine.world_size, start_nimg=self.cur_nimg,
                                 img_channels=self.cfg.model.img_channels,
                                 pin_memory=self.device.type == "cuda",
                                 top_res=self.cfg.model.max_res)

    def _prepare_reals(self, images: torch.Tensor, alpha: float) -> torch.Tensor:
        return prepare_reals(images, alpha, self.device,
                             channels_last=self.channels_last,
                             impl=self.cfg.model.impl)

    def _run_G(self, z, c, res, alpha):
        return self.G(z, c, res, alpha)

    def _run_D(self, img, c, alpha):
        if self.compiled is not None:
            # A penalty's D call (its input requires grad, in a penalty phase) runs eagerly:
            # autograd.grad(create_graph=True) will differentiate its backward again.
            with self.compiled.eager_if(self._penalty_phase and img.requires_grad):
                return self._augment_and_D(img, c, alpha)
        return self._augment_and_D(img, c, alpha)

    def _augment_and_D(self, img, c, alpha):
        if self.augment is not None:
            img = self.augment(img)
        return self.D(img, c, alpha)

    # ---- faults: non-finite steps, failed writes, failed data ------------------------------
    #
    # Non-finite guard, at no extra collective with the DDP engine: a rank whose loss is NaN/Inf
    # turns its own gradients NaN before the flat gradient all-reduce, so after it every rank
    # holds the same non-finite gradients and decides the same way, in the same step, from its
    # own copy. The decision is taken on the device in the step (fused Adam's found_inf) and
    # read by the host at the next maintenance (nonfinite.py; `_check_nonfinite`). The
    # DeepSpeed engine reduces the gradients inside its step, so there the flag is all-reduced
    # (one int64) and read at once, one host sync per phase (`_skip_nonfinite`).

    nonfinite_skips = 0                 # steps skipped for non-finite values in this run
    _nonfinite_last_step = -2           # step_index of the last skipped step
    _nonfinite_in_a_row = 0
    data_error: Optional[BaseException] = None

    def _poison_grads_if_nonfinite(self, loss: torch.Tensor, params: list) -> None:
        if params:
            bad = torch.where(torch.isfinite(loss.detach().float()), 0.0, float("nan"))
            params[0].grad.add_(bad.to(params[0].grad.dtype))

    def _check_nonfinite(self) -> None:
        """Host side of the device guard: the flags of every step since the last call (one
        device-to-host copy), judged in step order as `_on_nonfinite` says. Call it on every
        rank at the same position, before anything reads or writes the training state."""
        if self.nonfinite is None:
            return
        for record, bad in self.nonfinite.drain():
            if any(bad):
                net = record.phases[bad.index(True)][1]
                self._on_nonfinite(net, record.res, record.cur_nimg, record.step_index)

    def _on_nonfinite(self, net: str, res: int, cur_nimg: int, step_index: int) -> None:
        """A step (step_index, started at cur_nimg) had a non-finite loss or gradient in its
        `net` phase. on_nonfinite stop: RunStopped(EXIT_NONFINITE) on every rank, nothing
        saved; skip: counted and logged, and N bad steps in a row stop the run the same way.
        Collective when distributed (the loss terms are gathered from every rank)."""
        terms = sorted({n for names in self.engine.all_gather_object(self._nonfinite_terms())
                        for n in names})
        what = f"{net} loss term {', '.join(terms)}" if terms else f"{net} gradient"
        where = f"at {res}x{res}, kimg {cur_nimg / 1000:g}"
        t = self.cfg.train
        if t.on_nonfinite == "skip":
            self._nonfinite_in_a_row = self._nonfinite_in_a_row + 1 \
                if self._nonfinite_last_step == step_index - 1 else 1
            self._nonfinite_last_step = step_index
            self.nonfinite_skips += 1
            if self._nonfinite_in_a_row < t.nonfinite_max_skips:
                self.log.console(f"  skipped a step: non-finite {what} {where} "
                                 f"({self._nonfinite_in_a_row} in a row, at most "
                                 f"{t.nonfinite_max_skips})")
                return
            what = f"{what} ({self._nonfinite_in_a_row} steps in a row)"
        raise RunStopped(EXIT_NONFINITE, f"non-finite {what} {where}: stopped without saving "
                                         f"({self._last_good_state()}); lower the learning "
                                         f"rate, or --set train.on_nonfinite=skip, then run "
                                         f"again with --resume auto")

    def _skip_nonfinite(self, phase, point: SchedulePoint, params: list) -> bool:
        """DeepSpeed engine, after a phase's backward: False if every gradient is finite (one
        host read of an all-reduced flag). Else `_on_nonfinite`, and under skip the step's
        remaining updates are dropped (phases already stepped keep theirs) and cur_nimg moves
        on."""
        bad = grads_nonfinite(params, self.device).to(torch.int64)
        if self.engine.distributed:
            bad = self.engine.all_reduce_max_(bad.reshape(1))
        if not bool(bad.item()):
            return False
        self._on_nonfinite(phase.net, point.res, self.cur_nimg, self.step_index)
        for opt in self.opt.values():
            opt.zero_grad(set_to_none=True)
        for net in self.nets.values():
            net.requires_grad_(False)
        if self.ada is not None:
            self.ada.drop_nonfinite()
        self.cur_nimg += point.batch
        self.step_index += 1
        self.steps_this_run += 1
        return True

    def _nonfinite_terms(self) -> list:
        """Reported loss terms whose running sum is NaN/Inf (this rank)."""
        def finite(v) -> bool:
            if torch.is_tensor(v):
                return bool(torch.isfinite(v).all())
            return not isinstance(v, float) or math.isfinite(v)
        return [name for name, acc in self.collector._sums.items()
                if name.startswith("Loss/") and not all(finite(v) for v in acc if v is not None)]

    def _last_good_state(self) -> str:
        from .checkpoint import CheckpointIndex
        latest = CheckpointIndex.load(checkpoint_dir(self.run_dir)).latest() \
            if self.engine.is_main else None
        return f"the newest training state is {latest.file}, kimg {latest.kimg:g}" \
            if latest else "no training state was saved yet"

    def _check_weights_finite(self) -> None:
        """No state or snapshot holds NaN/Inf weights (the same answer on every rank: the
        weights are replicated)."""
        for name, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            for key, t in net.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise RunStopped(EXIT_NONFINITE, f"{name} weight {key} is NaN/Inf at kimg "
                                                     f"{self.cur_nimg / 1000:g}: not saved "
                                                     f"({self._last_good_state()})")

    def _write_on_main(self, write) -> None:
        """Run `write()` on the main process; every rank then learns whether it failed (this
        all-reduce is also the barrier after a save). A failed write -> RunStopped(5); a
        state refused for NaN/Inf -> RunStopped(4)."""
        from .checkpoint import NonFiniteStateError
        error, code = None, 0
        if self.engine.is_main:
            try:
                write()
            except OSError as e:
                error, code = e, EXIT_SAVE_FAILED
            except NonFiniteStateError as e:
                error, code = e, EXIT_NONFINITE
        if self.engine.distributed:
            flag = torch.tensor([code], dtype=torch.int64, device=self.device)
            code = int(self.engine.all_reduce_max_(flag).item())
        if code == EXIT_NONFINITE:
            raise RunStopped(code, str(error) if error else "a training state held NaN/Inf")
        if code:
            raise self._save_failed(error if isinstance(error, OSError) else None)

    def _save_failed(self, error: Optional[OSError]) -> RunStopped:
        if error is None:
            return RunStopped(EXIT_SAVE_FAILED, "the main process could not write (see its log)")
        what = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error) or type(error).__name__
        return RunStopped(EXIT_SAVE_FAILED,
                          f"{what}cannot write ({reason}); training stopped, the files written "
                          f"before are intact ({self._last_good_state()}): free space or fix "
                          f"the disk, then run the same command with --resume auto")

    def _data_stop_message(self) -> str:
        e = self.data_error
        why = str(e).strip().splitlines()[0] if e is not None and str(e).strip() else \
            "the data stream failed in another process (see its log)" if e is None else \
            type(e).__name__
        saved = "a training state was saved" if self.steps_this_run else "nothing new to save"
        return f"data: {why}; stopped at kimg {self.cur_nimg / 1000:g} ({saved}; run the same " \
               f"command with --resume auto once the data is fixed)"

    def _report_stop(self, e: RunStopped) -> int:
        if self.engine.is_main:
            import sys
            print(f"pggan-train: error: {e} (exit code {e.code})", file=sys.stderr, flush=True)
        return e.code

    # ---- status, snapshots, checkpoints --------------------------------------------------

    def _status(self, point: SchedulePoint) -> None:
        stats = self.collector.reduce(self.engine)           # collective: every rank
        now = time.time()
        tick_nimg = self.cur_nimg - self.tick_start_nimg
        tick_sec = max(now - self.tick_start_time - self.maintenance_sec, 1e-9)
        img_per_sec = tick_nimg / tick_sec if tick_nimg > 0 else float("nan")
        stats.update({
            "Progress/kimg": self.cur_nimg / 1000, "Progress/res": point.res,
            "Progress/alpha": point.alpha, "Progress/stage": point.stage_index,
            "Progress/lr": point.lr, "Progress/batch": point.batch,
            "Progress/beta2": point.beta2, "Progress/gamma": point.gamma,
            "Progress/ema_kimg": point.ema_kimg,
            "Progress/tick": self.tick_index,
            "Timing/img_per_sec": img_per_sec,
            "Timing/sec_per_kimg": 1000 / img_per_sec if tick_nimg > 0 else float("nan"),
            "Timing/sec_per_tick": now - self.tick_start_time,
            "Timing/maintenance_sec": self.maintenance_sec,
            "Resources/peak_host_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 2 ** 20,
        })
        if self.device.type == "cuda":
            stats["Resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(
                self.device) / 2 ** 30
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.augment is not None:
            stats["Augment/p"] = self.augment.p
        def write():
            self.log.console(self._progress_line(point, stats, img_per_sec))
            self._write_grid(point, now)
            stats["Train/nonfinite_skips"] = self.nonfinite_skips
            self.log.tick(stats, self.cur_nimg, now)
        self._write_on_main(write)
        self.tick_index += 1

    def _progress_line(self, point: SchedulePoint, stats: dict, img_per_sec: float) -> str:
        def eta(nimg: int) -> str:
            return format_duration(nimg / img_per_sec) if img_per_sec > 0 else "?"
        fmt = lambda k: f"{stats[k]:.4g}" if k in stats else "-"   # noqa: E731
        digits = 1 if self.total_nimg >= 10_000 else 3
        return (f"tick {self.tick_index:<5d} {point.res:>4}x{point.res:<4} {point.phase:4s} "
                f"alpha {point.alpha:.3f}  kimg {self.cur_nimg / 1000:.{digits}f}/"
                f"{self.total_nimg / 1000:g}  {img_per_sec:7.1f} img/s  "
                f"ETA stage {eta(point.stage_end_nimg - self.cur_nimg)} "
                f"run {eta(self.total_nimg - self.cur_nimg)}  "
                f"D {fmt('Loss/D/adv')} G {fmt('Loss/G/adv')} "
                f"real {fmt('Scores/real')} fake {fmt('Scores/fake')}")

    @torch.no_grad()
    def _fakes(self, point: SchedulePoint) -> torch.Tensor:
        """G_ema on the fixed grid latents at the current stage -> [grid, C, res, res] on the
        device."""
        if self.grid_z.device != self.device:       # once per run: no copy at every tick
            self.grid_z = self.grid_z.to(self.device)
            self.grid_c = self.grid_c.to(self.device) if self.grid_c is not None else None
        out = []
        chunk = max(1, point.batch_per_gpu)
        for i in range(0, self.grid_z.shape[0], chunk):
            z = self.grid_z[i:i + chunk]
            c = self.grid_c[i:i + chunk] if self.grid_c is not None else None
            with self.engine.autocast():
                out.append(self.G_ema(z, c, point.res, point.alpha, **self._g_kwargs).float())
        return torch.cat(out)

    def _write_grid(self, point: SchedulePoint, wall_time: float) -> None:
        """The tick's grid: laid out on the device here, encoded and written by the grid
        writer's thread (grid_writer.py), so the training thread does not spend the PNG
        encoding (seconds for the 4096 x 4096 grid of a 1024-px run) at every tick."""
        fakes = self._fakes(point)
        latest, tb = self.run_dir / "fakes-latest.png", ("Images/fakes", self.cur_nimg, wall_time)
        if point.res <= TB_GRID_MAX_CELL:
            self.grids.submit(image_grid_tensor(fakes), [latest], tensorboard=tb)
            return
        self.grids.submit(image_grid_tensor(fakes), [latest])
        small = torch.nn.functional.avg_pool2d(fakes, point.res // TB_GRID_MAX_CELL)
        self.grids.submit(image_grid_tensor(small), [], tensorboard=tb)

    def _close_grids(self) -> None:
        """Main process: wait until every queued grid is written (OSError if one failed)."""
        if self.grids is not None:
            self.grids.close()

    def _save_snapshot(self, point: SchedulePoint, trained: SchedulePoint,
                       boundary: bool) -> None:
        # The network of the last step: at a stage boundary the finished stage's (its res).
        res, alpha = trained.res, trained.alpha
        self._check_weights_finite()
        def write():
            name = f"network-snapshot-{self.cur_nimg // 1000:06d}.pt"
            save_snapshot(self.run_dir / name, self.G_ema, self.cfg.model, res, alpha,
                          self.cur_nimg, extra={"kimg": self.cur_nimg / 1000,
                                                "boundary": boundary})
            pt = self._fakes(dataclasses.replace(point, res=res, alpha=alpha))
            self.grids.submit(image_grid_tensor(pt),
                              [self.run_dir / f"fakes-{self.cur_nimg // 1000:06d}.png"])
            self.log.console(f"  snapshot {name} ({res}x{res}, alpha {alpha:.3f})")
        self._write_on_main(write)

    def _evaluate_metrics(self, point: SchedulePoint, trained: SchedulePoint) -> None:
        """metrics.names on G_ema at the resolution and fade of the last step, over all ranks
        (pggan.metrics.runner); results appended to RUN_DIR/metric-<name>.jsonl and logged
        to TensorBoard as Metrics/<name>. Reads no training state it could change."""
        from ..metrics.runner import compute_metrics, default_cache_dir
        cfg = self.cfg
        res, alpha = trained.res, trained.alpha
        results = compute_metrics(
            cfg.metrics.names, self.G_ema, res=res, alpha=alpha, data_cfg=cfg.data,
            num_images=cfg.metrics.num_images, device=self.device, rank=self.engine.rank,
            world_size=self.engine.world_size, seed=cfg.train.seed,
            cache_dir=default_cache_dir(), fid_weights=cfg.metrics.fid_weights,
            batch_size=max(8, point.batch_per_gpu), log=self.log.console)
        if self.engine.is_main:
            now = time.time()
            for name, entry in results.items():
                record = {"cur_nimg": self.cur_nimg, "kimg": self.cur_nimg / 1000, **entry}
                path = self.run_dir / f"metric-{name}.jsonl"
                with open(path, "a", encoding="utf-8") as f:    # whole lines, even on ENOSPC
                    append_line(f, json.dumps(record) + "\n", path)
                scalars = {f"Metrics/{name}": entry["value"]}
                for level, value in (entry.get("per_level") or {}).items():
                    scalars[f"Metrics/{name}/{level}"] = value
                self.log.scalars(scalars, self.cur_nimg, now)
                self.log.console(f"  metric {name} {entry['value']:.4g} ({res}x{res}, "
                                 f"alpha {alpha:.3f}, {entry.get('seconds', 0):.1f} s)")

    def _save_checkpoint(self, kind: str, boundary_res: Optional[int],
                         trained: SchedulePoint) -> None:
        self._check_weights_finite()
        if self.ada is not None:
            self.ada.fold_(self.engine)                     # collective: every rank
        opt_states = self.engine.save_optimizer_states(     # collective: every rank
            self.opt, self.nets, checkpoint_dir(self.run_dir), self.cur_nimg)
        def write():
            state = self.training_state(kind, boundary_res, trained, opt_states)
            path = state.save(self.run_dir, self.cfg.train.keep_last)
            self.log.console(f"  training state {path.name} ({kind})")
        self._write_on_main(write)                          # collective: every rank

