"""Physics of the DPU and ARM models, precision rules, energy bookkeeping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardware_models import build_network
from hardware_models import estimate
from hardware_models import resolve_profile
from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.dpu import DPU_BOARDS
from hardware_models.estimators.dpu import DpuModel
from hardware_models.graph.executed import extract

torch.set_num_threads(1)
SHAPE = (3, 56, 56)


def convnet(width: int, depthwise: bool = False) -> nn.Module:
    groups = width if depthwise else 1
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, groups=groups), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 1), nn.ReLU()).eval()


def dpu_cycles(model: nn.Module) -> float:
    table = DpuModel(DPU_BOARDS["zcu104"]).table(Case(network=extract(model, SHAPE), board="zcu104"))
    return float(table["cycles"].sum())


def test_dpu_channels_round_up_to_the_array() -> None:
    """Pruning 64 -> 49 channels saves nothing on a 16 x 16 channel array; 64 -> 48 does."""
    assert dpu_cycles(convnet(49)) == dpu_cycles(convnet(64))
    assert dpu_cycles(convnet(48)) < dpu_cycles(convnet(49))
    latency = {w: estimate(convnet(w), SHAPE, "zcu104")["latency_ms"] for w in (48, 49, 64)}
    assert latency[48] < latency[49]
    assert latency[49] == pytest.approx(latency[64], rel=0.02)  # only DDR bytes differ


def test_depthwise_uses_the_array_poorly() -> None:
    """A depthwise 3x3 runs on the ALU engine (4 pixels x 16 channels, one kernel tap per cycle), not on the
    8 x 16 x 16 array: per MAC it costs many times a dense 3x3 convolution of the same width. Depthwise
    convolution and pooling share the ALU's one fitted efficiency (PG338; Vitis AI's target_factory)."""
    profile = resolve_profile("zcu104")
    assert profile.params["alu_cycle_factor"] >= 1.0 and profile.params["conv_cycle_factor"] >= 1.0
    assert not {"dwconv_cycle_factor", "pool_cycle_factor"} & set(profile.params)

    def compute_per_mac(depthwise: bool) -> float:
        layers = estimate(convnet(64, depthwise), SHAPE, "zcu104", per_layer=True)["per_layer"]
        middle = next(layer for layer in layers if layer["kind"] == ("dwconv" if depthwise else "conv")
                      and layer["name"] == "2")
        return middle["compute_ms"] / (56 * 56 * 64 * 9 * (1 if depthwise else 64))

    assert compute_per_mac(True) > 8 * compute_per_mac(False)


def test_dpu_runs_only_int8() -> None:
    model = convnet(32)
    int5 = estimate(model, SHAPE, "zcu104", precision="int5")
    assert int5["deployable"] is False and "INT8" in int5["reason"] and int5["latency_ms"] is None
    as8 = estimate(model, SHAPE, "zcu104", precision="int5", as_int8=True)
    int8 = estimate(model, SHAPE, "zcu104", precision="int8")
    assert as8["deployable"] and as8["latency_ms"] == int8["latency_ms"]
    assert any("8-bit" in a for a in as8["assumptions"])
    mixed = estimate(model, SHAPE, "zcu104", precision={"*": 8, "2": 4})
    assert mixed["deployable"] is False and "'2'" not in mixed["reason"] and "2 (4-bit)" in mixed["reason"]
    float_head = estimate(model, SHAPE, "zcu104", precision={"*": 8, "5": 32}, as_int8=True)
    assert float_head["latency_ms"] == int8["latency_ms"]
    assert any("quantized to INT8 by Vitis AI" in a for a in float_head["assumptions"])
    with pytest.raises(KeyError, match="does not have"):
        estimate(model, SHAPE, "zcu104", precision={"conv9": 8})


def test_zcu104_power_is_declared_unmeasured() -> None:
    result = estimate(convnet(32), SHAPE, "zcu104")
    assert result["energy_source"] == "assumed"
    assert any("NO measurement of ZCU104 power" in a for a in result["assumptions"])


def test_multi_thread_throughput_uses_all_cores() -> None:
    model = build_network("torchvision:resnet18", device="meta")
    one = estimate(model, (3, 224, 224), "zcu104")
    three = estimate(model, (3, 224, 224), "zcu102")
    assert one["fps"] < one["fps_multi_thread"] <= 2 * one["fps"] * 1.2
    assert three["fps_multi_thread"] > one["fps_multi_thread"]  # 3 cores at 281 MHz vs 2 at 300 MHz
    assert three["latency_ms"] > one["latency_ms"]  # one core, lower clock
    assert "transferred" in three["basis"]


def test_vart_python_costs_more_than_cpp() -> None:
    model = convnet(32)
    python = estimate(model, SHAPE, "zcu104")["latency_ms"]
    cpp = estimate(model, SHAPE, "zcu104", runtime="vart-cpp")["latency_ms"]
    assert python > cpp
    with pytest.raises(ValueError, match="vart-python"):
        estimate(model, SHAPE, "zcu104", runtime="tensorrt")


def test_arm_threads_precision_and_clock() -> None:
    model = build_network("torchvision:resnet18", device="meta")
    shape = (3, 224, 224)
    default = estimate(model, shape, "rpi4")
    assert (default["threads"], default["precision"], default["runtime"]) == (4, "fp32", "onnxruntime")
    four = estimate(model, shape, "rpi4", runtime="ncnn")
    one = estimate(model, shape, "rpi4", threads=1, runtime="ncnn")
    int8 = estimate(model, shape, "rpi4", precision="int8", runtime="ncnn")
    slow = estimate(model, shape, "rpi4", clock_ghz=1.5, runtime="ncnn")
    assert default["latency_ms"] > 1.5 * four["latency_ms"]  # onnxruntime is the slower runtime in the data
    assert one["latency_ms"] > four["latency_ms"] and one["power_w"] < four["power_w"]
    assert int8["latency_ms"] < four["latency_ms"]
    assert slow["latency_ms"] > four["latency_ms"]
    with pytest.raises(ValueError, match="threads must be 1..4"):
        estimate(model, shape, "rpi4", threads=8)


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_arm_costs_each_layer_at_its_own_precision(target: str) -> None:
    """A mixed int8/fp32 map (what sensitivity allocation produces): its layers, each costed at its own precision,
    lie strictly between all-int8 and all-fp32, and moving one more layer to fp32 never makes it faster. On top come
    the Quantize/Dequantize passes where the precision changes (issue 26: a float layer costs as float plus the
    conversions around it), one per change: every other layer in fp32 converts at almost every layer, which
    onnxruntime's int8 (priced with its fp32 fit: no Pi measurement) does not win back."""
    model = build_network("torchvision:resnet18", device="meta")
    shape = (3, 224, 224)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    int8, fp32 = (estimate(model, shape, target, precision=p)["latency_ms"] for p in ("int8", "fp32"))
    stem_fp32 = estimate(model, shape, target, precision={"*": "int8", layers[0]: 32})
    half = estimate(model, shape, target, precision={"*": "int8", **dict.fromkeys(layers[::2], 32)}, per_layer=True)
    converted = [row["latency_ms"] for row in half["per_layer"] if row["name"].endswith(":convert")]
    assert int8 < stem_fp32["latency_ms"] < half["latency_ms"]
    assert int8 < half["latency_ms"] - sum(converted) < fp32 and len(converted) >= len(layers) // 2
    assert half["precision"] == "int8/fp32" and any("each layer is costed with its own" in a
                                                    for a in half["assumptions"])
    assert estimate(model, shape, target, precision=dict.fromkeys(layers, 8))["latency_ms"] == int8


