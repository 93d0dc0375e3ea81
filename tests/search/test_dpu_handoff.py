"""The ZCU104 hand-off (issue 27 item 5): model_dpu.onnx is what the DPU computes, and --verify holds it to that.

Real parts: MNIST's small CNN trained briefly, the DPU emulation calibrated on the calibration split, onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import hardware_models
from evaluators.data.config import DataConfig
from evaluators.data.config import Dataset
from evaluators.data.config import SplitConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import ImageSet
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from search.bundle.agreement import compare
from search.bundle.agreement import torch_predictions
from search.bundle.dpu_handoff import DPU_FILE
from search.bundle.dpu_handoff import POSITIONS_FILE
from search.bundle.dpu_handoff import read_positions
from search.bundle.dpu_handoff import rebuild
from search.bundle.dpu_handoff import write_dpu
from search.bundle.manifest import MANIFEST
from search.bundle.onnx_files import onnx_predictions
from search.bundle.writer import manifest
from search.bundle.writer import verify_bundle
from search.bundle.writer import write_bundle
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.models.architectures import create_model
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 28, 28)
TEST_IMAGES = 400  # the agreement claim needs at least 200
CALIB_IMAGES = 128
RECIPE = Recipe(quant=Quantization(kind=QuantKind.PTQ), label="test small_cnn PTQ")


@pytest.fixture(scope="module")
def data(mnist_root: Path):
    split = SplitConfig(val_size=500, calib_size=256, train_size=4000, seed=0)
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=split), mnist_root)


@pytest.fixture(scope="module")
def trained(data) -> torch.nn.Module:
    splits, batcher = data
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    config = TrainConfig(
        optimizer=Optimizer.ADAM, lr=3e-3, weight_decay=0.0, batch_size=64, schedule=Schedule.ONECYCLE, augment=False
    )
    train(model, splits.train, batcher, config, max_steps=150, progress=False)
    return model.eval()


def _predicted(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, dict]:
    return {t: hardware_models.estimate(model, SHAPE, t, as_int8=True) for t in targets}


@pytest.fixture(scope="module")
def bundle(data, trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    splits, batcher = data
    out = tmp_path_factory.mktemp("dpu") / "bundle"
    quantized = _ptq(trained, data)
    metrics = write_bundle(
        quantized,
        RECIPE,
        splits,
        batcher,
        out,
        predicted=_predicted(quantized, ("zcu104",)),
        network="small_cnn",
        calib_images=CALIB_IMAGES,
        test_images=TEST_IMAGES,
    )
    return out, metrics


def _ptq(model: torch.nn.Module, data) -> torch.nn.Module:
    return apply(RECIPE, model, *data, Budget(calib_images=CALIB_IMAGES)).model.eval()


def test_every_scale_of_model_dpu_is_a_power_of_two_with_int8_zero_point_0(bundle) -> None:
    out, _ = bundle
    proto = onnx.load(str(out / DPU_FILE))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    pairs = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert sum(n.op_type == "QuantizeLinear" for n in pairs) >= 4  # input + every conv/linear output
    for node in pairs:
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert scale.shape == () and zero.shape == (), node.name  # per tensor
        assert math.log2(float(scale)).is_integer(), (node.name, float(scale))
        assert zero.dtype == np.int8 and int(zero) == 0, node.name
    positions = read_positions(out / POSITIONS_FILE)
    assert {n.removesuffix(".scale") for n in inits if n.endswith(".scale")} == set(positions)


def test_model_dpu_agrees_with_the_emulated_dpu_model_on_test_images(bundle, data) -> None:
    out, metrics = bundle
    splits, batcher = data
    dpu = metrics["dpu"]
    assert dpu["split"] == "test" and dpu["images"] == TEST_IMAGES >= 200
    assert dpu["agreement_with_emulated"]["share"] >= 0.99
    assert dpu["calibration"]["split"] == "calib" and dpu["calibration"]["calib_images"] == CALIB_IMAGES
    # independently: the emulated model rebuilt from the bundle's tensors and recorded positions, run here
    test = splits.test.first(TEST_IMAGES)
    emulated = rebuild(out / "model.pt", read_positions(out / POSITIONS_FILE))
    agreement = compare(
        onnx_predictions(out / DPU_FILE, test, batcher), torch_predictions(emulated, test, batcher), test.labels.numpy()
    )
    assert agreement.agree == dpu["agreement_with_emulated"]["agree"] and agreement.share >= 0.99
    assert dpu["onnx_dpu"] > 80.0  # a trained network, not noise
    readme = (out / "zcu104" / "README.md").read_text()
    assert "By construction only" in readme and "Executed where the bundle was made" in readme


def test_verify_passes_and_catches_a_tampered_fix_position(bundle, data, tmp_path: Path) -> None:
    out, _ = bundle
    splits, batcher = data
    assert verify_bundle(out, splits, batcher) == []
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    record = json.loads((tampered / POSITIONS_FILE).read_text())
    first = sorted(record["param"])[0]  # a weight: 3 positions finer clips it to an eighth of its range
    record["param"][first][1] += 3
    (tampered / POSITIONS_FILE).write_text(json.dumps(record))
    (tampered / MANIFEST).write_text(json.dumps(manifest(tampered)))  # re-signed: only the check of the file is left
    problems = verify_bundle(tampered, splits, batcher)
    assert any(DPU_FILE in p and first in p for p in problems), problems


def test_no_bundle_file_needs_unpickling(bundle) -> None:
    out, _ = bundle
    files = sorted(out.rglob("*.pt"))
    assert {p.relative_to(out).as_posix() for p in files} == {"model.pt", "zcu104/model_float.pt"}
    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)
    manifest_files = json.loads((out / MANIFEST).read_text())["files"]
    assert DPU_FILE in manifest_files and POSITIONS_FILE in manifest_files


def _poisoned(splits: object) -> object:
    """Validation and test replaced by images of the wrong shape: calibration must never read them."""
    poison = ImageSet(torch.zeros(3, 7, 5, 5, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    return replace(splits, val=poison, test=poison)


def test_fix_positions_come_from_the_calibration_split_only_even_for_a_float_recipe(
    data, trained, tmp_path: Path
) -> None:
    splits, batcher = data
    positions = []
    for name, source in (("clean", splits), ("poisoned", _poisoned(splits))):
        (tmp_path / name / "zcu104").mkdir(parents=True)
        write_dpu(trained, source, batcher, tmp_path / name, CALIB_IMAGES)  # the float network, BN unfolded
        positions.append(read_positions(tmp_path / name / POSITIONS_FILE))
    assert positions[0] == positions[1] and len(positions[0]) >= 9


def test_a_study_without_a_dpu_target_gets_no_dpu_file(data, trained, tmp_path: Path) -> None:
    splits, batcher = data
    metrics = write_bundle(
        trained,
        Recipe(label="float"),
        splits,
        batcher,
        tmp_path / "b",
        predicted=_predicted(trained, ("rpi4",)),
        network="small_cnn",
        calib_images=32,
        test_images=50,
    )
    assert "dpu" not in metrics and not (tmp_path / "b" / DPU_FILE).exists()


def test_quantize_py_writes_the_searched_positions_where_vai_q_names_match(bundle, tmp_path: Path) -> None:
    """The hand-off script's name matching, on a quant_info.json laid out as vai_q_pytorch 3.x writes it (names of
    the form `Net::layer.weight` and `Net::Net/ReLU[layer]/input.N`); vai_q itself cannot run here."""
    out, _ = bundle
    spec = importlib.util.spec_from_file_location("quantize_handoff", out / "zcu104" / "quantize.py")
    quantize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quantize)
    searched = json.loads((out / POSITIONS_FILE).read_text())
    weight = sorted(searched["param"])[0]
    activation, after = next((n, a) for n, a in searched["after"].items() if a != ["<input>"])
    vai = {
        "param": {f"FloatNet::{weight}": [8, 0], "FloatNet::unrelated.weight": [8, 0]},
        "output": {f"FloatNet::FloatNet/Layer[{after[0]}]/input.3": [8, 0]},
        "input": {},
    }
    info = tmp_path / "quant_info.json"
    info.write_text(json.dumps(vai))
    replaced, total = quantize.apply_positions(info, searched)
    written = json.loads(info.read_text())
    assert replaced == 2 and total == len(read_positions(out / POSITIONS_FILE))
    assert written["param"][f"FloatNet::{weight}"] == searched["param"][weight]
    assert written["output"][f"FloatNet::FloatNet/Layer[{after[0]}]/input.3"] == searched["output"][activation]
    assert written["param"]["FloatNet::unrelated.weight"] == [8, 0]  # not the searched model's: left to vai_q
