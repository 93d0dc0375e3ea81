"""Score one recipe at one rung of the fidelity ladder: accuracy, cost and what it costs on each board.

The ladder (DESIGN.md), cheapest first:
- F0: cost only. The F1 build's structure is costed (params, MACs, bytes, latency and energy on every
  target) and a `gate` may reject it before a single accuracy batch is run.
- F1: no training spent on the recipe itself: prune + BN recalibration + PTQ calibration, accuracy on the
  first `val_images` of the validation split. A fresh student is trained once per (student, distillation,
  budget) and shared from the cache by every recipe that starts from it.
- F2: a short KD/QAT recovery, scored the same way.
- F3: the full fine-tune, scored on the whole validation split *and* the test split (final reports only);
  its model is saved so that export can reuse it.

Every result is cached on disk by recipe hash, level and budget fingerprint: no candidate is built twice,
across processes (Ray workers share the folder) and across reruns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from pathlib import Path
from typing import Any
from typing import Protocol

import torch
from torch import nn

from evaluators.cost import model_cost
from evaluators.data.batches import Batcher
from evaluators.data.files import atomic_save
from evaluators.data.files import atomic_write_bytes
from evaluators.data.splits import Splits
from evaluators.metric_names import Bound
from evaluators.metric_names import PerTarget
from evaluators.metric_names import energy
from evaluators.metric_names import latency
from evaluators.metric_names import per_target
from evaluators.metrics import accuracy
from evaluators.metrics import collapse_reason
from hardware_models import estimate
from hardware_models import extract
from hardware_models import get_target
from hardware_models import list_targets
from hardware_models import resolve_profile
from hardware_models.capability import PER_CHANNEL
from hardware_models.capability import Deployment
from hardware_models.capability import Precision
from hardware_models.profiles import builtin_profile_path
from hardware_models.targets import TARGETS
from hardware_models.targets import capability
from hardware_models.targets import deployment
from spaces.compress.apply import LATE_BUDGET_FIELDS
from spaces.compress.apply import Budget
from spaces.compress.apply import CompressedModel
from spaces.compress.apply import apply
from spaces.compress.model_record import model_record
from spaces.models.architectures import small_stems_at
from spaces.quant.fake_quant import float_mode
from spaces.quant.quantization import UNIFORM_BITS
from spaces.quant.quantization import bit_widths
from spaces.quant.target_arithmetic import target_model
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.validated import settings

Gate = Callable[[dict[str, Any]], str | None]


class Fidelity(StrEnum):
    F1 = "f1"
    F2 = "f2"
    F3 = "f3"


@settings
class LevelConfig:
    """One rung: what `apply` may spend and how many validation images score it (0: the whole split)."""

    val_images: int = field(default=1000, metadata={"min": 0, "max": 60000})
    test_images: int = field(default=0, metadata={"min": 0, "max": 60000})  # F3 only; 0: the whole test split
    budget: Budget = field(default_factory=lambda: Budget(cache_students=True))


def _f2() -> LevelConfig:
    return LevelConfig(val_images=2000, budget=Budget(finetune_steps=200, cache_students=True))


def _f3() -> LevelConfig:
    return LevelConfig(val_images=0, budget=Budget(finetune_steps=1000, cache_students=True))


@settings
class FidelityConfig:
    f1: LevelConfig = field(default_factory=LevelConfig)
    f2: LevelConfig = field(default_factory=_f2)
    f3: LevelConfig = field(default_factory=_f3)

    def level(self, fidelity: Fidelity) -> LevelConfig:
        return getattr(self, fidelity.value)


# The CPU runtimes a study may predict for its Raspberry Pi targets; the bundle's runner is onnxruntime.
CPU_RUNTIMES = ("onnxruntime", "ncnn", "pytorch")
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def target_name(target: str) -> str:
    """The name a target's metrics carry (`latency_<name>`): a built-in target's own, a profile file's stem.

    A profile path names the user's calibrated board (`profiles/my_pi.json` -> latency_my_pi). A stem that is
    a built-in target's name would make `latency_rpi4` ambiguous, so it is refused.
    """
    if not target.endswith(".json"):
        get_target(target)  # the KeyError lists the targets and mentions profile paths
        return target
    stem = Path(target).stem
    if not _METRIC_NAME.match(stem):
        raise ValueError(f"profile {target}: its file name {stem!r} becomes the metric latency_{stem}, which must "
                         "be lower-case letters, digits and '_' (rename the file, e.g. my_pi.json)")
    if stem in list_targets():
        raise ValueError(f"profile {target}: latency_{stem} would read as the built-in target {stem!r}; rename the "
                         f"file (e.g. my_{stem}.json)")
    return stem


@settings
class HardwareConfig:
    """Which boards score a candidate, at which input size, and which storage rule sizes it.

    One network, one input size: the bundle runs at `deploy_resolution`, and every latency and energy is
    predicted for exactly that network at that size. 0 (the default) deploys at the study's training
    resolution, so accuracy, cost and bundle all use one size. A different value declares a proxy: the
    search trains and scores accuracy at `[data] resolution` (cheap) while costs are predicted at the deploy
    size; the export then fine-tunes the chosen recipe for `deploy_finetune_steps` at the deploy size and
    measures its accuracy there before writing the bundle.

    A target is a built-in name (`zcu104`, `rpi4`, ...) or the path of a profile JSON that
    `python -m hardware_models.calibrate --out` wrote (relative to the study file). CPU (Raspberry Pi) targets
    predict `cpu_runtime` at `cpu_threads` (0: the profile's default, the thread count it was measured at;
    4 for the built-in Pi profiles): onnxruntime by default, because that is what the bundle's rpi/run_onnx.py
    runs, and the bundle writes these threads as the runner's default.
    """

    targets: tuple[str, ...] = ("zcu104", "rpi4")
    deploy_resolution: int = field(default=0, metadata={"min": 0, "max": 1024})
    deploy_finetune_steps: int = field(default=200, metadata={"min": 0, "max": 1_000_000})
    storage: str = field(default="packed", metadata={"choices": ("packed", "dpu_int8", "fp32", "packed_sparse")})
    cpu_runtime: str = field(default="onnxruntime", metadata={"choices": CPU_RUNTIMES})
    cpu_threads: int = field(default=0, metadata={"min": 0, "max": 64})
    # Where the targets compute with different integer arithmetic (the DPU's power-of-two per-tensor int8 against
    # onnxruntime's per-channel int8), score each recipe under each: `accuracy_<target>` beside `accuracy` (the
    # per-channel one). Costs one more calibration and scoring pass per arithmetic and level; false keeps one.
    accuracy_per_arithmetic: bool = True

    def __post_init__(self) -> None:
        names = []
        for target in self.targets:
            try:
                names.append(target_name(target))
            except (KeyError, ValueError) as err:
                raise ValueError(f"hardware.targets: {err.args[0]}") from None
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(f"hardware.targets: two targets are both named {clash[0]!r} (latency_{clash[0]}); "
                             "list each board once and give profile files distinct names")

    @property
    def names(self) -> tuple[str, ...]:
        """The metric name of each target, in order (`latency_<name>`)."""
        return tuple(target_name(t) for t in self.targets)

    def arithmetics(self) -> dict[str, str]:
        """Each target's metric name -> the integer arithmetic it computes (`hardware_models.capability`), where
        this study scores accuracy per arithmetic: its targets differ and `accuracy_per_arithmetic` is on. Empty
        otherwise: one accuracy serves every target, and nothing more is evaluated."""
        kinds = {name: capability(capability_target(t)).arithmetic for name, t in zip(self.names, self.targets,
                                                                                          strict=True)}
        return kinds if self.accuracy_per_arithmetic and len(set(kinds.values())) > 1 else {}

    def extra_arithmetics(self) -> tuple[str, ...]:
        """The arithmetics scored beyond the per-channel one every recipe is built with (what the sizer prices)."""
        return tuple(sorted(set(self.arithmetics().values()) - {PER_CHANNEL}))


def profile_digests(hardware: HardwareConfig) -> dict[str, str]:
    """sha256 of each target's profile file: recalibrating a profile (yours, or a regenerated built-in one)
    changes every prediction, so cached results keyed without it would be stale."""
    paths = {t: Path(t) if t.endswith(".json") else builtin_profile_path(t) for t in hardware.targets}
    return {t: _file_digest(str(p), p.stat().st_mtime_ns) for t, p in paths.items() if p.is_file()}


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int) -> str:
    """Read and hashed once per file version: every result lookup of a study asks for the fingerprint."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


