"""onnxruntime's int8 speed on a CPU board: one factor fitted from rows of both precisions, or a stated assumption.

The rows fed here are SYNTHETIC, never Pi measurements: the fp32 latencies are the built-in rpi4 profile's own
onnxruntime predictions at one thread (a model output), and each int8 row is its fp32 row divided by a documented
factor. The fitted factor must follow that factor both ways (int8 twice as fast; int8 slower than fp32, as the
issue-26 QDQ bundles were on the host), starting from the built-in profile's assumed factor of 1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evaluators.candidate import HardwareConfig
from hardware_models import build_network
from hardware_models import estimate
from hardware_models.calibration.fit import main as calibrate_main
from hardware_models.estimators.int8_speed import describe
from hardware_models.estimators.int8_speed import of_profile
from hardware_models.profiles import load_builtin
from search.report.hardware_notes import hardware_notes

pytestmark = pytest.mark.usefixtures("one_thread")
NETWORKS = ("torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:squeezenet1_1")
SHAPE = (3, 64, 64)
BOARD = "synthetic rows, not a board measurement (1.8GHz x 4)"


def _synthetic_rows(path: Path, int8_speedup: float) -> Path:
    """fp32: the built-in rpi4 onnxruntime prediction, 1 thread; int8: that divided by `int8_speedup`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, ["board", "runtime", "threads", "precision", "spec", "input", "latency_ms", "source"]
        )
        writer.writeheader()
        for spec in NETWORKS:
            fp32 = estimate(build_network(spec, device="meta"), SHAPE, "rpi4", precision="fp32", threads=1)
            for precision, latency in (("fp32", fp32["latency_ms"]), ("int8", fp32["latency_ms"] / int8_speedup)):
                writer.writerow(
                    {
                        "board": BOARD,
                        "runtime": "onnxruntime 1.31 (python, batch 1)",
                        "threads": 1,
                        "precision": precision,
                        "spec": spec,
                        "input": "x".join(map(str, SHAPE)),
                        "latency_ms": f"{latency:.6f}",
                        "source": f"synthetic: rpi4 profile prediction, int8 = fp32 / {int8_speedup}",
                    }
                )
    return path


@pytest.mark.parametrize("int8_speedup", [2.0, 0.8])
def test_rows_of_both_precisions_fit_the_int8_speed_factor(
    tmp_path: Path, int8_speedup: float, capsys: pytest.CaptureFixture
) -> None:
    rows = _synthetic_rows(tmp_path / "both.csv", int8_speedup)
    out = tmp_path / "mine.json"
    assert calibrate_main(["--target", "rpi4", "--measurements", str(rows), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prior: rpi4 profile" in printed  # six rows adapt the built-in profile, whose factor is 1 (assumed)
    assert "onnxruntime int8 speed: x" in printed and "ASSUMED" not in printed
    speed = json.loads(out.read_text())["calibration"]["int8_speed"]["onnxruntime"]
    assert (speed["basis"], speed["rows"], speed["networks_at_both"]) == ("measured", 3, 3)
    assert speed["measured_fp32_over_int8"] == pytest.approx(int8_speedup, rel=1e-4)
    # The factor moved from the assumed 1 to what the rows say, in the direction they say it...
    assert (speed["factor"] > 1.5) if int8_speedup > 1 else (speed["factor"] < 0.95)
    # ...far enough that the profile predicts the rows' fp32 / int8 ratio, network by network.
    assert speed["fitted_fp32_over_int8"] == pytest.approx(int8_speedup, rel=0.10)
    for spec in NETWORKS:
        model = build_network(spec, device="meta")
        fp32, int8 = (estimate(model, SHAPE, str(out), precision=p, threads=1) for p in ("fp32", "int8"))
        assert fp32["latency_ms"] / int8["latency_ms"] == pytest.approx(int8_speedup, rel=0.15), spec
        assert int8["int8_speed"]["basis"] == "measured" and "int8_speed" not in fp32
        assert not any("no public onnxruntime int8 measurement" in a for a in int8["assumptions"])


def test_fp32_rows_alone_leave_the_int8_speed_an_assumption(tmp_path: Path) -> None:
    lines = _synthetic_rows(tmp_path / "both.csv", 2.0).read_text().splitlines()
    fp32_only = tmp_path / "fp32.csv"
    fp32_only.write_text("\n".join([lines[0], *(line for line in lines[1:] if ",fp32," in line)]) + "\n")
    out = tmp_path / "fp32.json"
    assert calibrate_main(["--target", "rpi4", "--measurements", str(fp32_only), "--out", str(out), "--no-loo"]) == 0
    speed = json.loads(out.read_text())["calibration"]["int8_speed"]["onnxruntime"]
    assert (speed["factor"], speed["basis"], speed["rows"]) == (1.0, "assumed", 0)
    assert "no onnxruntime int8 rows in fp32.csv" in speed["note"]


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_builtin_profiles_say_their_int8_speed_is_assumed(target: str) -> None:
    """Profile JSON, an int8 estimate (what metrics.json stores per target) and report.md's hardware notes."""
    profile = load_builtin(target)
    assert profile.calibration["int8_speed"]["onnxruntime"]["basis"] == "assumed"
    model = build_network("torchvision:resnet18", device="meta")
    result = estimate(model, (3, 224, 224), target, precision="int8")
    assert result["int8_speed"]["basis"] == "assumed" and result["int8_speed"]["factor"] == 1.0
    notes = "\n".join(hardware_notes(HardwareConfig(targets=(target,))))
    assert f"{target}: onnxruntime int8 speed: ASSUMED x1.00" in notes
    assert describe("onnxruntime", of_profile(profile.calibration, "onnxruntime")) in notes


def test_a_profile_from_before_the_factor_still_states_the_assumption() -> None:
    calibration = {k: v for k, v in load_builtin("rpi4").calibration.items() if k != "int8_speed"}
    assert of_profile(calibration, "onnxruntime")["basis"] == "assumed"
    assert of_profile({"fitted_groups": ["onnxruntime.int8."]}, "onnxruntime")["factor"] is None
    assert of_profile(calibration, "ncnn") is None  # ncnn's int8 kernels have their own fitted parameters
