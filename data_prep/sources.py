"""Where images come from: a folder, a zip or tar archive, or a built-in source.

A source lists its entries first (name, size, label, or a reason to skip it without reading it),
in a fixed order: sorted paths for folders and zips, archive order for tars, file order for IDX
and fonts. The order is what makes the output deterministic and the run resumable. Payloads are
then produced lazily, from any entry index on, as work items the converter processes:

  ("file", path)            a file the worker reads itself
  ("zip", archive, member)  a zip member the worker reads itself
  ("bytes", data)           encoded image bytes read here (tar members, emoji bitmaps)
  ("array", uint8 array)    raw pixels (IDX images)
  ("synthetic", index, seed)

Built-in sources, no download:
  synthetic      pggan.data.synthetic_images (procedural; any resolution)
  fashion-mnist  70,000 28x28 grayscale images + 10 classes, from Debian's
                 `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or any IDX path
  emoji          the 136x128 colour bitmaps (CBDT table) of Debian's `fonts-noto-color-emoji`
                 (/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf), read with fontTools
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, List, Optional, Tuple
from zlib import error as zlibError

import numpy as np

from .errors import PrepError
from .labels import LabelTable

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff",
                  ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".dib", ".apng"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


@dataclass(frozen=True)
class Entry:
    name: str                                  # shown in messages and dataset.json
    size: int                                  # bytes (0 when not known)
    label: Optional[str] = None                # class name before mapping to an index
    skip: Optional[Tuple[str, str]] = None     # (category, reason): skipped without reading


class Source:
    """Base: subclasses fill `kind`, `description` and the native defaults."""
    kind = "source"
    default_max_res: Optional[int] = None
    default_channels = 3
    default_small = "skip"
    builtin_label_names: Optional[Tuple[str, ...]] = None   # fixed class list (IDX)

    def description(self) -> dict:
        raise NotImplementedError

    def entries(self) -> List[Entry]:
        raise NotImplementedError

    def work_items(self, entries: List[Entry], start: int) -> Iterator[Tuple[int, object]]:
        """(entry index, payload) for every entry from `start` on; payload None = pre-skipped."""
        raise NotImplementedError


# Archive members bigger than this, uncompressed as the archive declares it, are skipped: zip and
# tar readers stop at the declared size, so this bounds what one member can expand to (a zip
# bomb's 4 GB member is skipped unread); no image data_prep converts comes near it.
MAX_MEMBER_BYTES = 512 << 20


def unsafe_member(name: str, size: int, link: bool = False) -> Optional[Tuple[str, str]]:
    """A skip reason for an archive member that must not be used, or None. Members are only
    ever read into memory, never extracted, so nothing is written outside --out either way;
    these are skipped so that a hostile archive cannot inject files by path tricks into a
    later extraction or blow up memory."""
    if link:
        return ("unsafe", "a symbolic or hard link inside the archive (not followed)")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return ("unsafe", "an absolute path inside the archive")
    if ".." in posix.split("/"):
        return ("unsafe", "a path with '..' inside the archive")
    if "\0" in name:
        return ("unsafe", "a NUL character in the member name")
    if size > MAX_MEMBER_BYTES:
        return ("too-large", f"expands to {size} bytes, more than the {MAX_MEMBER_BYTES >> 20} "
                             f"MiB an image member may have (archive bomb guard)")
    if size < 0:
        return ("unsafe", "a negative member size")
    return None


def _ignored(name: str) -> bool:
    """Hidden files and macOS archive metadata are not data; they are passed over silently."""
    parts = PurePosixPath(name).parts
    return any((p.startswith(".") and p != "..") or p == "__MACOSX" for p in parts)


def _pre_skip(name: str, label: Optional[str], labels: Optional[LabelTable]):
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return ("not-image", f"not an image file (extension '{suffix or 'none'}')")
    if labels is not None and label is None:
        return ("no-label", labels.missing_reason(name))
    return None


def _with_labels(listing: List[Tuple[str, int, Optional[Tuple[str, str]]]],
                 labels: Optional[LabelTable]) -> List[Entry]:
    """(name, size, skip or None) in source order -> entries with labels and pre-skips."""
    names = [n for n, _, _ in listing]
    found = labels.lookup_all(names) if labels is not None else [None] * len(names)
    return [Entry(n, size, lab, skip or _pre_skip(n, lab, labels))
            for (n, size, skip), lab in zip(listing, found)]


# --------------------------------------------------------------------------------------------
# Folder, zip, tar.


class PathSource(Source):
    """A source read from one path (folder, zip or tar), with optional labels."""

    def __init__(self, path: Path, labels: Optional[LabelTable]):
        self.path, self.labels = path, labels

    def description(self) -> dict:
        return {"kind": self.kind, "path": str(self.path),
                "labels": self.labels.spec if self.labels else None}


class FolderSource(PathSource):
    kind = "folder"

    def entries(self) -> List[Entry]:
        out = []
        skip_file = self.labels.file_path.resolve() if self.labels and self.labels.file_path \
            else None

        def onerror(e: OSError):
            raise PrepError(f"--source {self.path}: cannot read folder {e.filename} "
                            f"({e.strerror}); fix its permissions") from None

        for dirpath, dirnames, filenames in os.walk(self.path, onerror=onerror):
            dirnames.sort()
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                rel = path.relative_to(self.path).as_posix()
                if _ignored(rel) or (skip_file is not None and path.resolve() == skip_file):
                    continue
                try:
                    size = path.stat().st_size
                except OSError as e:
                    out.append((rel, 0, ("unreadable", f"cannot stat ({e.strerror})")))
                    continue
                if not path.is_file():
                    out.append((rel, 0, ("not-image", "not a regular file")))
                    continue
                out.append((rel, size, None))
        # Sorted by relative path: the order of a zip of the same folder.
        return _with_labels(sorted(out, key=lambda t: t[0]), self.labels)

    def work_items(self, entries, start):
        for i in range(start, len(entries)):
            e = entries[i]
            yield i, None if e.skip else ("file", str(self.path / e.name))


class ZipSource(PathSource):
    kind = "zip"

    def entries(self) -> List[Entry]:
        try:
            with zipfile.ZipFile(self.path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise PrepError(f"--source {self.path}: not a readable zip archive ({e})") from None
        def skip(info):
            link = (info.external_attr >> 16) & 0o170000 == 0o120000     # unix symlink mode
            return unsafe_member(info.filename, info.file_size, link) or (
                ("unreadable", "encrypted zip member") if info.flag_bits & 0x1 else None)
        listing = [(info.filename, info.file_size, skip(info))
                   for info in sorted(infos, key=lambda i: i.filename)
                   if not info.is_dir() and not _ignored(info.filename)]
        return _with_labels(listing, self.labels)

    def work_items(self, entries, start):
        for i in range(start, len(entries)):
            e = entries[i]
            yield i, None if e.skip else ("zip", str(self.path), e.name)


class TarSource(PathSource):
    kind = "tar"

    def _members(self) -> Iterator[Tuple[tarfile.TarFile, tarfile.TarInfo]]:
        try:
            tf = tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PrepError(f"--source {self.path}: not a readable tar archive ({e})") from None
        with tf:
            while True:
                try:
                    m = tf.next()
                except (tarfile.TarError, OSError, EOFError, zlibError) as e:
                    yield tf, DamagedTail(str(e))
                    return
                if m is None:
                    return
                if m.isdir() or _ignored(m.name):
                    continue
                yield tf, m

    def entries(self) -> List[Entry]:
        listing = []
        for _, m in self._members():
            if isinstance(m, DamagedTail):
                listing.append(("<end of archive>", 0, (
                    "unreadable", f"archive damaged or truncated after this point ({m.message}); "
                                  f"later members were not read")))
                break
            listing.append((m.name, m.size,
                            unsafe_member(m.name, m.size, m.issym() or m.islnk()) or
                            (None if m.isfile() else ("not-image", "not a regular file"))))
        return _with_labels(listing, self.labels)

    def work_items(self, entries, start):
        # Members are read in archive order (a compressed tar cannot seek); entries line up with
        # the regular-file members that entries() listed.
        i = 0
        for tf, m in self._members():
            if i >= len(entries):
                return
            if isinstance(m, DamagedTail):
                yield i, None
                return
            if i >= start:
                if entries[i].skip:
                    yield i, None
                else:
                    try:
                        data = tf.extractfile(m).read()
                    except (tarfile.TarError, OSError, EOFError, zlibError) as e:
                        yield i, ("error", "unreadable", f"cannot read from archive ({e})")
                        i += 1
                        continue
                    yield i, ("bytes", data)
            i += 1


@dataclass(frozen=True)
class DamagedTail:
    message: str


# --------------------------------------------------------------------------------------------
# Built-in sources.


class SyntheticSource(Source):
    kind = "synthetic"
    default_max_res = 64
    default_small = "upscale"

    def __init__(self, num_images: int, seed: int):
        self.num_images, self.seed = num_images, seed

    def description(self) -> dict:
        return {"kind": self.kind, "num_images": self.num_images, "seed": self.seed,
                "generator": "pggan.data.synthetic.synthetic_images"}

    def entries(self) -> List[Entry]:
        return [Entry(f"synthetic/{i:08d}", 0) for i in range(self.num_images)]

    def work_items(self, entries, start):
        for i in range(start, len(entries)):
            yield i, ("synthetic", i, self.seed)


def read_idx(path: Path) -> np.ndarray:
    """IDX file (MNIST format, optionally gzipped) -> uint8 array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PrepError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PrepError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PrepError(f"{path}: IDX header says {dims} ({int(np.prod(dims))} bytes) but the "
                        f"file holds {body.size}; the file is truncated")
    return body.reshape(dims)


