"""Distillation: the losses are what the papers define, every adapter learns, teacher logits are cached, and
a distilled student is not worse than one trained on labels alone at the same budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import prepare_teacher
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.compress.distillation import HINT_LAYERS
from spaces.compress.distillation import LogitCache
from spaces.compress.distillation import default_pairs
from spaces.compress.distillation import kd_loss
from spaces.compress.distillation import setup_distillation
from spaces.models.architectures import create_model
from spaces.models.architectures import list_architectures
from spaces.recipe import Distillation
from spaces.recipe import DistillKind
from spaces.recipe import Recipe

MNIST_SPLIT = SplitConfig(val_size=2000, calib_size=500, train_size=12000, seed=0)
MLP_TEACHER = TeacherConfig(arch="mlp", train=TrainConfig(epochs=8, batch_size=128, optimizer="adam", lr=2e-3,
                                                          weight_decay=0.0, schedule="onecycle", augment=False))
FEW = TrainConfig(batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0.0, augment=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist(mnist_root: Path):
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=MNIST_SPLIT), mnist_root,
                        allow_download=False)


@pytest.fixture(scope="module")
def cifar(cifar_root: Path):
    split = SplitConfig(val_size=100, calib_size=100, train_size=256, seed=0)
    return prepare_data(DataConfig(dataset=Dataset.CIFAR10, resolution=32, split=split), cifar_root,
                        allow_download=False)


@pytest.fixture(scope="module")
def mlp_teacher(mnist, cache_dir: Path) -> torch.nn.Module:
    splits, batcher = mnist
    return prepare_teacher(MLP_TEACHER, splits, batcher, MNIST_SPLIT, cache_dir=cache_dir, progress=False).model


def test_kd_loss_is_hintons() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert kd_loss(t, t, 4.0) == pytest.approx(0.0, abs=1e-6)
    expected = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s / 4, 1))).sum(1).mean() * 16
    assert kd_loss(s, t, 4.0) == pytest.approx(float(expected), rel=1e-5)


def test_every_registered_network_has_a_hint_layer() -> None:
    for arch in list_architectures():
        names = {n for n, _ in create_model(arch).named_modules()}
        assert HINT_LAYERS[arch] in names
    assert default_pairs("resnet18", "resnet50") == (("layer4", "layer4"),)


@pytest.mark.parametrize(("data", "student_arch", "teacher_arch", "pairs"), [
    ("cifar", "resnet18", "resnet18", (("layer2", "layer3"), ("layer4", "layer4"))),  # 4x4 vs 2x2: pooled
    ("cifar", "mobilenet_v2", "squeezenet1_1", (("features", "features"),)),
    ("mnist", "mlp", "small_cnn", (("4", "10"),)),  # flat student features against a conv teacher's map
])
def test_every_adapter_receives_gradients(request: pytest.FixtureRequest, data: str, student_arch: str,
                                          teacher_arch: str, pairs: tuple[tuple[str, str], ...]) -> None:
    splits, batcher = request.getfixturevalue(data)
    torch.manual_seed(0)
    student = create_model(student_arch, in_channels=splits.info.channels)
    teacher = create_model(teacher_arch, in_channels=splits.info.channels).eval()
    setup = setup_distillation(Distillation(kind=DistillKind.FEATURE, feature_pairs=pairs), student, teacher,
                               splits.train, batcher, augment=False)
    assert len(setup.adapters) == len(pairs) and setup.extra_params
    x, y = next(batcher.eval_batches(splits.train, 4))
    student.train()
    setup.loss_fn(student, x, y).backward()
    for p in setup.extra_params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    setup.close()


def test_adapters_are_built_once_and_trained(mnist, mlp_teacher) -> None:
    splits, batcher = mnist
    torch.manual_seed(0)
    student = create_model("small_cnn", in_channels=1)
    setup = setup_distillation(Distillation(kind=DistillKind.FEATURE, feature_pairs=(("10", "4"),)), student,
                               mlp_teacher, splits.train, batcher, augment=False)
    adapter = setup.adapters[0]
    before = adapter.weight.detach().clone()
    train(student, setup.data, batcher, FEW, loss_fn=setup.loss_fn, extra_params=setup.extra_params,
          max_steps=10, progress=False)
    setup.close()
    assert setup.adapters[0] is adapter and not torch.equal(adapter.weight, before)


def test_teacher_logits_are_cached_on_disk_and_reused(mnist, mlp_teacher, tmp_path: Path) -> None:
    splits, batcher = mnist
    calls = {"n": 0}
    handle = mlp_teacher.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        for _ in range(2):
            torch.manual_seed(0)
            student = create_model("mlp", in_channels=1)
            setup = setup_distillation(Distillation(kind=DistillKind.LOGIT), student, mlp_teacher, splits.train,
                                       batcher, augment=False, cache_dir=tmp_path)
            train(student, setup.data, batcher, FEW, loss_fn=setup.loss_fn, max_steps=5, progress=False)
            setup.close()
            assert calls["n"] == 5  # five batches the first time, none the second: all logits cached
    finally:
        handle.remove()
    cache = LogitCache(mlp_teacher, splits.train, batcher, tmp_path)
    assert int(cache.known.sum()) == 5 * FEW.batch_size
    index = torch.nonzero(cache.known)[:4, 0]
    x = batcher.normalize(splits.train.images[index])
    with torch.no_grad():
        assert torch.allclose(cache.logits[index], mlp_teacher(x), atol=1e-5)


def test_distillation_is_not_worse_than_labels_alone(mnist, mlp_teacher, tmp_path: Path) -> None:
    """Same student, seed and steps; the student sees 1000 labelled images (where soft targets matter)."""
    splits, batcher = mnist
    few_labels = replace(splits, train=splits.train.subset(torch.arange(1000)))
    budget = Budget(student_steps=300)
    results = {}
    for kind, pairs in ((DistillKind.NONE, ()), (DistillKind.LOGIT, ()), (DistillKind.FEATURE, (("4", "4"),))):
        recipe = Recipe(student="mlp", distill=Distillation(kind=kind, feature_pairs=pairs))
        out = apply(recipe, mlp_teacher, few_labels, batcher, budget, cache_dir=tmp_path)
        results[kind.value] = accuracy(out.model, splits.val, batcher)
    teacher_acc = accuracy(mlp_teacher, splits.val, batcher)
    print(f"MNIST validation, MLP student, 300 steps on 1000 images: {results} (teacher {teacher_acc:.2f})")
    assert results["logit"] >= results["none"] - 0.5
    assert results["feature"] >= results["none"] - 0.5
