"""Reading the tail of a workload's log file without loading the whole file."""

from __future__ import annotations

import os
from pathlib import Path

_BLOCK = 64 * 1024
MAX_TAIL = 10_000


def tail(path: Path | str, lines: int) -> str:
    """The last ``lines`` lines of ``path`` ("" if it does not exist yet)."""
    lines = max(0, min(lines, MAX_TAIL))
    if lines == 0:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        # Read backwards until we hold one newline more than needed (or the whole file).
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode("utf-8", errors="replace")
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])
