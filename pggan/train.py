"""pggan-train: train a progressive GAN.

    python pggan/train.py --config demo-cpu --max-res 32 --total-kimg 50
    accelerate launch pggan/train.py --config pggan-celebahq-1024 --data DATA --run-dir RUN
    torchrun --nproc_per_node 8 pggan/train.py ...
    torchrun --nproc_per_node 8 pggan/train.py --engine deepspeed --zero-stage 2 ...

To continue an interrupted run, run the same command with `--resume auto`.

Exit codes: 0 trained to total-kimg; 2 bad option, config, dataset or checkpoint, or the run
directory is in use by another trainer (one-line message on stderr, nothing written); 3 stopped
by SIGTERM / SIGINT / SIGUSR1 after saving a training state (run again with --resume auto to
continue); 4 a loss or gradient became NaN/Inf (train.on_nonfinite; nothing new saved, the
last good states kept); 5 a file could not be written (disk full, I/O error; the states
before it are intact); 6 the data failed (damaged shards past the skip budget, a loader worker
died) after saving a training state to resume from; 1 anything unexpected.
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (`python pggan/train.py`, `accelerate launch pggan/train.py`): import the
    # pggan of this checkout, installed or not (Python put pggan/ itself first on sys.path).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

EXIT_USAGE = 2
EXIT_SAVE_FAILED = 5        # = pggan.training.loop.EXIT_SAVE_FAILED


def build_parser() -> argparse.ArgumentParser:
    from pggan.config import add_config_args
    parser = argparse.ArgumentParser(
        prog="pggan-train",
        description="Train a progressive GAN (PGGAN / StyleGAN-style) from 4x4 up to max-res. "
                    "Exit codes: 0 done, 2 bad input, 3 stopped by a signal after saving.")
    add_config_args(parser)
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="auto: continue from the latest training state in --run-dir "
                             "(none there: start fresh); PATH: a training-state file or a run "
                             "directory")
    parser.add_argument("--resume-res", type=int, default=None, metavar="RES",
                        help="with --resume: start from the state saved where the RES x RES "
                             "stage began")
    parser.add_argument("--deepspeed-config", default=None, metavar="FILE",
                        help="with --engine deepspeed: DeepSpeed JSON config (communication "
                             "settings; default launch/deepspeed-zero<stage>.json)")
    # The deepspeed launcher passes --local_rank; the rank is read from LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    return parser


def _fail(message: str) -> int:
    print(f"pggan-train: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def create_trainer(cfg, args, engine=None):
    """Resolved config + parsed CLI args -> a Trainer ready to run (resume state loaded, run dir
    and its config.yaml written on the main process). Everything that can refuse the run is
    checked before anything is written; raises ConfigError or CheckpointError. The caller holds
    the run-directory lock (main)."""
    from pggan.config import save_resolved
    from pggan.training.checkpoint import TrainingState, resolve_resume
    from pggan.training.engine_factory import make_engine
    from pggan.training.loop import Trainer
    run_dir = Path(cfg.train.run_dir)
    if engine is None:
        engine = make_engine(cfg.train, getattr(args, "deepspeed_config", None))
    resume_path = resolve_resume(run_dir, args.resume, args.resume_res)
    state = TrainingState.load(resume_path) if resume_path is not None else None
    trainer = Trainer(cfg, engine, run_dir, resume_state=state, resume_path=resume_path)
    del state
    if engine.is_main and not trainer.finished:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "config.yaml")
        if resume_path is not None:
            print(f"pggan-train: resuming from {resume_path}", flush=True)
    return trainer


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from pggan.config import ConfigError, config_from_args
    from pggan.training.checkpoint import CheckpointError
    from pggan.training.engine_factory import make_engine
    from pggan.training.run_lock import RunLockError, take_run_lock
    try:
        cfg = config_from_args(args)
        if args.dry_run:
            print(cfg.to_yaml(), end="")
            return 0
        engine = make_engine(cfg.train, getattr(args, "deepspeed_config", None))
    except (ConfigError, CheckpointError) as e:
        return _fail(str(e))
    run_dir = Path(cfg.train.run_dir)
    existed = run_dir.exists()
    lock = None
    try:
        # Before anything in the run dir is read: a second trainer must not even resume.
        lock = take_run_lock(run_dir, engine)
        if lock is not None:
            from pggan.training.checkpoint import remove_stale_temp_files
            stale = remove_stale_temp_files(run_dir)
            if stale:
                print(f"pggan-train: removed {len(stale)} temp file(s) of an interrupted write "
                      f"({stale[0]}{', ...' if len(stale) > 1 else ''})", flush=True)
        trainer = create_trainer(cfg, args, engine)
    except (ConfigError, CheckpointError, RunLockError, OSError) as e:
        if lock is not None:
            lock.release()
            if not existed:
                _remove_if_empty(run_dir)
        if isinstance(e, RunLockError) and not engine.is_main:
            return EXIT_USAGE                    # the main process names the holder
        if isinstance(e, OSError):
            print(f"pggan-train: error: {e.filename or run_dir}: cannot write ({e.strerror or e})"
                  f"; free space or fix the disk, then run again", file=sys.stderr)
            return EXIT_SAVE_FAILED
        return _fail(str(e))
    try:
        code = trainer.run()
        trainer.engine.close()
    finally:
        if lock is not None:
            lock.release()
    return code


def _remove_if_empty(run_dir: Path) -> None:
    """A run refused after its lock was taken leaves no new empty directory behind."""
    try:
        run_dir.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
