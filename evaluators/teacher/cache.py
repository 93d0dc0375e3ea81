"""The teacher cache: one entry per trained teacher, found by what makes teachers interchangeable.

Why not a key over the whole training config (as before): a teacher trained longer, or with a better schedule, is
still a teacher for the same study, and a run should use the strongest one there is instead of training a weaker
one beside it. So an entry is found by its *match* (the network and its stem, the input resolution, the data's
fingerprint, the split and the cache format: `Match`), and one entry per initialisation (`scratch`, an ImageNet
file) holds that teacher as it is trained further, segment after segment (`evaluators.teacher.training`). Every key
is made of values (names, numbers, digests), never of module paths, so moving code leaves the cache valid.

An entry's folder holds `teacher.json` (what it is, its best epoch's accuracies, its validation curve and the
segments that trained it), `teacher.pt` (the best weights by validation accuracy, tensors only, checksummed),
`curve.png`, and while a segment runs `segment.json` and `state.pt` (the resume checkpoint) and a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.data.cache_format import CACHE_FORMAT
from evaluators.data.cache_format import FORMAT_KEY
from evaluators.data.cache_format import current
from evaluators.data.datasets import file_digest
from evaluators.data.files import CACHE_ENV  # noqa: F401 - where callers of the cache look for it
from evaluators.data.files import atomic_write_bytes
from evaluators.data.files import default_cache_dir
from evaluators.data.splits import SplitConfig
from evaluators.training.loop import warn
from spaces.models.architectures import stem_of

META, WEIGHTS, CURVE = "teacher.json", "teacher.pt", "curve.png"
STATE, SEGMENT, LOCK = "state.pt", "segment.json", "lock"  # while a segment trains
START = "segment_start.pt"  # the weights a continuing segment starts from (the best moves on while it trains)
PINNED = "pinned"  # best weights that runs used, kept after the entry moved on (`evaluators.teacher.prepare.pin`)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Match:
    """What two teachers must share to stand in for each other in a study."""

    network: str  # the canonical architecture name, arguments included
    dataset: str
    resolution: int
    data: str  # the data's fingerprint
    split: SplitConfig

    def fields(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: CACHE_FORMAT,
            "network": self.network,
            "stem": stem_of(self.network, self.resolution),
            "dataset": self.dataset,
            "resolution": self.resolution,
            "data": self.data,
            "split": asdict(self.split),
        }

    @property
    def key(self) -> str:
        return digest(self.fields())

    def entry_key(self, init: str) -> str:
        """The key of the entry that starts from `init` ("scratch" or a weights digest)."""
        return digest(self.fields() | {"init": init})

    def folder(self, cache_dir: Path | None, init: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.network.partition("@")[0])  # no process-local instance id
        return Path(cache_dir or default_cache_dir()) / "teachers" / f"{safe}-{self.dataset}-{self.entry_key(init)}"


@dataclass(frozen=True)
class Entry:
    """One cached teacher: its folder and its `teacher.json`."""

    folder: Path
    meta: dict[str, Any]

    @property
    def epochs(self) -> int:
        """Epochs trained so far (the best weights may be an earlier epoch's)."""
        return int(self.meta.get("epochs", 0))

    @property
    def val_accuracy(self) -> float:
        return float(self.meta["val_accuracy"])

    @property
    def busy(self) -> bool:
        """A segment is being trained by a live process now (its lock is held)."""
        return is_locked(self.folder)

    def load(self, model: nn.Module) -> nn.Module:
        """The best weights into `model`, after checking their checksum; a damaged file is a CorruptEntry."""
        weights = self.folder / WEIGHTS
        if not weights.is_file() or file_digest(weights, "sha256") != self.meta.get("sha256"):
            raise CorruptEntry(f"cached teacher in {self.folder} is corrupt (checksum mismatch)")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model


class CorruptEntry(RuntimeError):
    """An entry's weights do not match the checksum it recorded."""


class TeacherBusy(RuntimeError):
    """Another process is training this entry now."""


def read_entry(folder: Path) -> Entry | None:
    """The entry in `folder` when it has a readable `teacher.json` of this cache format (else None, said once)."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return Entry(folder, meta) if current(meta, folder, "cached teacher") else None


def entries(match: Match, cache_dir: Path | None) -> list[Entry]:
    """Every current entry for `match` with trained weights, whatever it started from. Old-format entries of the
    same network and dataset are reported once and skipped."""
    root = Path(cache_dir or default_cache_dir()) / "teachers"
    prefix = match.folder(cache_dir, "scratch").name.rsplit("-", 1)[0] + "-"
    found = []
    for folder in sorted(root.glob(f"{prefix}*")) if root.is_dir() else []:
        entry = read_entry(folder) if (folder / META).is_file() else None
        if entry is not None and entry.meta.get("match") == match.key and (folder / WEIGHTS).is_file():
            found.append(entry)
    return found


def strongest(match: Match, cache_dir: Path | None) -> Entry | None:
    """The entry with the highest validation accuracy (more epochs break a tie), or None."""
    return max(entries(match, cache_dir), key=lambda e: (e.val_accuracy, e.epochs), default=None)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write_bytes(folder / META, json.dumps(meta, indent=2, default=str).encode())


def is_locked(folder: Path) -> bool:
    path = folder / LOCK
    if not path.is_file():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the entry's lock while training it: a second trainer fails at once (TeacherBusy); the lock dies with
    its process, kill -9 included."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TeacherBusy(
                f"the teacher in {folder} is being trained by another process; wait for it, or let it finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def discard(entry: Entry, why: str) -> None:
    """Remove a damaged entry's weights and record, with a warning (its segment state is kept)."""
    warn(f"{why}; retraining it")
    (entry.folder / WEIGHTS).unlink(missing_ok=True)
    (entry.folder / META).unlink(missing_ok=True)
