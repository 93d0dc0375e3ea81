"""The ZCU104 hand-off that carries what was searched: `model_dpu.onnx` and `zcu104/fix_positions.json`.

For a study whose targets include a DPU board, the bundle gets:
- `model_dpu.onnx`: the float network under the DPU's arithmetic (`spaces.quant.dpu_emulation`), its fix positions
  calibrated by `spaces.quant.ptq_steps.ptq` on the calibration split only (the bundle's calibration/ images), written
  as QDQ with power-of-two scales (`search.bundle.dpu_onnx`); onnxruntime runs it here;
- `zcu104/fix_positions.json`: every quantized tensor's bit-width and fix position, laid out as vai_q_pytorch's own
  `quant_info.json` (`param`, `output`, `input`: name -> [bits, fix position]) under the names of the bundle's
  `float_model.py`, each activation with the layer it follows (`after`), and the calibration settings of the
  searched PTQ (equalization, bias correction, fast finetune) that `zcu104/quantize.py` passes to vai_q.

metrics.json's `dpu` section records model_dpu.onnx's test accuracy and its top-1 agreement with the emulated
PyTorch model, image by image (`search.bundle.agreement`). `check_dpu` (`--verify`) rebuilds the emulated model from
model.pt (tensors only) and the recorded fix positions, requires every scale in model_dpu.onnx to be 2^-p of the
recorded position, and re-runs the file: at least 99% agreement.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet
from evaluators.data.splits import Splits
from search.bundle.agreement import compare
from search.bundle.agreement import problems as agreement_problems
from search.bundle.agreement import top1_percent
from search.bundle.agreement import torch_predictions
from search.bundle.dpu_onnx import DpuExportError
from search.bundle.dpu_onnx import export_dpu
from search.bundle.dpu_onnx import qdq_scales
from search.bundle.dpu_onnx import quantizers
from search.bundle.manifest import check_named
from search.bundle.manifest import read_json
from search.bundle.model_file import BundleModelError
from search.bundle.model_file import load_model
from search.bundle.onnx_files import BundleError
from search.bundle.onnx_files import onnx_predictions
from search.bundle.qdq import float_network
from spaces.quant.dpu_arithmetic import RoundMode
from spaces.quant.dpu_emulation import activation_quantizers
from spaces.quant.dpu_emulation import emulate
from spaces.quant.dpu_emulation import fix_positions
from spaces.quant.dpu_emulation import set_fix_positions
from spaces.quant.ptq_steps import Arithmetic
from spaces.quant.ptq_steps import PtqSteps
from spaces.quant.ptq_steps import ptq

DPU_FILE = "model_dpu.onnx"
POSITIONS_FILE = "zcu104/fix_positions.json"
POSITIONS_FORMAT = 1
DPU_FAMILY = "dpu"  # hardware_models' family of the ZCU104's cost model
ROUNDING_NOTE = (
    "ONNX QuantizeLinear rounds halves to even, the DPU rounds activation halves up: values exactly "
    "halfway between two codes differ by one code; agreement_with_half_even_emulation is the emulated "
    "model with ONNX's rounding, so the difference between the two agreements is the rounding's share"
)


@dataclass(frozen=True, kw_only=True)
class VaiSettings:
    """vai_q_pytorch's calibration settings that reproduce the searched PTQ (zcu104/quantize.py applies them)."""

    equalization: bool  # vai_q option nndct_equalization
    bias_correction: bool  # vai_q option nndct_param_corr
    fast_finetune: bool  # quantizer.fast_finetune (AdaQuant): the searched AdaRound's counterpart
    method: str  # fix-position calibration: vai_q's "diffs" (its default) or "maxmin"
    calib_images: int

    @classmethod
    def of(cls, steps: PtqSteps) -> VaiSettings:
        return cls(
            equalization=steps.equalize,
            bias_correction=steps.bias_correction,
            fast_finetune=steps.adaround,
            method=str(steps.dpu_method),
            calib_images=steps.calib_images,
        )


def targets_dpu(predicted: dict[str, dict]) -> bool:
    """True when one of the study's targets is a DPU board (the ZCU104): the bundle then carries model_dpu.onnx."""
    return any(isinstance(p, dict) and p.get("family") == DPU_FAMILY for p in predicted.values())


def searched_steps(calib_images: int) -> PtqSteps:
    """The PTQ steps of the searched recipe under the DPU arithmetic. Recipes carry no equalization, bias correction
    or AdaRound yet (issue 27 item 3 adds them to the space), so each is off, as vai_q then must be too."""
    return PtqSteps(calib_images=calib_images, correction_images=min(calib_images, 256))


