"""Real image datasets, read from the files users actually have, with their checksums verified.

Images are held in memory as uint8 tensors (CIFAR-10 is 150 MB, MNIST 47 MB): on a 2-core machine a
per-image PIL pipeline costs more than the network, so batching, augmentation and normalization are
done on whole tensors in `evaluators.data.batches`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

DATA_ROOT_ENV = "EDGE_SEARCH_DATA"
# Searched in order when no root is given; the first that holds the dataset wins. `../shared/data`
# is where a checkout of this project finds the team's offline copy.
DEFAULT_DATA_ROOTS = ("data", "../shared/data")


class DataError(RuntimeError):
    """A dataset is missing or corrupt; the message says which files to put where."""


class Dataset(StrEnum):
    CIFAR10 = "cifar10"
    MNIST = "mnist"
    IMAGEFOLDER = "imagefolder"  # the user's own images (evaluators.data.imagefolder)
    MEMORY = "memory"  # datasets handed over in Python (evaluators.data.memory); not for study files


class LazyImages:
    """Images that stay on disk until a batch needs them (`evaluators.data.imagefolder.ImageFiles`): the interface
    an ImageSet needs from them, so that batching code serves in-memory and streamed data alike."""

    def __len__(self) -> int:
        raise NotImplementedError

    def select(self, index: torch.Tensor) -> LazyImages:
        raise NotImplementedError

    def load(self, index: torch.Tensor | slice) -> torch.Tensor:
        raise NotImplementedError

    def stream(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def identity(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 N x C x H x W (in memory, or `LazyImages` decoded per batch) and labels as int64 N."""

    images: torch.Tensor | LazyImages
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        images = self.images.select(index) if isinstance(self.images, LazyImages) else self.images[index]
        return ImageSet(images, self.labels[index])

    def first(self, count: int) -> ImageSet:
        """The first `count` images (all of them when `count` is 0 or at least the set's size)."""
        return self if count <= 0 or count >= len(self) else self.subset(torch.arange(count))

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The uint8 images at `index` (decoded now when they live on disk)."""
        return self.images.load(index) if isinstance(self.images, LazyImages) else self.images[index]

    def batches(self, indices: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each index batch in turn; streamed data is decoded ahead by worker processes."""
        if isinstance(self.images, LazyImages):
            return self.images.stream(indices)
        return (self.images[i] for i in indices)

    def digest(self) -> bytes:
        """What identifies the pixels: the bytes themselves, or the file list of streamed images (whose
        contents the dataset fingerprint covers)."""
        if isinstance(self.images, LazyImages):
            return self.images.identity()
        return self.images.contiguous().numpy().tobytes()


@dataclass(frozen=True)
class DatasetInfo:
    name: Dataset
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    # Training augmentation: random-crop padding in pixels, and whether a horizontal flip keeps the label.
    pad: int = 4
    flip: bool = True
    classes: tuple[str, ...] = ()


DATASET_INFO: dict[Dataset, DatasetInfo] = {
    Dataset.CIFAR10: DatasetInfo(
        Dataset.CIFAR10, 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50000, 10000,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    # Digits are not mirror-symmetric: crop only.
    Dataset.MNIST: DatasetInfo(Dataset.MNIST, 10, 1, 28, (0.1307,), (0.3081,), 60000, 10000, pad=2, flip=False,
                               classes=tuple(str(d) for d in range(10))),
}


@dataclass(frozen=True)
class RawData:
    """The train and test images (and a validation set where the user gave one), plus a fingerprint of the
    files they came from. A missing test (or validation) set is carved from train by `make_splits`."""

    info: DatasetInfo
    train: ImageSet
    test: ImageSet | None
    fingerprint: str
    source: Path
    val: ImageSet | None = None


# --- checksums -------------------------------------------------------------------------------------
# CIFAR-10 binary: the SHA1s MXNet Gluon verifies; python layout and MNIST: the MD5s torchvision verifies.
CIFAR_BIN_SHA1 = {
    "data_batch_1.bin": "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
    "data_batch_2.bin": "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
    "data_batch_3.bin": "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
    "data_batch_4.bin": "aab85764eb3584312d3c7f65fd2fd016e36a258e",
    "data_batch_5.bin": "26e2849e66a845b7f1e4614ae70f4889ae604628",
    "test_batch.bin": "67eb016db431130d61cd03c7ad570b013799c88c",
}
CIFAR_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(folder: Path, expected: dict[str, str], algorithm: str) -> None:
    """Check every file against its known digest, naming the first that differs."""
    for name, want in sorted(expected.items()):
        got = file_digest(folder / name, algorithm)
        if got != want:
            raise DataError(
                f"checksum mismatch for {folder / name}: {algorithm} {got}, expected {want}; "
                "the file is corrupt or not the official one: replace it with the official file"
            )


# --- layouts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One on-disk layout of a dataset: where it lives below a root and how to read it."""

    dataset: Dataset
    folder: str
    files: tuple[str, ...]
    reader: Callable[[Path], tuple[ImageSet, ImageSet]]
    # Published digests of the files, or None where none exist (uncompressed MNIST).
    checksums: dict[str, str] | None = None
    algorithm: str = "md5"

    def read(self, folder: Path) -> tuple[ImageSet, ImageSet]:
        if self.checksums is not None:
            verify_files(folder, self.checksums, self.algorithm)
        return self.reader(folder)


def _read_cifar_bin(folder: Path) -> tuple[ImageSet, ImageSet]:

    def read(names: list[str]) -> ImageSet:
        raw = np.concatenate([np.fromfile(folder / n, dtype=np.uint8).reshape(-1, 3073) for n in names])
        images = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy())
        return ImageSet(images, torch.from_numpy(raw[:, 0].astype(np.int64)))

    return read([f"data_batch_{i}.bin" for i in range(1, 6)]), read(["test_batch.bin"])


