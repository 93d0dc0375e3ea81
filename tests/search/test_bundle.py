"""The deployment bundle, for real: a small CNN trained on MNIST, quantized, exported as the searched QDQ graph,
run and verified.

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
from evaluators.candidate import HardwareConfig
from evaluators.candidate import estimate_targets
from evaluators.data.batches import Batcher
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from search.bundle.deploy_resolution import DeployResolution
from search.bundle.deploy_resolution import adapt
from search.bundle.model_file import load_model
from search.bundle.model_file import save_model
from search.bundle.onnx_files import session
from search.bundle.scripts.texts import COMPILE_COMMAND
from search.bundle.scripts.texts import NOT_RUN_HERE
from search.bundle.writer import METRICS_KEYS
from search.bundle.writer import REQUIRED
from search.bundle.writer import manifest
from search.bundle.writer import verify_bundle
from search.bundle.writer import write_bundle
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.models.architectures import create_model
from spaces.models.network import Stem
from spaces.models.network import model_stem
from spaces.quant.fake_quant import float_mode
from spaces.recipe import PruneKind
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

DATA_TABLES = Path(__file__).resolve().parents[2] / "hardware_models" / "data"
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
           pareto: Path | None = None, requantize: bool = False) -> dict:
    splits, batcher = data
    predicted = {target: hardware_models.estimate(model, SHAPE, target, as_int8=True) for target in ("zcu104", "rpi4")}
    return write_bundle(model, recipe, splits, batcher, out, predicted=predicted, network="small_cnn",
                        extra_metrics={"note": "test"},
                        pareto_png=pareto, calib_images=CALIB_IMAGES, test_images=test_images, requantize=requantize)


INT8_RECIPE = Recipe(quant=Quantization(kind=QuantKind.PTQ, calibration="percentile"),
                     label="test small_cnn")


@pytest.fixture(scope="module")
def int8_model(trained: torch.nn.Module, data: tuple[Splits, Batcher]) -> torch.nn.Module:
    return apply(INT8_RECIPE, trained, *data, Budget(calib_images=CALIB_IMAGES)).model.eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, int8_model: torch.nn.Module,
           data: tuple[Splits, Batcher]) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bundle")
    pareto = root / "front.png"
    Image.new("RGB", (8, 8), "white").save(pareto)
    out = root / "small_cnn"
    return out, _write(int8_model, INT8_RECIPE, data, out, TEST_IMAGES, pareto, requantize=True)


@pytest.fixture(scope="module")
def bundle4(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module,
            data: tuple[Splits, Batcher]) -> tuple[Path, dict, torch.nn.Module]:
    splits, batcher = data
    recipe = Recipe(quant=Quantization(kind=QuantKind.PTQ, weight_bits=4), label="w4a8 PTQ")
    model = apply(recipe, trained, splits, batcher, Budget(calib_images=CALIB_IMAGES)).model
    out = tmp_path_factory.mktemp("bundle4") / "w4"
    return out, _write(model, recipe, data, out, 1000), model


def _assert_same_arithmetic(onnx_file: Path, model: torch.nn.Module, data: tuple[Splits, Batcher],
                            images: int, gap: float = 0.02, tie: float = 0.01) -> None:
    """The exported QDQ graph computes the searched model's function: logits within `gap` of the searched
    model's, and every image on which the predicted class differs a near-tie of the searched model (top-2 margin
    below `tie`). Float rounding inside the CPU's kernels (oneDNN, onnxruntime's int8 GEMMs) differs between
    machines, so a tight bound on the accuracy alone flips with a few such ties: on an AMX Xeon the int8 graph
    differs from PyTorch on 3 of 2000 images, all with margins below 0.0004, at most 0.013 in any logit."""
    import onnxruntime as ort

    splits, batcher = data
    x = batcher.normalize(splits.test.images[:images])
    with torch.no_grad():
        searched = model(x).numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(searched - exported).max() < gap
    top2 = np.sort(searched, axis=1)[:, -2:]
    differ = searched.argmax(1) != exported.argmax(1)
    assert (top2[differ, 1] - top2[differ, 0] < tie).all(), "a prediction changed that was not a near-tie"


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
    for name in (*REQUIRED, "model_int8.onnx", "model_int8_requantized.onnx", "pareto.png"):
        assert (out / name).is_file(), name
        assert name in listed["files"], name
    versions = listed["versions"]
    for package in ("python", "torch", "torchvision", "onnx", "onnxruntime", "numpy", "torch-pruning",
                    "edge-compress-search"):
        assert versions[package] and versions[package] != "not installed", package


def test_model_pt_rebuilds_the_searched_model_from_tensors_only(bundle: tuple[Path, dict],
                                                                 int8_model: torch.nn.Module,
                                                                 data: tuple[Splits, Batcher]) -> None:
    out, _ = bundle
    checkpoint = torch.load(out / "model.pt", weights_only=True)  # no pickled module: a bundle is outside input
    assert Recipe.from_json(checkpoint["recipe"]) == INT8_RECIPE
    assert checkpoint["input_shape"] == list(SHAPE) and "module" not in checkpoint
    rebuilt, recipe = load_model(out / "model.pt")
    assert recipe == INT8_RECIPE
    x = next(data[1].eval_batches(data[0].test, 16))[0]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), int8_model(x))  # the same weights and the same quantizer scales
    recipe = json.loads((out / "recipe.json").read_text())
    assert Recipe.from_json(json.dumps(recipe)) == INT8_RECIPE


def test_model_pt_rebuilds_a_pruned_network(trained: torch.nn.Module, data: tuple[Splits, Batcher],
                                            tmp_path: Path) -> None:
    recipe = Recipe(prune=Pruning(kind=PruneKind.STRUCTURED, ratio=0.5),
                    quant=Quantization(kind=QuantKind.PTQ, weight_bits=4))
    model = apply(recipe, trained, *data, Budget(calib_images=64, bn_images=64, max_candidates=1)).model.eval()
    out = tmp_path / "pruned"
    metrics = write_bundle(model, recipe, *data, out, predicted={}, network="small_cnn", calib_images=64,
                           test_images=300)
    rebuilt, _ = load_model(out / "model.pt")
    x = next(data[1].eval_batches(data[0].test, 16))[0]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert metrics["quantization"]["layers"] == {"int8_container": 4}  # 4-bit codes in int8: int8 kernels
    assert abs(metrics["accuracy"]["onnx_int8"] - metrics["accuracy"]["pytorch"]) <= 0.5
    assert metrics["accuracy"]["agreement_with_pytorch"]["onnx_int8"]["share"] >= 0.99


def test_metrics_name_the_split_and_the_qdq_file_is_the_searched_model(
        bundle: tuple[Path, dict], trained: torch.nn.Module, int8_model: torch.nn.Module,
        data: tuple[Splits, Batcher]) -> None:
    out, metrics = bundle
    assert json.loads((out / "metrics.json").read_text()) == metrics
    acc = metrics["accuracy"]
    assert (acc["split"], acc["images"]) == ("test", TEST_IMAGES)
    splits, batcher = data
    test = splits.test.subset(torch.arange(TEST_IMAGES))
    searched, float_acc = accuracy(int8_model, test, batcher), accuracy(trained, test, batcher)
    assert acc["pytorch"] == pytest.approx(searched)
    assert float_acc > 80.0  # a trained model: a constant classifier would score about 10%
    assert abs(acc["onnx_fp32"] - float_acc) <= 0.1  # the BN-folded float network
    assert abs(acc["onnx_int8"] - searched) <= 0.5  # the recipe's own scales: the same arithmetic, ...
    _assert_same_arithmetic(out / "model_int8.onnx", int8_model, data, TEST_IMAGES)  # ... up to float rounding
    assert acc["agreement_with_pytorch"]["onnx_int8"]["share"] >= 0.99
    assert metrics["deployed_file"] == "model_int8.onnx" and metrics["quantization"]["layers"] == {"int8": 4}
    executes = metrics["deployment"]["onnxruntime_executes"]  # what onnxruntime runs, read from its graph
    assert executes["int8_share"] == 1.0 and set(executes["layers"]) == {"0", "4", "8", "13"}
    assert executes["kernels"]["QLinearConv"] == 3 and executes["kernels"]["QGemm"] == 1
    assert "fallback" in metrics["calibration"]["model_int8_requantized.onnx"]
    assert abs(acc["onnx_int8_requantized"] - float_acc) <= 1.5
    assert metrics["calibration"] == {**metrics["calibration"], "split": "calib", "images": CALIB_IMAGES}
    for key in ("onnx_fp32", "onnx_int8", "onnx_int8_requantized"):
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
    problems = verify_bundle(copy, *data)  # integrity fails: nothing is parsed or re-run
    assert any(p.startswith("model_int8.onnx: sha256") for p in problems), problems
    assert any(p.startswith("recipe.json: missing") for p in problems), problems
    assert len(problems) == 2, problems
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
    assert type(float_net).__module__ == "float_model"  # the bundle's generated definition, nothing of this tool
    assert {type(m).__module__.split(".")[0] for m in list(float_net.modules())[1:]} == {"torch"}
    vart = _load_script(out / "zcu104" / "run_vart.py")
    config = json.loads((out / "zcu104" / "bundle.json").read_text())
    nhwc = vart.preprocess(splits.calib.images[:4].numpy(), config)
    np.testing.assert_allclose(nhwc, expected[:4].permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    assert vart.to_fixed(np.array([0.5, -10.0, 10.0]), 6).tolist() == [32, -128, 127]


# --- a sub-8-bit recipe -----------------------------------------------------------------------------------------

def test_sub8bit_bundle_ships_its_own_4bit_quantization(bundle4: tuple[Path, dict, torch.nn.Module],
                                                         data: tuple[Splits, Batcher]) -> None:
    out, metrics, model = bundle4
    assert not (out / "model_simulated.onnx").exists() and not (out / "model_int8_requantized.onnx").exists()
    acc = metrics["accuracy"]
    assert abs(acc["onnx_int8"] - acc["pytorch"]) <= 0.5  # 4-bit codes in int8 containers + the recipe's scales:
    _assert_same_arithmetic(out / "model_int8.onnx", model, data, acc["images"])  # the int8 graph's exactness
    assert acc["agreement_with_pytorch"]["onnx_int8"]["share"] >= 0.99
    assert metrics["quantization"]["layers"] == {"int8_container": 4}
    assert metrics["quantization"]["weight_container"] == "int8"  # no INT4 kernel in onnxruntime: int8 is faster
    assert metrics["deployment"]["onnxruntime_executes"]["int8_share"] == 1.0  # every layer an integer kernel
    deploy = metrics["deployment"]
    assert deploy["non_8bit_widths"] == [4]
    assert "INT8 only" in deploy["zcu104"] and "4-bit layers are stored and run as 8-bit" in deploy["zcu104"]
    assert "8-bit containers" in deploy["rpi"]
    readme = (out / "README.md").read_text()
    assert "4-bit layers are stored and run as 8-bit" in readme and "model_int8.onnx" in readme
    # as zcu104/quantize.py loads it in the Vitis AI docker: the generated code, weights with weights_only=True
    float_net = _load_script(out / "zcu104" / "quantize.py").load_model(out / "zcu104" / "model_float.pt")
    assert not any("Quant" in type(m).__name__ for m in float_net.modules())
    x = next(data[1].eval_batches(data[0].test, 16))[0]
    with torch.no_grad(), float_mode(model):
        torch.testing.assert_close(float_net(x), model(x))  # the float network is the quantizers bypassed
    assert verify_bundle(out, *data) == []


@pytest.mark.parametrize("quant", [
    Quantization(kind=QuantKind.QAT, calibration="mse"),
    Quantization(kind=QuantKind.PTQ, layer_bits=(("stem", 8, 8), ("block1", 4, 4), ("block2", 6, 6),
                                                 ("head", 16, 16))),
], ids=["qat", "mixed-8-4-6-16"])
def test_the_exported_file_scores_what_the_search_scored(quant: Quantization, trained: torch.nn.Module,
                                                         data: tuple[Splits, Batcher], tmp_path: Path) -> None:
    """A QAT recipe keeps its trained scales, a mixed one every layer's own width: within 0.5 points on test."""
    splits, batcher = data
    recipe = Recipe(quant=quant)
    model = apply(recipe, trained, splits, batcher, Budget(calib_images=128, finetune_steps=30)).model.eval()
    test = splits.test.first(1000)
    searched = accuracy(model, test, batcher)
    metrics = write_bundle(model, recipe, splits, batcher, tmp_path / "b", predicted={}, network="small_cnn",
                           searched_accuracy=searched, calib_images=128, test_images=1000)
    acc = metrics["accuracy"]
    assert searched > 50.0 and abs(acc["onnx_int8"] - searched) <= 0.5, acc
    assert acc["agreement_with_pytorch"]["onnx_int8"]["share"] >= 0.99, acc
    assert acc["searched_f3_test"] == pytest.approx(searched, abs=1e-3)
    if quant.layer_bits:
        assert metrics["quantization"]["per_layer"] == {"0": "int8", "4": "int8_container", "8": "int8_container",
                                                        "13": "fp16"}
        assert metrics["quantization"]["simulated_layers"] == ["4", "8", "13"]
        executes = metrics["deployment"]["onnxruntime_executes"]["layers"]
        assert executes == {"0": "int8", "4": "int8", "8": "int8", "13": "fp32"}  # fp16 runs as fp32 on the CPU
    assert verify_bundle(tmp_path / "b", splits, batcher) == []


