"""The deployment bundle, for real: a small CNN trained on MNIST, exported, int8-quantized, run and verified.

One bundle per model is written once per module (a few seconds); tests that damage a bundle work on a copy.
The Vitis AI scripts cannot run here (no Vitis AI, no ZCU104): they are compiled, their CSV columns compared
with the calibration tables, and their data loading is run against the bundle's calibration files.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import hardware_models
from evaluators.batches import Batcher
from evaluators.data import DataConfig
from evaluators.data import prepare_data
from evaluators.datasets import Dataset
from evaluators.metrics import accuracy
from evaluators.splits import SplitConfig
from evaluators.splits import Splits
from evaluators.training import Optimizer
from evaluators.training import Schedule
from evaluators.training import TrainConfig
from evaluators.training import train
from search.bundle import METRICS_KEYS
from search.bundle import REQUIRED
from search.bundle import manifest
from search.bundle import verify_bundle
from search.bundle import write_bundle
from search.bundle_onnx import session
from search.bundle_scripts.texts import COMPILE_COMMAND
from search.bundle_scripts.texts import NOT_RUN_HERE
from spaces.apply import Budget
from spaces.apply import apply
from spaces.architectures import create_model
from spaces.fake_quant import float_mode
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

DATA_TABLES = Path(__file__).resolve().parent.parent / "hardware_models" / "data"
TEST_IMAGES = 2000
CALIB_IMAGES = 256
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def data(mnist_root: Path) -> tuple[Splits, Batcher]:
    split = SplitConfig(val_size=1000, calib_size=512, train_size=10000, seed=0)
    return prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=split), mnist_root)


@pytest.fixture(scope="module")
def trained(data: tuple[Splits, Batcher]) -> torch.nn.Module:
    splits, batcher = data
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    config = TrainConfig(optimizer=Optimizer.ADAM, lr=3e-3, weight_decay=0.0, batch_size=64,
                         schedule=Schedule.ONECYCLE, augment=False)
    train(model, splits.train, batcher, config, max_steps=150, progress=False)
    return model.eval()


def _write(model: torch.nn.Module, recipe: Recipe, data: tuple[Splits, Batcher], out: Path, test_images: int,
           pareto: Path | None = None) -> dict:
    splits, batcher = data
    predicted = {target: hardware_models.estimate(model, SHAPE, target, as_int8=True) for target in ("zcu104", "rpi4")}
    return write_bundle(model, recipe, splits, batcher, out, predicted=predicted, extra_metrics={"note": "test"},
                        pareto_png=pareto, calib_images=CALIB_IMAGES, test_images=test_images)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module,
           data: tuple[Splits, Batcher]) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bundle")
    pareto = root / "front.png"
    Image.new("RGB", (8, 8), "white").save(pareto)
    out = root / "small_cnn"
    return out, _write(trained, Recipe(student="small_cnn", label="test small_cnn"), data, out, TEST_IMAGES, pareto)


@pytest.fixture(scope="module")
def bundle4(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module,
            data: tuple[Splits, Batcher]) -> tuple[Path, dict, torch.nn.Module]:
    splits, batcher = data
    recipe = Recipe(quant=Quantization(kind=QuantKind.PTQ, weight_bits=4), label="w4a8 PTQ")
    model = apply(recipe, trained, splits, batcher, Budget(calib_images=CALIB_IMAGES)).model
    out = tmp_path_factory.mktemp("bundle4") / "w4"
    return out, _write(model, recipe, data, out, 1000), model


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def _resign(folder: Path) -> None:
    """Rewrite the manifest after an edit, so only the accuracy check can catch it."""
    (folder / "manifest.json").write_text(json.dumps(manifest(folder)))


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


# --- contents ---------------------------------------------------------------------------------------------------

def test_every_file_exists_and_is_checksummed(bundle: tuple[Path, dict]) -> None:
    out, _ = bundle
    listed = json.loads((out / "manifest.json").read_text())
    for name in (*REQUIRED, "pareto.png"):
        assert (out / name).is_file(), name
        assert name in listed["files"], name
    assert not (out / "model_simulated.onnx").exists()  # an fp32 recipe has nothing to simulate
    versions = listed["versions"]
    for package in ("python", "torch", "torchvision", "onnx", "onnxruntime", "numpy", "torch-pruning",
                    "edge-compress-search"):
        assert versions[package] and versions[package] != "not installed", package


def test_model_pt_rebuilds_the_model(bundle: tuple[Path, dict], trained: torch.nn.Module,
                                     data: tuple[Splits, Batcher]) -> None:
    out, _ = bundle
    checkpoint = torch.load(out / "model.pt", weights_only=False)
    assert Recipe.from_json(checkpoint["recipe"]) == Recipe(student="small_cnn", label="test small_cnn")
    assert checkpoint["input_shape"] == list(SHAPE)
    rebuilt = create_model("small_cnn", num_classes=10, in_channels=1)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    x = next(data[1].eval_batches(data[0].test, 16))[0]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained(x))
        torch.testing.assert_close(checkpoint["module"](x), trained(x))
    recipe = json.loads((out / "recipe.json").read_text())
    assert Recipe.from_json(json.dumps(recipe)) == Recipe(student="small_cnn", label="test small_cnn")


def test_metrics_name_the_split_and_int8_is_within_a_point(bundle: tuple[Path, dict], trained: torch.nn.Module,
                                                             data: tuple[Splits, Batcher]) -> None:
    out, metrics = bundle
    assert json.loads((out / "metrics.json").read_text()) == metrics
    acc = metrics["accuracy"]
    assert (acc["split"], acc["images"]) == ("test", TEST_IMAGES)
    splits, batcher = data
    reference = accuracy(trained, splits.test.subset(torch.arange(TEST_IMAGES)), batcher)
    assert acc["pytorch"] == pytest.approx(reference)
    assert reference > 80.0  # a trained model: a constant classifier would score about 10%
    assert abs(acc["onnx_fp32"] - reference) <= 0.1
    assert abs(acc["onnx_int8"] - reference) <= 1.0
    assert metrics["calibration"] == {**metrics["calibration"], "split": "calib", "images": CALIB_IMAGES}
    for key in ("onnx_fp32", "onnx_int8"):
        latency = metrics["host_latency_ms"][key]
        assert latency["median_ms"] > 0 and latency["threads"] == 1 and latency["batch"] == 1
    assert metrics["predicted"]["zcu104"]["latency_ms"] > 0 and metrics["predicted"]["rpi4"]["energy_mj"] > 0
    assert metrics["note"] == "test" and set(metrics) == {*METRICS_KEYS, "note"}
    assert "test** split" in (out / "README.md").read_text()


def test_calibration_files_are_the_calibration_split(bundle: tuple[Path, dict], data: tuple[Splits, Batcher]) -> None:
    out, _ = bundle
    splits, _ = data
    images, labels = np.load(out / "calibration" / "images.npy"), np.load(out / "calibration" / "labels.npy")
    assert images.shape == (CALIB_IMAGES, *SHAPE) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, splits.calib.images[:CALIB_IMAGES].numpy())
    np.testing.assert_array_equal(labels, splits.calib.labels[:CALIB_IMAGES].numpy())
    norm = json.loads((out / "calibration" / "normalization.json").read_text())
    assert (norm["mean"], norm["std"], norm["count"]) == (list(splits.info.mean), list(splits.info.std), CALIB_IMAGES)


# --- verification -----------------------------------------------------------------------------------------------

def test_verify_passes_on_a_fresh_bundle(bundle: tuple[Path, dict], data: tuple[Splits, Batcher]) -> None:
    out, _ = bundle
    assert verify_bundle(out) == []
    assert verify_bundle(out, *data) == []
    assert verify_bundle(out, data[0]) == []  # the batcher is rebuilt from the recorded input shape


def test_verify_names_a_corrupted_or_missing_file(bundle: tuple[Path, dict], data: tuple[Splits, Batcher],
                                                  tmp_path: Path) -> None:
    copy = _copy(bundle[0], tmp_path)
    (copy / "model_int8.onnx").write_bytes(b"not an onnx model")
    (copy / "recipe.json").unlink()
    problems = verify_bundle(copy, *data)
    assert any(p.startswith("model_int8.onnx: sha256") for p in problems), problems
    assert any(p.startswith("model_int8.onnx: onnxruntime cannot load") for p in problems), problems
    assert any(p.startswith("recipe.json: missing") for p in problems), problems
    assert len(problems) == 3, problems
    (copy / "manifest.json").write_text("{broken")
    assert verify_bundle(copy)[0].startswith("manifest.json: unreadable")


def test_verify_catches_a_changed_accuracy(bundle: tuple[Path, dict], data: tuple[Splits, Batcher],
                                           tmp_path: Path) -> None:
    copy = _copy(bundle[0], tmp_path)
    metrics = json.loads((copy / "metrics.json").read_text())
    recorded = metrics["accuracy"]["onnx_int8"]
    for delta, fails in ((0.3, False), (0.8, True)):
        metrics["accuracy"]["onnx_int8"] = recorded + delta
        (copy / "metrics.json").write_text(json.dumps(metrics))
        assert any(p.startswith("metrics.json: sha256") for p in verify_bundle(copy))
        _resign(copy)
        problems = verify_bundle(copy, *data, tolerance=0.5)
        assert bool(problems) == fails, problems
        assert all(p.startswith("model_int8.onnx:") and "tolerance" in p for p in problems)


# --- the Raspberry Pi runner ------------------------------------------------------------------------------------

def test_rpi_runner_classifies_and_benchmarks(bundle: tuple[Path, dict], data: tuple[Splits, Batcher],
                                              tmp_path: Path) -> None:
    out, _ = bundle
    splits, batcher = data
    images = splits.test.images[:3]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    np.save(tmp_path / "digit.npy", images[0, 0].numpy())
    expected = session(out / "model_int8.onnx").run(None, {"input": batcher.normalize(images).numpy()})[0].argmax(1)
    csv_path = tmp_path / "bench.csv"
    command = [sys.executable, str(out / "rpi" / "run_onnx.py"), str(folder), str(tmp_path / "digit.npy"),
               "--benchmark", "5", "--warmup", "1", "--csv", str(csv_path), "--board", "test board (1.8GHz x 4)"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "\tclass " in line]
    predicted = [int(line.split("\tclass ")[1].split("\t")[0]) for line in lines]
    assert predicted == [*expected.tolist(), int(expected[0])]
    assert _header(csv_path) == _header(DATA_TABLES / "rpi.csv")
    subprocess.run(command[:2] + command[4:], capture_output=True, timeout=60, cwd=tmp_path, check=True)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # the second run appended
    # The runner's default threads are the ones the rpi4 prediction used; the row names the file it timed.
    threads = json.loads((out / "rpi" / "preprocess.json").read_text())["threads"]
    assert threads == bundle[1]["predicted"]["rpi4"]["threads"] == 4
    assert (rows[0]["precision"], rows[0]["input"], rows[0]["threads"]) == ("int8", "1x28x28", str(threads))
    assert rows[0]["spec"].startswith("onnx:") and rows[0]["spec"].endswith("/model_int8.onnx")
    assert rows[0]["runtime"].startswith("onnxruntime")
    assert float(rows[0]["latency_ms"]) > 0 and rows[0]["model"] == "test small_cnn"


# --- the ZCU104 flow (not executable here) ---------------------------------------------------------------------

def test_zcu104_scripts_compile_and_match_the_tables(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = bundle
    zcu = out / "zcu104"
    for script in ("quantize.py", "run_vart.py", "../rpi/run_onnx.py"):
        py_compile.compile(str(zcu / script), cfile=str(tmp_path / "x.pyc"), doraise=True)
    subprocess.run(["bash", "-n", str(zcu / "compile.sh")], check=True, timeout=30)
    compile_sh = (zcu / "compile.sh").read_text()
    assert COMPILE_COMMAND in compile_sh and "DPUCZDX8G_ISA1_B4096" in compile_sh
    assert "-a /opt/vitis_ai/compiler/arch/DPUCZDX8G/ZCU104/arch.json" in COMPILE_COMMAND
    assert list(_load_script(zcu / "run_vart.py").COLUMNS) == _header(DATA_TABLES / "zcu104_dpu.csv")
    assert _load_script(zcu / "quantize.py").TARGET == "DPUCZDX8G_ISA1_B4096"
    assert NOT_RUN_HERE in (zcu / "README.md").read_text()
    config = json.loads((zcu / "bundle.json").read_text())
    assert config["gops"] == pytest.approx(2 * bundle[1]["size"]["macs"] / 1e9, rel=1e-3)


def test_zcu104_preprocessing_matches_training(bundle: tuple[Path, dict], data: tuple[Splits, Batcher]) -> None:
    """The Vitis AI scripts feed the quantizer and the DPU what the model was trained on."""
    out, _ = bundle
    splits, batcher = data
    quantize = _load_script(out / "zcu104" / "quantize.py")
    batches = list(quantize.calibration_batches(out / "calibration", 100))
    assert sum(len(y) for _, y in batches) == CALIB_IMAGES
    expected = batcher.normalize(splits.calib.images[:100])
    torch.testing.assert_close(batches[0][0], expected)
    float_net = quantize.load_model(out / "zcu104" / "model_float.pt")
    assert {type(m).__module__.split(".")[0] for m in float_net.modules()} == {"torch"}
    vart = _load_script(out / "zcu104" / "run_vart.py")
    config = json.loads((out / "zcu104" / "bundle.json").read_text())
    nhwc = vart.preprocess(splits.calib.images[:4].numpy(), config)
    np.testing.assert_allclose(nhwc, expected[:4].permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    assert vart.to_fixed(np.array([0.5, -10.0, 10.0]), 6).tolist() == [32, -128, 127]


# --- a sub-8-bit recipe -----------------------------------------------------------------------------------------

def test_sub8bit_bundle_simulates_and_says_what_runs(bundle4: tuple[Path, dict, torch.nn.Module],
                                                     data: tuple[Splits, Batcher]) -> None:
    out, metrics, model = bundle4
    assert (out / "model_simulated.onnx").is_file()
    acc = metrics["accuracy"]
    assert abs(acc["onnx_simulated"] - acc["pytorch"]) <= 0.2  # the same fake-quant arithmetic, in onnxruntime
    assert abs(acc["onnx_int8"] - acc["onnx_fp32"]) <= 1.0
    deploy = metrics["deployment"]
    assert deploy["non_8bit_widths"] == [4]
    assert "INT8 only" in deploy["zcu104"] and "4-bit layers are stored and run as 8-bit" in deploy["zcu104"]
    readme = (out / "README.md").read_text()
    assert "4-bit layers are stored and run as 8-bit" in readme and "model_simulated.onnx" in readme
    float_net = torch.load(out / "zcu104" / "model_float.pt", weights_only=False)
    assert not any("Quant" in type(m).__name__ for m in float_net.modules())
    x = next(data[1].eval_batches(data[0].test, 16))[0]
    with torch.no_grad(), float_mode(model):
        torch.testing.assert_close(float_net(x), model(x))  # the float network is the quantizers bypassed
    assert verify_bundle(out, *data) == []


def test_refuses_a_non_empty_folder_and_clashing_extras(bundle: tuple[Path, dict], trained: torch.nn.Module,
                                                         data: tuple[Splits, Batcher], tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        write_bundle(trained, Recipe(), *data, bundle[0], predicted={})
    with pytest.raises(ValueError, match="accuracy"):
        write_bundle(trained, Recipe(), *data, tmp_path / "new", predicted={}, extra_metrics={"accuracy": 1.0})
    assert not (tmp_path / "new").exists()
