"""A cascade of the MNIST smoke study's knee and its teacher: fitted on validation only, exported, run by its
own runner on this host and verified (the issue's done-when)."""

from __future__ import annotations

import dataclasses
import json
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators.data.config import prepare_data
from evaluators.data.datasets import ImageSet
from search.analysis.selection import select
from search.api import RunOptions
from search.api import Study
from search.bundle.run_checkpoint import load_f3
from search.bundle.scripts import run_cascade as runner
from search.cascade.export import CascadeSpec
from search.cascade.export import fit_cascade
from search.cascade.export import stage_model
from search.cascade.export import teacher_stage
from search.cascade.fit import report_on_test
from search.config import load_study
from tests.cli_helpers import search_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return search_cli(*args, module="search.export")


@pytest.fixture(scope="module")
def cascade_bundle(mlp_study: tuple[Path, str], mnist_root: Path, cache_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, _ = mlp_study
    out = tmp_path_factory.mktemp("cascade") / "knee_teacher"
    result = export_cli("--study", "mlp_mnist", "--profile", "smoke", "--run", str(run), "--pick", "knee",
                        "--cascade", "--out", str(out), "--data-root", str(mnist_root), "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    return out


def test_the_runner_on_this_host_reproduces_metrics_json(cascade_bundle: Path, mnist_root: Path,
                                                         tmp_path: Path) -> None:
    metrics = json.loads((cascade_bundle / "metrics.json").read_text())
    assert metrics["fit"]["split"] == "val" and metrics["searched"]["split"] == "test"
    teacher = metrics["fit"]["outcome"]["stage_accuracy"][-1]
    assert metrics["fit"]["outcome"]["accuracy"] >= teacher - 0.5  # the goal, met on validation
    assert 0.0 < metrics["searched"]["escalation_rate"] < 1.0  # a real cascade: some inputs escalate, not all
    splits, _ = prepare_data(load_study("mlp_mnist", "smoke").data, mnist_root, allow_download=False)
    test = splits.test.first(int(metrics["measured"]["images"]))
    np.save(tmp_path / "images.npy", test.take(slice(None)).numpy())
    np.save(tmp_path / "labels.npy", test.labels.numpy())
    result = subprocess.run([sys.executable, str(cascade_bundle / "run_cascade.py"), "--images",
                             str(tmp_path / "images.npy"), "--labels", str(tmp_path / "labels.npy"), "--benchmark",
                             "100", "--json", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ran = json.loads((tmp_path / "out.json").read_text())
    for reference in (metrics["measured"], metrics["searched"]):
        assert abs(ran["accuracy"] - reference["accuracy"]) <= 0.5
        assert abs(ran["escalation_rate"] - reference["escalation_rate"]) * 100 <= 0.5
    assert ran["latency"]["p95_ms"] >= ran["latency"]["mean_ms"] * 0.5 > 0
    for target in ("zcu104", "rpi4"):
        cost = metrics["predicted"][target]
        first, second = cost["stages"]
        assert first["latency_ms"] < cost["latency_ms"] < first["latency_ms"] + second["latency_ms"] + 1
        assert cost["latency_p95_ms"] >= cost["latency_ms"]
    assert "zcu104_a53" in metrics["predicted"]["zcu104"]["stages"][1]["where"]  # the float stage on the A53


def test_verify_passes_and_names_an_edited_policy(cascade_bundle: Path, mnist_root: Path, tmp_path: Path) -> None:
    result = export_cli("--verify", str(cascade_bundle), "--data-root", str(mnist_root))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    copy = tmp_path / "copy"
    shutil.copytree(cascade_bundle, copy)
    policy = json.loads((copy / "policy.json").read_text())
    policy["policy"]["thresholds"] = [1.0]
    (copy / "policy.json").write_text(json.dumps(policy))
    result = export_cli("--verify", str(copy), "--data-root", str(mnist_root))
    assert result.returncode == 1 and "policy.json: sha256 differs" in result.stderr


def test_bundle_carries_each_stage_and_a_compilable_zcu104_runner(cascade_bundle: Path) -> None:
    policy = json.loads((cascade_bundle / "policy.json").read_text())
    assert [s["precision"] for s in policy["stages"]] == ["int8", "fp32"]
    for stage in policy["stages"]:
        assert (cascade_bundle / stage["model"]).is_file()
    for name in ("stage1/zcu104/compile.sh", "stage1/zcu104/quantize.py", "stage1/zcu104/run_vart.py",
                 "zcu104/run_cascade_vart.py", "run_cascade.py"):
        assert (cascade_bundle / name).is_file(), name
    py_compile.compile(str(cascade_bundle / "zcu104" / "run_cascade_vart.py"), doraise=True,
                       cfile=str(cascade_bundle.parent / "vart.pyc"))


def test_the_zcu104_runner_falls_back_to_the_cpu_with_the_same_decisions(cascade_bundle: Path, mnist_root: Path,
                                                                        tmp_path: Path) -> None:
    """No VART here: stage 1 runs its ONNX file on the CPU, says so, and decides as run_cascade.py does."""
    splits, _ = prepare_data(load_study("mlp_mnist", "smoke").data, mnist_root, allow_download=False)
    test = splits.test.first(1000)
    reference = runner.evaluate(cascade_bundle, test.take(slice(None)).numpy(), test.labels.numpy())
    np.save(tmp_path / "images.npy", test.take(slice(None)).numpy())
    np.save(tmp_path / "labels.npy", test.labels.numpy())
    copy = tmp_path / "bundle"
    shutil.copytree(cascade_bundle, copy)  # the runner may leave __pycache__ next to the bundle's scripts
    result = subprocess.run([sys.executable, str(copy / "zcu104" / "run_cascade_vart.py"), "--images",
                             str(tmp_path / "images.npy"), "--labels", str(tmp_path / "labels.npy"), "--threads", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fallback: stage 1 runs stage1/model_int8.onnx on the CPU" in result.stderr
    ran = json.loads(result.stdout)
    assert ran["images"] == 1000
    assert abs(ran["accuracy"] - reference["accuracy"]) <= 0.5  # batch 1 there, batches of 250 in run_cascade.py
    assert abs(ran["escalation_rate"] - reference["escalation_rate"]) * 100 <= 0.5


def _poisoned(splits: object) -> object:
    """Test images of the wrong shape: any model that reads them fails."""
    poison = ImageSet(torch.zeros(3, 7, 5, 5, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    return dataclasses.replace(splits, test=poison)


def test_the_fit_never_reads_the_test_split(mlp_study: tuple[Path, str], mnist_root: Path, cache_dir: Path) -> None:
    run, _ = mlp_study
    config = load_study("mlp_mnist", "smoke")
    ctx = Study(config, RunOptions(out=str(run), data_root=str(mnist_root), cache_dir=str(cache_dir), device="cpu",
                                   progress=False)).context()
    selected = select(run, config.hardware.names, trial=None, pick="knee")
    knee = load_f3(run, selected.recipe, config.teacher.network)  # the study's own checkpoint (tensors only)
    stages = [stage_model(ctx, "knee", knee, selected.recipe), teacher_stage(ctx)]
    honest = fit_cascade(ctx, stages, CascadeSpec())
    poisoned = dataclasses.replace(ctx, splits=_poisoned(ctx.splits))
    blind = fit_cascade(poisoned, stages, CascadeSpec())
    assert blind.cascade == honest.cascade and blind.val == honest.val
    with pytest.raises(RuntimeError):  # the poison is real: reporting on that test split fails
        report_on_test(blind.cascade, [s.model for s in stages], poisoned.splits.test, ctx.evaluator.batcher)


def test_a_study_with_cascades_scores_them_and_reports_them(mnist_root: Path, cache_dir: Path,
                                                            tmp_path: Path) -> None:
    """`[search] cascades = true`: every quantized front member + the teacher is fitted and scored; report.md and
    cascades.csv list them, pareto.csv gains the non-dominated ones, and `--pick cascade` exports one or says why
    not in one line."""
    import pandas as pd

    from tests.cli_helpers import study_args

    text = (Path(__file__).resolve().parents[2] / "studies" / "mlp_mnist.toml").read_text()
    study = tmp_path / "cascades.toml"
    study.write_text(text.replace('baselines = "survey_quantization"',
                                  'baselines = "none"\ncascades = true\ncascade_within = 1.0'))
    run = tmp_path / "run"
    result = search_cli(*study_args(mnist_root, run, cache_dir, study=str(study)))
    assert result.returncode == 0, result.stderr
    scored = pd.read_csv(run / "cascades.csv")
    assert len(scored) >= 1 and scored["source"].str.startswith("cascade: ").all()
    assert (scored["f3_accuracy_images"] == 5000).all()  # fitted on the whole validation split
    assert scored["f3_escalation_rate"].between(0, 1).all() and scored["f3_latency_p95_zcu104"].notna().all()
    report = (run / "report.md").read_text()
    assert "## Cascades" in report and all(s in report for s in scored["source"])
    front = pd.read_csv(run / "pareto.csv")
    joined = scored[scored["joins_front"]]
    assert sorted(front.loc[front["cascade"], "source"]) == sorted(joined["source"])
    picked = export_cli("--study", str(study), "--profile", "smoke", "--run", str(run), "--pick", "cascade",
                        "--out", str(tmp_path / "bundle"), "--data-root", str(mnist_root), "--cache-dir",
                        str(cache_dir))
    if len(joined):
        assert picked.returncode == 0, picked.stderr
        assert (tmp_path / "bundle" / "policy.json").is_file()
    else:
        assert picked.returncode == 2 and "the front has no cascade" in picked.stderr
        assert len(picked.stderr.strip().splitlines()) == 1


def test_the_adaptive_benchmark_compares_the_cascade_with_each_stage(mlp_study: tuple[Path, str], mnist_root: Path,
                                                                     cache_dir: Path, tmp_path: Path) -> None:
    from benchmarks.adaptive import main

    run, _ = mlp_study
    assert main(["--run", str(run), "--data-root", str(mnist_root), "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "adaptive.json").read_text())
    stage1, teacher, cascade = result["rows"]
    assert cascade["model"] == "cascade" and 0.0 <= cascade["escalation_rate"] < 1.0
    for t in ("zcu104", "rpi4"):
        # the fitted cascade costs no more than stage 1 plus the escalated share of the teacher and the switch
        # (metrics.json rounds to 6 decimals)
        assert stage1[f"energy_{t}"] - 1e-5 <= cascade[f"energy_{t}"] <= stage1[f"energy_{t}"] + teacher[f"energy_{t}"]
        assert result["energy_savings_vs_teacher"][t] == pytest.approx(teacher[f"energy_{t}"] / cascade[f"energy_{t}"],
                                                                      rel=1e-4)
    assert cascade["host_mean_ms"] > 0 and "| cascade |" in result["table"]


def test_a_triple_knee_float_teacher_is_fitted_exported_and_run(mlp_study: tuple[Path, str], mnist_root: Path,
                                                                cache_dir: Path, tmp_path: Path) -> None:
    run, _ = mlp_study
    out = tmp_path / "triple"
    result = export_cli("--study", "mlp_mnist", "--profile", "smoke", "--run", str(run), "--pick", "knee",
                        "--cascade", "--cascade-stages", "float,teacher", "--out", str(out),
                        "--data-root", str(mnist_root), "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    policy = json.loads((out / "policy.json").read_text())
    assert [s["precision"] for s in policy["stages"]] == ["int8", "fp32", "fp32"]
    assert len(policy["policy"]["thresholds"]) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    measured, searched = metrics["measured"], metrics["searched"]
    assert len(measured["reach"]) == 3 and measured["reach"][2] <= measured["reach"][1]
    assert abs(measured["accuracy"] - searched["accuracy"]) <= 0.5
    zcu = metrics["predicted"]["zcu104"]["stages"]
    assert "zcu104_a53" in zcu[1]["where"] and "zcu104_a53" in zcu[2]["where"]  # both float stages on the A53


def test_bad_cascade_stages_fail_in_one_line() -> None:
    from spaces.validated import ConfigError

    for later in (("teacher", "teacher"), ("student",), ()):
        with pytest.raises(ConfigError) as error:
            CascadeSpec(later=later)
        assert "give one or two of float, teacher" in str(error.value) and "\n" not in str(error.value)
