"""Training resumes to the exact step, and cached teachers are verified before they are trusted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import prepare_teacher
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import TrainingDiverged
from evaluators.training.loop import cross_entropy_loss
from evaluators.training.loop import train
from spaces.models.architectures import create_model

SPLIT = SplitConfig(val_size=1000, calib_size=100, train_size=4000, seed=0)
TRAIN = TrainConfig(epochs=2, batch_size=100, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="onecycle")


@pytest.fixture(scope="module")
def mnist(mnist_root: Path):
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=SPLIT), mnist_root,
                        allow_download=False)


def _fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", in_channels=1)


def test_interrupted_training_resumes_to_identical_weights(mnist, tmp_path: Path) -> None:
    splits, batcher = mnist
    straight = _fresh()
    train(straight, splits.train, batcher, TRAIN, progress=False)

    ckpt = tmp_path / "ckpt.pt"
    base_loss = cross_entropy_loss(0.0)
    calls = {"n": 0}

    def interrupting_loss(model, x, y):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 53:  # mid-epoch, as Ctrl-C would land
            raise KeyboardInterrupt
        return base_loss(model, x, y)

    interrupted = _fresh()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, splits.train, batcher, TRAIN, checkpoint=ckpt, loss_fn=interrupting_loss, progress=False)
    assert ckpt.exists()
    resumed = _fresh()
    result = train(resumed, splits.train, batcher, TRAIN, checkpoint=ckpt, progress=False)
    assert result.resumed_from == 52 and result.steps == 80
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_configuration_is_not_resumed(mnist, tmp_path: Path) -> None:
    splits, batcher = mnist
    ckpt = tmp_path / "ckpt.pt"
    train(_fresh(), splits.train, batcher, replace(TRAIN, epochs=1), checkpoint=ckpt, progress=False)
    result = train(_fresh(), splits.train, batcher, replace(TRAIN, lr=5e-4), checkpoint=ckpt, progress=False)
    assert result.resumed_from == 0


def test_diverging_loss_raises(mnist) -> None:
    splits, batcher = mnist
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(_fresh(), splits.train, batcher, TRAIN, loss_fn=lambda m, x, y: m(x).sum() * float("nan"),
              progress=False)


def test_teacher_is_cached_verified_and_retrained_when_corrupt(mnist, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    splits, batcher = mnist
    config = TeacherConfig(arch="mlp", train=TRAIN)
    first = prepare_teacher(config, splits, batcher, SPLIT, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and first.metrics["val_accuracy"] > 70.0
    assert {"val_accuracy", "test_accuracy", "params", "macs", "sha256"} <= set(first.metrics)
    again = prepare_teacher(config, splits, batcher, SPLIT, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.metrics == first.metrics

    weights = first.folder / "teacher.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"corrupted!")
    healed = prepare_teacher(config, splits, batcher, SPLIT, cache_dir=tmp_path, progress=False)
    assert not healed.from_cache
    assert "corrupt" in capsys.readouterr().err
    assert healed.metrics["val_accuracy"] == first.metrics["val_accuracy"]  # deterministic retraining

    # another seed or schedule is the same study's teacher: the cached one is used, never a second one trained
    other = prepare_teacher(replace(config, train=replace(TRAIN, seed=1, lr=5e-4)), splits, batcher, SPLIT,
                            cache_dir=tmp_path, progress=False)
    assert other.from_cache and other.folder == first.folder


def test_batches_are_resized_on_the_device_the_images_are_moved_to(mnist) -> None:
    """CPU training is unchanged (fp32, default memory format); a CUDA run resizes on the GPU, in bf16 and NHWC."""
    from evaluators.data.batches import Batcher
    from evaluators.training.loop import accelerated
    from evaluators.training.loop import memory_format

    splits, batcher = mnist
    up = Batcher(batcher.info, 56)
    x, _ = next(up.train_batches(splits.train, 8, seed=0, epoch=0, augment=False, device="cpu"))
    assert x.shape[-1] == 56 and x.device.type == "cpu" and x.dtype == torch.float32
    first = next(up.eval_batches(splits.val, 8))[0]
    assert first.shape[-1] == 56 and first.device.type == "cpu"
    assert memory_format("cpu") == torch.contiguous_format and memory_format("cuda") == torch.channels_last
    with accelerated("cpu"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_uses_bf16_channels_last_and_resizes_on_the_gpu(mnist) -> None:
    from evaluators.data.batches import Batcher

    splits, batcher = mnist
    up = Batcher(batcher.info, 56)
    x, _ = next(up.train_batches(splits.train, 8, seed=0, epoch=0, augment=False, device="cuda"))
    assert x.device.type == "cuda" and x.shape[-1] == 56
    torch.manual_seed(0)
    model = create_model("small_cnn", in_channels=1)
    result = train(model, splits.train, up, replace(TRAIN, epochs=1), device="cuda", max_steps=5, progress=False)
    assert result.steps == 5 and next(model.parameters()).device.type == "cuda"
