"""apply(): every recipe the space can suggest builds a working model for every student, without touching the
teacher or the validation/test splits; the thesis's recipes are complete and mean what the table says."""

from __future__ import annotations

import collections
import csv
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from benchmarks.thesis_table import THESIS_CSV
from benchmarks.thesis_table import Row
from benchmarks.thesis_table import format_table
from benchmarks.thesis_table import thesis_accuracies
from evaluators.cost import model_cost
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import ImageSet
from evaluators.data.splits import SplitConfig
from evaluators.training.loop import TrainConfig
from search.config import build
from spaces.compress import pruning
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.compress.sensitivity import resolve
from spaces.models.architectures import create_model
from spaces.quant.dpu_emulation import fix_positions
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import resolve_bits
from spaces.quant.target_arithmetic import target_model
from spaces.recipe import TEACHER
from spaces.recipe import Allocation
from spaces.recipe import DistillKind
from spaces.recipe import PruneKind
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.space import BitGrouping
from spaces.space import SearchSpace
from spaces.space import SpaceConfig
from spaces.thesis_recipes import channel_ratio_for_macs
from spaces.thesis_recipes import survey_quantization_recipes
from spaces.thesis_recipes import thesis_table_recipes

optuna.logging.set_verbosity(optuna.logging.WARNING)
STEP = TrainConfig(batch_size=8, augment=False)
TINY = Budget(student_steps=1, finetune_steps=1, recovery_steps=1, bn_images=16, score_images=16, calib_images=16,
              max_candidates=2, taylor_images=8, eval_batch_size=16, student_train=STEP, finetune_train=STEP,
              qat_train=STEP)
CIFAR_STUDENTS = (TEACHER, "resnet18", "resnet50", "mobilenet_v2", "squeezenet1_0", "squeezenet1_1", "small_cnn")
TRIALS_PER_STUDENT = 5
COVERED: dict[str, set] = collections.defaultdict(set)


def _poisoned(splits: object) -> object:
    """Validation and test replaced by images of the wrong shape: apply must never read them."""
    poison = ImageSet(torch.zeros(3, 7, 5, 5, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    return replace(splits, val=poison, test=poison)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar(cifar_root: Path):
    split = SplitConfig(val_size=100, calib_size=64, train_size=256, seed=0)
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.CIFAR10, resolution=32, split=split), cifar_root,
                                   allow_download=False)
    return _poisoned(splits), batcher


@pytest.fixture(scope="module")
def mnist(mnist_root: Path):
    split = SplitConfig(val_size=100, calib_size=64, train_size=256, seed=0)
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=split), mnist_root,
                                   allow_download=False)
    return _poisoned(splits), batcher


def _check(out: object, recipe: Recipe, teacher: torch.nn.Module, channels: int, size: int) -> None:
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = out.model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    expected_quant = recipe.quant.kind in (QuantKind.PTQ, QuantKind.QAT, QuantKind.FP16)
    assert any(bits != (32, 32) for bits in bit_widths(out.model).values()) == expected_quant
    if recipe.quant.allocation == Allocation.SENSITIVITY:
        resolved = resolve(recipe.quant, out.info["high_precision_layers"])
        assert bit_widths(out.model) == resolve_bits(out.model, resolved)
    elif recipe.quant.kind in (QuantKind.PTQ, QuantKind.QAT) and recipe.prune.kind != PruneKind.LAYER:
        assert bit_widths(out.model) == resolve_bits(out.model, recipe.quant)
    if recipe.prune.kind == PruneKind.UNSTRUCTURED:
        assert pruning.weight_sparsity(out.model) >= recipe.prune.ratio - 0.01
    if recipe.student == TEACHER and recipe.prune.kind in (PruneKind.STRUCTURED, PruneKind.LAYER):
        assert model_cost(out.model, (channels, size, size)).macs < model_cost(teacher, (channels, size, size)).macs


def _contract(data: tuple, teacher_arch: str, student: str, channels: int, size: int,
              grouping: BitGrouping = BitGrouping.GROUP) -> list[Recipe]:
    splits, batcher = data
    torch.manual_seed(0)
    teacher = create_model(teacher_arch, in_channels=channels, resolution=size).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    space = SearchSpace(SpaceConfig(students=(student,), ratio_max=0.9, grouping=grouping), teacher_arch, size)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sum(map(ord, student))))
    recipes = []
    for _ in range(TRIALS_PER_STUDENT):
        trial = study.ask()
        recipe = space.suggest(trial)
        recipes.append(recipe)
        _check(apply(recipe, teacher, splits, batcher, TINY), recipe, teacher, channels, size)
        study.tell(trial, 0.0)
        for part in ("distill", "prune", "quant"):
            COVERED[part].add(getattr(recipe, part).kind)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    return recipes


