"""Write and verify the deployment bundle of one compressed model (`python -m search.export` calls these).

A bundle is the folder a user takes to the boards: the model as PyTorch and ONNX (fp32, int8 QDQ, and the
recipe's exact bit-widths simulated when they are not 8), the calibration images the quantizers used, a
runner for the Raspberry Pi, the Vitis AI scripts for the ZCU104, the measured and predicted numbers, and a
manifest with the checksum of every file. Accuracies are measured on the test split only here, at the end,
and every one names its split; quantization is calibrated on the calibration split, never on test images.

`verify_bundle` recomputes the checksums and, given the data, re-runs the ONNX files on the very images
metrics.json names and compares the deployed one's predictions with the searched model's, image by image: a
bundle that was edited, truncated or produced by a different onnxruntime shows up, whatever the test set's size.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import DatasetInfo
from evaluators.data.datasets import ImageSet
from evaluators.data.splits import Splits
from evaluators.metrics import model_summary
from hardware_models.estimators.host import cpu_name
from hardware_models.estimators.host import time_session
from search.bundle.agreement import compare
from search.bundle.agreement import problems as agreement_problems
from search.bundle.agreement import top1_percent
from search.bundle.agreement import torch_predictions
from search.bundle.dpu_handoff import check_dpu
from search.bundle.dpu_handoff import dpu_listed
from search.bundle.dpu_handoff import dpu_metrics
from search.bundle.dpu_handoff import targets_dpu
from search.bundle.dpu_handoff import write_dpu
from search.bundle.executed import executed_section
from search.bundle.float_model import float_model_note
from search.bundle.float_model import write_float_model
from search.bundle.manifest import MANIFEST
from search.bundle.manifest import check_deployed
from search.bundle.manifest import check_manifest
from search.bundle.manifest import present
from search.bundle.manifest import read_json as _read_json
from search.bundle.manifest import sha256
from search.bundle.model_file import BundleModelError
from search.bundle.model_file import load_model
from search.bundle.model_file import save_model
from search.bundle.onnx_files import INT8_SETTINGS
from search.bundle.onnx_files import BundleError
from search.bundle.onnx_files import onnx_predictions
from search.bundle.onnx_files import quantize_int8
from search.bundle.onnx_files import session
from search.bundle.qdq import QdqExport
from search.bundle.qdq import export_float
from search.bundle.qdq import export_qdq
from search.bundle.qdq import float_network
from search.bundle.scripts import texts
from spaces.models.network import Stem
from spaces.models.network import model_stem
from spaces.quant.quantization import bit_widths
from spaces.recipe import INT_BITS
from spaces.recipe import TEACHER
from spaces.recipe import PruneKind
from spaces.recipe import Recipe

# 1: model.pt pickled the module, model_int8.onnx was re-quantized by onnxruntime; 2: zcu104/model_float.pt pickled
# the module (now a state dict + zcu104/float_model.py), and a cascade's stage manifests were not listed
FORMAT = 3
SCRIPTS = Path(__file__).with_name("scripts")
# Files every bundle has; model_int8.onnx (a quantized recipe), model_int8_requantized.onnx (the named
# fallback) and pareto.png are added when they apply.
REQUIRED = ("model.pt", "model.onnx", "recipe.json", "metrics.json", "README.md",
            "calibration/images.npy", "calibration/labels.npy", "calibration/normalization.json",
            "rpi/run_onnx.py", "rpi/preprocess.json", "zcu104/README.md", "zcu104/quantize.py",
            "zcu104/compile.sh", "zcu104/run_vart.py", "zcu104/bundle.json", "zcu104/model_float.pt",
            "zcu104/float_model.py")
QUANTIZED_FILE, FLOAT_FILE, FALLBACK_FILE = "model_int8.onnx", "model.onnx", "model_int8_requantized.onnx"
ONNX_FILES = {"onnx_fp32": FLOAT_FILE, "onnx_int8": QUANTIZED_FILE, "onnx_int8_requantized": FALLBACK_FILE}
VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "torch-pruning", "edge-compress-search")
# The keys write_bundle measures; extra_metrics may add others but not overwrite these.
METRICS_KEYS = ("bundle_format", "model_name", "recipe_hash", "recipe", "dataset", "input_shape", "num_classes",
                "data_fingerprint", "accuracy", "calibration", "size", "host_latency_ms", "predicted", "deployment",
                "spec", "deployed_file", "quantization", "dpu")
LATENCY_RUNS, LATENCY_WARMUP, LATENCY_BUDGET_S = 200, 20, 3.0


def write_bundle(model: nn.Module, recipe: Recipe, splits: Splits, batcher: Batcher, out_dir: Path, *,
                 predicted: dict[str, dict], network: str | None = None, searched_accuracy: float | None = None,
                 extra_metrics: dict | None = None, pareto_png: Path | None = None, calib_images: int = 512,
                 test_images: int = 0, requantize: bool = False) -> dict:
    """Write the bundle of `model` (built from `recipe`) into an empty `out_dir`; returns the metrics written.

    The quantized ONNX carries the model's own quantizer scales (`search.bundle.qdq`), so what ships is what was
    scored. `network` is the architecture name the model was built from (default: the recipe's student);
    `searched_accuracy` is the recipe's F3 test accuracy, recorded beside what each file measures.
    `test_images=0` measures on the whole test split, otherwise on its first `test_images` images (use the
    count F3 used, so the numbers compare image for image). `requantize` adds the fallback
    model_int8_requantized.onnx, onnxruntime's own calibration of the float network on the calibration split.
    """
    out = Path(out_dir)
    clash = sorted(set(extra_metrics or {}) & set(METRICS_KEYS))
    if clash:
        raise ValueError(f"extra_metrics would overwrite measured entries {clash}; rename them")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: a bundle is written into a new or empty folder only "
                              "(stale files would be checksummed as part of it)")
    if network is None and recipe.student == TEACHER:
        raise ValueError("network: name the teacher's architecture (the recipe only says 'teacher')")
    model = copy.deepcopy(model).cpu().eval()
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    other = {t: p["input_shape"] for t, p in predicted.items() if list(p.get("input_shape", shape)) != list(shape)}
    if other:
        raise ValueError(f"predictions for {sorted(other)} are for input {next(iter(other.values()))}, the bundle's "
                         f"input is {list(shape)}: predict at the bundle's size (one network, one input size)")
    test, calib = splits.test.first(test_images), splits.calib.first(calib_images)
    float_net = float_network(model)
    for folder in ("calibration", "rpi", "zcu104"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    info = splits.info
    save_model(out / "model.pt", model, recipe, network=network or recipe.student, input_shape=shape,
               num_classes=info.num_classes, dataset=info.name.value, mean=info.mean, std=info.std)
    unwritten = write_float_model(float_net, shape, out / "zcu104")  # state dict + generated code, no pickle
    export_float(float_net, shape, out / FLOAT_FILE)
    qdq = export_qdq(model, shape, out / QUANTIZED_FILE) if has_integer_layers(model) else None
    # a DPU target: what the DPU computes, calibrated on the same calibration images (search.bundle.dpu_handoff)
    emulated = write_dpu(float_net, splits, batcher, out, calib_images) if targets_dpu(predicted) else None
    if requantize:
        quantize_int8(out / FLOAT_FILE, out / FALLBACK_FILE, calib, batcher)
    _write_calibration(out / "calibration", calib, splits.info, shape)
    metrics = _metrics(out, model, float_net, recipe, splits, batcher, test, len(calib), predicted, extra_metrics,
                       qdq, searched_accuracy)
    metrics["deployment"]["zcu104_model"] = float_model_note(unwritten)
    if emulated is not None:
        metrics["dpu"] = dpu_metrics(out, emulated, test, batcher)
    _write_json(out / "metrics.json", metrics)
    (out / "recipe.json").write_text(json.dumps(json.loads(recipe.to_json()), indent=2, sort_keys=True) + "\n")
    if pareto_png is not None:
        shutil.copyfile(pareto_png, out / "pareto.png")
    _write_scripts(out, metrics, splits.info)
    present = [p.name + ("/" if p.is_dir() else "") for p in out.iterdir()]
    (out / "README.md").write_text(texts.bundle_readme(metrics, present + ["manifest.json"]))
    _write_json(out / MANIFEST, manifest(out))
    return metrics


def verify_bundle(out_dir: Path, splits: Splits | None = None, batcher: Batcher | None = None,
                  tolerance: float = 0.5) -> list[str]:
    """Problems found in a bundle (empty: none), each naming the file it is about.

    Integrity first (`search.bundle.manifest`: every file listed, inside the bundle and unchanged, the deployed one
    included), and nothing is parsed before it holds; with `splits`, every ONNX file is re-run on the test images
    metrics.json recorded and must reproduce its accuracy within `tolerance` percentage points, and the deployed
    file must agree with the searched model's top-1 predictions on at least 99% of them (`search.bundle.agreement`).
    """
    out = Path(out_dir)
    problems = check_manifest(out, REQUIRED, FORMAT)  # containment, unlisted files, checksums: before any parsing
    problems = problems or check_deployed(out) or dpu_listed(out)
    if splits is not None and not problems:
        problems += _check_accuracy(out, splits, batcher, tolerance)
    return problems


# --- the model files -------------------------------------------------------------------------------------------

def has_integer_layers(model: nn.Module) -> bool:
    """True when some layer carries an integer quantizer: the recipe has scales of its own to export."""
    return any(bits in INT_BITS for pair in bit_widths(model).values() for bits in pair)


def _write_calibration(folder: Path, calib: ImageSet, info: DatasetInfo, shape: tuple[int, ...]) -> None:
    np.save(folder / "images.npy", calib.take(slice(None)).numpy().astype(np.uint8))
    np.save(folder / "labels.npy", calib.labels.numpy().astype(np.int64))
    _write_json(folder / "normalization.json", {
        "mean": list(info.mean), "std": list(info.std), "pixel_scale": 255.0, "input_shape": list(shape),
        "layout": "NCHW uint8", "count": len(calib), "dataset": info.name.value, "split": "calib",
        "preprocess": "x = (pixels / 255 - mean) / std, then bilinear resize (align_corners=False) to input_shape "
                      "when the stored images are smaller",
        "selection": f"the first {len(calib)} images of the calibration split, carved from the official training "
                     "images (never test images)"})


# --- metrics -----------------------------------------------------------------------------------------------------

def _latency(path: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    import onnxruntime as ort

    times = time_session(session(path), shape, LATENCY_RUNS, LATENCY_WARMUP, LATENCY_BUDGET_S)
    return {"median_ms": round(float(np.median(times)), 4), "p10_ms": round(float(np.percentile(times, 10)), 4),
            "p90_ms": round(float(np.percentile(times, 90)), 4), "runs": int(times.size), "warmup": LATENCY_WARMUP,
            "batch": 1, "threads": 1, "cpu": cpu_name(), "onnxruntime": ort.__version__}


def _accuracies(out: Path, model: nn.Module, test: ImageSet, batcher: Batcher,
                searched: float | None) -> dict[str, Any]:
    """Each file's test accuracy and its top-1 agreement with the searched model, image by image
    (`search.bundle.agreement`)."""
    labels = test.labels.numpy()
    reference = torch_predictions(model, test, batcher)
    result: dict[str, Any] = {"split": "test", "images": len(test),
                              "selection": f"the first {len(test)} images of the test split",
                              "pytorch": round(top1_percent(reference, labels), 4),
                              "searched_f3_test": None if searched is None else round(float(searched), 4)}
    agreement: dict[str, Any] = {}
    for key, name in ONNX_FILES.items():
        if (out / name).exists():
            predicted = onnx_predictions(out / name, test, batcher)
            result[key] = round(top1_percent(predicted, labels), 4)
            agreement[key] = compare(predicted, reference, labels).summary()
    result["agreement_with_pytorch"] = agreement
    return result


def deployed_file(model: nn.Module) -> str:
    """The ONNX file that is the searched model: its own quantization, or the float network when it has none."""
    return QUANTIZED_FILE if has_integer_layers(model) else FLOAT_FILE


def deployment(model: nn.Module, qdq: QdqExport | None) -> dict[str, Any]:
    """What each target actually runs: the DPU knows INT8 only; onnxruntime runs the recipe's own QDQ graph."""
    widths = sorted({bits for pair in bit_widths(model).values() for bits in pair})
    other = [b for b in widths if b not in (8, 32)]
    zcu = ("the DPU computes in INT8 only: zcu104/quantize.py quantizes the float network to 8 bits with Vitis AI "
           "(calibrated on calibration/), so the board runs an 8-bit model with Vitis AI's scales, not the recipe's")
    if qdq is None:
        rpi = f"runs {FLOAT_FILE} (fp32) with onnxruntime on its CPU: the recipe does not quantize"
    else:
        rpi = (f"runs {QUANTIZED_FILE} with onnxruntime on its CPU: the recipe's own quantizer scales and zero points "
               "as QDQ nodes (not re-calibrated), placed where onnxruntime runs integer kernels (every Conv/Gemm "
               "output, residual adds, concatenations)")
    if other:
        bits = "/".join(map(str, other))
        zcu += f"; this recipe's {bits}-bit layers are stored and run as 8-bit there (as the thesis observed)"
        if qdq is not None and qdq.simulated:
            rpi += (f"; layers {', '.join(qdq.simulated[:4])}{' ...' if len(qdq.simulated) > 4 else ''} keep the "
                    f"recipe's {bits}-bit arithmetic in 8-bit containers (fp16 in Cast nodes): exact accuracy, "
                    "executed by the int8 (fp32) kernels, so no faster than 8-bit (fp32)")
        if qdq is not None and "int4" in qdq.kinds():
            rpi += "; 4-bit weights are stored as ONNX INT4 (opset 21) and dequantized to float by onnxruntime"
    return {"bit_widths_used": widths, "non_8bit_widths": other, "zcu104": zcu, "rpi": rpi,
            "host": "the measured latencies are the bundle's ONNX files with onnxruntime, 1 thread, batch 1"}


def _metrics(out: Path, model: nn.Module, float_net: nn.Module, recipe: Recipe, splits: Splits, batcher: Batcher,
             test: ImageSet, calib_count: int, predicted: dict[str, dict], extra: dict | None,
             qdq: QdqExport | None, searched: float | None) -> dict[str, Any]:
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    summary = model_summary(float_net, shape)
    onnx_files = {key: name for key, name in ONNX_FILES.items() if (out / name).exists()}
    calibration = {"split": "calib", "images": calib_count, "folder": "calibration/",
                   QUANTIZED_FILE: ("the recipe's own quantizers (PTQ-calibrated or QAT-trained scales), written as "
                                    "QDQ nodes; not re-calibrated") if qdq else None}
    if FALLBACK_FILE in onnx_files.values():
        calibration[FALLBACK_FILE] = f"fallback, NOT the searched model: {INT8_SETTINGS}"
    metrics: dict[str, Any] = {
        "bundle_format": FORMAT, "model_name": recipe.label or f"recipe {recipe.hash()}", "recipe_hash": recipe.hash(),
        "recipe": json.loads(recipe.to_json()), "dataset": splits.info.name.value, "input_shape": list(shape),
        "num_classes": splits.info.num_classes, "data_fingerprint": splits.fingerprint,
        "accuracy": _accuracies(out, model, test, batcher, searched), "calibration": calibration,
        "deployed_file": deployed_file(model), "quantization": qdq.summary() if qdq else None,
        "size": {"params": int(summary["params"]), "macs": int(summary["macs"]),
                 **{f"{p.name}_bytes": p.stat().st_size for p in sorted(out.glob("model*.onnx"))}},
        "host_latency_ms": {key: _latency(out / name, shape) for key, name in onnx_files.items()},
        "predicted": _plain_json(predicted),
        "deployment": {**deployment(model, qdq), **executed_section(out / deployed_file(model), predicted, qdq)},
        "spec": network_spec(recipe, splits, model_stem(model))}
    return {**metrics, **_plain_json(extra or {})}


def network_spec(recipe: Recipe, splits: Splits, stem: str = Stem.IMAGENET) -> str:
    """A hardware_models spec string for the deployed network, where one exists ('' otherwise).

    `arch:NAME` builds a registry network with 3 input channels and 10 classes (`arch:NAME@cifar` with its
    small stem, which the input size alone does not tell: the bundle may deploy at another size); a pruned network, the
    teacher itself (its name is not in the recipe) or another shape has no spec. Kept as metadata:
    rpi/run_onnx.py's rows name the ONNX file they timed (`onnx:PATH`), which every network has.
    """
    unpruned = recipe.prune.kind == PruneKind.NONE
    fits = splits.info.channels == 3 and splits.info.num_classes == 10
    if not (unpruned and fits and recipe.student != TEACHER):
        return ""
    return f"arch:{recipe.student}" + ("" if stem == Stem.IMAGENET else f"@{stem}")


# --- scripts, json, manifest ----------------------------------------------------------------------------------------

def _write_scripts(out: Path, metrics: dict[str, Any], info: DatasetInfo) -> None:
    shutil.copyfile(SCRIPTS / "run_onnx.py", out / "rpi" / "run_onnx.py")
    common = {"model_name": metrics["model_name"], "spec": metrics["spec"], "input_shape": metrics["input_shape"],
              "mean": list(info.mean), "std": list(info.std)}
    deployed = metrics["deployed_file"]
    _write_json(out / "rpi" / "preprocess.json", {**common, "model": deployed,
                                                   "precision": "int8" if deployed == QUANTIZED_FILE else "fp32",
                                                   "labels": list(info.classes), **cpu_setting(metrics["predicted"])})
    for name in ("quantize.py", "run_vart.py"):
        shutil.copyfile(SCRIPTS / name, out / "zcu104" / name)
    (out / "zcu104" / "compile.sh").write_text(texts.compile_sh())
    (out / "zcu104" / "compile.sh").chmod(0o755)
    _write_json(out / "zcu104" / "bundle.json", {**common, "target": texts.DPU_TARGET,
                                                  "dpu": "DPUCZDX8G_ISA1_B4096 x2 @300MHz",
                                                  "gops": round(2 * metrics["size"]["macs"] / 1e9, 6)})
    (out / "zcu104" / "README.md").write_text(texts.zcu104_readme(metrics))


def cpu_setting(predicted: dict[str, dict]) -> dict[str, Any]:
    """The runtime and threads the first CPU (Raspberry Pi) prediction used: run_onnx.py's defaults, so that
    what is measured on the board is what was promised. Without a CPU target: onnxruntime, 1 thread."""
    for target, result in predicted.items():
        if result.get("family") == "arm":
            return {"runtime": result["runtime"], "threads": int(result["threads"]), "predicted_by": target}
    return {"runtime": "onnxruntime", "threads": 1, "predicted_by": None}


def _plain_json(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays, tuples, paths and enums become plain values."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n")


def manifest(out: Path) -> dict[str, Any]:
    """Checksums of every file but the manifest itself (a cascade's stage manifests included), and what produced
    them."""
    files = {name: sha256(out / name) for name in present(out)}
    return {"bundle_format": FORMAT, "algorithm": "sha256", "files": files, "versions": versions()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found.update(_git())
    return found


def _git() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(status.stdout.strip())).lower()}


