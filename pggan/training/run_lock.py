"""One trainer per run directory: RUN_DIR/.pggan-lock.

A second trainer on the same --run-dir (a double launch, or a requeued SLURM job whose
predecessor is still dying) must not resume from the first one's states and write beside it.
The main process takes the lock before anything is read or written; the other processes wait
for its answer (pggan/train.py).

What this relies on (and what it does not):

- Atomic `link(2)` that fails with EEXIST: the holder writes its record into a file of its own
  (`.pggan-lock.<host>.<pid>.<random>`) and hard-links it to `.pggan-lock`. That is the
  NFS-safe recipe of open(2)'s O_EXCL note: on NFSv2/3 O_CREAT|O_EXCL is not atomic, link is,
  and when the link call's answer is lost (a retransmitted RPC) the link count of our own file
  (st_nlink == 2) tells whether it happened. Where a filesystem has no hard links (EPERM,
  ENOTSUP), O_CREAT|O_EXCL on the lock file itself (atomic on NFSv3+). No flock/fcntl locks: they are advisory, often
  not propagated between NFS clients, and vanish silently when a lockd restarts.
- Atomic `rename(2)` within the directory, to take a stale lock over: exactly one of several
  takers can rename the stale file away.
- Heartbeat by mtime: the holder refreshes the lock file's mtime every HEARTBEAT_S from a
  daemon thread (os.utime). The mtime is set by the file server's clock, so staleness is
  judged against the server's clock too: the age is (mtime of a file we just wrote) - (mtime
  of the lock), never the local clock, so client clock skew does not matter.

A lock is stale, and taken over with a message, when its holder is on this host (same
hostname) and its pid is gone or now belongs to a process started at another time (pid
reuse; Linux /proc start time), or when the holder is on another host and the lock's heartbeat
is older than STALE_S. A holder on another host that is alive but cannot reach the file
server for STALE_S is indistinguishable from a dead one; STALE_S is 10 heartbeats so a brief
stall does not lose the lock. Hosts are told apart by hostname: two containers with the same
hostname but separate pid namespaces would misjudge each other (give them distinct hostnames).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

LOCK_NAME = ".pggan-lock"
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
HEARTBEAT_S = 15.0              # the holder refreshes the lock's mtime this often
STALE_S = 10 * HEARTBEAT_S      # a holder on another host without a heartbeat this long: gone


class RunLockError(RuntimeError):
    """The run directory is held by a live trainer; worded as one line naming the holder."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float              # wall time the holder took the lock
    proc_start: Optional[str]   # /proc/<pid>/stat start time of the holder (pid reuse check)
    token: str                  # random: tells two records apart

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {when}"


def _proc_start(pid: int) -> Optional[str]:
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # someone else's live process
    return True


