"""The data_prep job: source entries -> worker pool -> shard sets per resolution -> dataset.json.

The job works in OUT.partial/ and renames it to OUT when everything is written, so OUT is
either absent, an older complete dataset, or the new complete one. An interrupted job leaves
OUT.partial/ with its progress journal; running the same command again resumes it (complete
shards kept, the rest redone, byte-identical to an uninterrupted run).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import PIL
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from pggan.data.dataset_info import DATASET_JSON, DATASET_KIND, DATASET_VERSION
from pggan.files import atomic_write_json

from .convert import FILTERS, FORMATS, ConvertSettings, ImageFormat
from .errors import PrepError
from .labels import class_names
from .shards import (JOURNAL, Journal, ShardRecord, ShardSetWriter, clean_unrecorded,
                     format_ext, read_journal, record_event, resume_point)
from .sources import Entry, Source, fingerprint, open_source
from .worker import convert_chunk, init_worker


@dataclass
class PrepOptions:
    source: str
    out: str
    max_res: Optional[int] = None           # None: the source's native default
    channels: Optional[int] = None          # None: the source's native default
    square: str = "crop"
    filter: str = "box"
    small: Optional[str] = None             # None: skip (upscale for built-in sources)
    background: Tuple[int, int, int] = (255, 255, 255)
    pad_color: Tuple[int, int, int] = (0, 0, 0)
    max_pixels: int = 89_478_485
    format: str = "png"
    format_at: List[str] = field(default_factory=list)     # ["256=jpeg:95", ...]
    png_level: int = 6
    shard_mb: float = 256.0
    shard_images: int = 2048
    labels: Optional[str] = None
    source_dir: Optional[str] = None
    num_images: Optional[int] = None
    seed: int = 0
    workers: int = 0                        # 0: every core (os.cpu_count())
    overwrite: bool = False
    progress: bool = True


def parse_format(spec: str, where: str) -> ImageFormat:
    name, _, q = spec.strip().lower().partition(":")
    name = {"jpg": "jpeg"}.get(name, name)
    if name not in FORMATS:
        raise PrepError(f"{where} {spec}: format must be png, jpeg[:Q] or webp[:Q]")
    if name == "png":
        if q:
            raise PrepError(f"{where} {spec}: png is lossless and takes no quality")
        return ImageFormat("png")
    try:
        quality = int(q) if q else 95
    except ValueError:
        raise PrepError(f"{where} {spec}: quality must be an integer 1..100") from None
    if not 1 <= quality <= 100:
        raise PrepError(f"{where} {spec}: quality must be in 1..100 (got {quality})")
    return ImageFormat(name, quality)


def formats_by_res(opts: PrepOptions, resolutions: List[int]) -> Dict[int, ImageFormat]:
    """--format for every resolution, then each --format-at RES=FMT from RES upwards."""
    rules = []
    for rule in opts.format_at:
        res_s, sep, fmt_s = rule.partition("=")
        try:
            res = int(res_s)
        except ValueError:
            res = -1
        if not sep or res not in resolutions:
            raise PrepError(f"--format-at {rule}: expected RES=FORMAT with RES one of "
                            f"{', '.join(map(str, resolutions))}")
        rules.append((res, parse_format(fmt_s, "--format-at")))
    base = parse_format(opts.format, "--format")
    out = {}
    for r in resolutions:
        fmt = base
        for res, f in sorted(rules, key=lambda x: x[0]):
            if r >= res:
                fmt = f
        out[r] = fmt
    return out


def resolve_settings(opts: PrepOptions, src: Source) -> ConvertSettings:
    max_res = opts.max_res if opts.max_res is not None else src.default_max_res
    if max_res is None:
        raise PrepError("--max-res is required for folder and archive sources "
                        "(a power of two, 4..1024)")
    if max_res < 4 or max_res > 1024 or max_res & (max_res - 1):
        raise PrepError(f"--max-res must be a power of two in 4..1024 (got {max_res})")
    channels = opts.channels if opts.channels is not None else src.default_channels
    if channels not in (1, 3):
        raise PrepError(f"--channels must be 1 or 3 (got {channels})")
    if opts.square not in ("crop", "pad"):
        raise PrepError(f"--square must be crop or pad (got {opts.square})")
    if opts.filter not in FILTERS:
        raise PrepError(f"--filter must be one of {', '.join(FILTERS)} (got {opts.filter})")
    small = opts.small or src.default_small
    if small not in ("skip", "upscale"):
        raise PrepError(f"--small must be skip or upscale (got {small})")
    # PIL refuses images over twice its MAX_IMAGE_PIXELS whatever we allow.
    pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if opts.max_pixels < 16 or (pil_limit and opts.max_pixels > pil_limit):
        raise PrepError(f"--max-pixels must be in 16..{pil_limit} (PIL's hard limit; got "
                        f"{opts.max_pixels})")
    if not 0 <= opts.png_level <= 9:
        raise PrepError(f"--png-level must be 0..9 (got {opts.png_level})")
    for name in ("background", "pad_color"):
        v = getattr(opts, name)
        if len(v) != 3 or not all(0 <= c <= 255 for c in v):
            raise PrepError(f"--{name.replace('_', '-')} must be R,G,B with values 0..255")
    res_list = [4 << i for i in range(max_res.bit_length() - 2)]      # 4 .. max_res
    fmts = formats_by_res(opts, res_list)
    return ConvertSettings(max_res=max_res, channels=channels, square=opts.square,
                           filter=opts.filter, small=small, background=tuple(opts.background),
                           pad_color=tuple(opts.pad_color), max_pixels=opts.max_pixels,
                           formats=tuple(sorted(fmts.items())), png_level=opts.png_level)


# --------------------------------------------------------------------------------------------
# Output directory: never overwritten without --overwrite, never anything that is not ours.


def _is_dataset(path: Path) -> bool:
    try:
        return json.loads((path / DATASET_JSON).read_text()).get("kind") == DATASET_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_dataset(out):
            raise PrepError(f"--out {out}: folder is not empty and holds no data_prep dataset; "
                            f"choose a new or empty folder")
        if not overwrite:
            raise PrepError(f"--out {out}: already holds a prepared dataset; pass --overwrite "
                            f"to replace it")


def open_work_dir(work: Path, fp: str, overwrite: bool) -> Optional[List[dict]]:
    """Events of a resumable interrupted run in `work`, or None for a fresh start."""
    if not work.exists():
        return None
    journal = work / JOURNAL
    events = read_journal(journal) if journal.is_file() else []
    ours = journal.is_file() or all(p.name.startswith("res-") or p.name.startswith(JOURNAL)
                                    for p in work.iterdir())
    if not ours:
        raise PrepError(f"{work}: exists and was not written by data_prep; move it away")
    if events and events[0].get("event") == "start" and events[0].get("fingerprint") == fp:
        return events
    if events and not overwrite:
        raise PrepError(f"{work}: holds an interrupted run with other options or input; run "
                        f"that command again to resume it, or pass --overwrite to start over")
    shutil.rmtree(work)
    return None


def _place(work: Path, out: Path) -> None:
    """Move the finished work dir to `out`; an older dataset there is removed only after."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(out.name + ".replaced")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old)
    (out / JOURNAL).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------