class IdxSource(Source):
    """IDX image files (+ matching label files): Fashion-MNIST, MNIST and the like."""
    kind = "idx"
    default_max_res = 32
    default_channels = 1
    default_small = "upscale"

    def __init__(self, image_files: List[Path], class_names: Optional[Tuple[str, ...]],
                 name: str):
        self.image_files, self.name = image_files, name
        self._class_names = class_names
        self._images: Optional[List[np.ndarray]] = None

    @staticmethod
    def label_file(image_file: Path) -> Path:
        return image_file.with_name(image_file.name.replace("images-idx3", "labels-idx1"))

    @classmethod
    def from_path(cls, path: Path, name: str,
                  class_names: Optional[Tuple[str, ...]] = None) -> "IdxSource":
        if path.is_dir():
            files = sorted(path.glob("*images-idx3-ubyte*"),
                           key=lambda p: (not p.name.startswith("train"), p.name))
            if not files:
                raise PrepError(f"{path}: no '*images-idx3-ubyte[.gz]' files in this folder")
        elif path.is_file():
            files = [path]
        else:
            hint = (" (install it: apt-get install dataset-fashion-mnist)"
                    if name == "fashion-mnist" else "")
            raise PrepError(f"{name}: {path} not found{hint}; or pass --source-dir DIR holding "
                            f"the IDX files")
        return cls(files, class_names, name)

    def description(self) -> dict:
        return {"kind": self.name, "files": [str(p) for p in self.image_files]}

    def _load(self):
        if self._images is None:
            images, labels = [], []
            for f in self.image_files:
                arr = read_idx(f)
                if arr.ndim != 3:
                    raise PrepError(f"{f}: expected N x H x W images, got shape {arr.shape}")
                images.append(arr)
                lf = self.label_file(f)
                lab = read_idx(lf) if lf.is_file() and lf != f else None
                if lab is not None and lab.shape != (arr.shape[0],):
                    raise PrepError(f"{lf}: {lab.shape[0]} labels for {arr.shape[0]} images")
                labels.append(lab)
            self._images = images
            self._labels = labels if all(lab is not None for lab in labels) else None
        return self._images, self._labels

    @property
    def builtin_label_names(self):
        images, labels = self._load()
        if labels is None:
            return None
        if self._class_names is not None:
            return self._class_names
        top = max(int(lab.max(initial=0)) for lab in labels)
        return tuple(str(c) for c in range(top + 1))

    def entries(self) -> List[Entry]:
        images, labels = self._load()
        names = self.builtin_label_names
        out = []
        for f_idx, (f, arr) in enumerate(zip(self.image_files, images)):
            stem = f.name.split("-")[0]
            for k in range(arr.shape[0]):
                label = names[int(labels[f_idx][k])] if labels is not None else None
                out.append(Entry(f"{stem}/{k:05d}", arr.shape[1] * arr.shape[2], label))
        return out

    def work_items(self, entries, start):
        images, _ = self._load()
        flat = [(a, k) for a in images for k in range(a.shape[0])]
        for i in range(start, len(entries)):
            a, k = flat[i]
            yield i, ("array", np.ascontiguousarray(a[k]))


