"""Write and verify the deployment bundle of one compressed model (`python -m search.export` calls these).

A bundle is the folder a user takes to the boards: the model as PyTorch and ONNX (fp32, int8 QDQ, and the
recipe's exact bit-widths simulated when they are not 8), the calibration images the quantizers used, a
runner for the Raspberry Pi, the Vitis AI scripts for the ZCU104, the measured and predicted numbers, and a
manifest with the checksum of every file. Accuracies are measured on the test split only here, at the end,
and every one names its split; quantization is calibrated on the calibration split, never on test images.

`verify_bundle` recomputes the checksums and, given the data, re-runs the int8 model on the very images
metrics.json names: a bundle that was edited, truncated or produced by a different onnxruntime shows up.
"""

from __future__ import annotations

import copy
import hashlib
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

from evaluators.batches import Batcher
from evaluators.datasets import DatasetInfo
from evaluators.datasets import ImageSet
from evaluators.metrics import accuracy
from evaluators.metrics import model_summary
from evaluators.splits import Splits
from hardware_models.host import cpu_name
from hardware_models.host import time_session
from search.bundle_onnx import INT8_SETTINGS
from search.bundle_onnx import BundleError
from search.bundle_onnx import export_onnx
from search.bundle_onnx import onnx_accuracy
from search.bundle_onnx import quantize_int8
from search.bundle_onnx import session
from search.bundle_scripts import texts
from spaces.fake_quant import QUANT_LAYERS
from spaces.quantization import bit_widths
from spaces.quantization import is_quantized
from spaces.recipe import TEACHER
from spaces.recipe import PruneKind
from spaces.recipe import Recipe

FORMAT = 1
MANIFEST = "manifest.json"
SCRIPTS = Path(__file__).with_name("bundle_scripts")
# Files every bundle has; model_simulated.onnx and pareto.png are added when they apply.
REQUIRED = ("model.pt", "model.onnx", "model_int8.onnx", "recipe.json", "metrics.json", "README.md",
            "calibration/images.npy", "calibration/labels.npy", "calibration/normalization.json",
            "rpi/run_onnx.py", "rpi/preprocess.json", "zcu104/README.md", "zcu104/quantize.py",
            "zcu104/compile.sh", "zcu104/run_vart.py", "zcu104/bundle.json", "zcu104/model_float.pt")
VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "torch-pruning", "edge-compress-search")
# The keys write_bundle measures; extra_metrics may add others but not overwrite these.
METRICS_KEYS = ("bundle_format", "model_name", "recipe_hash", "recipe", "dataset", "input_shape", "num_classes",
                "data_fingerprint", "accuracy", "calibration", "size", "host_latency_ms", "predicted", "deployment",
                "spec")
LATENCY_RUNS, LATENCY_WARMUP, LATENCY_BUDGET_S = 200, 20, 3.0


