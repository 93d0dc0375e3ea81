"""Target capability rules: what a recipe becomes on each board, and that no estimate claims more.

The rules (hardware_models.capability): the DPU runs INT8 only (sub-8-bit as int8, a float network
re-quantized by Vitis AI, fp16 and float layers inside a quantized network refused); the Pi 4 runs int8 and
fp32 (fp16 as fp32); the Pi 5's ncnn also runs fp16.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from evaluators.candidate import HardwareConfig
from evaluators.candidate import hardware_metrics
from hardware_models import estimate
from hardware_models.capability import Capability
from hardware_models.capability import Precision
from hardware_models.capability import RuntimeSupport
from hardware_models.capability import deploy
from hardware_models.graph.executed import extract
from hardware_models.targets import CAPABILITIES
from hardware_models.targets import TARGETS
from hardware_models.targets import capability
from hardware_models.targets import deployment
from search.analysis.objectives import cost_gate
from search.config import StudyConfig
from search.config import StudyInfo
from spaces.quant.quantization import quantize_model
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.space import SpaceConfig
from spaces.space import for_targets
from spaces.validated import ConfigError
from tests.user_data import build_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ("conv1", "conv2", "fc")


def uniform(weight: int, act: int) -> dict[str, tuple[int, int]]:
    return dict.fromkeys(LAYERS, (weight, act))


def test_every_target_declares_what_it_executes() -> None:
    assert set(CAPABILITIES) == set(TARGETS)
    for name in TARGETS:
        cap = capability(name)
        assert cap.support(TARGETS[name].default_runtime).executes, name
    with pytest.raises(KeyError, match="zcu104"):
        capability("nonexistent")


@pytest.mark.parametrize("target", ["zcu104", "zcu102", "kv260"])
def test_dpu_maps_sub8_bits_to_int8_and_refuses_fp16(target: str) -> None:
    four = deployment(target, {"conv1": (4, 8), "conv2": (2, 4), "fc": (8, 8)})
    assert four.deployable and four.runs_as == "int8"
    assert four.effective_bits == uniform(8, 8)
    assert sorted(four.widened()) == ["conv1", "conv2"]
    half = deployment(target, uniform(16, 16))
    assert not half.deployable and half.runs_as == "" and "executes only int8" in half.reason


def test_dpu_requantizes_a_float_network_but_refuses_float_layers_in_a_quantized_one() -> None:
    whole = deployment("zcu104", uniform(32, 32), float_network=True)
    assert whole.deployable and whole.runs_as == "int8" and any("Vitis AI" in n for n in whole.notes)
    mixed = deployment("zcu104", {"conv1": (8, 8), "conv2": (8, 8), "fc": (32, 32)})
    assert not mixed.deployable and "fc" in mixed.reason and "Vitis AI" in mixed.reason and "not costed" in mixed.reason
    weight_only = deployment("zcu104", uniform(8, 32))  # int8 weights, float activations: a float multiply
    assert not weight_only.deployable


def test_pi4_runs_fp16_as_fp32_and_pi5_runs_it_natively() -> None:
    pi4 = deployment("rpi4", uniform(16, 16))
    assert pi4.deployable and pi4.runs_as == "fp32" and pi4.effective_bits == uniform(32, 32)
    assert any("no fp16 kernels" in n for n in pi4.notes)
    pi5 = deployment("rpi5", uniform(16, 16), runtime="ncnn")
    assert pi5.deployable and pi5.runs_as == "fp16" and pi5.effective_bits == uniform(16, 16)
    # per runtime: the default (what the bundle's runner uses) is onnxruntime, whose CPU provider has no fp16 path
    assert deployment("rpi5", uniform(16, 16)).runs_as == "fp32"


def test_pi_runs_mixed_int8_and_fp32_and_labels_it() -> None:
    mixed = deployment("rpi4", {"conv1": (4, 4), "conv2": (8, 8), "fc": (32, 32)})
    assert mixed.deployable and mixed.runs_as == "int8/fp32"
    assert mixed.precision_map() == {"conv1": 8, "conv2": 8, "fc": 32}
    assert deployment("host", uniform(16, 16)).runs_as == "fp32"


def test_dpu_refuses_operators_outside_its_set_and_limits() -> None:
    silu = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 4))
    plan = deployment("zcu104", {"0": (8, 8), "3": (8, 8)}, network=extract(silu, (3, 8, 8)))
    assert not plan.deployable and "silu" in plan.reason.lower()
    big = nn.Sequential(nn.Conv2d(3, 8, 17, padding=8))
    assert "kernel 17x17" in deployment("zcu104", {"0": (8, 8)}, network=extract(big, (3, 20, 20))).reason
    relu = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
    assert deployment("zcu104", {"0": (8, 8)}, network=extract(relu, (3, 8, 8))).deployable
    assert deployment("rpi4", {"0": (8, 8), "3": (8, 8)}, network=extract(silu, (3, 8, 8))).deployable


def test_capability_is_validated_when_built() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RuntimeSupport(runtime="x", executes=frozenset(), why="")
    support = RuntimeSupport(runtime="x", executes=frozenset({Precision.INT8}), why="")
    with pytest.raises(ValueError, match="each listed once"):
        Capability(target="t", runtimes=(support, support))
    with pytest.raises(KeyError, match="known: x"):
        deploy(Capability(target="t", runtimes=(support,)), uniform(8, 8), runtime="ncnn")


def _metrics(quant: Quantization, targets: tuple[str, ...]) -> dict:
    torch.manual_seed(0)
    model = quantize_model(build_tiny(), quant).eval()
    return hardware_metrics(model, Recipe(quant=quant), (3, 24, 24), HardwareConfig(targets=targets))


def test_a_4bit_recipe_costs_what_the_8bit_one_costs_where_it_runs_as_int8() -> None:
    targets = ("zcu104", "rpi4")
    four, eight = _metrics(Quantization(kind="ptq", weight_bits=4, act_bits=4), targets), \
        _metrics(Quantization(kind="ptq", weight_bits=8), targets)
    for t in targets:
        assert four[f"runs_as_{t}"] == eight[f"runs_as_{t}"] == "int8"
        assert four[f"latency_{t}"] == pytest.approx(eight[f"latency_{t}"], rel=1e-12)
        assert four[f"energy_{t}"] == pytest.approx(eight[f"energy_{t}"], rel=1e-12)


def test_an_undeployable_target_gets_no_latency_and_the_f0_gate_rejects_it() -> None:
    metrics = _metrics(Quantization(kind="fp16"), ("zcu104", "rpi4"))
    assert metrics["deployable_zcu104"] is False and metrics["latency_zcu104"] != metrics["latency_zcu104"]  # NaN
    assert metrics["deployable_rpi4"] is True and metrics["runs_as_rpi4"] == "fp32"
    assert "not deployable on zcu104" in cost_gate(())(metrics)
    assert cost_gate(())(_metrics(Quantization(kind="ptq", weight_bits=4), ("zcu104", "rpi4"))) is None


def test_bits_target_limits_the_space_to_what_every_target_runs() -> None:
    space = SpaceConfig(bits="target", quant_kinds=("none", "fp16", "ptq", "qat"), bit_choices=(4, 6, 8, 32))
    both = for_targets(space, ("zcu104", "rpi4"))
    assert both.bit_choices == (8,) and both.act_bit_choices == (8,)
    assert [k.value for k in both.quant_kinds] == ["none", "ptq", "qat"]  # fp16: not on either; none: re-quantized
    assert for_targets(space, ("rpi4",)).bit_choices == (8, 32)
    # rpi5's default runtime is onnxruntime (what the bundle's runner uses), whose CPU provider has no fp16 path
    assert "fp16" not in [k.value for k in for_targets(space, ("rpi5",)).quant_kinds]
    listed = SpaceConfig(bit_choices=(4, 6))
    assert for_targets(listed, ("zcu104",)) is listed  # explicit bit_choices keep working


def test_bits_target_error_names_the_targets_and_what_they_share(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"zcu104.*rpi4.*bit_choices \[4, 6\].*\[8\]"):
        for_targets(SpaceConfig(bits="target", bit_choices=(4, 6)), ("zcu104", "rpi4"))
    study = tmp_path / "s.toml"
    study.write_text('[study]\nname = "s"\n[data]\ndataset = "mnist"\n[teacher]\narch = "mlp"\n'
                     '[space]\nbits = "target"\nbit_choices = [4, 6]\n[hardware]\ntargets = ["zcu104"]\n')
    from search.config import load_study

    with pytest.raises(ConfigError, match=r"s\.toml.*space\.bits = 'target'"):
        load_study(str(study))
    with pytest.raises(ConfigError, match="SpaceConfig.bits: 'everything' is not allowed; use one of 'listed'"):
        SpaceConfig(bits="everything")


def test_study_config_resolves_bits_target_for_the_api_too() -> None:
    from evaluators.data.config import DataConfig
    from evaluators.teacher.prepare import TeacherConfig

    config = StudyConfig(study=StudyInfo(name="x"), data=DataConfig(dataset="mnist"), teacher=TeacherConfig(arch="mlp"),
                         space=SpaceConfig(bits="target"), hardware=HardwareConfig(targets=("kv260", "rpi5")))
    assert config.space.bit_choices == (8,)


def test_trials_and_front_record_deployment_per_target(tmp_path: Path) -> None:
    """A tiny study on generated images: fp16 recipes are rejected at F0 for the DPU (with the reason), float
    ones complete and run as int8 on the DPU, fp32 on the Pi; trials.csv, pareto.csv and report.md say so."""
    import search
    from evaluators.candidate import FidelityConfig
    from evaluators.candidate import LevelConfig
    from search.engine.loop import SearchConfig
    from spaces.compress.apply import Budget
    from tests.user_data import TinyNet
    from tests.user_data import train_quickly
    from tests.user_data import write_generated_imagefolder

    tiny = Budget(finetune_steps=1, calib_images=16, bn_images=16, score_images=8, max_candidates=1)
    root = write_generated_imagefolder(tmp_path / "images", per_class=12, size=16, splits=("train", "test"))
    model = train_quickly(TinyNet(width=8), root, 16, steps=5)
    level = LevelConfig(val_images=0, budget=tiny)
    space = SpaceConfig(students=("teacher",), distill_kinds=("none",), prune_kinds=("none",),
                        quant_kinds=("none", "fp16"))
    search.compress(teacher=model, data=root, resolution=16, targets=["zcu104", "rpi4"], space=space,
                    fidelity=FidelityConfig(f1=level, f2=level, f3=level),
                    search=SearchConfig(trials=4, population=2, baselines="none", final_max=1, seed=1),
                    out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False)
    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert {"deployable_zcu104", "runs_as_zcu104", "deployable_rpi4", "runs_as_rpi4"} <= set(trials.columns)
    assert not any(c.startswith(("f1_deployable", "f2_runs_as")) for c in trials.columns)
    half, full = trials[trials["quant"] == "fp16"], trials[trials["quant"] == "none"]
    assert len(half) and len(full), "seed 1 samples both kinds"
    assert (half["state"] == "PRUNED").all() and half["reason"].str.contains("not deployable on zcu104").all()
    assert (~half["deployable_zcu104"].astype(bool)).all() and (half["runs_as_rpi4"] == "fp32").all()
    assert (full["state"] == "COMPLETE").all() and (full["runs_as_zcu104"] == "int8").all()
    front = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert front["deployable_zcu104"].astype(bool).all() and (front["runs_as_rpi4"] == "fp32").all()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Where each front member runs" in report and "runs as int8" in report
    assert "`packed`" in report


def test_report_section_says_what_sub8_layers_gain_under_each_storage_rule() -> None:
    from search.engine.final import Candidate
    from search.report.deployment import deployment_section

    four = Recipe(quant=Quantization(kind=QuantKind.PTQ, weight_bits=4))
    metrics = {"f3": {"deployable_zcu104": True, "runs_as_zcu104": "int8", "deployable_rpi4": True,
                      "runs_as_rpi4": "int8", "latency_zcu104": 1.0}}
    front = [Candidate(recipe=four, source="trial 3", metrics=metrics),
             Candidate(recipe=Recipe(), source="trial 4", metrics={"f3": {**metrics["f3"], "runs_as_rpi4": "fp32"}})]
    packed = "\n".join(deployment_section(front, ("zcu104", "rpi4"), "packed"))
    assert "(1 of 2 front members have some)" in packed and "shrink the stored model" in packed
    assert "| trial 4 | " in packed and "runs as fp32" in packed and "Vitis AI" in packed
    dpu = "\n".join(deployment_section(front, ("zcu104", "rpi4"), "dpu_int8"))
    assert "gain nothing here" in dpu and "shrink" not in dpu


def test_a_pi_recipe_with_float_layers_is_costed_layer_by_layer() -> None:
    """int8 body, fp32 head on the Pi 4: the head is costed with fp32 kernels, not credited with int8 speed."""
    torch.manual_seed(0)
    model = build_tiny().eval()
    shape = (3, 24, 24)
    plan = deployment("rpi4", {"body.0": (8, 8), "body.4": (8, 8), "fc": (32, 32)})
    assert plan.runs_as == "int8/fp32"
    mixed = estimate(model, shape, "rpi4", precision=plan.precision_map())
    whole = {f: estimate(model, shape, "rpi4", precision=f)["latency_ms"] for f in ("int8", "fp32")}
    assert mixed["precision"] == "int8/fp32"
    assert min(whole.values()) < mixed["latency_ms"] < max(whole.values())  # neither kernel family alone
    assert mixed["latency_ms_low"] <= mixed["latency_ms"] <= mixed["latency_ms_high"]


@pytest.mark.parametrize(("target", "runtime"), [(c.target, r.runtime) for c in CAPABILITIES.values()
                                                  for r in c.runtimes])
def test_contract_every_target_and_runtime(target: str, runtime: str) -> None:
    """For every declared (target, runtime): int8 deploys as int8; no integer code runs below 8 bits or earns a
    different latency; nothing runs at a precision the runtime does not execute; every refusal has a reason."""
    cap = capability(target)
    executes = {p.value for p in cap.support(runtime).executes}
    eight = deploy(cap, uniform(8, 8), runtime=runtime)
    assert eight.deployable and eight.runs_as == "int8"
    for low in range(2, 9):
        plan = deploy(cap, uniform(low, low), runtime=runtime)
        assert plan.runs_as == "int8" and plan.precision_map() == dict.fromkeys(LAYERS, 8)
    for pair in ((16, 16), (32, 32), (8, 32)):
        for whole in (False, True):
            plan = deploy(cap, uniform(*pair), runtime=runtime, float_network=whole)
            assert plan.deployable != bool(plan.reasons)
            assert not plan.deployable or set(plan.runs_as.split("/")) <= executes