def test_rpi5_ncnn_is_measured_and_its_onnxruntime_transferred_from_rpi4() -> None:
    model, shape = build_network("torchvision:mobilenet_v2", device="meta"), (3, 224, 224)
    pi4 = estimate(model, shape, "rpi4")
    pi5 = estimate(model, shape, "rpi5")
    # onnxruntime moves by the fp32 Pi 4 / Pi 5 latency ratio that ncnn measured on both boards (geometric mean)
    assert pi5["runtime"] == "onnxruntime" and pi4["latency_ms"] / pi5["latency_ms"] == pytest.approx(5.8899, rel=1e-4)
    assert any("no Pi 5 measurement" in a for a in pi5["assumptions"])
    assert "no onnxruntime fp32 measurement on a Raspberry Pi 5" in pi5["interval_note"]
    ncnn = estimate(model, shape, "rpi5", runtime="ncnn")
    assert "widened" not in ncnn["interval_note"]  # the Pi 5's own ncnn rows back it
    assert pi5["energy_source"] == "assumed"


def test_a_thread_count_never_measured_widens_the_interval() -> None:
    """The onnxruntime rows are all at 4 threads: 1 thread extrapolates the multi-thread terms, and says so."""
    model, shape = build_network("torchvision:resnet18", device="meta"), (3, 224, 224)
    four, one = estimate(model, shape, "rpi4", threads=4), estimate(model, shape, "rpi4", threads=1)
    assert "measured at 4 thread(s) only: 1 thread(s) extrapolates" in one["interval_note"]
    assert "extrapolates" not in four["interval_note"]
    assert one["latency_ms_high"] / one["latency_ms"] > four["latency_ms_high"] / four["latency_ms"]
    ncnn = estimate(model, shape, "rpi4", threads=1, runtime="ncnn")  # ncnn was measured at 1 and 4 threads
    assert "extrapolates" not in ncnn["interval_note"]


