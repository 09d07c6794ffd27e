"""Small file helpers used everywhere: atomic writes, checked torch.load, sha256 of a file.

Atomic writes. `atomic_write(path, write)` calls write(tmp) on a hidden temp file beside
`path` (same directory, so the rename cannot cross filesystems), fsyncs it and renames it over
`path`. A reader sees the old file or the new one, never a part; on any failure (disk full,
I/O error, an exception in `write`) the temp file is removed and the old file is untouched. An
OSError comes out naming `path` (torch.save and PIL report the failing write without a file
name). The temp name is `.<stem>.tmp-<pid><suffix>`: a killed writer's leftovers are found by
that pattern (`TEMP_GLOB`) and removed by the next trainer holding the run lock.

  atomic_write_bytes / _text / _json   bytes, UTF-8 text, JSON (+ newline)
  atomic_torch_save(path, obj)          torch.save
  save_png(path, image)                 uint8 [H, W, C] (C 1 or 3) as PNG; not fsynced: a PNG
                                        is a preview rewritten every tick, and after a power
                                        loss the previous one (or none) is as good

Reading. `load_torch(path, what)` is torch.load with weights_only=True (no code unpickled),
on the CPU, and any failure (missing, truncated, not a torch file, an unsafe pickle) raised as
`error(one line naming the file and what it should be)`.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Type

TEMP_GLOB = ".*.tmp-*"          # what atomic_write's temp files look like (see above)
_CHUNK = 1 << 20                # bytes read at a time by sha256_file


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


def atomic_write_json(path, obj, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(path, obj) -> None:
    """torch.save(obj) to `path` atomically (temp file + fsync + rename)."""
    import torch
    path = Path(path)

    def write(tmp: Path) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's C++ writer reports a failed write (ENOSPC, EIO) as a RuntimeError;
            # under 1 MiB free it is taken for a full disk.
            st = os.statvfs(tmp.parent)
            code = errno.ENOSPC if st.f_bavail * st.f_frsize < 1 << 20 else errno.EIO
            raise OSError(code, f"{os.strerror(code)} ({str(e).splitlines()[0][:80]})",
                          str(path)) from e
    atomic_write(path, write)


def save_png(path, image) -> None:
    """uint8 [H, W, C] (numpy or CPU tensor, C = 1 or 3) -> PNG at `path`, atomically."""
    from PIL import Image
    import numpy as np
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"save_png {path}: expected uint8 [H, W, 1 or 3], got {arr.dtype} "
                         f"{list(arr.shape)}")
    img = Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), fsync=False)


def first_line(error: BaseException, limit: int = 120) -> str:
    """'TypeName: first line of the message' (the type alone for an empty message)."""
    msg = str(error).strip().splitlines()[0][:limit] if str(error).strip() else ""
    return f"{type(error).__name__}{': ' + msg if msg else ''}"


def load_torch(path, what: str, error: Type[Exception] = ValueError, hint: str = "",
               mmap: bool = False):
    """torch.load(path) on the CPU with weights_only=True; a missing or unreadable file raises
    `error("<path>: <what> not found" | "<path>: not a readable <what> (<reason>)<hint>")`."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 (truncated, not a torch file, unsafe pickle, ...)
        raise error(f"{path}: not a readable {what} ({first_line(e)}){hint}") from None


def sha256_file(path) -> str:
    """Hex sha256 of the file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()
