"""Where the tool keeps its files and how it writes them: the cache folder, and saves a kill cannot truncate.

The lowest layer of the evaluators: data loading (the ImageFolder tensor cache), training (checkpoints) and the
teacher cache all write through these, so none of them reaches up into another to find them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_ENV = "EDGE_SEARCH_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edge-compress-search")


def atomic_save(obj: object, path: Path) -> None:
    """Write to a temporary file and rename, so a kill mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """`atomic_save` for bytes already serialised elsewhere (a checkpoint a Ray worker sent back); the temporary
    name carries the process id, so two writers of one path never share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.tmp{os.getpid()}")
    tmp.write_bytes(blob)
    tmp.replace(path)