def test_a_proxy_resolution_is_fine_tuned_and_exported_at_the_deploy_size(
        trained: torch.nn.Module, data: tuple[Splits, Batcher], tmp_path: Path) -> None:
    """Searched at 28 px, deployed at 40: the bundle's network, input and latencies are all at 40."""
    splits, batcher = data
    recipe = Recipe(quant=Quantization(kind=QuantKind.PTQ))
    model = apply(recipe, trained, splits, batcher, Budget(calib_images=128)).model.eval()
    resolution = DeployResolution.of(28, 40)
    adapted = adapt(model, recipe, splits, resolution, 30, calib_images=128, progress=False)
    assert adapted.batcher.resolution == 40 and adapted.record["proxy"] and "declared proxy" in resolution.note()
    hardware = HardwareConfig(targets=("rpi4",), deploy_resolution=40)
    predicted = estimate_targets(adapted.model, recipe, (1, 28, 28), hardware)
    assert predicted["rpi4"]["input_shape"] == [1, 40, 40]
    with pytest.raises(ValueError, match="one network, one input size"):  # latencies for another size
        write_bundle(adapted.model, recipe, splits, batcher, tmp_path / "wrong", predicted=predicted,
                     network="small_cnn")
    out = tmp_path / "at40"
    metrics = write_bundle(adapted.model, recipe, splits, adapted.batcher, out, predicted=predicted,
                           network="small_cnn", calib_images=64, test_images=500)
    assert metrics["input_shape"] == [1, 40, 40]
    unadapted = adapt(model, recipe, splits, resolution, 0, calib_images=128, progress=False)
    before = accuracy(unadapted.model, splits.test.first(500), unadapted.batcher)
    assert metrics["accuracy"]["pytorch"] > before + 20  # measured at 40 px: the fine-tune is what makes it work
    assert abs(metrics["accuracy"]["onnx_int8"] - metrics["accuracy"]["pytorch"]) <= 0.5
    assert verify_bundle(out, splits, batcher) == []  # the 28-px batcher is replaced by the bundle's size