def write_bundle(model: nn.Module, recipe: Recipe, splits: Splits, batcher: Batcher, out_dir: Path, *,
                 predicted: dict[str, dict], extra_metrics: dict | None = None, pareto_png: Path | None = None,
                 calib_images: int = 512, test_images: int = 0) -> dict:
    """Write the bundle of `model` (built from `recipe`) into an empty `out_dir`; returns the metrics written.

    `test_images=0` measures on the whole test split, otherwise on its first `test_images` images; the int8
    quantizer sees the first `calib_images` of the calibration split.
    """
    out = Path(out_dir)
    clash = sorted(set(extra_metrics or {}) & set(METRICS_KEYS))
    if clash:
        raise ValueError(f"extra_metrics would overwrite measured entries {clash}; rename them")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: a bundle is written into a new or empty folder only "
                              "(stale files would be checksummed as part of it)")
    model = copy.deepcopy(model).cpu().eval()
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    test, calib = splits.test.first(test_images), splits.calib.first(calib_images)
    float_net = plain_float(model)
    for folder in ("calibration", "rpi", "zcu104"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    _save_models(out, model, float_net, recipe, shape, splits.info)
    export_onnx(float_net, shape, out / "model.onnx")
    quantize_int8(out / "model.onnx", out / "model_int8.onnx", calib, batcher)
    if needs_simulation(model):
        export_onnx(model, shape, out / "model_simulated.onnx")
    _write_calibration(out / "calibration", calib, splits.info, shape)
    metrics = _metrics(out, model, float_net, recipe, splits, batcher, test, len(calib), predicted, extra_metrics)
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

    Checksums first; with `splits`, the int8 model is re-run on the test images metrics.json recorded and
    must reproduce its accuracy within `tolerance` percentage points.
    """
    out = Path(out_dir)
    found, problems = _read_json(out, MANIFEST)
    if found is None:
        return problems
    problems += check_files(out, found)
    if splits is not None:
        problems += _check_accuracy(out, splits, batcher, tolerance)
    return problems


# --- the model files -------------------------------------------------------------------------------------------

def plain_float(model: nn.Module) -> nn.Module:
    """A copy with the fake quantizers removed: only torch.nn / torchvision classes, loadable without this tool.

    Quantized layers are Conv2d/Linear subclasses with two quantizer children; turning the class back and
    dropping the children leaves exactly the (BN-folded) float network that the quantizers wrapped.
    """
    plain = copy.deepcopy(model)
    for layer in plain.modules():
        if isinstance(layer, QUANT_LAYERS):
            del layer.weight_quant, layer.act_quant
            layer.__class__ = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    return plain.eval()


def needs_simulation(model: nn.Module) -> bool:
    """True when some layer uses a width other than 8 and 32 bits: int8 ONNX cannot represent the recipe."""
    return any(bits not in (8, 32) for pair in bit_widths(model).values() for bits in pair)


def _save_models(out: Path, model: nn.Module, float_net: nn.Module, recipe: Recipe, shape: tuple[int, ...],
                 info: DatasetInfo) -> None:
    torch.save({"format": FORMAT, "state_dict": model.state_dict(), "recipe": recipe.to_json(),
                "recipe_hash": recipe.hash(), "input_shape": list(shape), "num_classes": info.num_classes,
                "dataset": info.name.value, "mean": list(info.mean), "std": list(info.std),
                "quantized": is_quantized(model), "bit_widths": {k: list(v) for k, v in bit_widths(model).items()},
                "module": model}, out / "model.pt")
    torch.save(float_net, out / "zcu104" / "model_float.pt")


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


def _accuracies(out: Path, model: nn.Module, test: ImageSet, batcher: Batcher) -> dict[str, Any]:
    result: dict[str, Any] = {"split": "test", "images": len(test),
                              "selection": f"the first {len(test)} images of the test split",
                              "pytorch": round(accuracy(model, test, batcher), 4)}
    for key, name in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model_int8.onnx"),
                      ("onnx_simulated", "model_simulated.onnx")):
        if (out / name).exists():
            result[key] = round(onnx_accuracy(out / name, test, batcher), 4)
    return result


def deployment(model: nn.Module) -> dict[str, Any]:
    """What each target actually runs: the DPU and onnxruntime's CPU kernels know INT8 only."""
    widths = sorted({bits for pair in bit_widths(model).values() for bits in pair})
    other = [b for b in widths if b not in (8, 32)]
    zcu = ("the DPU computes in INT8 only: zcu104/quantize.py re-quantizes the float network to 8 bits with Vitis AI "
           "(calibrated on calibration/), so the board runs an 8-bit model")
    rpi = ("runs model_int8.onnx with onnxruntime on its CPU: 8-bit weights and activations from onnxruntime's "
           "static quantizer over the float network, calibrated on calibration/")
    if other:
        bits = "/".join(map(str, other))
        zcu += (f"; this recipe's {bits}-bit layers are stored and run as 8-bit there (as the thesis observed), "
                "so expect the onnx_int8 accuracy, not the simulated one")
        rpi += f"; the recipe's {bits}-bit widths are not used there: the Pi runs this 8-bit model"
    return {"bit_widths_used": widths, "non_8bit_widths": other,
            "zcu104": zcu, "rpi": rpi,
            "host": "the measured latencies are model.onnx and model_int8.onnx with onnxruntime, 1 thread, batch 1",
            "simulated": ("model_simulated.onnx runs the recipe's exact bit-widths in fp32 arithmetic (fake "
                          "quantization): its accuracy is what the recipe would reach on hardware with those widths; "
                          "it is not faster anywhere") if other else None}


def _metrics(out: Path, model: nn.Module, float_net: nn.Module, recipe: Recipe, splits: Splits, batcher: Batcher,
             test: ImageSet, calib_count: int, predicted: dict[str, dict], extra: dict | None) -> dict[str, Any]:
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    summary = model_summary(float_net, shape)
    metrics: dict[str, Any] = {
        "bundle_format": FORMAT, "model_name": recipe.label or f"recipe {recipe.hash()}", "recipe_hash": recipe.hash(),
        "recipe": json.loads(recipe.to_json()), "dataset": splits.info.name.value, "input_shape": list(shape),
        "num_classes": splits.info.num_classes, "data_fingerprint": splits.fingerprint,
        "accuracy": _accuracies(out, model, test, batcher),
        "calibration": {"split": "calib", "images": calib_count, "folder": "calibration/", "int8": INT8_SETTINGS},
        "size": {"params": int(summary["params"]), "macs": int(summary["macs"]),
                 **{f"{p.name}_bytes": p.stat().st_size for p in sorted(out.glob("model*.onnx"))}},
        "host_latency_ms": {"onnx_fp32": _latency(out / "model.onnx", shape),
                            "onnx_int8": _latency(out / "model_int8.onnx", shape)},
        "predicted": _plain_json(predicted), "deployment": deployment(model), "spec": network_spec(recipe, splits)}
    return {**metrics, **_plain_json(extra or {})}


def network_spec(recipe: Recipe, splits: Splits) -> str:
    """A hardware_models spec string for the deployed network, where one exists ('' otherwise).

    `arch:NAME` builds a registry network with 3 input channels and 10 classes; a pruned network, the
    teacher itself (its name is not in the recipe) or another shape has no spec. Kept as metadata:
    rpi/run_onnx.py's rows name the ONNX file they timed (`onnx:PATH`), which every network has.
    """
    unpruned = recipe.prune.kind == PruneKind.NONE
    fits = splits.info.channels == 3 and splits.info.num_classes == 10
    return f"arch:{recipe.student}" if unpruned and fits and recipe.student != TEACHER else ""


# --- scripts, json, manifest ----------------------------------------------------------------------------------------

def _write_scripts(out: Path, metrics: dict[str, Any], info: DatasetInfo) -> None:
    shutil.copyfile(SCRIPTS / "run_onnx.py", out / "rpi" / "run_onnx.py")
    common = {"model_name": metrics["model_name"], "spec": metrics["spec"], "input_shape": metrics["input_shape"],
              "mean": list(info.mean), "std": list(info.std)}
    _write_json(out / "rpi" / "preprocess.json", {**common, "precision": "int8", "labels": list(info.classes),
                                                   **cpu_setting(metrics["predicted"])})
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


def _read_json(out: Path, name: str) -> tuple[Any, list[str]]:
    try:
        return json.loads((out / name).read_text()), []
    except FileNotFoundError:
        return None, [f"{name}: missing from {out}"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, [f"{name}: unreadable ({error})"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(out: Path) -> dict[str, Any]:
    """Checksums of every file but the manifest itself, and what produced them."""
    files = {p.relative_to(out).as_posix(): sha256(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts}
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
    root = Path(__file__).resolve().parents[1]
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

def check_files(out: Path, found: Any) -> list[str]:
    files = found.get("files") if isinstance(found, dict) else None
    if not isinstance(files, dict):
        return [f"{MANIFEST}: has no 'files' table"]
    problems = [f"{name}: not listed in {MANIFEST}" for name in REQUIRED if name not in files]
    for name, digest in sorted(files.items()):
        path = out / name
        if not path.is_file():
            problems.append(f"{name}: missing (listed in {MANIFEST})")
        elif sha256(path) != digest:
            problems.append(f"{name}: sha256 differs from {MANIFEST} (the file changed after the bundle was written)")
    return problems


def _check_accuracy(out: Path, splits: Splits, batcher: Batcher | None, tolerance: float) -> list[str]:
    metrics, problems = _read_json(out, "metrics.json")
    if metrics is None:
        return problems
    try:
        acc, shape = metrics["accuracy"], metrics["input_shape"]
        recorded, count, split = float(acc["onnx_int8"]), int(acc["images"]), acc["split"]
    except (KeyError, TypeError, ValueError) as error:
        return [f"metrics.json: no usable accuracy record ({error!r})"]
    if metrics.get("data_fingerprint") not in (None, splits.fingerprint):
        return [f"metrics.json: measured on data {metrics['data_fingerprint']}, given {splits.fingerprint}"]
    if split not in splits.sizes():
        return [f"metrics.json: accuracy names an unknown split {split!r}"]
    data = getattr(splits, split).first(count)
    try:
        measured = onnx_accuracy(out / "model_int8.onnx", data, batcher or Batcher(splits.info, int(shape[-1])))
    except BundleError as error:
        return [str(error)]
    if abs(measured - recorded) > tolerance:
        return [f"model_int8.onnx: {measured:.2f}% on the first {count} {split} images, metrics.json says "
                f"{recorded:.2f}% (tolerance {tolerance} points)"]
    return []
