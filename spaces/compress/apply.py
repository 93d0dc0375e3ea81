"""Turn a Recipe into a compressed model: student, pruning, recovery, quantization, in that order.

1. Student: a copy of the teacher, or a fresh registry network trained for `budget.student_steps` (by
   distillation from the teacher when the recipe says so, otherwise on the labels).
2. Pruning. Structured one-shot follows EagleEye: K per-group ratio plans with the same MACs (the plain
   uniform or global plan first, then random ones), each pruned on a copy, BatchNorm statistics re-estimated
   on a few hundred *training* images (adaptive BN), scored on part of the *calibration* split, best kept.
   Iterative schedules prune in N steps toward the target with `recovery_steps` of training between them.
   Validation images are never used here, so validation accuracy stays an unbiased selection signal.
3. Recovery, only after pruning: `finetune_steps` of training (with the recipe's distillation loss); masks
   stay applied. An unpruned network is left as trained: more training of the teacher would only make a
   different teacher, and PTQ of the trained network is the thesis's own baseline.
4. Quantization: PTQ calibrates on the calibration split only; QAT calibrates, then spends the fine-tune
   steps training through the fake quantizers (unstructured masks are re-attached, so zeros stay zero).
   Sensitivity allocation is resolved first into concrete per-layer bits (`spaces.compress.sensitivity`, measured on
   the calibration split), so the model's `bit_widths()` and everything costed from them are per layer.

The search maps its fidelity levels onto budgets: F1 = all step counts 0 (prune + adaptive BN + PTQ
calibration, about a second), F2 = a few hundred steps, F3 = a full fine-tune.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet
from evaluators.data.files import atomic_save
from evaluators.data.splits import Splits
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from spaces.compress import pruning
from spaces.compress import sensitivity
from spaces.compress.distillation import data_digest
from spaces.compress.distillation import setup_distillation
from spaces.compress.distillation import weights_digest
from spaces.compress.macs import count_macs
from spaces.models.architectures import create_model
from spaces.models.architectures import stem_of
from spaces.models.network import Stem
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import layer_groups
from spaces.quant.quantization import quantizable_layers
from spaces.quant.quantization import quantize_model
from spaces.recipe import TEACHER
from spaces.recipe import Allocation
from spaces.recipe import PruneKind
from spaces.recipe import PruneSchedule
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.recipe import recovers
from spaces.validated import settings


def _finetune_config() -> TrainConfig:
    return TrainConfig(optimizer=Optimizer.ADAM, lr=1e-3, weight_decay=0.0, schedule=Schedule.COSINE,
                       batch_size=64, augment=False)


def _qat_config() -> TrainConfig:
    """QAT trains the BN-folded network, without BatchNorm to steady it: a 10x smaller step than recovery."""
    return replace(_finetune_config(), lr=1e-4)


def _student_config() -> TrainConfig:
    return TrainConfig(optimizer=Optimizer.ADAM, lr=2e-3, weight_decay=0.0, schedule=Schedule.ONECYCLE,
                       batch_size=64, augment=False)


@settings
class Budget:
    """How much work `apply` may spend on one recipe. All step counts 0 is the zero-training fidelity."""

    student_steps: int = field(default=0, metadata={"min": 0, "max": 1_000_000})  # fresh students only
    finetune_steps: int = field(default=0, metadata={"min": 0, "max": 1_000_000})  # recovery, or QAT steps
    recovery_steps: int = field(default=0, metadata={"min": 0, "max": 1_000_000})  # between iterative steps
    student_train: TrainConfig = field(default_factory=_student_config)
    finetune_train: TrainConfig = field(default_factory=_finetune_config)
    qat_train: TrainConfig = field(default_factory=_qat_config)
    bn_images: int = field(default=256, metadata={"min": 0, "max": 50_000})  # adaptive BN, training split
    score_images: int = field(default=500, metadata={"min": 1, "max": 10_000})  # calibration split
    # Calibration split: one-layer sensitivity costs a forward pass over these per layer, so it gets its own,
    # smaller count (the KL it measures is smooth: a few dozen images rank the layers).
    sensitivity_images: int = field(default=64, metadata={"min": 1, "max": 10_000})
    calib_images: int = field(default=512, metadata={"min": 1, "max": 10_000})  # PTQ, calibration split
    max_candidates: int = field(default=8, metadata={"min": 1, "max": 256})  # caps the recipe's EagleEye K
    taylor_images: int = field(default=128, metadata={"min": 1, "max": 10_000})  # training split
    eval_batch_size: int = field(default=128, metadata={"min": 1, "max": 4096})
    seed: int = field(default=0, metadata={"min": 0})
    # Keep trained fresh students in the cache dir (one file per student x distillation x budget: tens of MB
    # each, so a search over continuous temperatures should leave it off; reruns of fixed recipes gain most).
    cache_students: bool = False


# Budget fields added after results were first cached: result fingerprints leave them out while at their
# default, so a study's cached results stay valid (evaluators.candidate.level_fingerprint).
LATE_BUDGET_FIELDS = ("sensitivity_images",)


@dataclass(frozen=True)
class CompressedModel:
    """The result: a float, pruned or fake-quantized model (evaluate it, cost it, export it) and how it came to be."""

    model: nn.Module
    recipe: Recipe
    input_shape: tuple[int, int, int]
    info: dict[str, Any]  # what apply did: seconds per stage, chosen plan, candidate scores, removed blocks


@dataclass(frozen=True)
class Context:
    recipe: Recipe
    teacher: nn.Module
    splits: Splits
    batcher: Batcher
    budget: Budget
    cache_dir: Path | None
    device: torch.device
    info: dict[str, Any]

    def batches(self, data: ImageSet, images: int, *, shuffle: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """The first `images` of `data` (a seeded shuffle first when asked), normalized, on the device."""
        index = torch.arange(len(data))
        if shuffle:
            index = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.budget.seed))
        subset = data.subset(index[: min(images, len(data))])
        for x, y in self.batcher.eval_batches(subset, self.budget.eval_batch_size):
            yield x.to(self.device), y.to(self.device)

    def example(self) -> torch.Tensor:
        return next(self.batches(self.splits.calib, 1))[0]

    def train(self, model: nn.Module, steps: int, config: TrainConfig, stage: str) -> None:
        if steps <= 0:
            return
        setup = setup_distillation(self.recipe.distill, model, self.teacher, self.splits.train, self.batcher,
                                   augment=config.augment, cache_dir=self.cache_dir)
        try:
            result = train(model, setup.data, self.batcher, config, device=self.device, loss_fn=setup.loss_fn,
                           max_steps=steps, extra_params=setup.extra_params, progress=False, desc=stage)
        finally:
            setup.close()
        self.info.setdefault("final_loss", {})[stage] = round(result.final_loss, 4)

    def adapt_bn(self, model: nn.Module) -> None:
        pruning.recalibrate_bn(model, self.batches(self.splits.train, self.budget.bn_images, shuffle=True))


def apply(recipe: Recipe, teacher: nn.Module, splits: Splits, batcher: Batcher, budget: Budget, *,
          cache_dir: Path | None = None, device: torch.device | str = "cpu") -> CompressedModel:
    """Build the compressed model a recipe describes, spending at most `budget`; the teacher is not modified.

    `cache_dir` keeps teacher logits between runs (None: recomputed in memory each time).
    """
    recipe.validate()
    ctx = Context(recipe, teacher.to(device).eval(), splits, batcher, budget,
                  None if cache_dir is None else Path(cache_dir), torch.device(device), {})
    stages: list[tuple[str, Callable[[Context, nn.Module | None], nn.Module]]] = [
        ("student", lambda c, _: _student(c)), ("prune", _prune), ("finetune", _finetune), ("quantize", _quantize)]
    model: nn.Module | None = None
    seconds = {}
    for name, stage in stages:
        t0 = time.monotonic()
        model = stage(ctx, model)
        seconds[name] = round(time.monotonic() - t0, 2)
    ctx.info["seconds"] = seconds
    shape = (splits.info.channels, batcher.resolution, batcher.resolution)
    return CompressedModel(model.eval(), recipe, shape, ctx.info)


def _student(ctx: Context) -> nn.Module:
    """The teacher's copy, or a fresh student trained for `budget.student_steps`.

    Training is deterministic, so with `budget.cache_students` a trained student is kept per (student,
    distillation, budget, teacher, data) and shared by every recipe that starts from it.
    """
    if ctx.recipe.student == TEACHER:
        return copy.deepcopy(ctx.teacher)
    torch.manual_seed(ctx.budget.seed)
    info = ctx.splits.info
    model = create_model(ctx.recipe.student, num_classes=info.num_classes, in_channels=info.channels,
                         resolution=ctx.batcher.resolution).to(ctx.device)
    path = _student_path(ctx)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, map_location=ctx.device, weights_only=True))
        ctx.info["student_from_cache"] = True
        return model.eval()
    ctx.train(model, ctx.budget.student_steps, ctx.budget.student_train, "student")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(model.state_dict(), path)
    return model.eval()


def _student_path(ctx: Context) -> Path | None:
    if ctx.cache_dir is None or ctx.budget.student_steps == 0 or not ctx.budget.cache_students:
        return None
    b, r = ctx.budget, ctx.recipe
    distill = json.dumps(json.loads(r.to_json())["distill"], sort_keys=True)
    parts = [r.student, distill, str(b.student_steps), str(b.seed), b.student_train.fingerprint(),
             weights_digest(ctx.teacher), data_digest(ctx.splits.train, ctx.batcher.resolution)]
    stem = stem_of(r.student, ctx.batcher.resolution)
    if stem != Stem.IMAGENET:  # students cached before stems existed had torchvision's: their keys stay
        parts.append(stem)
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return ctx.cache_dir / "students" / f"{r.student}-{key}.pt"


# --- pruning -------------------------------------------------------------------------------------------------

def _prune(ctx: Context, model: nn.Module) -> nn.Module:
    p = ctx.recipe.prune
    if p.kind == PruneKind.NONE:
        return model
    if p.kind == PruneKind.STRUCTURED and p.schedule == PruneSchedule.ONESHOT:
        return _eagleeye(ctx, model)
    step = STEPPERS[p.kind](ctx, model)
    steps = p.steps if p.schedule == PruneSchedule.ITERATIVE else 1
    for i in range(1, steps + 1):
        step(model, i / steps)
        ctx.adapt_bn(model)
        if i < steps:
            ctx.train(model, ctx.budget.recovery_steps, ctx.budget.finetune_train, f"recovery{i}")
    return model


def _graph(ctx: Context, model: nn.Module) -> pruning.ChannelGraph:
    """The channel graph with importances scored (Taylor: from gradients over a few training images)."""
    importance = ctx.recipe.prune.importance
    if importance in pruning.NEEDS_GRADIENTS:
        pruning.accumulate_gradients(model, ctx.batches(ctx.splits.train, ctx.budget.taylor_images, shuffle=True))
    torch.manual_seed(ctx.budget.seed)  # random importance
    graph = pruning.ChannelGraph(model, ctx.example(), importance)
    if not graph.groups:
        raise ValueError(f"importance {importance.value!r} finds no prunable channel group in "
                         f"{type(model).__name__}")
    return graph


def _base_ratios(ctx: Context, graph: pruning.ChannelGraph) -> dict[str, float]:
    plan = pruning.global_ratios if ctx.recipe.prune.global_ranking else pruning.uniform_ratios
    return plan(graph, ctx.recipe.prune.ratio)


def _prune_to(ctx: Context, model: nn.Module, keep: dict[str, int]) -> None:
    graph = _graph(ctx, model)
    graph.prune({name: min(count, graph.groups[name].width) for name, count in keep.items() if name in graph.groups})
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def _score(ctx: Context, model: nn.Module) -> tuple[float, float]:
    """(accuracy, -loss) on the scoring part of the calibration split: higher is better."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in ctx.batches(ctx.splits.calib, ctx.budget.score_images):
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    return 100.0 * correct / n, -loss / n


