"""The Raspberry Pi loop, with this machine standing in for the board: bundles of an unpruned and two pruned
networks, their runner's benchmark rows, a profile calibrated from those rows, and a study that names the
profile as a target and gets its predictions from it."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.candidate import estimate_targets
from evaluators.candidate import hardware_metrics
from evaluators.candidate import level_fingerprint
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from hardware_models import build_network
from hardware_models import estimate
from search.bundle.writer import write_bundle
from search.config import load_study
from search.pipeline.context import make_plan
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.models.architectures import create_model
from spaces.recipe import PruneKind
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from tests.user_data import write_generated_imagefolder

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32
BUDGET = Budget(calib_images=16, bn_images=16, score_images=8, max_candidates=1)


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow  # about 25 s on a shared 2-core machine: three bundles and six benchmark runs
def test_benchmark_rows_calibrate_a_profile_that_a_study_predicts_with(tmp_path: Path) -> None:
    root = write_generated_imagefolder(tmp_path / "images", classes=3, per_class=12, size=SIZE,
                                       splits=("train", "test"))
    splits, batcher = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=SIZE),
                                   cache_dir=tmp_path)
    torch.manual_seed(0)
    base = create_model("small_cnn", num_classes=3).eval()
    hardware = HardwareConfig(targets=("rpi4",), cpu_threads=1)
    shape = (3, SIZE, SIZE)
    csv_path = tmp_path / "rpi_benchmark.csv"
    for ratio in (0.0, 0.4, 0.7):
        recipe = Recipe(prune=Pruning(kind=PruneKind.STRUCTURED, ratio=ratio) if ratio else Pruning(),
                        quant=Quantization(kind=QuantKind.PTQ), label=f"pruned {ratio}")
        model = apply(recipe, base, splits, batcher, BUDGET).model.eval()
        predicted = estimate_targets(model, recipe, shape, hardware)
        out = tmp_path / "bundles" / f"p{int(ratio * 10)}"
        write_bundle(model, recipe, splits, batcher, out, predicted=predicted, network="small_cnn", calib_images=16,
                     test_images=8)
        # No onnxruntime int8 row backs the built-in rpi4 profile: the bundle's metrics.json says its int8 speed
        # is an assumption.
        speed = json.loads((out / "metrics.json").read_text())["predicted"]["rpi4"]["int8_speed"]
        assert (speed["basis"], speed["factor"]) == ("assumed", 1.0)
        config = json.loads((out / "rpi" / "preprocess.json").read_text())
        assert (config["runtime"], config["threads"], config["predicted_by"]) == ("onnxruntime", 1, "rpi4")
        for onnx in ("model.onnx", "model_int8.onnx"):
            _run([str(out / "rpi" / "run_onnx.py"), "--model", str(out / onnx), "--benchmark", "30", "--warmup", "5",
                  "--csv", str(csv_path), "--board", "stand-in for a Pi 4 (1.8GHz x 4)"], cwd=tmp_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert all(r["spec"].startswith("onnx:bundles/") and r["threads"] == "1" for r in rows)
    assert all(r["runtime"].startswith("onnxruntime") for r in rows)

    profile_path = tmp_path / "profiles" / "my_pi.json"
    profile_path.parent.mkdir()
    report = _run(["-m", "hardware_models.calibrate", "--target", "rpi4", "--measurements", str(csv_path),
                   "--out", str(profile_path)], cwd=Path(__file__).resolve().parents[2])
    assert "skipped" not in report  # every row, pruned ones included, was rebuilt from its ONNX file
    profile = json.loads(profile_path.read_text())
    assert profile["calibration"]["rows_used"] == 6
    assert set(profile["calibration"]["fitted_groups"]) == {"onnxruntime.fp32.", "onnxruntime.int8."}
    assert profile["default_runtime"] == "onnxruntime" and profile["default_threads"] == 1
    # Both files of each bundle were timed: the int8 speed is fitted from this host's rows, not assumed, and the
    # profile's fp32 / int8 latency ratio follows the one measured (whichever way it points: int8 was 1.6x slower
    # than fp32 for these 32x32 networks on this host before the issue-26 export).
    speed = profile["calibration"]["int8_speed"]["onnxruntime"]
    assert (speed["basis"], speed["rows"], speed["networks_at_both"]) == ("measured", 3, 3)
    by_bundle = {(r["spec"].rsplit("/", 2)[-2], r["precision"]): float(r["latency_ms"]) for r in rows}
    ratio = math.prod(by_bundle[b, "fp32"] / by_bundle[b, "int8"] for b in ("p0", "p4", "p7")) ** (1 / 3)
    assert speed["measured_fp32_over_int8"] == pytest.approx(ratio, rel=1e-3)
    assert speed["fitted_fp32_over_int8"] == pytest.approx(ratio, rel=0.1)
    assert "onnxruntime int8 speed: x" in report and "ASSUMED" not in report

    study = tmp_path / "study.toml"
    study.write_text('[study]\nname = "loop"\n[data]\ndataset = "imagefolder"\nroot = "images"\n'
                     f'resolution = {SIZE}\n[teacher]\narch = "small_cnn"\n'
                     '[hardware]\ntargets = ["rpi4", "profiles/my_pi.json"]\ncpu_threads = 1\n')
    config = load_study(str(study))
    assert config.hardware.targets[1] == str(profile_path.resolve())
    assert config.hardware.names == ("rpi4", "my_pi")
    assert "latency_my_pi" in make_plan(config).objectives
    metrics = hardware_metrics(base, Recipe(), shape, config.hardware)
    results = estimate_targets(base, Recipe(), shape, config.hardware)
    assert results["my_pi"]["profile"] == str(profile_path.resolve())
    assert results["rpi4"]["profile"] == "built-in rpi4"
    # This machine is not a Pi 4: a profile fitted on its rows predicts differently from the built-in one.
    assert metrics["latency_my_pi"] != pytest.approx(metrics["latency_rpi4"], rel=0.05)
    # ...and closer to what this machine measured for the unpruned fp32 network than the Pi 4 model is.
    measured = next(float(r["latency_ms"]) for r in rows if r["spec"].endswith("p0/model.onnx"))
    assert abs(math.log(metrics["latency_my_pi"] / measured)) < abs(math.log(metrics["latency_rpi4"] / measured))
    # The profile's rows were rebuilt from ONNX files: the same network from its ONNX file costs the same.
    from_onnx = estimate(build_network(f"onnx:{tmp_path / 'bundles/p0/model.onnx'}"), shape, str(profile_path),
                         threads=1, precision="fp32")
    assert from_onnx["latency_ms"] == pytest.approx(metrics["latency_my_pi"], rel=1e-9)
    # Recalibrating the profile invalidates the cached results that were scored with it.
    before = level_fingerprint(LevelConfig(), config.hardware)
    profile["params"]["onnxruntime.fp32.call_overhead_ms"] *= 2
    profile_path.write_text(json.dumps(profile))
    assert level_fingerprint(LevelConfig(), config.hardware) != before


def test_profile_targets_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="built-in target 'rpi4'"):
        HardwareConfig(targets=("rpi4.json",))
    with pytest.raises(ValueError, match="both named 'my_pi'"):
        HardwareConfig(targets=("a/my_pi.json", "b/my_pi.json"))
    with pytest.raises(ValueError, match="lower-case"):
        HardwareConfig(targets=("My-Pi.json",))
    with pytest.raises(ValueError, match="cpu_runtime"):
        HardwareConfig(cpu_runtime="tflite")
    study = tmp_path / "s.toml"
    study.write_text('[study]\nname = "x"\n[data]\ndataset = "imagefolder"\nroot = "images"\n[teacher]\n'
                     'arch = "small_cnn"\n[hardware]\ntargets = ["profiles/none.json"]\n')
    with pytest.raises(Exception, match="does not exist; write it with python -m hardware_models.calibrate"):
        load_study(str(study))


def test_calibrate_refuses_to_overwrite_a_builtin_profile(tmp_path: Path) -> None:
    from hardware_models.calibration.fit import main
    from hardware_models.profiles import builtin_profile_path

    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "rpi4", "--measurements", "x.csv", "--out", str(builtin_profile_path("rpi4"))])
    assert exit_info.value.code == 2