def _read_holder(path: Path) -> Optional[Holder]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Holder(str(d["host"]), int(d["pid"]), float(d["started"]), d.get("proc_start"),
                      str(d["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable or half-written by a foreign tool: treat as a holder we cannot judge by
        # pid; the heartbeat (mtime) rule decides.
        return Holder("?", -1, 0.0, None, "?")


class RunLock:
    """Exclusive claim on a run directory. `acquire()` -> message if a stale lock was taken
    over (else None), raises RunLockError when a live trainer holds it. `release()` removes it
    if it is still ours."""

    def __init__(self, run_dir, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.me = Holder(socket.gethostname(), os.getpid(), time.time(),
                         _proc_start(os.getpid()), secrets.token_hex(8))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.held = False

    # ---- taking it -------------------------------------------------------------------------

    def _write_own(self) -> Path:
        own = self.run_dir / f"{LOCK_NAME}.{self.me.host}.{self.me.pid}.{self.me.token}"
        fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, (json.dumps(self.me.__dict__) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return own

    def _try_link(self, own: Path) -> bool:
        try:
            os.link(own, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno in _NO_HARD_LINKS:
                return self._try_create_excl(own)
            # The answer may have been lost after the link was made (NFS): ask the inode.
            try:
                return os.stat(own).st_nlink == 2
            except OSError:
                return False

    def _try_create_excl(self, own: Path) -> bool:
        """Where the filesystem has no hard links (some FUSE and SMB mounts): O_CREAT|O_EXCL on
        the lock itself, atomic on local filesystems and NFSv3+."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, own.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _stale_reason(self, holder: Holder, own: Path) -> Optional[str]:
        """Why `holder` is gone, or None while it may be alive."""
        if holder.token == self.me.token:
            return None
        if holder.host == self.me.host and holder.pid > 0:
            if not _pid_alive(holder.pid):
                return f"its process {holder.pid} on this host is gone"
            now_start = _proc_start(holder.pid)
            if holder.proc_start and now_start and now_start != holder.proc_start:
                return f"pid {holder.pid} now belongs to another process"
            return None
        try:
            age = os.stat(own).st_mtime - os.stat(self.path).st_mtime   # server clock
        except FileNotFoundError:
            return "it was released"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (limit {self.stale_s:.0f} s)"
        return None

    def acquire(self) -> Optional[str]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        own = self._write_own()
        try:
            for _ in range(5):
                if self._try_link(own):
                    self.held = True
                    self._start_heartbeat()
                    return None
                holder = _read_holder(self.path)
                if holder is None:
                    continue                    # released meanwhile: try again
                reason = self._stale_reason(holder, own)
                if reason is None:
                    raise RunLockError(
                        f"{self.run_dir} is in use by another trainer ({holder.describe()}); "
                        f"stop that one first, or choose another --run-dir (a stale lock is "
                        f"taken over by itself once its holder is gone: remove "
                        f"{self.path} only if you are sure it is)")
                # Exactly one taker wins this rename; it then checks it moved the stale record.
                aside = self.run_dir / f"{LOCK_NAME}.stale.{self.me.token}"
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                moved = _read_holder(aside)
                if moved is not None and moved.token != holder.token:
                    # A live lock taken between our look and the rename: put it back.
                    try:
                        os.link(aside, self.path)
                    except OSError:
                        pass
                    aside.unlink(missing_ok=True)
                    continue
                aside.unlink(missing_ok=True)
                if self._try_link(own):
                    self.held = True
                    self._start_heartbeat()
                    return (f"took over the lock of {self.run_dir} from a stopped trainer "
                            f"({holder.describe()}: {reason})")
            raise RunLockError(f"{self.path}: could not take the run-directory lock (other "
                               f"trainers keep starting on {self.run_dir}); try again")
        finally:
            own.unlink(missing_ok=True)         # the lock itself is a second link to it

    # ---- keeping it ------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="pggan-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass        # a transient server error; the next beat tries again

    def owned(self) -> bool:
        holder = _read_holder(self.path)
        return holder is not None and holder.token == self.me.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held and self.owned():
            try:
                self.path.unlink()
            except OSError:
                pass
        self.held = False


def take_run_lock(run_dir, engine, print_fn=print) -> Optional[RunLock]:
    """The main process takes the lock of `run_dir`; every process learns the answer (one
    all-reduce) before any of them reads or writes the run dir. -> the lock (main) or None;
    raises RunLockError on every process when it is held elsewhere (the main process's error
    names the holder)."""
    import torch
    lock, error = None, None
    if engine.is_main:
        lock = RunLock(run_dir)
        try:
            message = lock.acquire()
            if message:
                print_fn(f"pggan-train: {message}", flush=True)
        except (RunLockError, OSError) as e:
            error = e if isinstance(e, RunLockError) else RunLockError(
                f"{run_dir}: cannot take the run-directory lock ({e.strerror or e}); check "
                f"that the directory is writable")
    refused = error is not None
    if engine.distributed:
        flag = torch.tensor([int(refused)], dtype=torch.int64, device=engine.device)
        refused = bool(engine.all_reduce_max_(flag).item())
    if refused:
        if lock is not None:
            lock.release()
        raise error or RunLockError(f"{run_dir}: the main process could not take the "
                                    f"run-directory lock (see its message)")
    return lock
