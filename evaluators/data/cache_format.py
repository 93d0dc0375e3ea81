"""One version number for everything this tool caches across runs: teachers, their baseline results, students.

Why one constant instead of keys that stay "compatible with caches from before X": each such branch kept an old
key alive by leaving a field out, and the branches piled up (precision at its default, stems at torchvision's).
Now a change that would make a cached network or result a different one bumps `CACHE_FORMAT`; every entry records
the format it was written with, and an entry of another format is ignored with one line that says so, never
silently trusted. The format is part of every training fingerprint, so cached students follow it too.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

CACHE_FORMAT = 2  # 1: teachers keyed by their whole training config (before `search.teacher`)
FORMAT_KEY = "format"
_told: set[str] = set()


def current(meta: Mapping[str, Any], where: Path, what: str = "cache entry") -> bool:
    """Whether `meta` (an entry's JSON) was written with this version's format; if not, say once per entry that it
    is ignored and how to free its space."""
    found = meta.get(FORMAT_KEY)
    if found == CACHE_FORMAT:
        return True
    if str(where) not in _told:
        _told.add(str(where))
        tqdm.write(
            f"note: {what} {where} was written with cache format {found or 1}, this version reads format "
            f"{CACHE_FORMAT}: it is ignored (delete the folder to free its space)",
            file=sys.stderr,
        )
    return False
