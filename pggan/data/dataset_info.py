"""dataset.json: what data_prep wrote, read back for the loader.

Layout of a prepared dataset (a local directory, an http(s) URL base, or a `pipe:` command with
`{}` standing for the file inside the dataset):

    dataset.json
    res-0004/shard-000000.tar ...        one shard set per resolution, 4 .. max_res
    res-0008/shard-000000.tar ...

Each shard is a webdataset tar: sample key = the image's global index (8 digits, 0 .. N-1, in
shard order), one image file (`png`, `jpg` or `webp`) and, for labelled datasets, `cls` (the
class index as decimal text).
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from pggan.config import ConfigError

DATASET_JSON = "dataset.json"
DATASET_KIND = "pggan-shards"
DATASET_VERSION = 1
IMAGE_EXTS = {"png": "png", "jpeg": "jpg", "webp": "webp"}   # format -> sample key / extension


class DatasetError(ConfigError):
    """A dataset that cannot be used, described in one line (what, where, what to do)."""


def res_dir(res: int) -> str:
    return f"res-{res:04d}"


def shard_name(res: int, shard_index: int) -> str:
    return f"{res_dir(res)}/shard-{shard_index:06d}.tar"


def sample_key(index: int) -> str:
    return f"{index:08d}"


@dataclass(frozen=True)
class ShardInfo:
    path: str                   # relative to the dataset root, e.g. res-0064/shard-000003.tar
    num_images: int
    first_index: int            # global index of the shard's first image
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    root: str                                   # directory, http(s) base URL or pipe: command
    num_images: int
    channels: int                               # 1 or 3
    max_res: int
    resolutions: Tuple[int, ...]                # 4, 8, ..., max_res
    shards: Dict[int, Tuple[ShardInfo, ...]]    # res -> shards in index order
    image_formats: Dict[int, str]               # res -> png | jpeg | webp
    num_classes: int = 0                        # 0: unlabelled
    label_names: Tuple[str, ...] = ()
    source: dict = field(default_factory=dict)
    num_skipped: int = 0

    def check_resolution(self, res: int) -> None:
        if res not in self.shards:
            have = ", ".join(str(r) for r in self.resolutions)
            raise DatasetError(f"{self.root}: resolution {res} is not in the dataset (it has "
                               f"{have}); run data_prep again with --max-res {res} or more")

    def shard_urls(self, res: int) -> list:
        """URLs (paths, http(s) URLs or pipe: commands) of `res`'s shards, in index order."""
        self.check_resolution(res)
        return [resolve_url(self.root, s.path) for s in self.shards[res]]


def resolve_url(root: str, rel: str) -> str:
    """The dataset file `rel` under `root` (directory, http(s) base or `pipe:` with `{}`)."""
    if root.startswith("pipe:"):
        return root.replace("{}", rel)
    if root.startswith(("http://", "https://")):
        return root.rstrip("/") + "/" + rel
    return os.path.join(root, rel)


def _split_root(path: str) -> Tuple[str, str]:
    """Accept the dataset root or its dataset.json itself; return (root, dataset.json url)."""
    path = str(path)
    if path.startswith("pipe:"):
        if "{}" not in path:
            raise DatasetError(f"--data {path}: a pipe: dataset needs '{{}}' where the file "
                               f"name goes, e.g. 'pipe:aws s3 cp s3://bucket/ds/{{}} -'")
        return path, resolve_url(path, DATASET_JSON)
    if path.endswith("/" + DATASET_JSON) or path == DATASET_JSON:
        root = path[: -len(DATASET_JSON)].rstrip("/") or "."
        return root, path
    return path, resolve_url(path, DATASET_JSON)