@pytest.mark.parametrize("student", CIFAR_STUDENTS)
def test_every_suggested_recipe_applies_to_every_cifar_student(cifar, student: str) -> None:
    _contract(cifar, "resnet18", student, 3, 32)


@pytest.mark.parametrize("student", [TEACHER, "mlp", "small_cnn"])
def test_every_suggested_recipe_applies_to_every_mnist_student(mnist, student: str) -> None:
    _contract(mnist, "mlp", student, 1, 28)


@pytest.mark.parametrize("student", [TEACHER, "small_cnn"])
def test_sensitivity_allocated_recipes_apply_after_any_pruning(mnist, student: str) -> None:
    recipes = _contract(mnist, "mlp", student, 1, 28, BitGrouping.SENSITIVITY)
    assert sum(r.quant.allocation == Allocation.SENSITIVITY for r in recipes) >= 2


def test_the_contract_runs_covered_every_kind() -> None:
    if len(COVERED["prune"]) == 0:
        pytest.skip("run together with the contract tests")
    assert COVERED["distill"] == set(DistillKind) and COVERED["prune"] == set(PruneKind)
    assert COVERED["quant"] >= {QuantKind.NONE, QuantKind.PTQ, QuantKind.QAT}


def test_budget_and_space_config_validate_through_the_study_loader() -> None:
    budget = build(Budget, {"finetune_steps": 300, "finetune_train": {"lr": 1e-4}}, "study.toml [budget]")
    assert budget.finetune_steps == 300 and budget.finetune_train.lr == 1e-4
    with pytest.raises(ValueError, match="out of range"):
        build(Budget, {"finetune_steps": -1}, "study.toml [budget]")


def test_thesis_recipes_are_the_table_rows() -> None:
    with THESIS_CSV.open() as f:
        table = [r["model"] for r in csv.DictReader(f) if "Table I" in r["source"]]
    recipes = thesis_table_recipes("resnet50")
    assert [r.label for r in recipes] == table and len(table) == 11
    assert set(thesis_accuracies()) == set(table)
    by_label = {r.label: r for r in recipes}
    assert by_label["QAT ResNet-50 scratch"].student == "resnet50"
    assert by_label["SqueezeNet + It 20% + PTQ"].prune.schedule.value == "iterative"
    assert all(r.quant.kind == QuantKind.PTQ and r.quant.weight_bits == 8 for r in recipes if "PTQ" in r.label)
    survey = survey_quantization_recipes()
    assert [r.label for r in survey] == ["FP32", "PTQ 8-bit", "QAT 8-bit", "QAT 4-bit"]
    assert survey[1].hash() == by_label["PTQ ResNet-50"].hash()


def test_thesis_pruning_percentages_are_mac_reductions(cifar) -> None:
    splits, batcher = cifar
    for reduction in (0.2, 0.95):
        recipe = Recipe(prune=replace(thesis_table_recipes()[3].prune, ratio=channel_ratio_for_macs("resnet18",
                                                                                                      reduction)))
        teacher = create_model("resnet18").eval()
        out = apply(recipe, teacher, splits, batcher, replace(TINY, finetune_steps=0, max_candidates=1))
        kept = model_cost(out.model, (3, 32, 32)).macs / model_cost(teacher, (3, 32, 32)).macs
        assert abs(kept - (1 - reduction)) < 0.03, (reduction, kept)


def test_thesis_table_formats_one_row_per_recipe() -> None:
    rows = [Row("PTQ ResNet-50", 71.234, 23.5, 23.5, 1300.0, 12.0, "70.08%")]
    text = format_table(rows, "the validation split")
    assert "PTQ ResNet-50" in text and "71.23" in text and "70.08%" in text


@pytest.mark.parametrize("student", CIFAR_STUDENTS)
def test_every_student_s_dpu_model_calibrates_on_the_calibration_split_only(cifar, student: str) -> None:
    """`accuracy_zcu104`'s model (the recipe's float network re-quantized by the DPU's arithmetic) builds for every
    student of the space with validation and test poisoned: its fix positions read the calibration split alone."""
    splits, batcher = cifar
    torch.manual_seed(0)
    teacher = create_model("resnet18", in_channels=3, resolution=32).eval()
    recipe = Recipe(student=student, quant=Quantization(kind=QuantKind.PTQ, weight_bits=4, act_bits=8))
    built = apply(recipe, teacher, splits, batcher, TINY)
    dpu = target_model(built.model, "dpu", splits, batcher, calib_images=TINY.calib_images)
    assert fix_positions(dpu) and all(isinstance(p, int) for p in fix_positions(dpu).values())
    with torch.no_grad():
        assert torch.isfinite(dpu(torch.randn(2, 3, 32, 32))).all()
