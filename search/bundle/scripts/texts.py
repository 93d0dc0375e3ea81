"""The generated text files of a bundle: its README, the ZCU104 README and compile script.

Kept apart from search.bundle.writer so the writer stays short; every number in these texts comes from the
metrics dict that is also written as metrics.json, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

DPU_ARCH = "/opt/vitis_ai/compiler/arch/DPUCZDX8G/ZCU104/arch.json"
DPU_TARGET = "DPUCZDX8G_ISA1_B4096"
COMPILE_COMMAND = f"vai_c_xir -x quantized.xmodel -a {DPU_ARCH} -o compiled -n model"
NOT_RUN_HERE = ("Vitis AI cannot run on the machine that made this bundle (no Vitis AI docker, no ZCU104), so these "
                "scripts were NOT executed there: only their syntax, their CSV columns and their calibration-data "
                "loading were checked. Expect to adapt them to your Vitis AI version.")

FILES = {
    "model.pt": "the searched model as tensors only: state_dict (weights and quantizer scales), recipe, network "
                "name, input shape, bit-widths; `search.bundle.model_file.load_model` rebuilds it with "
                "torch.load(weights_only=True), importing no code the file names (a network that is your own "
                "`package.module:factory` is built only with trust_code=True)",
    "model.onnx": "fp32 ONNX of the float network (quantizers bypassed, BatchNorm folded where the recipe quantizes), "
                  "opset 17, dynamic batch",
    "model_int8.onnx": "the searched quantization: the recipe's own quantizer scales and zero points (PTQ-calibrated "
                       "or QAT-trained) as QDQ nodes, opset 17, placed where onnxruntime runs integer kernels "
                       "(every Conv/Gemm, residual Add, Concat); sub-8-bit codes in int8 containers, each layer "
                       "labelled in metrics.json, with what onnxruntime executes",
    "model_int8_requantized.onnx": "FALLBACK, not the searched model: onnxruntime's static quantizer re-calibrating "
                                   "model.onnx on calibration/",
    "model_dpu.onnx": "what the ZCU104's DPU computes: the float network under the DPU's arithmetic (BN folded, "
                      "signed int8, one power-of-two scale per tensor, fix positions calibrated on calibration/) as "
                      "QDQ ONNX, opset 17; onnxruntime runs it anywhere (metrics.json `dpu`)",
    "recipe.json": "the recipe (spaces.recipe.Recipe.from_json reads it back)",
    "metrics.json": "accuracies (naming the split), host latency, predicted latency/energy per target",
    "pareto.png": "the search's Pareto front",
    "calibration/": "calibration images (uint8, NCHW), labels and normalization used for quantization",
    "rpi/": "run_onnx.py (classify images, benchmark at batch 1) and its preprocess.json",
    "zcu104/": "Vitis AI flow: model_float.pt (state dict) with float_model.py (its network as plain torch code), "
               "quantize.py, compile.sh, run_vart.py, README.md",
    "manifest.json": "sha256 of every other file, and the versions of everything that made them: integrity against "
                     "accidents (a truncated copy, an edited file), not authenticity (it is unsigned)",
}


def compile_sh() -> str:
    return f"""#!/usr/bin/env bash