class EmojiSource(Source):
    """Colour bitmaps (PNG inside the CBDT table) of a Noto Color Emoji style font."""
    kind = "emoji"
    default_max_res = 128
    default_small = "upscale"

    def __init__(self, font_path: Path):
        if not font_path.is_file():
            raise PrepError(f"emoji: {font_path} not found (install it: apt-get install "
                            f"fonts-noto-color-emoji) or pass --source-dir DIR holding "
                            f"NotoColorEmoji.ttf")
        self.font_path = font_path
        self._bitmaps: Optional[List[Tuple[str, bytes]]] = None

    def description(self) -> dict:
        return {"kind": self.kind, "font": str(self.font_path)}

    def _load(self) -> List[Tuple[str, bytes]]:
        if self._bitmaps is None:
            from fontTools.ttLib import TTFont, TTLibError
            try:
                font = TTFont(str(self.font_path), lazy=True)
                if "CBDT" not in font:
                    raise PrepError(f"emoji: {self.font_path} has no colour bitmaps (CBDT "
                                    f"table); use NotoColorEmoji.ttf")
                strike = max(font["CBDT"].strikeData, key=len)
                order = {g: font.getGlyphID(g) for g in strike}
                self._bitmaps = [(g, bytes(strike[g].imageData))
                                 for g in sorted(strike, key=order.get)]
            except (TTLibError, OSError, struct.error) as e:
                raise PrepError(f"emoji: cannot read font {self.font_path} ({e})") from None
        return self._bitmaps

    def entries(self) -> List[Entry]:
        return [Entry(f"emoji/{g}", len(data)) for g, data in self._load()]

    def work_items(self, entries, start):
        bitmaps = self._load()
        for i in range(start, len(entries)):
            yield i, ("bytes", bitmaps[i][1])


