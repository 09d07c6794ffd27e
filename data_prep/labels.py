"""Class labels for folder, zip and tar sources.

--labels folders     the first path component (the sub-folder) names the class
--labels FILE.csv    rows "file,label" (a header row naming the columns is allowed)
--labels FILE.json   {"file": label, ...} or [["file", label], ...]

Files are matched by their path relative to the source, or by base name when that is unique.
Class indices follow the sorted label names (numerically when every label is an integer, so
labels 0..K-1 keep their values).
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

from .errors import PrepError

_HEADER_WORDS = {"file", "filename", "path", "image", "name", "label", "class", "labels"}


class LabelTable:
    def __init__(self, spec: str, table: Optional[Dict[str, str]], file_path: Optional[Path]):
        self.spec = spec                       # as given on the command line
        self.table = table                     # None: labels from folder names
        self.file_path = file_path
        self.by_base: Dict[str, str] = {}
        if table is not None:
            counts = Counter(PurePosixPath(k).name for k in table)
            self.by_base = {PurePosixPath(k).name: v for k, v in table.items()
                            if counts[PurePosixPath(k).name] == 1}

    @classmethod
    def from_spec(cls, spec: str, source: Path) -> "LabelTable":
        if spec == "folders":
            if not source.is_dir() and source.suffix.lower() not in (".zip", ".tar") and \
                    not source.name.lower().endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
                raise PrepError(f"--labels folders: {source} has no sub-folders")
            return cls(spec, None, None)
        path = Path(spec)
        if not path.is_file():
            raise PrepError(f"--labels {spec}: file not found (use 'folders', a .csv or .json)")
        if path.suffix.lower() == ".csv":
            table = _read_csv(path)
        elif path.suffix.lower() == ".json":
            table = _read_json(path)
        else:
            raise PrepError(f"--labels {spec}: expected 'folders', a .csv or a .json file")
        if not table:
            raise PrepError(f"--labels {spec}: holds no labels")
        return cls(spec, table, path)

    def lookup_all(self, names: List[str]) -> List[Optional[str]]:
        """Label of each source file (None: no label). Exact relative path first; then the
        base name, when it is unique both among the files and in the table."""
        if self.table is None:
            return [(PurePosixPath(n).parts[0] if len(PurePosixPath(n).parts) > 1 else None)
                    for n in names]
        base_counts = Counter(PurePosixPath(n).name for n in names)
        out = []
        for n in names:
            label = self.table.get(_norm(n))
            base = PurePosixPath(n).name
            if label is None and base_counts[base] == 1:
                label = self.by_base.get(base)
            out.append(label)
        return out

    def missing_reason(self, rel_name: str) -> str:
        if self.table is None:
            return "not inside a class sub-folder (--labels folders)"
        return f"no label for it in {self.file_path.name}"


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_csv(path: Path) -> Dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrepError(f"--labels {path}: cannot read CSV ({e})") from None
    if rows and {c.strip().lower() for c in rows[0]} <= _HEADER_WORDS:
        rows = rows[1:]
    table = {}
    for n, r in enumerate(rows, 1):
        if len(r) < 2:
            raise PrepError(f"--labels {path}: row {n} needs two columns 'file,label' (got {r})")
        table[_norm(r[0].strip())] = r[1].strip()
    return table


def _read_json(path: Path) -> Dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepError(f"--labels {path}: cannot read JSON ({e})") from None
    items = data.items() if isinstance(data, dict) else data if isinstance(data, list) else None
    if items is None:
        raise PrepError(f"--labels {path}: expected an object {{file: label}} or a list of "
                        f"[file, label] pairs")
    table = {}
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise PrepError(f"--labels {path}: bad entry {item!r}; expected [file, label]")
        table[_norm(str(item[0]))] = str(item[1])
    return table


def class_names(labels: List[str]) -> Tuple[str, ...]:
    """Sorted unique label names; integer labels sort numerically."""
    unique = set(labels)
    if all(_is_int(u) for u in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False
