"""Pruning: structured cuts cost as expected and respect round_to, masks survive training, blocks come out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from evaluators.cost import model_cost
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import prepare_teacher
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from spaces.compress import pruning
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.models.architectures import create_model
from spaces.quant.quantization import is_quantized
from spaces.recipe import Importance
from spaces.recipe import PruneKind
from spaces.recipe import PruneSchedule
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

ZERO = Budget(bn_images=64, score_images=64, calib_images=32, max_candidates=2, taylor_images=32, eval_batch_size=32)
MNIST_SPLIT = SplitConfig(val_size=2000, calib_size=500, train_size=12000, seed=0)
MLP_TEACHER = TeacherConfig(arch="mlp", train=TrainConfig(epochs=8, batch_size=128, optimizer="adam", lr=2e-3,
                                                          weight_decay=0.0, schedule="onecycle", augment=False))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar(cifar_root: Path):
    split = SplitConfig(val_size=200, calib_size=200, train_size=1000, seed=0)
    return prepare_data(DataConfig(dataset=Dataset.CIFAR10, resolution=32, split=split), cifar_root,
                        allow_download=False)


@pytest.fixture(scope="module")
def mnist(mnist_root: Path):
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=MNIST_SPLIT), mnist_root,
                        allow_download=False)


def _net(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch).eval()


def _structured(ratio: float, round_to: int = 1, **kwargs: object) -> Recipe:
    return Recipe(prune=Pruning(kind=PruneKind.STRUCTURED, ratio=ratio, round_to=round_to, **kwargs))


@pytest.mark.parametrize(("ratio", "low", "high"), [(0.3, 0.40, 0.58), (0.5, 0.20, 0.33)])
def test_uniform_structured_pruning_cuts_macs_and_params_quadratically(cifar, ratio: float, low: float,
                                                                       high: float) -> None:
    splits, batcher = cifar
    teacher = _net("resnet18")
    base = model_cost(teacher, (3, 32, 32), storage="fp32")
    out = apply(_structured(ratio, candidates=1), teacher, splits, batcher, ZERO)
    cost = model_cost(out.model, (3, 32, 32), storage="fp32")
    macs, params = cost.macs / base.macs, cost.params / base.params
    print(f"resnet18 ratio {ratio}: MACs x{macs:.3f}, params x{params:.3f} (uniform: {(1 - ratio) ** 2:.2f})")
    assert low <= macs <= high and low - 0.05 <= params <= high
    assert out.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("arch", "global_ranking"), [("resnet18", False), ("resnet18", True),
                                                       ("mobilenet_v2", False)])
def test_channel_counts_respect_round_to(cifar, arch: str, global_ranking: bool) -> None:
    splits, batcher = cifar
    teacher = _net(arch)
    before = pruning.ChannelGraph(teacher, torch.zeros(1, 3, 32, 32), Importance.L1).widths()
    out = apply(_structured(0.4, round_to=16, global_ranking=global_ranking), teacher, splits, batcher, ZERO)
    after = pruning.ChannelGraph(out.model, torch.zeros(1, 3, 32, 32), Importance.L1).widths()
    pruned = {n: w for n, w in after.items() if w != before[n]}
    assert pruned, "nothing was pruned"
    assert all(w % 16 == 0 for w in pruned.values()), pruned
    assert all(w % 16 == 0 or w == before[n] for n, w in after.items())


def test_eagleeye_candidates_share_the_macs_of_the_plain_plan() -> None:
    model, example = _net("resnet18"), torch.zeros(1, 3, 32, 32)
    graph = pruning.ChannelGraph(model, example, Importance.L1)
    macs = pruning.MacModel(model, example, graph)
    plans = pruning.candidate_plans(pruning.uniform_ratios(graph, 0.5), macs, 8, 6, seed=0)
    totals = [macs.total(p) for p in plans]
    assert len({tuple(sorted(p.items())) for p in plans}) == 6  # the random plans differ from the plain one
    assert all(abs(t / totals[0] - 1) < 0.03 for t in totals), totals
    graph.prune(plans[1])
    actual = model_cost(model, (3, 32, 32), storage="fp32").macs
    assert abs(actual / totals[1] - 1) < 0.01  # the MAC model predicts what pruning does


def test_iterative_schedule_reaches_the_one_shot_widths(cifar) -> None:
    splits, batcher = cifar
    teacher = _net("resnet18")
    oneshot = apply(_structured(0.5, round_to=8, candidates=1), teacher, splits, batcher, ZERO).model
    recipe = _structured(0.5, round_to=8, schedule=PruneSchedule.ITERATIVE, steps=3)
    iterative = apply(recipe, teacher, splits, batcher, replace(ZERO, recovery_steps=2)).model
    widths = [pruning.ChannelGraph(m, torch.zeros(1, 3, 32, 32), Importance.L1).widths() for m in (oneshot, iterative)]
    assert widths[0] == widths[1]


def test_pruned_model_finetunes_quantizes_and_exports_to_onnx(mnist, tmp_path: Path) -> None:
    splits, batcher = mnist
    torch.manual_seed(0)
    teacher = create_model("small_cnn", in_channels=1)
    train(teacher, splits.train, batcher, TrainConfig(batch_size=64, optimizer="adam", lr=3e-3, augment=False),
          max_steps=60, progress=False)
    recipe = replace(_structured(0.5, round_to=8, importance=Importance.TAYLOR, candidates=3),
                     quant=Quantization(kind=QuantKind.PTQ))
    out = apply(recipe, teacher, splits, batcher, replace(ZERO, finetune_steps=20, max_candidates=3))
    assert is_quantized(out.model) and len(out.info["candidate_accuracy"]) == 3
    x = next(batcher.eval_batches(splits.val, 8))[0]
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(out.model, x, str(path), dynamo=False, input_names=["x"])
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_out), out.model(x), atol=1e-3)


def test_unstructured_masks_stay_applied_while_training_and_become_permanent(mnist) -> None:
    splits, batcher = mnist
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1)
    masks = pruning.magnitude_masks(model, 0.8, global_ranking=False, importance=Importance.L1)
    pruning.attach_masks(model, masks)
    train(model, splits.train, batcher, TrainConfig(batch_size=64, optimizer="adam", lr=1e-2, weight_decay=1e-3,
                                                    augment=False), max_steps=20, progress=False)
    for name, mask in masks.items():
        assert torch.all(model.get_submodule(name).weight[mask == 0] == 0)
    assert pruning.make_permanent(model).keys() == masks.keys()
    assert all(isinstance(m.weight, nn.Parameter) for m in pruning.maskable_layers(model).values())
    assert pruning.weight_sparsity(model) == pytest.approx(0.8, abs=0.01)


def test_unstructured_sparsity_survives_qat(mnist, cache_dir: Path) -> None:
    splits, batcher = mnist
    teacher = prepare_teacher(MLP_TEACHER, splits, batcher, MNIST_SPLIT, cache_dir=cache_dir, progress=False).model
    recipe = Recipe(prune=Pruning(kind=PruneKind.UNSTRUCTURED, ratio=0.7),
                    quant=Quantization(kind=QuantKind.QAT, weight_bits=4))
    out = apply(recipe, teacher, splits, batcher, replace(ZERO, finetune_steps=20))
    assert is_quantized(out.model)
    assert pruning.weight_sparsity(out.model) >= 0.7 - 1e-3


def test_mlp_at_90_percent_sparsity_recovers_within_one_point(mnist, cache_dir: Path) -> None:
    splits, batcher = mnist
    teacher = prepare_teacher(MLP_TEACHER, splits, batcher, MNIST_SPLIT, cache_dir=cache_dir, progress=False).model
    dense = accuracy(teacher, splits.val, batcher)
    recipe = Recipe(prune=Pruning(kind=PruneKind.UNSTRUCTURED, ratio=0.9, global_ranking=True,
                                  schedule=PruneSchedule.ITERATIVE, steps=3))
    out = apply(recipe, teacher, splits, batcher, Budget(finetune_steps=300, recovery_steps=150))
    sparse = accuracy(out.model, splits.val, batcher)
    print(f"MLP on MNIST validation: dense {dense:.2f}%, 90% sparse after recovery {sparse:.2f}% "
          f"(sparsity {pruning.weight_sparsity(out.model):.3f})")
    assert pruning.weight_sparsity(out.model) == pytest.approx(0.9, abs=0.005)
    assert sparse >= dense - 1.0


@pytest.mark.parametrize("importance", list(Importance))
def test_layer_pruning_replaces_blocks_by_identity(cifar, importance: Importance) -> None:
    splits, batcher = cifar
    teacher = _net("resnet18")
    recipe = Recipe(prune=Pruning(kind=PruneKind.LAYER, blocks_removed=2, importance=importance))
    out = apply(recipe, teacher, splits, batcher, ZERO)
    assert len(out.info["removed_blocks"]) == 2
    assert all(isinstance(out.model.get_submodule(n), nn.Identity) for n in out.info["removed_blocks"])
    assert model_cost(out.model, (3, 32, 32)).macs < model_cost(teacher, (3, 32, 32)).macs
    assert out.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_layer_pruning_removes_the_block_whose_branch_is_off(cifar) -> None:
    splits, batcher = cifar
    teacher = _net("resnet18")
    with torch.no_grad():  # from-scratch ResNets start with every residual branch off (zero-init BN): turn them on
        for name in pruning.removable_blocks(teacher):
            teacher.get_submodule(f"{name}.bn2").weight.fill_(1.0)
        teacher.get_submodule("layer3.1.bn2").weight.zero_()  # ...but this one: removing it changes nothing
    batches = list(batcher.eval_batches(splits.calib, 100))
    for importance in (Importance.BN_SCALE, Importance.L1, Importance.TAYLOR):
        model = _net("resnet18")
        model.load_state_dict(teacher.state_dict())
        assert pruning.remove_blocks(model, 1, importance, batches) == ["layer3.1"]
