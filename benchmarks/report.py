"""What the benchmark scripts share: the CPU's name, markdown tables and atomic writes."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Collection, Iterable, Sequence


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   left: Collection[str] = ()) -> str:
    """A markdown table; columns named in `left` are left-aligned, numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if h in left else "---:" for h in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (pggan.files.atomic_write_text)."""
    from pggan.files import atomic_write_text
    atomic_write_text(path, text)