def write_dpu(
    float_net: nn.Module, splits: Splits, batcher: Batcher, out: Path, calib_images: int, steps: PtqSteps | None = None
) -> torch.fx.GraphModule:
    """model_dpu.onnx and zcu104/fix_positions.json in bundle `out`; returns the emulated DPU model.

    The fix positions are calibrated on the first `calib_images` images of the calibration split: the bundle's
    calibration/ folder. Steps that change the weights (equalization, bias correction, AdaRound) are refused:
    model.pt holds the searched weights, and --verify rebuilds the DPU model from them."""
    steps = steps or searched_steps(calib_images)
    if steps.equalize or steps.bias_correction or steps.adaround:
        raise ValueError(
            f"PTQ steps {steps.label()} change the weights, which the bundle does not carry apart from "
            "model.pt yet; export with the recipe's own steps (searched_steps)"
        )
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    emulated = ptq(float_net, splits, batcher, arithmetic=Arithmetic.DPU, steps=steps)
    export_dpu(emulated, shape, out / DPU_FILE)
    record = positions_record(emulated, VaiSettings.of(steps), len(splits.calib.first(calib_images)))
    (out / POSITIONS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return emulated


def positions_record(emulated: torch.fx.GraphModule, settings: VaiSettings, calib_count: int) -> dict[str, Any]:
    """fix_positions.json: vai_q's quant_info layout (name -> [bits, fix position]) and what it came from."""
    positions = fix_positions(emulated)
    acts = activation_quantizers(emulated)
    bits = {name: q.bits for name, q in quantizers(emulated).items()}
    follows = _follows(emulated)
    inputs = {n for n, after in follows.items() if after == ["<input>"]}
    section = {"param": {}, "output": {}, "input": {}}
    for name, position in positions.items():
        kind = "param" if name not in acts else "input" if name in inputs else "output"
        section[kind][name] = [bits[name], position]
    return {
        "format": POSITIONS_FORMAT,
        **section,
        "after": follows,
        "settings": asdict(settings),
        "calibration": {"split": "calib", "images": calib_count, "folder": "calibration/"},
        "names": "param: <layer>.weight|bias of float_model.py; output/input: the DPU emulation's quantizers, "
        "each after the float_model.py layer or function named in 'after'",
    }


def _follows(emulated: torch.fx.GraphModule) -> dict[str, list[str]]:
    """Each activation quantizer: the layers (module names) or functions whose output it requantizes."""
    found: dict[str, list[str]] = {}
    for node in emulated.graph.nodes:
        if node.op == "call_module" and node.target in activation_quantizers(emulated):
            source = node.args[0]
            after = (
                "<input>"
                if source.op == "placeholder"
                else source.target
                if source.op == "call_module"
                else source.name
            )
            found.setdefault(node.target, []).append(str(after))
    return found


def read_positions(path: Path) -> dict[str, int]:
    """The fix positions of a fix_positions.json, checked for shape (integers only)."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or record.get("format") != POSITIONS_FORMAT:
        raise ValueError(f"{POSITIONS_FILE}: not a format-{POSITIONS_FORMAT} fix-position file")
    found: dict[str, int] = {}
    for section in ("param", "output", "input"):
        for name, pair in (record.get(section) or {}).items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
                raise ValueError(f"{POSITIONS_FILE}: {section}.{name} is not [bits, fix position] integers")
            found[name] = pair[1]
    return found


# --- measurement ----------------------------------------------------------------------------------------------------


def dpu_metrics(out: Path, emulated: torch.fx.GraphModule, test: ImageSet, batcher: Batcher) -> dict[str, Any]:
    """metrics.json's `dpu` section: model_dpu.onnx against the emulated model on the bundle's test images."""
    labels = test.labels.numpy()
    predicted = onnx_predictions(out / DPU_FILE, test, batcher)
    reference = torch_predictions(emulated, test, batcher)
    half_even = torch_predictions(_half_even(emulated), test, batcher)
    positions = list(fix_positions(emulated).values())
    settings = json.loads((out / POSITIONS_FILE).read_text())["settings"]
    return {
        "file": DPU_FILE,
        "positions_file": POSITIONS_FILE,
        "split": "test",
        "images": len(test),
        "selection": f"the first {len(test)} images of the test split",
        "onnx_dpu": round(top1_percent(predicted, labels), 4),
        "emulated_pytorch": round(top1_percent(reference, labels), 4),
        "agreement_with_emulated": compare(predicted, reference, labels).summary(),
        "agreement_with_half_even_emulation": compare(predicted, half_even, labels).summary(),
        "rounding": ROUNDING_NOTE,
        "fix_positions": {
            "tensors": len(positions),
            "min": min(positions),
            "max": max(positions),
            "histogram": {str(k): v for k, v in sorted(Counter(positions).items())},
        },
        "calibration": {"split": "calib", "images": settings["calib_images"], **settings},
    }


def _half_even(emulated: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The emulated model with ONNX's round-half-to-even in every activation quantizer (a diagnostic only)."""
    copied = copy.deepcopy(emulated)
    for quantizer in activation_quantizers(copied).values():
        quantizer.round_mode = RoundMode.HALF_EVEN
    return copied


# --- verification ---------------------------------------------------------------------------------------------------


def rebuild(model_file: Path, positions: dict[str, int]) -> torch.fx.GraphModule:
    """The emulated DPU model from model.pt (weights_only) and recorded fix positions; every tensor must have one."""
    model, _ = load_model(model_file)
    emulated = emulate(float_network(model))
    missing = sorted(set(quantizers(emulated)) - set(positions))
    if missing:
        raise ValueError(f"{POSITIONS_FILE}: no fix position for {', '.join(missing[:5])}")
    set_fix_positions(emulated, positions)
    return emulated


def scale_problems(path: Path, positions: dict[str, int]) -> list[str]:
    """Every scale of model_dpu.onnx must be a power of two, and 2^-p of the recorded position of its tensor."""
    problems = []
    for name, scale in qdq_scales(path).items():
        tensor = name.removesuffix(".scale")
        if not (scale > 0 and math.log2(scale).is_integer()):
            problems.append(f"{DPU_FILE}: scale {name} = {scale!r} is not a power of two")
        elif tensor not in positions:
            problems.append(f"{DPU_FILE}: scale {name} has no fix position in {POSITIONS_FILE}")
        elif scale != 2.0 ** -positions[tensor]:
            problems.append(
                f"{DPU_FILE}: {tensor} runs at fix position {-int(math.log2(scale))}, {POSITIONS_FILE} "
                f"says {positions[tensor]}"
            )
    return problems


def dpu_listed(out: Path) -> list[str]:
    """A bundle whose metrics.json has a `dpu` section must list model_dpu.onnx and the fix positions."""
    metrics, problems = read_json(Path(out), "metrics.json")
    if not isinstance(metrics, dict) or not metrics.get("dpu"):
        return problems
    return check_named(out, "metrics.json", [DPU_FILE, POSITIONS_FILE])


def check_dpu(out: Path, data: ImageSet, batcher: Batcher, where: str, recorded: float, tolerance: float) -> list[str]:
    """model_dpu.onnx against the emulated model rebuilt from model.pt and zcu104/fix_positions.json (`where` names
    the images): scales as recorded, accuracy as recorded (within `tolerance` points), >= 99% top-1 agreement."""
    try:
        positions = read_positions(out / POSITIONS_FILE)
        emulated = rebuild(out / "model.pt", positions)
        problems = scale_problems(out / DPU_FILE, positions)
        predicted = onnx_predictions(out / DPU_FILE, data, batcher)
    except (ValueError, KeyError, BundleModelError, BundleError, DpuExportError, OSError) as error:
        return [f"{DPU_FILE}: cannot check against the emulated DPU model ({str(error).splitlines()[0]})"]
    labels = data.labels.numpy()
    measured = top1_percent(predicted, labels)
    if abs(measured - recorded) > tolerance:
        problems.append(
            f"{DPU_FILE}: {measured:.2f}% on {where}, metrics.json says {recorded:.2f}% (tolerance {tolerance} points)"
        )
    reference = torch_predictions(emulated, data, batcher)
    agreement = compare(predicted, reference, labels)
    return problems + agreement_problems(DPU_FILE, agreement, top1_percent(reference, labels), where)


def summary_line(metrics: dict[str, Any]) -> str:
    """One line on the DPU file for the bundle README (empty when the bundle has none)."""
    dpu = metrics.get("dpu")
    if not dpu:
        return ""
    agree = dpu["agreement_with_emulated"]
    return (
        f"{DPU_FILE}: {dpu['onnx_dpu']:.2f}% on {dpu['images']} test images; the emulated DPU model "
        f"{dpu['emulated_pytorch']:.2f}%; top-1 agreement {agree['agree']}/{agree['images']}"
    )
