"""The user's own images in torchvision's ImageFolder layout: `root/train/<class>/*.png`, optional `val/`, `test/`.

Images are decoded once to the study's resolution (shorter side resized, then centre-cropped) as uint8, so
every later step (batches, augmentation, caches) is the same code that serves CIFAR-10 and MNIST. Two ways
to hold them, chosen by `[data] storage`:
- `memory`: decoded once and kept as one tensor, cached on disk under a fingerprint of the files, so a
  rerun skips decoding;
- `stream`: kept as a list of files (`ImageFiles`) and decoded batch by batch in DataLoader workers, for data
  that does not fit in memory.
`auto` picks memory when the decoded tensors fit `memory_limit_mb`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from evaluators.data.datasets import DataError
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import DatasetInfo
from evaluators.data.datasets import ImageSet
from evaluators.data.datasets import LazyImages
from evaluators.data.datasets import RawData
from evaluators.data.datasets import default_statistics
from evaluators.data.files import atomic_save
from evaluators.data.files import default_cache_dir

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass(frozen=True)
class Listing:
    """The files of one split folder and their class indices (classes sorted by name, as ImageFolder does)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]


class Storage(StrEnum):
    AUTO = "auto"  # memory when the decoded images fit memory_limit_mb, else stream
    MEMORY = "memory"  # decode once into a tensor, cached on disk by a fingerprint of the files
    STREAM = "stream"  # decode each batch from disk in DataLoader workers


class ImageFolderOptions(Protocol):
    """What `load_imagefolder` reads of the study's `[data]` section (`evaluators.data.config.DataConfig`)."""

    root: str
    resolution: int
    channels: int
    workers: int
    storage: Storage
    memory_limit_mb: int
    flip: bool


def list_classes(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"{folder} has no class folders; ImageFolder layout is {folder}/<class name>/<image files>")
    return classes


def list_split(folder: Path, classes: tuple[str, ...]) -> Listing:
    found = list_classes(folder)
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{folder}/{extra[0]} is a class that train/ does not have; every split must use "
                        f"the classes of train/ ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        sub = folder / name
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
            if sub.is_dir() else []
        if not files and folder.name == "train":
            raise DataError(f"class folder {sub} is empty (no .png/.jpg images); add images or remove the folder")
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return Listing(tuple(paths), tuple(labels))


def fingerprint(listings: dict[str, Listing], root: Path) -> str:
    """A hash of every file's relative path, size and modification time: any added, removed or edited image
    changes it (and with it the tensor cache and every teacher or result keyed by the data)."""
    h = hashlib.sha256()
    for split, listing in sorted(listings.items()):
        h.update(split.encode())
        for path, label in zip(listing.paths, listing.labels, strict=True):
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def decode(path: str, resolution: int, channels: int) -> np.ndarray:
    """One image as uint8 C x R x R; a file PIL cannot read is named in a one-line DataError."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            scale = resolution / min(w, h)
            img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {_first_line(err)}; replace or remove the file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _first_line(err: BaseException) -> str:
    """PIL's message, one line (a decompression bomb names its pixel count and the limit)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def detect_channels(paths: tuple[str, ...], sample: int = 32) -> int:
    """1 when every sampled image is greyscale, else 3 (a colour image among greyscale ones wins)."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as img:
                if img.mode not in GREY_MODES:
                    return 3
        except (OSError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {_first_line(err)}; replace or remove the file") from None
    return 1


@dataclass(frozen=True)
class ImageFiles(LazyImages):
    """Images left on disk and decoded on demand: what a DataLoader worker needs to load a batch."""

    paths: tuple[str, ...]
    resolution: int
    channels: int
    workers: int = 0  # DataLoader worker processes that decode batches (0: in this process)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.resolution, self.resolution)

    def select(self, index: torch.Tensor) -> ImageFiles:
        return ImageFiles(tuple(self.paths[int(i)] for i in index), self.resolution, self.channels, self.workers)

    def load(self, index: torch.Tensor | slice) -> torch.Tensor:
        picked = self.paths[index] if isinstance(index, slice) else [self.paths[int(i)] for i in index]
        if not picked:
            return torch.empty((0, self.channels, self.resolution, self.resolution), dtype=torch.uint8)
        return torch.from_numpy(np.stack([decode(p, self.resolution, self.channels) for p in picked]))

    def identity(self) -> bytes:
        return "\n".join(self.paths).encode()

    def decode_all(self, batch: int = 256) -> torch.Tensor:
        chunks = [torch.arange(i, min(i + batch, len(self))) for i in range(0, len(self), batch)]
        parts = list(self.stream(chunks))
        return torch.cat(parts) if parts else self.load(slice(0, 0))

    def stream(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches in order, decoded ahead of use by `workers` processes."""
        if self.workers <= 0 or len(batches) < 2:
            yield from (self.load(b) for b in batches)
            return
        loader = torch.utils.data.DataLoader(_Batches(self, batches), batch_size=None, num_workers=self.workers,
                                             prefetch_factor=2)
        try:
            yield from loader
        except DataError as err:  # a worker's error arrives wrapped in its traceback: keep its own one line
            raise DataError(str(err).strip().splitlines()[-1].partition("DataError: ")[2] or str(err)) from None