# --------------------------------------------------------------------------------------------


def _looks_like_idx(path: Path) -> bool:
    return "idx3-ubyte" in path.name


def open_source(spec: str, *, labels_spec: Optional[str], source_dir: Optional[str],
                num_images: Optional[int], seed: int) -> Source:
    """`--source` value -> Source. Raises PrepError with a one-line message."""
    if spec == "synthetic":
        if labels_spec:
            raise PrepError("--labels: the synthetic source has no labels")
        return SyntheticSource(num_images if num_images is not None else 10_000, seed)
    if spec == "fashion-mnist":
        if labels_spec:
            raise PrepError("--labels: fashion-mnist brings its own 10 classes")
        return IdxSource.from_path(Path(source_dir or FASHION_MNIST_DIR), "fashion-mnist",
                                   FASHION_MNIST_CLASSES)
    if spec == "emoji":
        if labels_spec:
            raise PrepError("--labels: the emoji source has no labels")
        font = Path(source_dir) / Path(NOTO_EMOJI_FONT).name if source_dir else \
            Path(NOTO_EMOJI_FONT)
        return EmojiSource(font)
    path = Path(spec)
    if not path.exists():
        raise PrepError(f"--source {spec}: no such file or folder (or use a built-in source: "
                        f"synthetic, fashion-mnist, emoji)")
    if not os.access(path, os.R_OK):
        raise PrepError(f"--source {spec}: permission denied")
    if path.is_file() and _looks_like_idx(path):
        return IdxSource.from_path(path, "idx")
    if path.is_file() and path.suffix.lower() in (".ttf", ".otf"):
        return EmojiSource(path)
    labels = LabelTable.from_spec(labels_spec, path) if labels_spec else None
    if path.is_dir():
        return FolderSource(path, labels)
    if zipfile.is_zipfile(path):
        return ZipSource(path, labels)
    try:
        is_tar = tarfile.is_tarfile(path)
    except (OSError, EOFError):
        is_tar = False
    if is_tar:
        return TarSource(path, labels)
    raise PrepError(f"--source {spec}: not a folder, zip or tar archive, IDX file or emoji font")


def fingerprint(source: Source, entries: List[Entry], settings: dict) -> str:
    """sha256 of everything that decides the output: settings, source and its entry list."""
    h = hashlib.sha256()
    h.update(json.dumps({"source": source.description(), "settings": settings},
                        sort_keys=True).encode())
    for e in entries:
        h.update(json.dumps([e.name, e.size, e.label, e.skip]).encode())
    return h.hexdigest()
