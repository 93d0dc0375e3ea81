#!/usr/bin/env python3
"""Quantize the bundle's float network to INT8 for the ZCU104 DPU with Vitis AI's PyTorch quantizer.

Run inside the Vitis AI PyTorch docker (conda env `vitis-ai-pytorch`), from this folder:

    python quantize.py --mode calib     # activation ranges from ../calibration/images.npy -> quantize_result/
    python quantize.py --mode test      # quantized model at batch 1 -> quantized.xmodel (for compile.sh)

Calibration uses only the bundle's calibration images (carved from the training images, never the test
split), normalized exactly as during training. The DPU computes in INT8 only, so whatever bit-widths the
recipe simulated, the network is quantized to 8 bits here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TARGET = "DPUCZDX8G_ISA1_B4096"  # the ZCU104's DPU (2 x B4096 @ 300 MHz)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("calib", "test"), required=True)
    parser.add_argument("--model", type=Path, default=HERE / "model_float.pt")
    parser.add_argument("--calibration", type=Path, default=HERE.parent / "calibration")
    parser.add_argument("--output-dir", type=Path, default=HERE / "quantize_result")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size (test mode uses 1)")
    parser.add_argument("--target", default=TARGET)
    return parser.parse_args(argv)


def load_model(path: Path) -> torch.nn.Module:
    """The plain float network (torch.nn / torchvision modules only, BN already folded where quantized)."""
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:  # torch < 1.13 has no weights_only
        model = torch.load(path, map_location="cpu")
    return model.eval()


def load_calibration(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with open(folder / "normalization.json", encoding="utf-8") as f:
        config = json.load(f)
    return np.load(folder / "images.npy"), np.load(folder / "labels.npy"), config


def normalize(images: np.ndarray, config: dict) -> torch.Tensor:
    """uint8 NxCxHxW -> the model's input: (x/255 - mean)/std, then bilinear resize as in training."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - mean) / std
    size = tuple(config["input_shape"][1:])
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def calibration_batches(folder: Path, batch_size: int):  # noqa: ANN201 - an iterator of (x, y) tensors
    images, labels, config = load_calibration(folder)
    for start in range(0, len(images), batch_size):
        yield normalize(images[start: start + batch_size], config), torch.from_numpy(labels[start: start + batch_size])


def make_quantizer(mode: str, model: torch.nn.Module, example: torch.Tensor, args: argparse.Namespace):  # noqa: ANN201
    from pytorch_nndct.apis import torch_quantizer

    try:
        return torch_quantizer(mode, model, (example,), output_dir=str(args.output_dir), device=torch.device("cpu"),
                               target=args.target)
    except TypeError:  # Vitis AI < 3.0: no target-aware quantization
        return torch_quantizer(mode, model, (example,), output_dir=str(args.output_dir), device=torch.device("cpu"))


@torch.no_grad()
def run(model: torch.nn.Module, batches) -> float:  # noqa: ANN001
    """Forward every batch (that is what calibration needs); agreement with the labels in percent."""
    correct = seen = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return 100.0 * correct / max(seen, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_model(args.model)
    batch = args.batch_size if args.mode == "calib" else 1
    example = next(calibration_batches(args.calibration, batch))[0]
    quantizer = make_quantizer(args.mode, model, example, args)
    accuracy = run(quantizer.quant_model, calibration_batches(args.calibration, batch))
    print(f"INT8 accuracy on the calibration images (not a test split): {accuracy:.2f}%")
    if args.mode == "calib":
        quantizer.export_quant_config()
        return 0
    quantizer.export_xmodel(output_dir=str(args.output_dir), deploy_check=False)
    exported = sorted(args.output_dir.glob("*_int.xmodel"))
    if not exported:
        print(f"no *_int.xmodel was written to {args.output_dir}", file=sys.stderr)
        return 1
    shutil.copyfile(exported[0], HERE / "quantized.xmodel")
    print(f"{exported[0]} -> {HERE / 'quantized.xmodel'}; next: bash compile.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