def _read_cifar_py(folder: Path) -> tuple[ImageSet, ImageSet]:

    def read(names: list[str]) -> ImageSet:
        images, labels = [], []
        for n in names:
            with open(folder / n, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _idx(data: bytes) -> np.ndarray:
    """Parse an idx file (MNIST's format): magic, dims, then big-endian uint8 payload."""
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_sets(arrays: list[np.ndarray]) -> tuple[ImageSet, ImageSet]:
    tr_x, tr_y, te_x, te_y = arrays
    train = ImageSet(torch.from_numpy(tr_x.copy()).unsqueeze(1), torch.from_numpy(tr_y.astype(np.int64)))
    test = ImageSet(torch.from_numpy(te_x.copy()).unsqueeze(1), torch.from_numpy(te_y.astype(np.int64)))
    return train, test


def _read_mnist_gz(folder: Path) -> tuple[ImageSet, ImageSet]:
    arrays = [_idx(gzip.decompress((folder / f"{s}.gz").read_bytes())) for s in MNIST_STEMS]
    return _mnist_sets(arrays)


def _read_mnist_raw(folder: Path) -> tuple[ImageSet, ImageSet]:
    # No published checksums exist for the uncompressed files; the content fingerprint still keys caches.
    return _mnist_sets([_idx((folder / s).read_bytes()) for s in MNIST_STEMS])


LAYOUTS: tuple[Layout, ...] = (
    Layout(Dataset.CIFAR10, "cifar-10-batches-bin", tuple(CIFAR_BIN_SHA1), _read_cifar_bin, CIFAR_BIN_SHA1, "sha1"),
    Layout(Dataset.CIFAR10, "cifar-10-batches-py", tuple(CIFAR_PY_MD5), _read_cifar_py, CIFAR_PY_MD5),
    Layout(Dataset.MNIST, "MNIST/raw", tuple(MNIST_GZ_MD5), _read_mnist_gz, MNIST_GZ_MD5),
    Layout(Dataset.MNIST, "MNIST/raw", MNIST_STEMS, _read_mnist_raw),
)


def candidate_roots(data_root: str | os.PathLike[str] | None) -> list[Path]:
    """An explicit root is the only one searched; otherwise the environment variable, then the defaults."""
    if data_root is not None:
        return [Path(data_root)]
    env = os.environ.get(DATA_ROOT_ENV)
    return [Path(env)] if env else [Path(p) for p in DEFAULT_DATA_ROOTS]


def find_layout(dataset: Dataset, roots: list[Path]) -> tuple[Layout, Path] | None:
    for root in roots:
        for layout in LAYOUTS:
            folder = root / layout.folder
            if layout.dataset == dataset and all((folder / f).is_file() for f in layout.files):
                return layout, folder
    return None


def missing_message(dataset: Dataset, roots: list[Path]) -> str:
    wanted = " or ".join(
        f"{layout.folder}/{{{','.join(layout.files)}}}" for layout in LAYOUTS if layout.dataset == dataset
    )
    where = ", ".join(str(r) for r in roots)
    return (
        f"{dataset.value} not found under {where}: put {wanted} there, or pass --data-root / set "
        f"{DATA_ROOT_ENV} to the folder that holds them (no internet here to download them)"
    )


def download(dataset: Dataset, root: Path) -> None:
    """Fetch through torchvision when online; raise DataError with the offline instructions otherwise."""
    import torchvision

    cls = {Dataset.CIFAR10: torchvision.datasets.CIFAR10, Dataset.MNIST: torchvision.datasets.MNIST}[dataset]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001 - any network failure means "offline"
        raise DataError(f"{missing_message(dataset, [root])} ({type(err).__name__})") from err


def load_dataset(dataset: Dataset | str, data_root: str | os.PathLike[str] | None = None, *,
                 allow_download: bool = True) -> RawData:
    """Load the official train/test split of `dataset`, downloading it only when it is nowhere to be found."""
    dataset = Dataset(dataset)
    roots = candidate_roots(data_root)
    found = find_layout(dataset, roots)
    if found is None:
        if not allow_download:
            raise DataError(missing_message(dataset, roots))
        download(dataset, roots[0])
        found = find_layout(dataset, roots[:1])
        if found is None:
            raise DataError(missing_message(dataset, roots))
    layout, folder = found
    train, test = layout.read(folder)
    info = DATASET_INFO[dataset]
    if len(train) != info.train_size or len(test) != info.test_size:
        raise DataError(f"{folder}: expected {info.train_size}/{info.test_size} train/test images, "
                        f"found {len(train)}/{len(test)}; replace the files with the official ones")
    return RawData(info, train, test, fingerprint=content_fingerprint(train, test), source=folder)


def content_fingerprint(train: ImageSet, test: ImageSet) -> str:
    """A content fingerprint independent of the on-disk layout, so both layouts share one teacher cache."""
    h = hashlib.sha256()
    for s in (train, test):
        h.update(s.images.numpy().tobytes())
        h.update(s.labels.numpy().tobytes())
    return h.hexdigest()[:16]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_statistics(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation for the user's images when the study names none: ImageNet's, or a neutral grey one."""
    return ((0.5,), (0.25,)) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