# Bumped when the way a recipe is costed changes, so that cached results made under the old rules are not reused:
# 2 = costed at the precision each target executes, with deployable_/runs_as_ per target; 3 = the fake-quantized
# model requantizes where onnxruntime does (spaces.quant.scheme), int8_share_ per target, Q/DQ conversions costed.
COST_RULES = 3


def level_fingerprint(level: LevelConfig, hardware: HardwareConfig, resolution: int | None = None) -> str:
    """Keys cached results; budget fields added later are left out at their defaults (`LATE_BUDGET_FIELDS`).

    With the training `resolution`, the small stems the registry builds there are part of the key
    (`spaces.models.architectures.small_stems_at`): results computed with another stem are not reused. Where every
    network keeps torchvision's stem the key is what it was before stems existed."""
    data = asdict(level)
    for name in LATE_BUDGET_FIELDS:
        if getattr(level.budget, name) == Budget.__dataclass_fields__[name].default:
            del data["budget"][name]
    machine = asdict(hardware)
    del machine["accuracy_per_arithmetic"]  # a late field: keys made before it existed stay valid ...
    fields = {"level": data, "hardware": machine, "cost_rules": COST_RULES, "profiles": profile_digests(hardware)}
    if hardware.extra_arithmetics():  # ... unless it adds accuracies, which results cached without them lack
        fields["arithmetics"] = hardware.extra_arithmetics()
    stems = small_stems_at(resolution) if resolution is not None else {}
    if stems:
        fields["stems"] = stems
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class Store(Protocol):
    """Where an evaluator keeps the results it computed, so that no recipe is scored twice at one level."""

    def get(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str) -> dict[str, Any] | None: ...

    def put(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str, result: dict[str, Any]) -> None: ...