def test_onnxruntime_int8_says_it_was_never_measured() -> None:
    model, shape = build_network("torchvision:resnet18", device="meta"), (3, 224, 224)
    fp32 = estimate(model, shape, "rpi4", precision="fp32")
    int8 = estimate(model, shape, "rpi4", precision="int8")
    assert any("no public onnxruntime int8 measurement" in a for a in int8["assumptions"])
    assert "widened" in int8["interval_note"] and "widened" not in fp32["interval_note"]
    assert int8["latency_ms_high"] / int8["latency_ms"] > fp32["latency_ms_high"] / fp32["latency_ms"]


def test_dpu_configuration_is_a_profile_parameter(tmp_path) -> None:
    """A profile JSON names its DPU (size, cores, clock); a configuration never measured widens the interval."""
    import json

    from hardware_models.estimators.dpu import DPU_BOARDS
    from hardware_models.estimators.dpu import dpu_archs
    from hardware_models.profiles import builtin_profile_path

    assert dpu_archs()["B512"] == (4, 8, 8) and dpu_archs()["B4096"] == (8, 16, 16)
    assert (DPU_BOARDS["kv260"].arch, DPU_BOARDS["kv260"].cores) == ("B4096", 1)
    model, shape = build_network("torchvision:resnet18", device="meta"), (3, 224, 224)
    data = json.loads(builtin_profile_path("zcu104").read_text())
    assert data["config"] == {"name": "ZCU104", "arch": "B4096", "cores": 2, "clock_mhz": 300.0}
    data["config"] = {"name": "my board", "arch": "B1152", "cores": 1, "clock_mhz": 200.0}
    custom = tmp_path / "b1152.json"
    custom.write_text(json.dumps(data))
    big, small = estimate(model, shape, "zcu104"), estimate(model, shape, str(custom))
    assert small["latency_ms"] > 2 * big["latency_ms"]          # 1152 vs 4096 MACs/cycle, 200 vs 300 MHz
    assert "B1152 never measured" in small["interval_note"] and "200 MHz" in small["interval_note"]
    assert small["latency_ms_high"] / small["latency_ms"] > big["latency_ms_high"] / big["latency_ms"]
    kv260 = estimate(model, shape, "kv260")
    assert kv260["latency_ms"] == pytest.approx(big["latency_ms"])
    assert kv260["fps_multi_thread"] < big["fps_multi_thread"]
    assert "KV260 board never measured" in kv260["interval_note"] and kv260["energy_source"] == "measured"


def test_arm_pooling_is_its_own_kernel_whose_work_is_the_window() -> None:
    """A 3x3 pooling window reads nine inputs per output: its own class and rate, not an add's (in + out);
    a global pool reads each input once."""
    from hardware_models.estimators.arm import ARM_BOARDS
    from hardware_models.estimators.arm import ArmModel

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.AvgPool2d(3, stride=1, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1)).eval()
    network = extract(model, (3, 16, 16))
    table = ArmModel(ARM_BOARDS["rpi4"]).table(Case(network=network, board="rpi4", precision="fp32"))
    pools = [i for i, kind in enumerate(table.kinds) if kind == "pool"]
    assert len(pools) == 2 and "eltwise" in table.kinds
    window, global_pool = (float(table["work"][i]) for i in pools)
    assert window == 16 * 16 * 16 * 9 + 16 * 16 * 16
    assert global_pool == 16 * 16 * 16 + 16


def test_a_dpu_profile_from_the_older_model_asks_to_be_recalibrated(tmp_path) -> None:
    """Profiles written before depthwise and pooling shared the ALU's factor are refused with the fix."""
    import json

    from hardware_models.profiles import builtin_profile_path

    data = json.loads(builtin_profile_path("zcu104").read_text())
    alu = data["params"].pop("alu_cycle_factor")
    data["params"].update(dwconv_cycle_factor=2 * alu, pool_cycle_factor=2 * alu)
    old = tmp_path / "old_dpu.json"
    old.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="alu_cycle_factor.*recalibrate"):
        estimate(convnet(16), SHAPE, str(old))
