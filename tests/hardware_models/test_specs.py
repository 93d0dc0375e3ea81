"""Spec strings resolve to the networks the calibration data name."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
import torch
from torch import nn

from hardware_models import build_network
from hardware_models import list_schemes
from hardware_models.graph.executed import extract
from hardware_models.graph.specs import thesis_architectures
from hardware_models.graph.zoo import parse_nb201
from spaces.models import architectures  # registers the arch: spec scheme

torch.set_num_threads(1)


def calibration_specs() -> list[tuple[str, str]]:
    found = set()
    for name in ("zcu104_dpu.csv", "rpi.csv", "rpi_runtimes.csv"):
        text = resources.files("hardware_models").joinpath(f"data/{name}").read_text()
        found |= {(r["spec"], r["input"]) for r in csv.DictReader(text.splitlines()) if r["spec"]}
    return sorted(found)


def test_registry_of_schemes() -> None:
    assert {"torchvision", "mobilenet_v1", "nb201", "thesis", "arch"} <= set(list_schemes())


@pytest.mark.parametrize("spec, shape", calibration_specs())
def test_every_calibration_spec_builds_and_traces(spec: str, shape: str) -> None:
    model = build_network(spec, device="meta")
    network = extract(model, tuple(int(s) for s in shape.split("x")))
    assert network.macs > 0 and network.computed()


def test_known_sizes() -> None:
    macs = {s: extract(build_network(s, device="meta"), (3, 224, 224)).macs
            for s in ("torchvision:resnet50", "mobilenet_v1:1.0", "torchvision:mobilenet_v2")}
    assert macs["torchvision:resnet50"] == pytest.approx(4.09e9, rel=0.01)
    assert macs["mobilenet_v1:1.0"] == pytest.approx(0.569e9, rel=0.01)
    assert macs["torchvision:mobilenet_v2"] == pytest.approx(0.301e9, rel=0.01)


@pytest.mark.parametrize("key", sorted(k for k, v in thesis_architectures().items() if v["layers"]))
def test_thesis_pruned_networks_have_the_json_channels(key: str) -> None:
    model = build_network(f"thesis:{key}", device="meta")
    for name, (cin, cout) in thesis_architectures()[key]["layers"].items():
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Conv2d):
            assert (layer.out_channels, cin in (0, layer.in_channels)) == (cout, True), name
        else:
            assert (layer.in_features, layer.out_features) == (cin, cout), name
    network = extract(model, (3, 224, 224))
    assert network.layers[-1].out_shape == (10,)


def test_thesis_gops_match_table_one() -> None:
    """gops in zcu104_dpu.csv are 2 x MACs of the deployed graph."""
    text = resources.files("hardware_models").joinpath("data/zcu104_dpu.csv").read_text()
    for row in csv.DictReader(text.splitlines()):
        if row["spec"].startswith("thesis:"):
            macs = extract(build_network(row["spec"], device="meta"), (3, 224, 224)).macs
            assert 2 * macs / 1e9 == pytest.approx(float(row["gops"]), rel=1e-3), row["spec"]


def test_torchvision_options_and_real_weights() -> None:
    model = build_network("torchvision:mobilenet_v2?width_mult=0.5", device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("spec, error", [
    ("resnet18", ValueError), ("foo:bar", KeyError), ("torchvision:not_a_net", KeyError),
    ("thesis:nope", KeyError), ("nb201:|bogus~0|+|none~0|none~1|+|none~0|none~1|none~2|", KeyError),
    ("nb201:|none~0|+|none~0|", ValueError),
])
def test_bad_specs_are_clear_errors(spec: str, error: type) -> None:
    with pytest.raises(error):
        build_network(spec, device="meta")


def test_unknown_scheme_lists_schemes() -> None:
    with pytest.raises(KeyError, match="known schemes: arch, mobilenet_v1, nb201, onnx, thesis, torchvision"):
        build_network("timm:resnet18")


def test_nb201_parse() -> None:
    genotype = parse_nb201("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|")
    assert genotype[2] == (("avg_pool_3x3", 0), ("none", 1), ("nor_conv_1x1", 2))


def test_arch_scheme_builds_project_students() -> None:
    name = architectures.list_architectures()[0]
    model = build_network(f"arch:{name}", device="meta")
    assert isinstance(model, nn.Module)


def test_arch_specs_name_the_stem_not_the_input_size() -> None:
    """A bundle's `arch:` spec may be timed at any input size, so the small stem is named (`@cifar`)."""
    pytest.importorskip("spaces.models.architectures")
    assert build_network("arch:mobilenet_v2", device="meta").features[0][0].stride == (2, 2)
    assert build_network("arch:mobilenet_v2@cifar", device="meta").features[0][0].stride == (1, 1)
    conv_only = build_network("arch:mobilenet_v2@mobilenet_v2_conv", device="meta")  # a bundle names the exact one
    assert (conv_only.features[0][0].stride, conv_only.features[2].conv[1][0].stride) == ((1, 1), (2, 2))


@pytest.mark.parametrize("arch", ["small_cnn", "mobilenet_v2", "squeezenet1_1"])
def test_an_onnx_file_costs_what_its_torch_network_costs(arch: str, tmp_path) -> None:
    """A benchmark row names the ONNX file it timed; rebuilt from that file (fp32 or int8 QDQ), the network
    has the torch network's layers, so its latency on a CPU target is the same."""
    from hardware_models import estimate
    from hardware_models.estimators.host import export_onnx
    from hardware_models.estimators.host import host_calibration
    from hardware_models.estimators.host import quantize_int8
    from spaces.models.architectures import create_model

    shape = (3, 32, 32)
    model = create_model(arch, num_classes=10).eval()
    fp32 = export_onnx(model, shape, tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "model_int8.onnx", host_calibration(shape, samples=2), per_channel=True,
                         reduce_range=True, pre_process=False)
    expected = estimate(model, shape, "rpi4", precision="int8")
    for path in (fp32, int8):
        network = build_network(f"onnx:{path}", device="meta")
        result = estimate(network, shape, "rpi4", precision="int8")
        assert (result["macs"], result["latency_ms"]) == (expected["macs"], pytest.approx(expected["latency_ms"]))


def test_an_onnx_operator_the_models_do_not_know_is_named(tmp_path) -> None:
    import onnx
    from onnx import TensorProto
    from onnx import helper

    node = helper.make_node("Einsum", ["input", "input"], ["output"], equation="ij,ij->ij")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), tmp_path / "odd.onnx")
    with pytest.raises(ValueError, match="ONNX operator Einsum .* is not supported"):
        build_network(f"onnx:{tmp_path / 'odd.onnx'}", device="meta")
    with pytest.raises(FileNotFoundError, match="relative to the table's folder"):
        build_network("onnx:missing.onnx", device="meta")