def test_a_float_recipe_ships_the_float_network(trained: torch.nn.Module, data: tuple[Splits, Batcher],
                                                tmp_path: Path) -> None:
    recipe = Recipe(student="small_cnn")
    metrics = write_bundle(trained, recipe, *data, tmp_path / "fp32", predicted={}, calib_images=64, test_images=300,
                           searched_accuracy=12.5)
    out = tmp_path / "fp32"
    assert not (out / "model_int8.onnx").exists() and metrics["deployed_file"] == "model.onnx"
    assert json.loads((out / "rpi" / "preprocess.json").read_text())["model"] == "model.onnx"
    assert metrics["accuracy"]["searched_f3_test"] == 12.5
    assert verify_bundle(out, *data) == []


def test_verify_fails_when_the_deployed_file_drifts_from_the_searched_model(
        bundle: tuple[Path, dict], data: tuple[Splits, Batcher], tmp_path: Path) -> None:
    copy = _copy(bundle[0], tmp_path)
    shutil.copyfile(copy / "model_int8_requantized.onnx", copy / "model_int8.onnx")  # re-calibrated scales
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["accuracy"]["pytorch"] = metrics["accuracy"]["onnx_int8_requantized"] + 0.6
    metrics["accuracy"]["onnx_int8"] = metrics["accuracy"]["onnx_int8_requantized"]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    _resign(copy)
    problems = verify_bundle(copy, *data)
    assert any("the searched model scored" in p for p in problems), problems


