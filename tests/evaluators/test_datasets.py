"""Dataset layouts, checksums and splits, on the real CIFAR-10 and MNIST files."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators.data.datasets import CIFAR_BIN_SHA1
from evaluators.data.datasets import LAYOUTS
from evaluators.data.datasets import MNIST_STEMS
from evaluators.data.datasets import DataError
from evaluators.data.datasets import load_dataset
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import make_splits
from evaluators.data.splits import split_indices


@pytest.fixture(scope="module")
def cifar(cifar_root: Path):
    return load_dataset("cifar10", cifar_root, allow_download=False)


def test_cifar_binary_layout_reads_official_counts_and_labels(cifar) -> None:
    assert cifar.train.images.shape == (50000, 3, 32, 32)
    assert cifar.test.images.shape == (10000, 3, 32, 32)
    assert cifar.train.images.dtype == torch.uint8
    # The official files have 5000 training and 1000 test images per class.
    assert torch.bincount(cifar.train.labels).tolist() == [5000] * 10
    assert torch.bincount(cifar.test.labels).tolist() == [1000] * 10


def test_cifar_python_layout_gives_the_same_images_and_fails_checksum_when_not_official(
        cifar, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    chunks = torch.arange(50000).chunk(5)
    for i, idx in enumerate(chunks, start=1):
        batch = {"data": cifar.train.images[idx].reshape(-1, 3072).numpy(), "labels": cifar.train.labels[idx].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": cifar.test.images.reshape(-1, 3072).numpy(), "labels": cifar.test.labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    layout = next(lay for lay in LAYOUTS if lay.folder == "cifar-10-batches-py")
    train, test_set = layout.reader(folder)
    assert torch.equal(train.images, cifar.train.images) and torch.equal(test_set.labels, cifar.test.labels)
    # Re-pickled files are not byte-identical to the official ones, so verification must refuse them.
    with pytest.raises(DataError, match="checksum mismatch for .*data_batch_1"):
        load_dataset("cifar10", tmp_path, allow_download=False)


def test_corrupted_file_is_named_in_the_error(cifar_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(cifar_root / "cifar-10-batches-bin", folder)
    target = folder / "data_batch_3.bin"
    target.chmod(0o644)
    raw = bytearray(target.read_bytes())
    raw[1000] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data_batch_3\.bin.*sha1.*expected " + CIFAR_BIN_SHA1["data_batch_3.bin"]):
        load_dataset("cifar10", tmp_path, allow_download=False)


def test_mnist_gzip_and_uncompressed_layouts_agree(mnist_root: Path, tmp_path: Path) -> None:
    gz = load_dataset("mnist", mnist_root, allow_download=False)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in MNIST_STEMS:
        (raw / stem).write_bytes(gzip.decompress((mnist_root / "MNIST" / "raw" / f"{stem}.gz").read_bytes()))
    plain = load_dataset("mnist", tmp_path, allow_download=False)
    assert gz.train.images.shape == (60000, 1, 28, 28) and gz.test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(gz.train.images, plain.train.images) and torch.equal(gz.test.labels, plain.test.labels)
    assert gz.fingerprint == plain.fingerprint
    assert gz.train.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]


def test_missing_dataset_says_which_files_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, allow_download=False)
    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-batches-bin/" in message and "data_batch_1.bin" in message
    assert "\n" not in message


def test_splits_are_disjoint_deterministic_and_sized(cifar) -> None:
    config = SplitConfig(val_size=5000, calib_size=1000, train_size=0, seed=3)
    a, b = split_indices(50000, config), split_indices(50000, config)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k: len(v) for k, v in a.items()} == {"train": 44000, "val": 5000, "calib": 1000}
    union = torch.cat(list(a.values()))
    assert len(torch.unique(union)) == 50000
    other = split_indices(50000, SplitConfig(val_size=5000, calib_size=1000, seed=4))
    assert not torch.equal(a["val"], other["val"])
    splits = make_splits(cifar, config)
    assert splits.sizes() == {"train": 44000, "val": 5000, "calib": 1000, "test": 10000}
    assert torch.equal(splits.val.images, cifar.train.images[a["val"]])


def test_train_subset_is_a_prefix_of_the_full_training_split() -> None:
    full = split_indices(50000, SplitConfig(seed=0))
    sub = split_indices(50000, SplitConfig(seed=0, train_size=16000))
    assert torch.equal(sub["train"], full["train"][:16000]) and torch.equal(sub["val"], full["val"])
    with pytest.raises(ValueError, match="train_size"):
        split_indices(50000, SplitConfig(seed=0, train_size=45000))


def test_augmented_batches_are_reproducible_per_step(cifar) -> None:
    from evaluators.data.batches import Batcher

    batcher = Batcher(cifar.info, 32)
    first = [b[0] for b, _ in zip(batcher.train_batches(cifar.train, 64, seed=1, epoch=2), range(3), strict=False)]
    resumed = next(batcher.train_batches(cifar.train, 64, seed=1, epoch=2, start_step=2))
    assert torch.equal(first[2], resumed[0])
    x, _ = next(batcher.eval_batches(cifar.test, 256))
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
    assert Batcher(cifar.info, 224).normalize(cifar.test.images[:2]).shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batcher.normalize(cifar.test.images[:4]).numpy(), x[:4].numpy())
