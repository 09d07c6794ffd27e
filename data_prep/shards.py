"""Shard sets on disk: size-targeted tar shards written to temp files and renamed when complete,
and the progress journal that makes an interrupted run resumable.

A shard closes before the image that would take it past --shard-mb (or past --shard-images
images); the boundaries depend only on the encoded bytes, so they are the same in every run.
Complete shards are renamed from `.tar.tmp` to `.tar` and then recorded in progress.jsonl;
on resume, recorded shards are kept and everything else in the shard folders is redone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import webdataset as wds

from pggan.data.dataset_info import IMAGE_EXTS, res_dir, sample_key, shard_name
from pggan.files import atomic_write_text, sha256_file

from .errors import PrepError

JOURNAL = "progress.jsonl"
_TAR_BLOCK = 512


def tar_member_bytes(size: int) -> int:
    """Bytes one member takes in a tar: a 512-byte header plus data padded to 512."""
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


@dataclass
class ShardRecord:
    res: int
    path: str                # relative to the dataset root
    num_images: int
    first_index: int         # global index of its first image
    bytes: int
    sha256: str
    last_source: int         # source entry index of its last image (resume point)


class ShardSetWriter:
    """Writes one resolution's shards: res-XXXX/shard-NNNNNN.tar."""

    def __init__(self, root: Path, res: int, ext: str, target_bytes: int, max_images: int,
                 next_shard: int = 0):
        self.root, self.res, self.ext = root, res, ext
        self.target_bytes, self.max_images = target_bytes, max_images
        self.next_shard = next_shard
        (root / res_dir(res)).mkdir(parents=True, exist_ok=True)
        self._writer: Optional[wds.TarWriter] = None
        self._file = None
        self._count = self._bytes = self._first = self._last_source = 0

    def _open(self, first_index: int) -> None:
        rel = shard_name(self.res, self.next_shard)
        self._tmp = self.root / (rel + ".tmp")
        self._rel = rel
        self._file = open(self._tmp, "wb")
        # Fixed mtime/owner/mode: byte-identical shards from identical input.
        self._writer = wds.TarWriter(self._file, encoder=False, mtime=0, user="", group="",
                                     mode=0o444)
        self._count, self._bytes, self._first = 0, 0, first_index

    def add(self, index: int, data: bytes, label: Optional[int],
            source_index: int) -> Optional[ShardRecord]:
        """Append image `index`; returns the record of a shard this completed first, if any."""
        sample = {"__key__": sample_key(index), self.ext: data}
        if label is not None:
            sample["cls"] = str(label).encode()
        size = sum(tar_member_bytes(len(v)) for k, v in sample.items() if k != "__key__")
        done = None
        if self._writer is not None and self._count > 0 and (
                self._bytes + size + 2 * _TAR_BLOCK > self.target_bytes
                or self._count >= self.max_images):
            done = self.close()
        if self._writer is None:
            self._open(index)
        self._writer.write(sample)
        self._count += 1
        self._bytes += size
        self._last_source = source_index
        return done

    def close(self) -> Optional[ShardRecord]:
        """Finish the open shard (temp file -> fsync -> rename) and return its record."""
        if self._writer is None:
            return None
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.root / self._rel
        os.replace(self._tmp, final)
        rec = ShardRecord(res=self.res, path=self._rel, num_images=self._count,
                          first_index=self._first, bytes=final.stat().st_size,
                          sha256=sha256_file(final), last_source=self._last_source)
        self._writer = self._file = None
        self.next_shard += 1
        return rec

    def abort(self) -> None:
        if self._writer is not None:
            self._file.close()
            self._writer = self._file = None


class Journal:
    """progress.jsonl: one JSON event per line, appended and flushed as work completes."""

    def __init__(self, path: Path, events: List[dict]):
        self.path = path
        atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in events))
        self._f = open(path, "a", encoding="utf-8")

    def write(self, event: dict, sync: bool = False) -> None:
        self._f.write(json.dumps(event) + "\n")
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_journal(path: Path) -> List[dict]:
    """Events of an interrupted run; a torn last line (killed mid-write) is dropped."""
    events = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepError(f"{path}: cannot read the progress journal ({e}); use --overwrite to "
                        f"start over") from None
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events


@dataclass
class ResumePoint:
    source_start: int                       # first source entry to process again
    index_start: int                        # global image index of the next kept image
    shards: Dict[int, List[ShardRecord]]    # res -> complete shards kept
    events: List[dict]                      # skip / note events before source_start


def resume_point(events: List[dict], resolutions: List[int]) -> ResumePoint:
    shards: Dict[int, List[ShardRecord]] = {r: [] for r in resolutions}
    for e in events:
        if e.get("event") == "shard":
            rec = ShardRecord(**{k: v for k, v in e.items() if k != "event"})
            shards[rec.res].append(rec)
    # Each resolution can go on after its last complete shard; all of them can after the
    # earliest such point, so that is where the source is read again.
    ends = {r: (lst[-1].last_source + 1 if lst else 0) for r, lst in shards.items()}
    counts = {r: sum(s.num_images for s in lst) for r, lst in shards.items()}
    r_min = min(resolutions, key=lambda r: ends[r])
    start = ends[r_min]
    kept = [e for e in events if e.get("event") in ("skip", "note") and e["i"] < start]
    return ResumePoint(start, counts[r_min], shards, kept)


def clean_unrecorded(root: Path, shards: Dict[int, List[ShardRecord]]) -> None:
    """Remove temp files and shards written after the last journal entry (redone)."""
    for res, lst in shards.items():
        d = root / res_dir(res)
        if not d.is_dir():
            continue
        keep = {Path(s.path).name for s in lst}
        for p in d.iterdir():
            if p.name not in keep:
                p.unlink()


def record_event(rec: ShardRecord) -> dict:
    return {"event": "shard", **asdict(rec)}


def format_ext(name: str) -> str:
    return IMAGE_EXTS[name]


__all__ = ["JOURNAL", "Journal", "ResumePoint", "ShardRecord", "ShardSetWriter",
           "clean_unrecorded", "format_ext", "read_journal", "record_event", "resume_point",
           "sha256_file", "tar_member_bytes"]