class ResultStore:
    """Results as small JSON files, written atomically so that concurrent workers never read half a file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str) -> Path:
        return self.folder / fidelity.value / f"{recipe.hash()}-{fingerprint}.json"

    def get(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str) -> dict[str, Any] | None:
        path = self.path(recipe, fidelity, fingerprint)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str, result: dict[str, Any]) -> None:
        atomic_write_bytes(self.path(recipe, fidelity, fingerprint),
                           json.dumps(result, indent=1, sort_keys=True).encode())


class TaskStore:
    """One remote task's results, in memory: a worker of a cluster that shares nothing but Ray has no run folder.

    The driver seeds it with what its own store already holds for the task's recipe (`Evaluator.known`), so a
    resumed run repeats no finished level; what the task computes (`written`) goes back to the driver, which
    keeps it (`Evaluator.record`). The driver has checked the fingerprints, so only the level is a key here.
    """

    def __init__(self, known: dict[str, dict[str, Any]] | None = None) -> None:
        self.known = dict(known or {})
        self.written: dict[str, dict[str, Any]] = {}

    def get(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str) -> dict[str, Any] | None:
        return self.known.get(fidelity.value)

    def put(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str, result: dict[str, Any]) -> None:
        self.known[fidelity.value] = self.written[fidelity.value] = result


def requested_bits(model: nn.Module, recipe: Recipe) -> dict[str, tuple[int, int]]:
    """(weight_bits, act_bits) each layer of the built model asks for: the fake-quant widths, 16/16 everywhere
    for fp16, 32/32 for an unquantized network."""
    bits = bit_widths(model)
    uniform = UNIFORM_BITS.get(recipe.quant.kind)
    return dict.fromkeys(bits, uniform) if uniform else bits


def deployments(model: nn.Module, recipe: Recipe, shape: tuple[int, int, int],
                hardware: HardwareConfig) -> dict[str, Deployment]:
    """What the recipe becomes on each target (`hardware_models.capability`): deployable, runs_as, and the
    per-layer bits the board executes. The network, traced at `shape` (the cost shape), is checked against the
    target's operator limits."""
    with float_mode(model):
        network = extract(model, shape)
    bits = requested_bits(model, recipe)
    float_network = recipe.quant.kind == QuantKind.NONE
    out = {}
    for target in hardware.targets:
        profile = resolve_profile(target)
        runtime = hardware.cpu_runtime if profile.family == "arm" else None
        out[target] = deployment(capability_target(target), bits, runtime=runtime, float_network=float_network,
                                 network=network)
    return out


