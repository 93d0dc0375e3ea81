"""The Raspberry Pi 5's onnxruntime parameters: the Pi 4 fit moved by the Pi 5 / Pi 4 ratio ncnn measured on both
boards, checked against the packaged CSV rows directly (not through the code under test)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from importlib import resources
from pathlib import Path

import pytest

from benchmarks.rpi5_transfer import score_transfers
from hardware_models import build_network
from hardware_models import estimate
from hardware_models.estimators.board_ratio import board_pairs
from hardware_models.estimators.board_ratio import family_out_ratios
from hardware_models.estimators.board_ratio import packaged_speed_ratio
from hardware_models.estimators.board_ratio import packaged_tables
from hardware_models.estimators.board_ratio import speed_ratio
from hardware_models.fitting.least_squares import mape
from hardware_models.measurements.validation import family_of
from hardware_models.profiles import load_builtin

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = Path(str(resources.files("hardware_models").joinpath("data")))


def _ncnn_ratios_from_the_csv() -> dict[str, list[float]]:
    """Pi 4 (1.8 GHz) / Pi 5 ncnn latency per (spec, input, threads, precision), read straight from the files."""
    rows = [r for name in ("rpi.csv", "rpi_runtimes.csv") for r in csv.DictReader(open(DATA / name, encoding="utf-8"))]
    ncnn = [r for r in rows if r["runtime"].startswith("ncnn") and r["spec"]]

    def key(r: dict) -> tuple:
        return r["spec"], r["input"], r["threads"], r["precision"]

    pi4 = {key(r): float(r["latency_ms"]) for r in ncnn if "Pi 4" in r["board"] and "1.8GHz" in r["board"]}
    out: dict[str, list[float]] = {}
    for r in ncnn:
        if "Pi 5" in r["board"] and key(r) in pi4:
            out.setdefault(r["precision"], []).append(pi4[key(r)] / float(r["latency_ms"]))
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def test_the_ratio_is_the_geometric_mean_of_the_pairs_ncnn_measured_on_both_boards() -> None:
    expected = _ncnn_ratios_from_the_csv()
    ratio = packaged_speed_ratio()
    assert dict(ratio.pairs) == {p: len(v) for p, v in expected.items()} == {"fp32": 21, "int8": 12}
    for precision, values in expected.items():
        assert ratio.of(precision) == pytest.approx(_geomean(values), rel=1e-9)
    assert ratio.families == 9
    assert ratio.files == {
        n: hashlib.sha256((DATA / n).read_bytes()).hexdigest() for n in ("rpi.csv", "rpi_runtimes.csv")
    }


@pytest.mark.parametrize("threads", [1, 4])
def test_pi5_onnxruntime_predictions_move_by_the_ncnn_measured_ratio(threads: int) -> None:
    """fp32 by the fp32 ratio; int8 too (its onnxruntime parameters are the fp32 fit's, borrowed); the Pi 4's
    measured qnnpack int8 by the int8 ratio."""
    fp32, int8 = (_geomean(v) for v in (_ncnn_ratios_from_the_csv()[p] for p in ("fp32", "int8")))
    for spec in ("torchvision:resnet18", "torchvision:mobilenet_v2"):
        model = build_network(spec, device="meta")
        for precision in ("fp32", "int8"):
            pi4, pi5 = (
                estimate(model, (3, 224, 224), t, precision=precision, threads=threads)["latency_ms"]
                for t in ("rpi4", "rpi5")
            )
            assert pi4 / pi5 == pytest.approx(fp32, rel=1e-5), (spec, precision)  # profiles store 6 digits
        pi4, pi5 = (
            estimate(model, (3, 224, 224), t, precision="int8", threads=4, runtime="pytorch")["latency_ms"]
            for t in ("rpi4", "rpi5")
        )
        assert pi4 / pi5 == pytest.approx(int8, rel=1e-5)


def test_the_profile_records_the_transfer_and_says_it_is_one() -> None:
    profile = load_builtin("rpi5")
    transfer = profile.calibration["transfer"]
    assert transfer["from"] == "rpi4" and transfer["runtime"] == "ncnn"
    assert {"onnxruntime.fp32.", "onnxruntime.int8."} <= set(transfer["groups"])
    assert not any(g.startswith("ncnn.") for g in transfer["groups"])  # the Pi 5's own ncnn fit is kept
    assert transfer["files"] == dict(packaged_speed_ratio().files)
    assert any("latency ratio ncnn measured on both boards" in a and "fp16" in a for a in profile.assumptions)


def test_family_out_ratios_never_see_the_held_out_family() -> None:
    pairs = board_pairs(packaged_tables())
    held = family_out_ratios(pairs)
    vgg = [i for i, p in enumerate(pairs) if family_of(p.spec) == "vgg"]
    # Making the VGG pairs' Pi 5 latency 10x slower changes every other family's prediction, not VGG's own.
    slowed = [dataclasses.replace(p, target_ms=p.target_ms * (10 if i in vgg else 1)) for i, p in enumerate(pairs)]
    again = family_out_ratios(slowed)
    assert all(again[i] == pytest.approx(held[i]) for i in vgg)
    assert all(again[i] < held[i] for i in range(len(pairs)) if i not in vgg)
    others = speed_ratio([p for i, p in enumerate(pairs) if i not in vgg])
    assert held[vgg[0]] == pytest.approx(others.of(pairs[vgg[0]].precision))


@pytest.mark.slow  # nine refits of the Pi 4 and Pi 5 models, about 40 s on a shared 2-core machine
def test_the_ncnn_ratio_transfer_beats_the_clock_rule_family_out() -> None:
    """docs/results/rpi5-transfer: on the Pi 5 ncnn rows, held out by family, the ratio transfer is within the
    Pi 5's own fit's error and the clock rule is off by a factor of about 4."""
    scores = score_transfers()
    old, new, own = (mape(p, scores.measured) for p in (scores.old, scores.ratio, scores.own))
    assert old > 200 and new < 25 and new < own + 5