def _eagleeye(ctx: Context, model: nn.Module) -> nn.Module:
    p = ctx.recipe.prune
    graph = _graph(ctx, model)
    macs = pruning.MacModel(model, ctx.example(), graph)
    count = min(p.candidates, ctx.budget.max_candidates)
    plans = pruning.candidate_plans(_base_ratios(ctx, graph), macs, p.round_to, count, ctx.budget.seed)
    best, best_score, chosen, scores = model, (-1.0, 0.0), 0, []
    for i, plan in enumerate(plans):
        candidate = copy.deepcopy(model) if len(plans) > 1 else model
        _prune_to(ctx, candidate, plan)
        ctx.adapt_bn(candidate)
        score = _score(ctx, candidate) if len(plans) > 1 else (0.0, 0.0)
        scores.append(round(score[0], 2))
        if score > best_score:
            best, best_score, chosen = candidate, score, i
    ctx.info.update(candidate_accuracy=scores, chosen_candidate=chosen,
                    mac_fraction_predicted=round(macs.total(plans[chosen]) / macs.total({}), 4))
    return best


def _structured(ctx: Context, model: nn.Module) -> Callable[[nn.Module, float], None]:
    graph = _graph(ctx, model)
    widths, base, round_to = graph.widths(), _base_ratios(ctx, graph), ctx.recipe.prune.round_to
    return lambda m, frac: _prune_to(ctx, m, pruning.keep_counts(widths, {n: r * frac for n, r in base.items()},
                                                                   round_to))


