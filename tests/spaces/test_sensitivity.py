"""Per-layer precision by sensitivity: the allocation favours the layers that hurt most and keeps to its MAC
budget, the measure reads the calibration split only, and the resolved bits reach the model and the Pi's
cost model layer by layer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.candidate import estimate_targets
from evaluators.candidate import level_fingerprint
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from search.bundle.onnx_files import session
from search.bundle.qdq import export_qdq
from spaces.compress import sensitivity
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.compress.macs import count_macs
from spaces.models.architectures import create_model
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import resolve_bits
from spaces.recipe import Allocation
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.recipe import describe
from tests.spaces.test_apply import _poisoned

pytestmark = pytest.mark.usefixtures("one_thread")
BUDGET = Budget(score_images=64, calib_images=64, sensitivity_images=48, eval_batch_size=32)
MIXED = Recipe(quant=Quantization(kind=QuantKind.PTQ, allocation=Allocation.SENSITIVITY, high_fraction=0.3))


@pytest.fixture(scope="module")
def calib_only(mnist_root: Path):
    """MNIST with validation, test *and* training poisoned: a recipe that neither prunes nor trains may read
    the calibration split only, so sensitivity must get all it needs from there."""
    split = SplitConfig(val_size=100, calib_size=64, train_size=256, seed=0)
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=split), mnist_root,
                                   allow_download=False)
    poisoned = _poisoned(splits)
    return replace(poisoned, train=poisoned.val), batcher


def _teacher(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, in_channels=1).eval()


def test_allocation_takes_the_most_sensitive_layers_within_the_mac_budget() -> None:
    scores = {"stem": 0.9, "big": 0.8, "mid": 0.5, "small": 0.1, "harmless": 0.0}
    macs = {"stem": 10, "big": 60, "mid": 20, "small": 5, "harmless": 5}
    assert sensitivity.allocate(scores, macs, 0.0) == []
    assert sensitivity.allocate(scores, macs, 0.1) == ["stem"]
    assert sensitivity.allocate(scores, macs, 0.35) == ["stem", "mid", "small"]  # big does not fit: skipped
    assert sensitivity.allocate(scores, macs, 0.7) == ["stem", "big"]
    assert sensitivity.allocate(scores, macs, 1.0) == ["stem", "big", "mid", "small"]  # 0 never gains anything
    for fraction in (0.05, 0.2, 0.5, 0.8):
        assert sum(macs[n] for n in sensitivity.allocate(scores, macs, fraction)) <= fraction * sum(macs.values())
    with pytest.raises(ValueError, match="outside 0 .. 1"):
        sensitivity.allocate(scores, macs, 1.5)


def test_the_layer_that_int8_breaks_is_measured_most_sensitive(calib_only) -> None:
    splits, batcher = calib_only
    model = _teacher("mlp")
    with torch.no_grad():
        model.get_submodule("3").weight[0, 0] = 50.0  # one outlier: a per-tensor int8 grid loses the rest
    quant = Quantization(kind=QuantKind.PTQ, per_channel=False)
    batches = [x for x, _ in batcher.eval_batches(splits.calib, 32)]
    scores = sensitivity.one_layer_kl(model, quant, batches)
    assert set(scores) == {"1", "3", "5"} and max(scores, key=scores.get) == "3"
    assert all(s > 0 for s in scores.values())


def test_apply_resolves_per_layer_bits_from_the_calibration_split_once(calib_only, tmp_path: Path) -> None:
    splits, batcher = calib_only
    teacher = _teacher("small_cnn")
    out = apply(MIXED, teacher, splits, batcher, BUDGET, cache_dir=tmp_path)
    high = out.info["high_precision_layers"]
    macs = count_macs(out.model, out.input_shape)
    widths = bit_widths(out.model)
    assert high and len(high) < len(widths)
    assert widths == {n: (32, 32) if n in high else (8, 8) for n in widths}
    assert sum(macs[n] for n in high) <= MIXED.quant.high_fraction * sum(macs.values())
    assert out.info["high_mac_fraction"] <= MIXED.quant.high_fraction
    assert not out.info["sensitivity_from_cache"] and list((tmp_path / "sensitivity").glob("*.json"))
    again = apply(replace(MIXED, quant=replace(MIXED.quant, high_fraction=0.1)), teacher, splits, batcher, BUDGET,
                  cache_dir=tmp_path)
    assert again.info["sensitivity_from_cache"]  # another budget, the same network: measured once
    with pytest.raises(ValueError, match="apply\\(\\) resolves it"):
        resolve_bits(teacher, MIXED.quant)


def test_a_mixed_recipe_costs_between_all_int8_and_all_fp32_on_the_pi(calib_only) -> None:
    splits, batcher = calib_only
    teacher = _teacher("small_cnn")
    # At 224x224, as the studies cost latency: at 28x28 the Pi's fitted int8 kernels cost ~0.65 ms per layer
    # against ~0.05 ms in fp32, so there a tiny network is fastest in fp32 and a mix need not lie between.
    # With ncnn, whose int8 kernels are measured on the Pi: a mix also pays the Quantize/Dequantize passes between
    # its int8 and fp32 layers, so it lies between only where int8 is faster; onnxruntime's int8 rates are its
    # fp32 fit (no Pi measurement), and there the mix costs more than fp32 (tests/search/test_int8_execution.py).
    hardware = HardwareConfig(targets=("rpi4",), deploy_resolution=224, cpu_runtime="ncnn")
    latency = {}
    for name, quant in {"int8": Quantization(kind=QuantKind.PTQ), "fp32": Quantization(),
                        "mixed": MIXED.quant}.items():
        recipe = Recipe(quant=quant)
        out = apply(recipe, teacher, splits, batcher, BUDGET)
        latency[name] = estimate_targets(out.model, recipe, out.input_shape, hardware)["rpi4"]
    assert latency["mixed"]["precision"] == "int8/fp32"
    assert latency["int8"]["latency_ms"] < latency["mixed"]["latency_ms"] < latency["fp32"]["latency_ms"]


@pytest.mark.parametrize(("quant", "reason"), [
    (Quantization(kind=QuantKind.FP16, allocation=Allocation.SENSITIVITY), "needs ptq or qat"),
    (Quantization(kind=QuantKind.PTQ, allocation=Allocation.SENSITIVITY, layer_bits=(("stem", 4, 8),)),
     "leave quant.layer_bits empty"),
    (Quantization(kind=QuantKind.PTQ, allocation=Allocation.SENSITIVITY, high_fraction=1.2), "outside 0 .. 1"),
    (Quantization(kind=QuantKind.PTQ, allocation=Allocation.SENSITIVITY, high_bits=8), "must exceed"),
    (Quantization(kind=QuantKind.PTQ, allocation=Allocation.SENSITIVITY, high_bits=12), "bit widths [12]"),
    (Quantization(kind=QuantKind.PTQ, high_fraction=0.2), "need quant.allocation 'sensitivity'"),
])
def test_invalid_allocations_are_rejected_with_a_reason(quant: Quantization, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid recipe") as err:
        Recipe(quant=quant).validate()
    assert reason in str(err.value)


def test_new_fields_round_trip_and_leave_existing_hashes_alone() -> None:
    assert Recipe().hash() == "876362d3445719d7"  # the hash every stored default recipe has had
    assert "allocation" not in Recipe(quant=Quantization(kind=QuantKind.PTQ)).to_json()
    assert Recipe.from_json(MIXED.to_json()) == MIXED
    assert Recipe.from_json(MIXED.to_json()).hash() == MIXED.hash()
    assert describe(MIXED) == "teacher ptq:8/32b@0.3"
    other = replace(MIXED, quant=replace(MIXED.quant, high_fraction=0.25))
    assert len({MIXED.hash(), other.hash(), replace(MIXED, quant=replace(MIXED.quant, high_bits=16)).hash(),
                Recipe(quant=Quantization(kind=QuantKind.PTQ)).hash()}) == 4


def test_the_shipped_qdq_graph_keeps_the_recipes_float_layers_in_fp32(calib_only, tmp_path: Path) -> None:
    """What is scored is what ships: model_int8.onnx (search.bundle.qdq) quantizes the int8 layers with the recipe's
    scales and leaves the high-precision ones fp32, in one graph onnxruntime runs, computing what PyTorch does."""
    import onnx

    splits, batcher = calib_only
    out = apply(MIXED, _teacher("small_cnn"), splits, batcher, BUDGET)
    high = set(out.info["high_precision_layers"])
    exported = export_qdq(out.model, out.input_shape, tmp_path / "model_int8.onnx")
    assert {layer.name for layer in exported.layers if layer.kind == "int8"} == set(bit_widths(out.model)) - high
    graph = onnx.load(str(exported.path)).graph
    made_by = {o: node.op_type for node in graph.node for o in node.output}
    weight_source = {node.input[1]: made_by.get(node.input[1], "initializer") for node in graph.node
                     if node.op_type in ("Conv", "Gemm", "MatMul")}
    assert {name.removesuffix(".weight") for name, src in weight_source.items() if src == "initializer"} == high
    x = next(batcher.eval_batches(splits.calib, 16))[0]
    with torch.no_grad():
        expected = out.model(x).numpy()
    runner = session(exported.path)
    got = runner.run(None, {runner.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - expected).max() < 1e-3 * max(1.0, abs(expected).max())


def test_the_sensitivity_budget_keeps_cached_results_valid() -> None:
    """A new Budget field at its default leaves the result fingerprint as it was without it (it is left out of the
    key, `LATE_BUDGET_FIELDS`); a non-default value changes it."""
    from dataclasses import asdict

    from evaluators.candidate import COST_RULES
    from evaluators.candidate import profile_digests

    level, hardware = LevelConfig(), HardwareConfig()
    without = asdict(level)
    del without["budget"]["sensitivity_images"]
    machine = asdict(hardware)
    del machine["accuracy_per_arithmetic"]
    fields = {"level": without, "hardware": machine, "cost_rules": COST_RULES, "profiles": profile_digests(hardware)}
    if hardware.extra_arithmetics():  # the default targets compute two arithmetics: each is scored
        fields["arithmetics"] = hardware.extra_arithmetics()
    blob = json.dumps(fields, sort_keys=True, default=str)
    assert level_fingerprint(level, hardware) == hashlib.sha256(blob.encode()).hexdigest()[:10]
    changed = LevelConfig(budget=Budget(sensitivity_images=32))
    assert level_fingerprint(changed, HardwareConfig()) != level_fingerprint(LevelConfig(), HardwareConfig())
