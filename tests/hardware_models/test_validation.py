"""Honest held-out scores: family grouping, de-duplication, refits from the prior, conformal quantiles."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware_models.calibration.fit import leave_family_out
from hardware_models.calibration.fit import prepare
from hardware_models.fitting.intervals import conformal_halfwidth
from hardware_models.measurements.table import deduplicate
from hardware_models.measurements.table import load_measurements
from hardware_models.measurements.validation import coverage
from hardware_models.measurements.validation import family_folds
from hardware_models.measurements.validation import family_of

torch.set_num_threads(1)
DATA = Path(str(resources.files("hardware_models").joinpath("data")))


def test_variants_of_one_architecture_share_a_family() -> None:
    assert family_of("thesis:resnet50_os95") == family_of("torchvision:resnet50") == family_of("thesis:resnet50")
    assert family_of("mobilenet_v1:1.0") == family_of("torchvision:mobilenet_v2") == \
        family_of("thesis:mobilenet_v2_os20") == family_of("torchvision:mobilenet_v3_large")
    assert family_of("torchvision:googlenet") == family_of("torchvision:inception_v3")
    assert family_of("thesis:squeezenet1_0_it20") == family_of("torchvision:squeezenet1_1")
    assert family_of("torchvision:resnet18") != family_of("torchvision:resnet50")
    assert family_of("torchvision:resnext101_32x8d") != family_of("torchvision:resnet50")
    assert family_of("torchvision:alexnet") == "alexnet"          # no rule: the name's letters
    cell = "nb201:|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|avg_pool_3x3~2|"
    assert family_of(cell) == cell                                 # no letters: every cell its own family


def test_family_folds_never_split_a_family() -> None:
    specs = ["thesis:resnet50", "torchvision:vgg16", "thesis:resnet50_os20", "a:x1", "b:y2", "c:z3"]
    folds = family_folds(specs)
    assert [0, 2] in folds and len(folds) == 5
    merged = family_folds(specs, max_folds=2)
    assert len(merged) == 2 and sorted(i for f in merged for i in f) == list(range(6))
    assert any({0, 2} <= set(f) for f in merged)


def test_repeated_measurements_are_averaged(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("spec,input,latency_ms,runtime,fps_multi_thread\n"
                     "torchvision:resnet18,3x224x224,10,vart cpp,100\n"
                     "torchvision:resnet18,3x224x224,12,vart cpp,\n"
                     "torchvision:resnet18,3x224x224,14,vart python,\n"
                     "torchvision:resnet18,3x160x160,8,vart cpp,\n")
    rows = deduplicate(load_measurements(table))
    assert [r.latency_ms for r in rows.rows] == [11.0, 14.0, 8.0]
    assert rows.rows[0].fps_multi_thread == 100.0 and rows.rows[0].row == 1
    assert len(rows.merged) == 1 and "rows 1, 2" in rows.merged[0]


def test_the_thesis_resnet50_counts_once() -> None:
    raw = load_measurements(DATA / "zcu104_dpu.csv")
    unique = deduplicate(raw)
    assert len(raw.rows) == 18 and len(unique.rows) == 16
    resnet = [r for r in unique.rows if r.spec == "thesis:resnet50"]
    assert len(resnet) == 1 and resnet[0].latency_ms == pytest.approx((11.973 * 2 + 11.976) / 3)


def test_family_out_refits_ignore_the_full_fit() -> None:
    """Held-out predictions start from the prior: moving the full-data fit changes nothing."""
    calibration = prepare("zcu104", DATA / "zcu104_dpu.csv")
    honest = leave_family_out(calibration, restarts=1)
    moved = leave_family_out(dataclasses.replace(calibration, theta=calibration.theta + 3.0), restarts=1)
    assert np.array_equal(honest, moved) and np.all(np.isfinite(honest))


def test_conformal_quantile() -> None:
    residuals = np.arange(1, 20) / 100.0                           # 19 residuals: the 18th smallest
    assert conformal_halfwidth(residuals, 0.9) == pytest.approx(0.18)
    assert conformal_halfwidth([-0.1, 0.2, 0.05], 0.9) == pytest.approx(0.3)   # too few: largest x 1.5
    predicted, measured = np.array([1.0, 1.1, 1.2, 2.0]), np.ones(4)
    share, width = coverage(predicted, measured, [[0], [1], [2], [3]], ["", "", "", ""])
    assert width[3] == pytest.approx(np.log(1.2) * 1.5) and share == 0.75   # row 3 is off by 2x


def _first_rows(tmp_path: Path, name: str, count: int) -> Path:
    lines = (DATA / name).read_text().splitlines()
    out = tmp_path / f"first{count}.csv"
    out.write_text("\n".join(lines[:count + 1]) + "\n")
    return out


def test_few_measurements_adapt_the_builtin_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Eight rows shrink towards the built-in rpi4 profile instead of refitting a dozen parameters."""
    from hardware_models.calibration.fit import main as calibrate_main
    from hardware_models.profiles import load_builtin
    from hardware_models.profiles import load_profile

    rows = _first_rows(tmp_path, "nb201_raspi4_sample.csv", 8)
    adapted, scratch = tmp_path / "adapted.json", tmp_path / "scratch.json"
    assert calibrate_main(["--target", "rpi4", "--measurements", str(rows), "--out", str(adapted)]) == 0
    assert "prior: rpi4 profile (rpi.csv + rpi_runtimes.csv) (weight 0.3)" in capsys.readouterr().out
    assert calibrate_main(["--target", "rpi4", "--measurements", str(rows), "--out", str(scratch),
                           "--from-scratch", "--no-loo"]) == 0
    base = load_builtin("rpi4").params
    group = [k for k in base if k.startswith(f"{load_builtin('rpi4').default_runtime}.fp32.") and "build_" not in k]

    def drift(path: Path) -> float:
        params = load_profile(path).params
        return float(np.mean([abs(np.log(params[k] / base[k])) for k in group]))

    assert drift(adapted) < drift(scratch)
    assert load_profile(adapted).calibration["prior"].startswith("rpi4 profile")