def _unstructured(ctx: Context, model: nn.Module) -> Callable[[nn.Module, float], None]:
    p = ctx.recipe.prune

    def step(m: nn.Module, frac: float) -> None:
        masks = pruning.magnitude_masks(m, p.ratio * frac, global_ranking=p.global_ranking, importance=p.importance,
                                        seed=ctx.budget.seed)
        pruning.attach_masks(m, masks)
        ctx.info["sparsity"] = round(pruning.weight_sparsity(m), 4)
    return step


def _layer(ctx: Context, model: nn.Module) -> Callable[[nn.Module, float], None]:
    p, removed = ctx.recipe.prune, ctx.info.setdefault("removed_blocks", [])

    def step(m: nn.Module, frac: float) -> None:
        count = round(p.blocks_removed * frac) - len(removed)
        scoring = ctx.batches(ctx.splits.calib, ctx.budget.score_images)
        removed.extend(pruning.remove_blocks(m, count, p.importance, scoring, seed=ctx.budget.seed))
    return step


STEPPERS: dict[PruneKind, Callable[[Context, nn.Module], Callable[[nn.Module, float], None]]] = {
    PruneKind.STRUCTURED: _structured,
    PruneKind.UNSTRUCTURED: _unstructured,
    PruneKind.LAYER: _layer,
}