class _Batches(torch.utils.data.Dataset):
    def __init__(self, files: ImageFiles, batches: list[torch.Tensor]) -> None:
        self.files, self.batches = files, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.files.load(self.batches[i])


def image_set(listing: Listing, resolution: int, channels: int) -> ImageSet:
    return ImageSet(ImageFiles(listing.paths, resolution, channels), torch.tensor(listing.labels, dtype=torch.int64))


def scan(root: Path) -> tuple[tuple[str, ...], dict[str, Listing]]:
    """The classes (train/'s sub-folders) and the files of every split folder present."""
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ folder; an ImageFolder root holds train/<class>/<images> and "
                        "optionally val/ and test/ (set [data] root)")
    classes = list_classes(root / "train")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has {len(classes)} class folder; a classifier needs at least 2")
    listings = {s: list_split(root / s, classes) for s in SPLIT_FOLDERS if (root / s).is_dir()}
    for name, listing in listings.items():
        if not listing.paths:
            raise DataError(f"{root / name} holds no images; remove the folder or add images")
        unreadable = next((p for p in listing.paths if not os.access(p, os.R_OK)), None)
        if unreadable is not None:
            raise DataError(f"cannot read image {unreadable}: permission denied; make it readable or remove it")
    return classes, listings


def _decoded_bytes(listings: dict[str, Listing], resolution: int, channels: int) -> int:
    return sum(len(x.paths) for x in listings.values()) * channels * resolution * resolution


def _cached_tensors(sets: dict[str, ImageSet], path: Path) -> dict[str, ImageSet]:
    """Every split decoded into memory, from the tensor cache when this exact file set was decoded before."""
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return {k: ImageSet(stored[k], sets[k].labels) for k in sets}
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    decoded = {k: ImageSet(v.images.decode_all(), v.labels) for k, v in sets.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.images for k, v in decoded.items()}, path)
    return decoded


def load_imagefolder(config: ImageFolderOptions, cache_dir: Path | None = None) -> RawData:
    """The user's images as RawData: in memory (decoded once, cached) or streamed, per `config.storage`."""
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; point [data] root at the folder that holds train/")
    classes, listings = scan(root)
    channels = config.channels or detect_channels(listings["train"].paths)
    res = config.resolution
    print_id = fingerprint(listings, root)
    sets = {k: ImageSet(ImageFiles(v.paths, res, channels, config.workers), torch.tensor(v.labels, dtype=torch.int64))
            for k, v in listings.items()}
    storage = config.storage
    if storage == Storage.AUTO:
        fits = _decoded_bytes(listings, res, channels) <= config.memory_limit_mb * 2**20
        storage = Storage.MEMORY if fits else Storage.STREAM
    if storage == Storage.MEMORY:
        cache = Path(cache_dir or default_cache_dir()) / "data" / f"imagefolder-{print_id}-{channels}x{res}.pt"
        sets = _cached_tensors(sets, cache)
    info = DatasetInfo(Dataset.IMAGEFOLDER, len(classes), channels, res, *default_statistics(channels),
                       len(sets["train"]), len(sets["test"]) if "test" in sets else 0,
                       pad=max(1, res // 8), flip=config.flip, classes=classes)
    return RawData(info, sets["train"], sets.get("test"), f"{print_id}-{channels}", root, val=sets.get("val"))