# --- verification --------------------------------------------------------------------------------------------------

def _check_accuracy(out: Path, splits: Splits, batcher: Batcher | None, tolerance: float) -> list[str]:
    """Each ONNX file re-run on the recorded test images must reproduce its recorded accuracy (within `tolerance`
    points); the deployed file must agree with the searched model (model.pt, re-run on the same images) on at least
    99% of them, with an accuracy the disagreements explain (`search.bundle.agreement`)."""
    metrics, problems = _read_json(out, "metrics.json")
    if metrics is None:
        return problems
    try:
        acc, shape = metrics["accuracy"], metrics["input_shape"]
        count, split, searched = int(acc["images"]), acc["split"], float(acc["pytorch"])
        deployed = metrics.get("deployed_file", QUANTIZED_FILE)
    except (KeyError, TypeError, ValueError) as error:
        return [f"metrics.json: no usable accuracy record ({error!r})"]
    if metrics.get("data_fingerprint") not in (None, splits.fingerprint):
        return [f"metrics.json: measured on data {metrics['data_fingerprint']}, given {splits.fingerprint}"]
    if split not in splits.sizes():
        return [f"metrics.json: accuracy names an unknown split {split!r}"]
    data = getattr(splits, split).first(count)
    if batcher is None or batcher.resolution != int(shape[-1]):  # a bundle exported at its deploy resolution
        batcher = Batcher(splits.info, int(shape[-1]))
    labels = data.labels.numpy()
    for key, name in ONNX_FILES.items():
        if key not in acc:
            continue
        try:
            predicted = onnx_predictions(out / name, data, batcher)
        except BundleError as error:
            problems.append(str(error))
            continue
        measured = top1_percent(predicted, labels)
        if abs(measured - float(acc[key])) > tolerance:
            problems.append(f"{name}: {measured:.2f}% on the first {count} {split} images, metrics.json says "
                            f"{float(acc[key]):.2f}% (tolerance {tolerance} points)")
        if name == deployed:
            problems += _check_agreement(out, name, predicted, data, batcher, searched, f"the first {count} {split} "
                                         "images")
    if isinstance(metrics.get("dpu"), dict):
        problems += check_dpu(out, data, batcher, f"the first {count} {split} images",
                              float(metrics["dpu"].get("onnx_dpu", -1)), tolerance)
    return problems


def _check_agreement(out: Path, name: str, predicted: np.ndarray, data: ImageSet, batcher: Batcher,
                     searched: float, where: str) -> list[str]:
    try:
        model, _ = load_model(out / "model.pt")
    except BundleModelError as error:
        return [f"model.pt: cannot rebuild the searched model to compare {name}'s predictions with ({error})"]
    agreement = compare(predicted, torch_predictions(model, data, batcher), data.labels.numpy())
    return agreement_problems(name, agreement, searched, where)
