"""A bundle proves itself by prediction agreement with the searched model, on test sets of any size.

The issue's case: a 3-class ImageFolder study with 300 test images, whose int8 file scored 39.00% against the
searched model's 38.00%. An accuracy tolerance of 0.5 points is finer than one image there; what must hold is
that the file agrees with the searched model on at least 99% of the images, and that its accuracy lies within
what the differing predictions can explain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search.bundle.agreement import MIN_AGREEMENT
from search.bundle.agreement import compare
from search.bundle.agreement import problems

pytestmark = pytest.mark.usefixtures("one_thread")


def _predictions(images: int, differ: int, correct_file: int, correct_searched: int) -> tuple[np.ndarray, ...]:
    """Labels (3 classes) and two prediction vectors with the given number of differing images and correct counts:
    the searched model is right on its first `correct_searched` images; the file changes `differ` predictions,
    turning wrong into right (or right into wrong) to reach `correct_file`, and wrong into another wrong class."""
    labels = np.arange(images) % 3
    searched = np.where(np.arange(images) < correct_searched, labels, (labels + 1) % 3)
    predicted = searched.copy()
    gain = correct_file - correct_searched
    wrong = np.flatnonzero(searched != labels)
    right = np.flatnonzero(searched == labels)
    fixed = wrong[:gain] if gain > 0 else right[:-gain] if gain < 0 else wrong[:0]
    predicted[fixed] = labels[fixed] if gain > 0 else (labels[fixed] + 1) % 3
    neutral = wrong[max(gain, 0) : max(gain, 0) + differ - len(fixed)]
    predicted[neutral] = (labels[neutral] + 2) % 3
    return labels, searched, predicted


def test_three_differing_images_of_300_pass_where_an_accuracy_tolerance_failed() -> None:
    labels, searched, predicted = _predictions(300, 3, correct_file=117, correct_searched=114)
    agreement = compare(predicted, searched, labels)
    assert (agreement.disagreements, agreement.correct, agreement.reference_correct) == (3, 117, 114)
    assert 100 * agreement.correct / 300 == pytest.approx(39.0) and abs(39.0 - 38.0) > 0.5  # the old check failed
    assert problems("model_int8.onnx", agreement, 38.0, "the first 300 test images") == []


def test_too_many_differing_predictions_fail() -> None:
    labels, searched, predicted = _predictions(300, 4, correct_file=114, correct_searched=114)
    agreement = compare(predicted, searched, labels)
    assert agreement.share < MIN_AGREEMENT  # 296 of 300
    found = problems("model_int8.onnx", agreement, 38.0, "the first 300 test images")
    assert len(found) == 1 and "agrees with the searched model's on 296 of 300" in found[0]


def test_an_accuracy_the_differences_cannot_explain_fails() -> None:
    """The file and the searched model differ on 1 image of 1000, yet metrics.json claims 2 points between them."""
    labels, searched, predicted = _predictions(1000, 1, correct_file=501, correct_searched=500)
    agreement = compare(predicted, searched, labels)
    assert problems("model_int8.onnx", agreement, 50.0, "x") == []
    found = problems("model_int8.onnx", agreement, 48.1, "the first 1000 test images")
    assert len(found) == 1 and "the searched model scored 48.10%" in found[0] and "1 differing" in found[0]


@pytest.mark.slow
def test_a_user_imagefolder_study_with_300_test_images_exports_and_verifies(cifar_root: Path, tmp_path: Path) -> None:
    """The issue's user: 3 CIFAR-10 classes as an ImageFolder (100 test images each), their own network, a tiny
    PTQ/QAT search, the knee exported and verified from the command line."""
    import search
    from evaluators.candidate import FidelityConfig
    from evaluators.candidate import LevelConfig
    from search.export import main as export_main
    from spaces.compress.apply import Budget
    from spaces.space import SpaceConfig
    from tests.user_data import TinyNet
    from tests.user_data import train_quickly
    from tests.user_data import write_cifar_imagefolder

    root = write_cifar_imagefolder(tmp_path / "images", cifar_root, per_class=100, test_per_class=100)
    model = train_quickly(TinyNet(width=8), root, 32, steps=40)
    tiny = Budget(finetune_steps=8, calib_images=64, bn_images=32, score_images=16, max_candidates=1)
    fidelity = FidelityConfig(
        f1=LevelConfig(val_images=60, budget=tiny),
        f2=LevelConfig(val_images=60, budget=tiny),
        f3=LevelConfig(val_images=0, budget=tiny),
    )
    space = SpaceConfig(prune_kinds=("none",), quant_kinds=("ptq", "qat"), bit_choices=(4, 6, 8))
    result = search.compress(
        teacher=model,
        data=root,
        resolution=32,
        targets=["rpi4"],
        trials=3,
        fidelity=fidelity,
        space=space,
        out=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    bundle = result.export(tmp_path / "bundle")
    metrics = json.loads((bundle / "metrics.json").read_text())
    acc = metrics["accuracy"]
    assert acc["images"] == 300 and metrics["deployed_file"] == "model_int8.onnx"
    assert acc["agreement_with_pytorch"]["onnx_int8"]["share"] >= MIN_AGREEMENT, acc
    executes = metrics["deployment"]["onnxruntime_executes"]
    assert executes["int8_share"] == 1.0 and executes["priced_as_executed"] == {"rpi4": True}, executes
    assert export_main(["--verify", str(bundle)]) == 0
