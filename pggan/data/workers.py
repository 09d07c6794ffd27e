"""DataLoader worker set-up shared by the streams."""
from __future__ import annotations

import signal

# The trainer turns these into "save a checkpoint and exit"; a signal sent to the whole process
# group (Ctrl-C, a scheduler) also reaches the forked loader workers, which must not die of it
# mid-step: the trainer stops them when it exits.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