def _read_text(url: str, shown: str) -> str:
    if url.startswith("pipe:"):
        proc = subprocess.run(url[5:], shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DatasetError(f"{shown}: command failed with exit code {proc.returncode}"
                               f"{': ' + err[-1] if err else ''}")
        return proc.stdout.decode()
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read().decode()
        except (urllib.error.URLError, OSError) as e:
            raise DatasetError(f"{shown}: cannot fetch ({e}); check the URL") from None
    try:
        with open(url, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"{shown}: not found; --data must be a directory written by "
                           f"`python -m data_prep` (it holds dataset.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{shown}: cannot read ({e})") from None


def _get(d: dict, key: str, typ, shown: str):
    if key not in d:
        raise DatasetError(f"{shown}: missing field '{key}'; the file is damaged or not written "
                           f"by data_prep (run data_prep again)")
    v = d[key]
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise DatasetError(f"{shown}: field '{key}' must be an integer (got {v!r})")
    if typ is not int and not isinstance(v, typ):
        raise DatasetError(f"{shown}: field '{key}' has the wrong type ({type(v).__name__})")
    return v


def parse_dataset_json(text: str, root: str, shown: Optional[str] = None) -> DatasetInfo:
    shown = shown or resolve_url(root, DATASET_JSON)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{shown}: not valid JSON (line {e.lineno}: {e.msg}); the file is "
                           f"damaged, run data_prep again") from None
    if not isinstance(meta, dict) or meta.get("kind") != DATASET_KIND:
        raise DatasetError(f"{shown}: not a dataset.json written by data_prep "
                           f"(expected \"kind\": \"{DATASET_KIND}\")")
    version = _get(meta, "version", int, shown)
    if version > DATASET_VERSION:
        raise DatasetError(f"{shown}: dataset format version {version} is newer than this "
                           f"pggan reads ({DATASET_VERSION}); update pggan")
    num_images = _get(meta, "num_images", int, shown)
    channels = _get(meta, "channels", int, shown)
    max_res = _get(meta, "max_res", int, shown)
    res_meta = _get(meta, "resolutions", dict, shown)
    if channels not in (1, 3):
        raise DatasetError(f"{shown}: channels must be 1 or 3 (got {channels})")
    shards: Dict[int, Tuple[ShardInfo, ...]] = {}
    formats: Dict[int, str] = {}
    for key, entry in res_meta.items():
        try:
            res = int(key)
        except ValueError:
            raise DatasetError(f"{shown}: resolution key {key!r} is not an integer") from None
        where = f"{shown} [resolutions.{key}]"
        fmt = _get(entry, "format", str, where)
        if fmt not in IMAGE_EXTS:
            raise DatasetError(f"{where}: unknown image format {fmt!r}")
        lst = []
        first = 0
        for s in _get(entry, "shards", list, where):
            n = _get(s, "num_images", int, where)
            lst.append(ShardInfo(path=_get(s, "path", str, where), num_images=n,
                                 first_index=first, num_bytes=_get(s, "bytes", int, where),
                                 sha256=_get(s, "sha256", str, where)))
            first += n
        if first != num_images:
            raise DatasetError(f"{where}: shards hold {first} images but num_images is "
                               f"{num_images}; the dataset is incomplete, run data_prep again")
        shards[res] = tuple(lst)
        formats[res] = fmt
    if not shards:
        raise DatasetError(f"{shown}: lists no resolutions; run data_prep again")
    labels = meta.get("labels") or {}
    names = tuple(labels.get("names", ()))
    num_classes = int(labels.get("num_classes", len(names)))
    skipped = meta.get("skipped") or {}
    return DatasetInfo(root=root, num_images=num_images, channels=channels, max_res=max_res,
                       resolutions=tuple(sorted(shards)), shards=shards, image_formats=formats,
                       num_classes=num_classes, label_names=names,
                       source=dict(meta.get("source") or {}),
                       num_skipped=int(skipped.get("count", 0)))


def load_dataset_info(path: str) -> DatasetInfo:
    """Read `path`/dataset.json (directory, http(s) base, or `pipe:...{}...`) -> DatasetInfo.
    Raises DatasetError with a one-line message when it is missing or invalid."""
    if path is None or str(path).strip() == "":
        raise DatasetError("--data: empty dataset path")
    root, url = _split_root(str(path))
    if not root.startswith(("pipe:", "http://", "https://")) and not os.path.exists(root):
        raise DatasetError(f"--data {root}: no such directory; prepare one with "
                           f"`python -m data_prep --source ... --out {root}`")
    return parse_dataset_json(_read_text(url, url), root, url)