def _chunks(items, size: int):
    chunk = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _results(src: Source, entries: List[Entry], start: int, settings: ConvertSettings,
             workers: int):
    """(entry index, Converted or None for pre-skipped) in entry order, converted in a pool
    with a bounded number of chunks in flight (memory stays flat for any dataset size)."""
    size = max(1, min(64, 4096 // settings.max_res))
    pairs = src.work_items(entries, start)
    if workers == 1:
        for chunk in _chunks(pairs, size):
            todo = [(i, p) for i, p in chunk if p is not None]
            done = dict(convert_chunk(todo, settings))
            for i, _ in chunk:
                yield i, done.get(i)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=init_worker) as pool:
        pending = deque()
        try:
            for chunk in _chunks(pairs, size):
                todo = [(i, p) for i, p in chunk if p is not None]
                pending.append(([i for i, _ in chunk], pool.submit(convert_chunk, todo, settings)))
                while len(pending) > 3 * workers:
                    yield from _drain(pending.popleft())
            while pending:
                yield from _drain(pending.popleft())
        finally:
            for _, fut in pending:
                fut.cancel()


def _drain(item):
    order, fut = item
    done = dict(fut.result())
    for i in order:
        yield i, done.get(i)


def prepare(opts: PrepOptions) -> dict:
    """Run the whole job; returns the dataset.json content. Raises PrepError."""
    src = open_source(opts.source, labels_spec=opts.labels, source_dir=opts.source_dir,
                      num_images=opts.num_images, seed=opts.seed)
    settings = resolve_settings(opts, src)
    if opts.shard_mb <= 0 or opts.shard_images < 1:
        raise PrepError("--shard-mb must be > 0 and --shard-images >= 1")
    if opts.num_images is not None and opts.num_images < 1:
        raise PrepError(f"--num-images must be >= 1 (got {opts.num_images})")
    out = Path(opts.out)
    check_output(out, opts.overwrite)
    entries = src.entries()
    candidates = [e for e in entries if e.skip is None]
    if not candidates:
        what = f"{len(entries)} files, none usable" if entries else "it is empty"
        raise PrepError(f"--source {opts.source}: no images found ({what})")

    names = src.builtin_label_names
    if names is None and any(e.label is not None for e in candidates):
        names = class_names([e.label for e in candidates])
    label_index = {n: k for k, n in enumerate(names)} if names else None

    resolutions = settings.resolutions
    limit = opts.num_images if src.kind != "synthetic" else None
    fp = fingerprint(src, entries, {"convert": dataclasses.asdict(settings),
                                    "shard_mb": opts.shard_mb, "shard_images": opts.shard_images,
                                    "num_images": limit, "labels": list(names or ())})
    work = out.with_name(out.name + ".partial")
    events = open_work_dir(work, fp, opts.overwrite)
    if events is None:
        work.mkdir(parents=True)
        rp = resume_point([], resolutions)
        events = [{"event": "start", "fingerprint": fp, "version": DATASET_VERSION}]
    else:
        rp = resume_point(events, resolutions)
        clean_unrecorded(work, rp.shards)
        events = [events[0]] + rp.events + [record_event(s) for lst in rp.shards.values()
                                            for s in lst]
    journal = Journal(work / JOURNAL, events)

    skipped = [e for e in rp.events if e["event"] == "skip"]
    notes = Counter(n for e in rp.events if e["event"] == "note" for n in e["notes"])
    skipped_at = {e["i"] for e in skipped}
    kept_labels = [entries[i].label for i in range(rp.source_start) if i not in skipped_at]
    if len(kept_labels) != rp.index_start:
        raise PrepError(f"{work / JOURNAL}: the journal does not match the shards; pass "
                        f"--overwrite to start over")
    target = int(opts.shard_mb * 1e6)
    writers = {r: ShardSetWriter(work, r, format_ext(settings.format_at(r).name), target,
                                 opts.shard_images, next_shard=len(rp.shards[r]))
               for r in resolutions}
    shard_recs: Dict[int, List[ShardRecord]] = {r: list(rp.shards[r]) for r in resolutions}
    done_count = {r: sum(s.num_images for s in rp.shards[r]) for r in resolutions}
    index = rp.index_start
    workers = opts.workers or os.cpu_count() or 1
    bar = tqdm(total=len(entries), initial=rp.source_start, unit="img", disable=not opts.progress,
               desc=f"data_prep {out.name}", dynamic_ncols=True, file=sys.stderr)
    if rp.source_start:
        tqdm.write(f"data_prep: resuming {work} at entry {rp.source_start} "
                   f"(image {rp.index_start})", file=sys.stderr)

    def log(msg: str) -> None:
        if opts.progress:
            tqdm.write(msg, file=sys.stderr)

    try:
        for i, conv in _results(src, entries, rp.source_start, settings, workers):
            e = entries[i]
            bar.update(1)
            if limit is not None and index >= limit:
                break
            if conv is None or conv.encoded is None:
                cat, reason = (e.skip if conv is None else
                               (conv.skip_category, conv.skip_reason))
                ev = {"event": "skip", "i": i, "name": e.name, "category": cat, "reason": reason}
                skipped.append(ev)
                journal.write(ev)
                log(f"skipped {e.name}: {reason}")
                continue
            if conv.notes:
                notes.update(conv.notes)
                journal.write({"event": "note", "i": i, "name": e.name, "notes": conv.notes})
            label = label_index[e.label] if label_index is not None else None
            for r in resolutions:
                if index < done_count[r]:
                    continue                        # already in a shard kept from before
                rec = writers[r].add(index, conv.encoded[r], label, i)
                if rec is not None:
                    shard_recs[r].append(rec)
                    journal.write(record_event(rec), sync=True)
            kept_labels.append(e.label)
            index += 1
        for r in resolutions:
            rec = writers[r].close()
            if rec is not None:
                shard_recs[r].append(rec)
                journal.write(record_event(rec), sync=True)
    except (KeyboardInterrupt, BrokenProcessPool) as e:
        for w in writers.values():
            w.abort()
        journal.close()
        bar.close()
        what = ("interrupted" if isinstance(e, KeyboardInterrupt) else
                "a worker process died (out of memory?)")
        raise PrepError(f"{what}; run the same command again to resume from {work} "
                        f"(complete shards are kept)") from None
    bar.close()
    journal.close()

    if index == 0:
        by_cat = Counter(s["category"] for s in skipped)
        shutil.rmtree(work)
        raise PrepError(f"--source {opts.source}: no usable images; all {len(skipped)} entries "
                        f"were skipped ({', '.join(f'{k} {v}' for k, v in by_cat.items())})")
    meta = dataset_meta(src, entries, settings, opts, index, shard_recs, names, kept_labels,
                        skipped, notes, fp)
    atomic_write_json(work / DATASET_JSON, meta)
    _place(work, out)
    return meta


def dataset_meta(src: Source, entries: List[Entry], settings: ConvertSettings,
                 opts: PrepOptions, num_images: int, shard_recs: Dict[int, List[ShardRecord]],
                 names, kept_labels, skipped: List[dict], notes: Counter, fp: str) -> dict:
    resolutions = {}
    for r in settings.resolutions:
        fmt = settings.format_at(r)
        recs = shard_recs[r]
        assert sum(s.num_images for s in recs) == num_images, (r, num_images)
        resolutions[str(r)] = {
            "format": fmt.name, "quality": fmt.quality, "num_images": num_images,
            "bytes": sum(s.bytes for s in recs),
            "shards": [{"path": s.path, "num_images": s.num_images, "bytes": s.bytes,
                        "sha256": s.sha256} for s in recs],
        }
    labels = None
    if names:
        counts = Counter(kept_labels)
        labels = {"num_classes": len(names), "names": list(names),
                  "counts": [counts.get(n, 0) for n in names]}
    by_cat = Counter(s["category"] for s in skipped)
    return {
        "kind": DATASET_KIND,
        "version": DATASET_VERSION,
        "source": {**src.description(), "entries": len(entries)},
        "num_images": num_images,
        "channels": settings.channels,
        "max_res": settings.max_res,
        "resolutions": resolutions,
        "labels": labels,
        "settings": {"square": settings.square, "filter": settings.filter,
                     "small": settings.small, "background": list(settings.background),
                     "pad_color": list(settings.pad_color), "max_pixels": settings.max_pixels,
                     "png_level": settings.png_level, "shard_mb": opts.shard_mb,
                     "shard_images": opts.shard_images},
        "skipped": {"count": len(skipped), "by_category": dict(sorted(by_cat.items())),
                    "files": [{"name": s["name"], "category": s["category"],
                               "reason": s["reason"]} for s in skipped]},
        "converted": {"by_note": dict(sorted(notes.items()))},
        "fingerprint": fp,
        "tools": {"pillow": PIL.__version__, "webdataset": getattr(wds, "__version__", "")},
    }


def summary_lines(meta: dict, out: str) -> List[str]:
    res = sorted(int(r) for r in meta["resolutions"])
    sk = meta["skipped"]
    lines = [f"data_prep: wrote {meta['num_images']} images at {len(res)} resolutions "
             f"({res[0]}..{res[-1]} px) to {out}"]
    cats = ", ".join(f"{k} {v}" for k, v in sk["by_category"].items())
    lines.append(f"data_prep: skipped {sk['count']} of {meta['source']['entries']} entries"
                 + (f" ({cats})" if cats else ""))
    conv = ", ".join(f"{k} {v}" for k, v in meta["converted"]["by_note"].items())
    if conv:
        lines.append(f"data_prep: converted: {conv}")
    return lines
