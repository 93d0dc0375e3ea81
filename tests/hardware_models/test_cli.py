"""`python -m hardware_models.estimate`: JSON out, one-line errors with a non-zero exit."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hardware_models.cli import estimate_main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_prints_json(capsys: pytest.CaptureFixture) -> None:
    assert estimate_main(["--target", "zcu104", "--model", "thesis:resnet18_os20", "--input", "3x224x224",
                          "--per-layer"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "thesis:resnet18_os20" and result["target"] == "zcu104"
    assert result["latency_ms"] > 0 and result["energy_mj"] > 0 and result["per_layer"]


def test_cli_not_deployable_is_valid_json(capsys: pytest.CaptureFixture) -> None:
    estimate_main(["--target", "zcu104", "--model", "mobilenet_v1:0.25", "--input", "3x128x128",
                   "--precision", "fp32"])
    result = json.loads(capsys.readouterr().out)
    assert result["deployable"] is False and result["latency_ms"] is None


@pytest.mark.parametrize("argv, message", [
    (["--target", "zcu999", "--model", "torchvision:resnet18", "--input", "3x32x32"], "unknown target"),
    (["--target", "rpi4", "--model", "torchvision:resnet18", "--input", "3by32"], "bad input shape"),
    (["--target", "rpi4", "--model", "lenet", "--input", "3x32x32"], "SCHEME:ARGUMENT"),
    (["--target", "rpi4", "--model", "torchvision:resnet18", "--input", "3x32x32", "--threads", "9"],
     "threads must be"),
])
def test_cli_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        estimate_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_module_entry_point_and_api_name_coexist() -> None:
    done = subprocess.run([sys.executable, "-m", "hardware_models.estimate", "--target", "rpi4", "--model",
                           "mobilenet_v1:0.25", "--input", "3x64x64"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(done.stdout)["target"] == "rpi4"
    package = importlib.import_module("hardware_models")
    importlib.import_module("hardware_models.estimate")  # rebinds the package attribute to the module...
    assert callable(package.estimate)  # ...which stays callable as the API function