# Compile quantized.xmodel (from quantize.py --mode test) for the ZCU104's DPU, target {DPU_TARGET}.
# Run inside the Vitis AI docker; writes compiled/model.xmodel for run_vart.py.
set -euo pipefail
cd "$(dirname "$0")"
{COMPILE_COMMAND}
"""


def _acc(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "-"


def _accuracy_table(metrics: dict[str, Any]) -> list[str]:
    acc = metrics["accuracy"]
    rows = [("the search's F3 test accuracy for this recipe", "searched_f3_test", "-"),
            ("the searched model, PyTorch (fake-quantized where the recipe quantizes)", "pytorch", "model.pt"),
            ("float network, onnxruntime", "onnx_fp32", "model.onnx"),
            ("the searched quantization, onnxruntime", "onnx_int8", "model_int8.onnx"),
            ("fallback: onnxruntime's own int8 calibration", "onnx_int8_requantized", "model_int8_requantized.onnx")]
    lines = [f"Top-1 accuracy on the **{acc['split']}** split ({acc['selection']}); the board runs "
             f"`{metrics['deployed_file']}`:", "", "| model | file | accuracy |", "|---|---|---|"]
    lines += [f"| {text} | `{file}` | {_acc(acc[key])} |" for text, key, file in rows
              if acc.get(key) is not None]
    dpu = metrics.get("dpu")
    if dpu:
        lines += [f"| what the ZCU104's DPU computes, PyTorch emulation | - | {_acc(dpu['emulated_pytorch'])} |",
                  f"| what the ZCU104's DPU computes, onnxruntime | `{dpu['file']}` | {_acc(dpu['onnx_dpu'])} |"]
    return lines


def _latency_table(metrics: dict[str, Any]) -> list[str]:
    lines = ["| where | what | latency (ms) | energy (mJ) | basis |", "|---|---|---|---|---|"]
    for key, value in metrics["host_latency_ms"].items():
        lines.append(f"| this machine ({value['cpu']}) | {key}, batch 1, {value['threads']} thread | "
                     f"{value['median_ms']:.3f} (median of {value['runs']}) | - | measured |")
    for target, result in metrics["predicted"].items():
        latency, energy = result.get("latency_ms"), result.get("energy_mj")
        lines.append(f"| {target} | {result.get('precision', '?')}, {result.get('runtime', '?')} | "
                     f"{latency:.3f} | {energy:.3f} | {result.get('basis', 'predicted')} |"
                     if isinstance(latency, (int, float)) and isinstance(energy, (int, float))
                     else f"| {target} | - | - | - | {result.get('reason') or 'no prediction'} |")
    return lines


def bundle_readme(metrics: dict[str, Any], present: list[str]) -> str:
    deploy = metrics["deployment"]
    lines = [f"# Deployment bundle: {metrics['model_name']}", "",
             f"Recipe `{metrics['recipe_hash']}` on {metrics['dataset']} at input "
             f"{'x'.join(map(str, metrics['input_shape']))}. Made by edge-compress-search; every file is "
             "checksummed in manifest.json (check with `python -m search.export --verify DIR`). That proves "
             "integrity against accidents (every file listed, unchanged, inside the folder, nothing added), not "
             "who made the bundle: the manifest is unsigned, so anyone who can edit a file can rewrite its checksum. "
             "Take bundles from people you trust.", "",
             "## Files", "", "| file | what it is |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in FILES.items() if name in present]
    lines += ["", "## Accuracy", "", *_accuracy_table(metrics), "",
              f"Quantization was calibrated on {metrics['calibration']['images']} images of the "
              f"**{metrics['calibration']['split']}** split (carved from the training images), never on test "
              "images.", "", "## Latency and energy", "", *_latency_table(metrics), "",
              "Predicted rows are model outputs (see each target's `assumptions` in metrics.json), not measurements.",
              "", "## What runs where", "",
              f"- **ZCU104 (Vitis AI DPU)**: {deploy['zcu104']}",
              f"- **Raspberry Pi**: {deploy['rpi']}", f"- **this machine**: {deploy['host']}"]
    lines += ["", "## Measuring on the boards", "",
              "- Raspberry Pi: `python3 rpi/run_onnx.py --benchmark 200` (numpy + onnxruntime; runs the deployed "
              "file) appends a row with the columns of hardware_models/data/rpi.csv to rpi_benchmark.csv, at the "
              "thread count the prediction used (rpi/preprocess.json); `python -m hardware_models.calibrate "
              "--target rpi4 --measurements rpi_benchmark.csv --out my_pi.json` fits a profile a study can name as a "
              "target.",
              "- ZCU104: see zcu104/README.md. " + NOT_RUN_HERE, ""]
    return "\n".join(lines)


def _dpu_section(metrics: dict[str, Any]) -> list[str]:
    """What the bundle carries of the searched DPU quantization, and which parts were executed where it was made."""
    dpu = metrics.get("dpu")
    if not dpu:
        return []
    agree, settings = dpu["agreement_with_emulated"], dpu["calibration"]
    steps = ", ".join(f"{k.replace('_', ' ')} {'on' if settings[k] else 'off'}"
                      for k in ("equalization", "bias_correction", "fast_finetune"))
    return [
        "## The searched quantization", "",
        f"`fix_positions.json` holds the fix position (power-of-two scale 2^-p) of each of the "
        f"{dpu['fix_positions']['tensors']} quantized tensors, calibrated by the DPU emulation on "
        f"{settings['calib_images']} images of the **calib** split (../calibration/, never test images) with "
        f"vai_q's `{settings['method']}` method, laid out as vai_q_pytorch's quant_info.json (`param`, `output`, "
        "`input`: name -> [bits, fix position]) under the names of float_model.py, each activation with the layer "
        f"it follows (`after`). Calibration settings of the searched PTQ: {steps}; quantize.py passes them to vai_q "
        "(options nndct_equalization and nndct_param_corr, quantizer.fast_finetune) and, after `--mode calib`, "
        "writes the searched positions into quantize_result/quant_info.json wherever a name matches, printing how "
        "many did (`--vai-positions` keeps vai_q's own).", "",
        "## What was checked by execution, and what only by construction", "",
        f"- **Executed where the bundle was made**: ../{dpu['file']} (the DPU's arithmetic as QDQ ONNX, every scale "
        f"a power of two) ran in onnxruntime on the first {dpu['images']} test images: {dpu['onnx_dpu']:.2f}%; the "
        f"emulated DPU model in PyTorch scored {dpu['emulated_pytorch']:.2f}%, and the two agree on "
        f"{agree['agree']} of {agree['images']} top-1 predictions. ONNX rounds halves to even where the DPU rounds "
        "them up, which accounts for rare differences (metrics.json `dpu`). `python -m search.export --verify` "
        "re-runs this check from model.pt and fix_positions.json.",
        "- **By construction only (not executed: no Vitis AI, no board)**: that vai_q_pytorch accepts "
        "fix_positions.json's names and settings, that vai_q's own graph (its BN folding, its fusions, its "
        "requantization points) matches the emulation's, what the compiler (compile.sh) does with the model, and "
        "what VART computes on the ZCU104. The DPU emulation itself follows vai_q's documented arithmetic "
        "(docs/guides/dpu-arithmetic.md); it is not a run of the DPU.", ""]


def zcu104_readme(metrics: dict[str, Any]) -> str:
    shape = "x".join(map(str, metrics["input_shape"]))
    return "\n".join([
        f"# ZCU104 (Vitis AI, {DPU_TARGET}) flow for {metrics['model_name']}", "",
        f"**{NOT_RUN_HERE}**", "",
        f"What the board runs: {metrics['deployment']['zcu104']}", "",
        "Steps (Vitis AI 3.x; the quantizer and compiler run in the `vitis-ai-pytorch` docker, run_vart.py on the "
        "board):", "",
        "1. `python quantize.py --mode calib` - INT8 ranges from ../calibration/images.npy "
        f"({metrics['calibration']['images']} calibration images, never test images), written to quantize_result/.",
        "2. `python quantize.py --mode test` - exports the INT8 model at batch 1 and copies it to quantized.xmodel.",
        f"3. `bash compile.sh` - runs `{COMPILE_COMMAND}` (arch.json of the ZCU104 = {DPU_TARGET}) and writes "
        "compiled/model.xmodel.",
        "4. Copy this folder and ../calibration to the board, then `python3 run_vart.py --images "
        "../calibration/images.npy --labels ../calibration/labels.npy` (accuracy on those images) and "
        "`python3 run_vart.py --benchmark 1000 --vitis-ai-version 3.0` (FPS at batch 1, one thread, only "
        "execute_async + wait timed, as the thesis measured), which appends a row with the columns of "
        "hardware_models/data/zcu104_dpu.csv to zcu104_benchmark.csv.", "",
        "Files: `model_float.pt` is the float network's state dict (tensors only; BatchNorm already folded when "
        "the recipe quantizes) and `float_model.py` its network as plain torch code (torch.nn layers and torch "
        "functions, generated from a torch.fx trace and checked against the searched model when the bundle was "
        "written); quantize.py builds it and loads the weights with `torch.load(path, weights_only=True)` (torch "
        f">= 1.13): nothing is unpickled. {metrics['deployment'].get('zcu104_model', '')} "
        "`bundle.json` holds the input shape, normalization, "
        f"GOPs (2 x MACs) and names that run_vart.py writes to the CSV. Input: {shape}, normalized as in "
        "../calibration/normalization.json.", "", *_dpu_section(metrics)])