def test_refuses_a_non_empty_folder_and_clashing_extras(bundle: tuple[Path, dict], trained: torch.nn.Module,
                                                         data: tuple[Splits, Batcher], tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        write_bundle(trained, Recipe(), *data, bundle[0], predicted={})
    with pytest.raises(ValueError, match="accuracy"):
        write_bundle(trained, Recipe(), *data, tmp_path / "new", predicted={}, extra_metrics={"accuracy": 1.0})
    assert not (tmp_path / "new").exists()


def test_model_pt_rebuilds_the_stem_it_was_trained_with(tmp_path: Path) -> None:
    """MobileNetV2's small stem only changes strides, so its weights load into either stem: the file must say which.
    Saved for a 64 px input (where the rule picks torchvision's stem), it rebuilds the small one it was trained
    with; a file written before stems existed has no `stem` and rebuilds torchvision's, which it was made with."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", resolution=32).eval()
    shape = (3, 64, 64)
    save_model(tmp_path / "model.pt", model, Recipe(student="mobilenet_v2"), network="mobilenet_v2",
               input_shape=shape, num_classes=10, dataset="cifar10", mean=(0.5,) * 3, std=(0.25,) * 3)
    rebuilt, _ = load_model(tmp_path / "model.pt")
    assert model_stem(rebuilt) == "mobilenet_v2_conv_block"  # the exact stem, should the rule change later
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    del saved["stem"]
    torch.save(saved, tmp_path / "before_stems.pt")
    old, _ = load_model(tmp_path / "before_stems.pt")
    assert model_stem(old) == Stem.IMAGENET and old.features[0][0].stride == (2, 2)