def capability_target(target: str) -> str:
    """The built-in target whose capability rules apply: itself, or for a calibrated profile JSON the board it
    was calibrated as (a user's Pi profile runs what a Raspberry Pi runs)."""
    if target in TARGETS:
        return target
    profile = resolve_profile(target)
    for name in (profile.target, profile.board):
        if name in TARGETS:
            return name
    raise ValueError(f"profile {target}: names board {profile.board!r}, which has no capability rules; calibrate it "
                     f"with --target set to one of {', '.join(sorted(TARGETS))}")


def _cost_shape(shape: tuple[int, int, int], hardware: HardwareConfig) -> tuple[int, int, int]:
    size = hardware.deploy_resolution
    return (shape[0], size, size) if size else shape


def estimate_targets(model: nn.Module, recipe: Recipe, shape: tuple[int, int, int],
                     hardware: HardwareConfig) -> dict[str, dict[str, Any]]:
    """The full `hardware_models.estimate` result per target name, costed at the precision each board *executes*
    (`Deployment.precision_map`; the CPU model costs a mixed int8/float network layer by layer): a 4-bit layer is
    costed as int8 everywhere, fp16 as fp32 on the Pi 4, and an unquantized network as the INT8 model Vitis AI
    makes of it on the DPU. CPU targets run the study's `cpu_runtime` at `cpu_threads`. Every result carries
    `runs_as`, `deployment_notes` and the `input_shape` it was predicted for; a target that cannot run the
    recipe gets `deployable: False`, its reason and no latency (nothing is promised there)."""
    shape = _cost_shape(shape, hardware)
    plans = deployments(model, recipe, shape, hardware)
    out: dict[str, dict[str, Any]] = {}
    for name, target in zip(hardware.names, hardware.targets, strict=True):
        plan = plans[target]
        common = {"runs_as": plan.runs_as, "deployment_notes": list(plan.notes), **layer_precisions(plan)}
        if not plan.deployable:
            out[name] = {"target": name, "deployable": False, "reason": plan.reason, "latency_ms": None,
                         "energy_mj": None, **common}
            continue
        family = resolve_profile(target).family
        cpu = {"runtime": hardware.cpu_runtime, "threads": hardware.cpu_threads or None} if family == "arm" else {}
        with float_mode(model):
            result = estimate(model, shape, target, precision=plan.precision_map(), as_int8=family == "dpu", **cpu)
        out[name] = {**result, **common, "input_shape": list(shape)}
    return out


def layer_precisions(plan: Deployment) -> dict[str, Any]:
    """`runs_as_layers` (what each Conv/Linear executes at on the target) and `int8_share` (the share of them that
    run as int8: 1.0 where every layer does; None for a network without such layers or a target that refuses it).

    For onnxruntime targets this is the precision onnxruntime's own optimized graph of the exported bundle gives
    each layer: tests/search/test_int8_execution.py proves the rule equal to it over the space's networks and widths."""
    layers = {name: Precision.INT8.value if bits <= 8 else Precision.FP32.value if bits == 32 else
              Precision.FP16.value for name, bits in plan.precision_map().items()}
    share = sum(p == Precision.INT8.value for p in layers.values()) / len(layers) if layers else None
    return {"runs_as_layers": layers, "int8_share": None if share is None else round(share, 4)}


