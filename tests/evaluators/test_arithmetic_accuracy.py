"""Accuracy per target arithmetic: a study whose targets compute differently (the ZCU104's power-of-two per-tensor
int8, the Pi's onnxruntime per-channel int8) scores each recipe under each; one arithmetic keeps one accuracy.
The DPU model's fix positions come from the calibration split only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from evaluators.candidate import FidelityConfig
from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.candidate import ResultStore
from evaluators.candidate import level_fingerprint
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import ImageSet
from hardware_models.capability import POWER_OF_TWO
from hardware_models.targets import capability
from spaces.compress.apply import Budget
from spaces.quant.dpu_emulation import fix_positions
from spaces.quant.target_arithmetic import float_copy
from spaces.quant.target_arithmetic import target_model
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from tests.user_data import TinyNet
from tests.user_data import train_quickly
from tests.user_data import write_generated_imagefolder

BUDGET = Budget(calib_images=16, bn_images=8, score_images=8, max_candidates=1)
LEVEL = LevelConfig(val_images=0, test_images=0, budget=BUDGET)
W2 = Recipe(quant=Quantization(kind=QuantKind.PTQ, weight_bits=2, act_bits=2), label="PTQ W2A2")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("arith")
    root = write_generated_imagefolder(tmp / "g", classes=4, per_class=30, size=16, splits=("train", "val", "test"))
    splits, batcher = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=16), cache_dir=tmp)
    return splits, batcher, train_quickly(TinyNet(num_classes=4, width=8), root, 16)


def _evaluator(data, tmp_path: Path, targets: tuple[str, ...], **hardware) -> Evaluator:
    splits, batcher, teacher = data
    return Evaluator(
        teacher=teacher,
        splits=splits,
        batcher=batcher,
        fidelity=FidelityConfig(f1=LEVEL, f2=LEVEL, f3=LEVEL),
        hardware=HardwareConfig(targets=targets, **hardware),
        store=ResultStore(tmp_path / "r"),
    )


def test_targets_declare_their_arithmetic() -> None:
    assert capability("zcu104").arithmetic == POWER_OF_TWO and capability("rpi4").arithmetic == "per_channel"
    assert HardwareConfig(targets=("zcu104", "rpi4")).arithmetics() == {"zcu104": "dpu", "rpi4": "per_channel"}
    assert HardwareConfig(targets=("zcu104", "kv260")).arithmetics() == {}  # one arithmetic: one accuracy
    assert HardwareConfig(targets=("zcu104", "rpi4"), accuracy_per_arithmetic=False).arithmetics() == {}


def test_two_arithmetics_give_two_accuracies_at_f2_and_f3(data, tmp_path: Path) -> None:
    """2-bit per-channel weights and activations against the DPU's 8-bit re-quantization of the same float
    network: the columns differ; the Pi's repeats `accuracy`; F3 adds the test split's."""
    evaluator = _evaluator(data, tmp_path, ("zcu104", "rpi4"))
    f2 = evaluator.evaluate(W2, Fidelity.F2)
    assert f2["accuracy_rpi4"] == f2["accuracy"]
    assert f2["accuracy_zcu104"] != f2["accuracy"]
    assert f2["accuracy_zcu104_images"] == f2["accuracy_images"] == len(evaluator.splits.val)
    f3 = evaluator.evaluate(W2, Fidelity.F3)
    assert f3["test_accuracy_rpi4"] == f3["test_accuracy"]
    assert f3["test_accuracy_zcu104_images"] == len(evaluator.splits.test)
    assert "test_accuracy_zcu104" not in f2


def test_one_target_or_one_arithmetic_keeps_one_accuracy(data, tmp_path: Path) -> None:
    for targets in (("rpi4",), ("zcu104",)):
        metrics = _evaluator(data, tmp_path / targets[0], targets).evaluate(W2, Fidelity.F2)
        assert not [
            k
            for k in metrics
            if k.startswith("accuracy_") and k not in ("accuracy_drop", "accuracy_images", "accuracy_split")
        ]


def test_fingerprint_changes_only_where_accuracies_are_added() -> None:
    two, off = (
        HardwareConfig(targets=("zcu104", "rpi4")),
        HardwareConfig(targets=("zcu104", "rpi4"), accuracy_per_arithmetic=False),
    )
    one, one_off = HardwareConfig(targets=("rpi4",)), HardwareConfig(targets=("rpi4",), accuracy_per_arithmetic=False)
    assert level_fingerprint(LEVEL, two) != level_fingerprint(LEVEL, off)
    assert level_fingerprint(LEVEL, one) == level_fingerprint(LEVEL, one_off)


def test_dpu_calibration_reads_the_calibration_split_only(data) -> None:
    """Poisoned validation and test splits (wrong image size: any read fails) leave the DPU model buildable, and
    its fix positions are those of the calibration images."""
    splits, batcher, net = data
    poison = ImageSet(torch.zeros(3, 7, 5, 5, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    poisoned = replace(splits, val=poison, test=poison)
    built = target_model(net, "dpu", poisoned, batcher, calib_images=16)
    assert fix_positions(built) == fix_positions(target_model(net, "dpu", splits, batcher, calib_images=16))
    assert target_model(net, "per_channel", poisoned, batcher, calib_images=16) is net


def test_float_copy_removes_the_fake_quantizers(data, tmp_path: Path) -> None:
    evaluator = _evaluator(data, tmp_path, ("rpi4",))
    model = evaluator.build(W2, Fidelity.F1).model
    plain = float_copy(model)
    assert not [n for n, _ in plain.named_modules() if n.endswith(("weight_quant", "act_quant", "out_quant"))]
    x = torch.randn(2, 3, 16, 16)
    assert plain(x).shape == model(x).shape