def test_replicate_agreement_groups_identical_executed_graphs() -> None:
    """Two NAS-Bench-201 cells that differ only in an edge the optimiser removes share a signature; the
    agreement is measured against each group's median."""
    from hardware_models.graph.executed import extract_spec
    from hardware_models.measurements.validation import executed_signature
    from hardware_models.measurements.validation import replicate_agreement

    shape = (3, 32, 32)
    a = extract_spec("nb201:|skip_connect~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|skip_connect~1|none~2|", shape)
    b = extract_spec("nb201:|skip_connect~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|none~0|skip_connect~1|none~2|", shape)
    c = extract_spec("nb201:|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                     "nor_conv_3x3~2|", shape)
    assert executed_signature(a) == executed_signature(b) != executed_signature(c)
    result = replicate_agreement([executed_signature(n) for n in (a, b, a, c)], np.array([1.0, 1.05, 1.5, 9.0]))
    assert (result.rows, result.groups) == (3, 1)
    assert result.within == pytest.approx(2 / 3) and result.median_error == pytest.approx(1 - 1 / 1.05)


def test_zcu104_family_out_meets_the_issue_bar() -> None:
    """Issue 16 on the shared ZCU104 table, as benchmarks.hardware_accuracy scores it: at least 80% of the
    held-out networks within 10%, a mean absolute error of at most 7%, and 90% intervals that cover at least
    85% of them (94% / 4.3% / 94% when depthwise and pooling began sharing the DPU's ALU engine)."""
    from benchmarks.hardware_accuracy import family_out
    from hardware_models.fitting.least_squares import mape
    from hardware_models.fitting.least_squares import within

    result = family_out(prepare("zcu104", DATA / "zcu104_dpu.csv"))
    assert within(result.predicted, result.measured) >= 0.8
    assert mape(result.predicted, result.measured) <= 7.0
    assert float(np.mean(result.covered)) >= 0.85