def hardware_metrics(model: nn.Module, recipe: Recipe, shape: tuple[int, int, int],
                     hardware: HardwareConfig) -> dict[str, Any]:
    """latency_<target> (ms), energy_<target> (mJ), deployable_<target>, runs_as_<target> and int8_share_<target> (the
    share of Conv/Linear layers the target runs as int8) per target, with the
    upper ends of the 90% prediction intervals (`_high`, for constraints written `... @ p90`; energy scales
    with latency at the board's modelled power). A target that cannot run the recipe gets NaN latency and
    energy: the search rejects such a recipe at F0 (`search.analysis.objectives.cost_gate`), so no front member claims
    a speed its target cannot realise."""
    out: dict[str, Any] = {}
    for target, result in estimate_targets(model, recipe, shape, hardware).items():
        deployable = bool(result.get("deployable", True)) and result.get("latency_ms") is not None
        lat, lat_high = latency(target), latency(target, Bound.HIGH)
        out[lat] = float(result["latency_ms"]) if deployable else math.nan
        out[energy(target)] = float(result["energy_mj"]) if deployable else math.nan
        out[lat_high] = float(result.get("latency_ms_high") or result["latency_ms"]) if deployable else math.nan
        if deployable and result.get("latency_ms_high") and result["latency_ms"]:
            out[energy(target, Bound.HIGH)] = (float(result["energy_mj"]) * result["latency_ms_high"]
                                               / result["latency_ms"])
        out[per_target(PerTarget.DEPLOYABLE, target)] = deployable
        out[per_target(PerTarget.RUNS_AS, target)] = result.get("runs_as", "") if deployable else ""
        share = result.get("int8_share")
        out[per_target(PerTarget.INT8_SHARE, target)] = float(share) if deployable and share is not None else math.nan
        if not deployable:
            why = result.get("reason") or f"{target} cannot run this recipe"
            out[per_target(PerTarget.NOT_DEPLOYABLE, target)] = why
    return out


def cost_metrics(compressed: CompressedModel, hardware: HardwareConfig) -> dict[str, Any]:
    model, shape = compressed.model, compressed.input_shape
    cost = model_cost(model, shape, storage=hardware.storage)
    return {"params": cost.params, "macs": cost.macs, "bops": cost.bops, "sparsity": round(cost.sparsity, 4),
            "size_mb": cost.size_bytes / 1e6, "storage": hardware.storage,
            **hardware_metrics(model, compressed.recipe, shape, hardware)}


