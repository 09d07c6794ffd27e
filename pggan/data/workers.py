"""Loader worker set-up (worker_pool.py)."""
from __future__ import annotations

import signal

# The trainer turns these into "save a checkpoint and exit"; a signal sent to the whole process
# group (Ctrl-C, a scheduler) also reaches the loader workers, which must not die of it mid-step:
# the stream stops them (a message, then SIGKILL) when the trainer drops it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