# --- recovery and quantization -------------------------------------------------------------------------------

def _finetune(ctx: Context, model: nn.Module) -> nn.Module:
    """Recover what pruning removed; an unpruned network stays as trained, and QAT trains later instead."""
    if recovers(ctx.recipe.prune.kind, ctx.recipe.quant.kind):
        ctx.train(model, ctx.budget.finetune_steps, ctx.budget.finetune_train, "finetune")
    return model


def _existing(model: nn.Module, quant: Quantization) -> Quantization:
    """Drop per-layer bit overrides for layers or groups that pruning removed (whole residual blocks)."""
    names = set(quantizable_layers(model)) | {g for g, layers in layer_groups(model).items() if layers}
    return replace(quant, layer_bits=tuple(e for e in quant.layer_bits if e[0] in names))


def _allocate(ctx: Context, model: nn.Module, quant: Quantization) -> Quantization:
    """Sensitivity allocation made concrete: the most sensitive layers, within the MAC budget, at high bits.

    Measured on the first `sensitivity_images` of the calibration split (never validation), once per network.
    """
    batches = [x for x, _ in ctx.batches(ctx.splits.calib, ctx.budget.sensitivity_images)]
    found = sensitivity.measure(model, quant, batches, cache_dir=ctx.cache_dir)
    macs = count_macs(model, tuple(batches[0].shape[1:]))
    high = sensitivity.allocate(found.scores, macs, quant.high_fraction)
    ctx.info.update(high_precision_layers=high, sensitivity_seconds=found.seconds,
                    sensitivity_from_cache=found.from_cache,
                    high_mac_fraction=round(sum(macs[n] for n in high) / max(sum(macs.values()), 1), 4))
    return sensitivity.resolve(quant, high)


def _quantize(ctx: Context, model: nn.Module) -> nn.Module:
    masks = pruning.make_permanent(model)
    quant = ctx.recipe.quant
    if quant.kind == QuantKind.NONE:
        return model
    resolved = _existing(model, quant)
    if quant.allocation == Allocation.SENSITIVITY:  # validation allows it for ptq and qat only
        resolved = _allocate(ctx, model, resolved)
    qmodel = quantize_model(model, resolved)
    if quant.kind in (QuantKind.PTQ, QuantKind.QAT):
        calibrate(qmodel, ctx.batches(ctx.splits.calib, ctx.budget.calib_images), quant.calibration)
    if quant.kind == QuantKind.QAT:
        pruning.attach_masks(qmodel, masks)
        ctx.train(qmodel, ctx.budget.finetune_steps, ctx.budget.qat_train, "qat")
        pruning.make_permanent(qmodel)
    return qmodel