@dataclass
class Evaluator:
    """Builds and scores recipes for one teacher and one dataset; the search engine only sees dicts."""

    teacher: nn.Module
    splits: Splits
    batcher: Batcher
    fidelity: FidelityConfig
    hardware: HardwareConfig
    store: Store
    cache_dir: Path | None = None
    checkpoints: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _teacher_acc: dict[int, float] = field(default_factory=dict)

    def teacher_accuracy(self, val_images: int) -> float:
        if val_images not in self._teacher_acc:
            self._teacher_acc[val_images] = accuracy(self.teacher, self.splits.val.first(val_images), self.batcher,
                                                     device=self.device)
        return self._teacher_acc[val_images]

    def collapsed(self, metrics: dict[str, Any]) -> str | None:
        """Why a result is a failure rather than a point: its accuracy ended at chance level (None when not)."""
        return collapse_reason(float(metrics["accuracy"]), self.splits.info.num_classes)

    def cached(self, recipe: Recipe, fidelity: Fidelity) -> dict[str, Any] | None:
        known = self.store.get(recipe, fidelity, self._fingerprint(fidelity))
        return None if known is None else {**self._image_counts(fidelity, known), **known}

    def known(self, recipe: Recipe, levels: tuple[Fidelity, ...]) -> dict[str, dict[str, Any]]:
        """The stored results of `recipe` at `levels`, by level name: what a remote task need not compute."""
        return {level.value: found for level in levels if (found := self.cached(recipe, level)) is not None}

    def record(self, recipe: Recipe, results: dict[str, dict[str, Any]]) -> None:
        """Keep results a remote task computed (by level name), as if this evaluator had computed them."""
        for level, metrics in results.items():
            fidelity = Fidelity(level)
            self.store.put(recipe, fidelity, self._fingerprint(fidelity), metrics)

    def _image_counts(self, fidelity: Fidelity, known: dict[str, Any]) -> dict[str, int]:
        """How many images each accuracy was measured on, for results cached before the counts were stored:
        the level's config and the splits fix them, so they need no new evaluation."""
        level = self.fidelity.level(fidelity)
        counts = {}
        if "accuracy" in known:
            counts["accuracy_images"] = len(self.splits.val.first(level.val_images))
        if "test_accuracy" in known:
            counts["test_accuracy_images"] = len(self.splits.test.first(level.test_images))
        return counts

    def _fingerprint(self, fidelity: Fidelity) -> str:
        return level_fingerprint(self.fidelity.level(fidelity), self.hardware, self.batcher.resolution)

    def build(self, recipe: Recipe, fidelity: Fidelity) -> CompressedModel:
        budget = self.fidelity.level(fidelity).budget
        return apply(recipe, self.teacher, self.splits, self.batcher, budget, cache_dir=self.cache_dir,
                     device=self.device)

    def evaluate(self, recipe: Recipe, fidelity: Fidelity, gate: Gate | None = None) -> dict[str, Any]:
        """Metrics of `recipe` at `fidelity` (from the cache when known); `gate` sees the F0 cost metrics and
        returns a reason to stop before accuracy is measured (the result then carries `rejected`)."""
        known = self.cached(recipe, fidelity)
        if known is not None:
            reason = gate(known) if gate else None
            return {**known, "rejected": reason} if reason else known
        t0 = time.monotonic()
        compressed = self.build(recipe, fidelity)
        metrics: dict[str, Any] = {"fidelity": fidelity.value, "recipe_hash": recipe.hash(),
                                   **cost_metrics(compressed, self.hardware)}
        reason = gate(metrics) if gate else None
        if reason:
            return {**metrics, "rejected": reason, "seconds": round(time.monotonic() - t0, 2)}
        metrics.update(self._accuracy(compressed, fidelity))
        metrics["seconds"] = round(time.monotonic() - t0, 2)
        metrics["apply_seconds"] = compressed.info.get("seconds", {})
        self.store.put(recipe, fidelity, self._fingerprint(fidelity), metrics)
        return metrics

    def _accuracy(self, compressed: CompressedModel, fidelity: Fidelity) -> dict[str, Any]:
        images = self.fidelity.level(fidelity).val_images
        val = self.splits.val.first(images)
        acc = accuracy(compressed.model, val, self.batcher, device=self.device)
        if not math.isfinite(acc):
            raise ValueError("accuracy is not a number")
        n = len(val)
        out: dict[str, Any] = {"accuracy": acc, "accuracy_images": n,
                               "accuracy_split": f"validation (first {n} images)",
                               "accuracy_drop": self.teacher_accuracy(images) - acc}
        if fidelity == Fidelity.F3:
            test = self.splits.test.first(self.fidelity.level(fidelity).test_images)
            out["test_accuracy"] = accuracy(compressed.model, test, self.batcher, device=self.device)
            out["test_accuracy_images"] = len(test)
            out["test_split"] = f"test (first {len(test)} images)"
        out.update(self._arithmetic_accuracies(compressed, fidelity, out))
        if fidelity == Fidelity.F3:
            if self.checkpoints is not None:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                path = self.checkpoints / f"{compressed.recipe.hash()}.pt"
                # tensors + recipe, never a pickled module: a run folder travels (spaces.compress.model_record)
                atomic_save(model_record(compressed.model, compressed.recipe, network=compressed.recipe.student,
                                         input_shape=compressed.input_shape,
                                         num_classes=self.splits.info.num_classes), path)
                out["checkpoint"] = path.name
        return out

    def _arithmetic_accuracies(self, compressed: CompressedModel, fidelity: Fidelity,
                               scored: dict[str, Any]) -> dict[str, Any]:
        """`accuracy_<target>` (and at F3 `test_accuracy_<target>`) per target, each under its target's arithmetic
        (`HardwareConfig.arithmetics`), on the images `scored` (the per-channel accuracy) was measured on. The
        per-channel targets repeat `accuracy`; each other arithmetic is scored once, its model calibrated on the
        calibration split (`spaces.quant.target_arithmetic`)."""
        level = self.fidelity.level(fidelity)
        splits = {"": self.splits.val.first(level.val_images)}
        if fidelity == Fidelity.F3:
            splits["test_"] = self.splits.test.first(level.test_images)
        found: dict[str, dict[str, float]] = {PER_CHANNEL: {p: scored[f"{p}accuracy"] for p in splits}}
        out: dict[str, Any] = {}
        for target, arithmetic in self.hardware.arithmetics().items():
            if arithmetic not in found:
                model = target_model(compressed.model, arithmetic, self.splits, self.batcher,
                                     calib_images=level.budget.calib_images)
                found[arithmetic] = {p: accuracy(model, data, self.batcher, device=self.device)
                                     for p, data in splits.items()}
            for prefix, data in splits.items():
                name = f"{prefix}{per_target(PerTarget.ACCURACY, target)}"
                out[name], out[f"{name}_images"] = found[arithmetic][prefix], len(data)
        return out
