"""The per-process part of data_prep: load a payload, convert it (runs in the worker pool)."""
from __future__ import annotations

import functools
import zipfile
from typing import List, Tuple

from .convert import ConvertSettings, Converted, convert_array, convert_image


@functools.lru_cache(maxsize=4)
def _zip(path: str) -> zipfile.ZipFile:
    # One open handle per archive and process; reads from it are by member name.
    return zipfile.ZipFile(path)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def convert_payload(payload, settings: ConvertSettings) -> Converted:
    kind = payload[0]
    if kind == "error":
        return Converted(skip_category=payload[1], skip_reason=payload[2])
    if kind == "array":
        return convert_array(payload[1], settings)
    try:
        if kind == "file":
            with open(payload[1], "rb") as f:
                data = f.read()
        elif kind == "zip":
            data = _zip(payload[1]).read(payload[2])
        else:
            data = payload[1]
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as e:
        return Converted(skip_category="unreadable", skip_reason=f"cannot read ({_first_line(e)})")
    return convert_image(data, settings)


def init_worker() -> None:
    """Pool worker start: one torch thread per process (the pool already uses every core;
    more threads per worker oversubscribe them, 9x slower synthetic rendering measured), and
    Ctrl-C left to the main process, which stops the pool and keeps the journal consistent."""
    import signal

    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _render_synthetic(chunk: List[Tuple[int, object]], max_res: int) -> dict:
    """Synthetic payloads of a chunk rendered in one call (one image per call costs ~2x)."""
    from pggan.data.synthetic import synthetic_images
    by_seed: dict = {}
    for _, p in chunk:
        if p[0] == "synthetic":
            by_seed.setdefault(p[2], []).append(p[1])
    out = {}
    for seed, idx in by_seed.items():
        imgs = synthetic_images(idx, max_res, 3, seed).permute(0, 2, 3, 1).numpy()
        out.update({(seed, i): img for i, img in zip(idx, imgs)})
    return out


def convert_chunk(chunk: List[Tuple[int, object]],
                  settings: ConvertSettings) -> List[Tuple[int, Converted]]:
    """[(entry index, payload)] -> [(entry index, Converted)], same order."""
    rendered = _render_synthetic(chunk, settings.max_res)
    out = []
    for i, p in chunk:
        if p[0] == "synthetic":
            out.append((i, convert_array(rendered[(p[2], p[1])], settings)))
        else:
            out.append((i, convert_payload(p, settings)))
    return out
