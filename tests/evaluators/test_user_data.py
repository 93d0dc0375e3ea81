"""The user's own images: an ImageFolder tree read in memory or streamed, split honestly, with one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import DataError
from tests.user_data import write_cifar_imagefolder
from tests.user_data import write_generated_imagefolder


@pytest.fixture(scope="module")
def cifar_folder(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_imagefolder(tmp_path_factory.mktemp("if") / "images", cifar_root, per_class=60,
                                   test_per_class=20)


def folder_config(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), resolution=kwargs.pop("resolution", 32), **kwargs)


def test_memory_and_stream_give_the_same_batches(cifar_folder: Path, tmp_path: Path) -> None:
    memory, batcher = prepare_data(folder_config(cifar_folder, storage="memory"), cache_dir=tmp_path)
    stream, _ = prepare_data(folder_config(cifar_folder, storage="stream", workers=2), cache_dir=tmp_path)
    assert memory.sizes() == stream.sizes() == {"train": 180 - 18 - 9, "val": 18, "calib": 9, "test": 60}
    assert memory.info.classes == ("airplane", "automobile", "ship") and memory.info.num_classes == 3
    assert isinstance(memory.train.images, torch.Tensor) and not isinstance(stream.train.images, torch.Tensor)
    a = [x for x, _ in batcher.eval_batches(memory.test, 25)]
    b = [x for x, _ in batcher.eval_batches(stream.test, 25)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    first = next(batcher.train_batches(memory.train, 32, seed=1, epoch=0))
    again = next(batcher.train_batches(stream.train, 32, seed=1, epoch=0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # The decoded tensors are cached under a fingerprint of the files: a second load reads them back.
    assert len(list((tmp_path / "data").glob("imagefolder-*.pt"))) == 1


def test_the_pixels_are_the_cifar_pixels(cifar_folder: Path, cifar_root: Path, tmp_path: Path) -> None:
    from evaluators.data.datasets import load_dataset

    splits, _ = prepare_data(folder_config(cifar_folder, storage="memory"), cache_dir=tmp_path)
    files, _ = prepare_data(folder_config(cifar_folder, storage="stream"), cache_dir=tmp_path)
    raw = load_dataset("cifar10", cifar_root, allow_download=False)
    first_airplane = int((raw.test.labels == 0).nonzero()[0])
    at = [Path(p).name for p in files.test.images.paths].index(f"{first_airplane}.png")
    assert torch.equal(splits.test.take(slice(at, at + 1))[0], raw.test.images[first_airplane])
    assert int(splits.test.labels[at]) == 0


def test_missing_test_folder_is_carved_from_train_and_val_folder_is_used(cifar_root: Path, tmp_path: Path) -> None:
    root = write_cifar_imagefolder(tmp_path / "v", cifar_root, per_class=50, test_per_class=0, val_per_class=10)
    splits, _ = prepare_data(folder_config(root, storage="stream"), cache_dir=tmp_path)
    sizes = splits.sizes()
    assert sizes["val"] == 30  # the user's val/ folder, whole
    assert sizes["test"] == 15 and sizes["calib"] == 8 and sizes["train"] == 150 - 15 - 8  # carved, seeded
    again, _ = prepare_data(folder_config(root, storage="stream"), cache_dir=tmp_path)
    assert again.test.images.paths == splits.test.images.paths  # the same seeded split every time


def test_grey_jpegs_of_any_size_are_read_as_one_channel(tmp_path: Path) -> None:
    root = write_generated_imagefolder(tmp_path / "g", grey=True, size=40, per_class=12, splits=("train", "test"))
    splits, batcher = prepare_data(folder_config(root, resolution=24), cache_dir=tmp_path)
    assert splits.info.channels == 1 and splits.train.take(slice(0, 2)).shape == (2, 1, 24, 24)
    x, _ = next(batcher.eval_batches(splits.test, 8))
    assert x.shape == (8, 1, 24, 24)


def test_evaluation_sizes_larger_than_a_split_use_the_whole_split(tmp_path: Path) -> None:
    root = write_generated_imagefolder(tmp_path / "g", per_class=20, splits=("train",))
    splits, _ = prepare_data(folder_config(root), cache_dir=tmp_path)
    assert len(splits.val.first(1000)) == len(splits.val) == 6


@pytest.mark.parametrize("damage", ["corrupt", "empty_class", "no_train", "foreign_class", "too_small"])
def test_bad_folders_fail_in_one_line_naming_the_problem(damage: str, cifar_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(cifar_folder, root)
    expected = {"corrupt": "cannot read image .*broken.png", "empty_class": "class folder .*empty is empty",
                "no_train": "has no train/ folder", "foreign_class": "test/cat is a class that train/ does not have",
                "too_small": "leave no training images"}[damage]
    kwargs: dict = {}
    if damage == "corrupt":
        (root / "train" / "ship" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    elif damage == "empty_class":
        (root / "train" / "empty").mkdir()
    elif damage == "no_train":
        shutil.rmtree(root / "train")
    elif damage == "foreign_class":
        (root / "test" / "cat").mkdir()
        shutil.copy(next((root / "test" / "ship").iterdir()), root / "test" / "cat" / "x.png")
    else:
        kwargs["split"] = {"val_size": 150, "calib_size": 30}
    if "split" in kwargs:
        from evaluators.data.splits import SplitConfig

        kwargs["split"] = SplitConfig(**kwargs["split"])
    with pytest.raises(DataError, match=expected) as err:
        splits, batcher = prepare_data(folder_config(root, storage="memory", **kwargs), cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_imagefolder_config_needs_a_root_and_matching_statistics() -> None:
    from spaces.validated import ConfigError

    with pytest.raises(ValueError, match="needs root"):
        DataConfig(dataset="imagefolder")
    with pytest.raises(ValueError, match="data.mean has 3 values but data.std has 1"):
        DataConfig(dataset="imagefolder", root="x", mean=(0.5, 0.5, 0.5), std=(0.2,))
    with pytest.raises(ConfigError, match=r"DataConfig.storage: 'disk' is not allowed"):
        DataConfig(dataset="imagefolder", root="x", storage="disk")
