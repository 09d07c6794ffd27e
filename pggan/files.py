"""Atomic file writes: one helper for every file a run or a tool writes.

`atomic_write(path, write)` calls write(tmp) on a hidden temp file beside `path` (same
directory, so the rename cannot cross filesystems), fsyncs it and renames it over `path`. A
reader sees the old file or the new one, never a part; on any failure (disk full, I/O error,
an exception in `write`) the temp file is removed and the old file is untouched. An OSError
comes out naming `path` (torch.save and PIL report the failing write without a file name).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable[[Path], None], fsync: bool = True) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or Path(e.filename) == tmp:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass                    # nothing more to do: the error above is the one to report


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
