"""Pruning as model transformations: channels (torch-pruning), single weights (masks), whole residual blocks.

Everything here changes a model given data batches; schedules that need training or scoring (EagleEye's
candidate selection, iterative recovery) live in `spaces.compress.apply`, which owns the data and the budget.

Structured pruning is planned as a *keep count per channel group*, where a group is a set of channels
torch-pruning's dependency graph must remove together (a residual stage's outputs, a conv and the next
layer's inputs), named by the first of its layers in alphabetical order so the name survives pruning.
Counts are rounded to multiples of `round_to` before torch-pruning sees them, because its own rounding
floors the remaining channels and can round a narrow layer down to nothing. A group narrower than
`round_to` is left alone: the target cannot use a narrower width anyway.

Unstructured masks only save memory or time where the runtime exploits sparsity (the ZCU104 DPU does not;
see `evaluators.cost`'s `packed_sparse` storage); they exist to explore that trade-off honestly.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock
from torchvision.models.resnet import Bottleneck

from spaces.compress.macs import count_macs
from spaces.models.architectures import create_model
from spaces.recipe import MAX_PRUNE_RATIO
from spaces.recipe import Importance

LAYERS = (nn.Conv2d, nn.Linear)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

IMPORTANCES: dict[Importance, Callable[[], tp.importance.Importance]] = {
    Importance.L1: lambda: tp.importance.GroupMagnitudeImportance(p=1),
    Importance.L2: lambda: tp.importance.GroupMagnitudeImportance(p=2),
    Importance.BN_SCALE: tp.importance.BNScaleImportance,
    Importance.TAYLOR: tp.importance.GroupTaylorImportance,
    Importance.RANDOM: tp.importance.RandomImportance,
}
NEEDS_GRADIENTS = frozenset({Importance.TAYLOR})


def classifier_layer(model: nn.Module) -> nn.Module:
    """The layer producing the logits (the last Conv2d/Linear): its outputs are the classes, never pruned."""
    layers = [m for m in model.modules() if isinstance(m, LAYERS)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d/Linear layer to prune")
    return layers[-1]


def accumulate_gradients(model: nn.Module, batches: Batches) -> None:
    """Leave d(cross-entropy)/d(weights) summed over `batches` in `.grad` (Taylor importance reads them)."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    model.train(was_training)


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # first (alphabetical) layer whose output channels the group removes
    width: int  # current number of channels
    outputs: tuple[str, ...]  # Conv2d/Linear layers whose output channels belong to the group
    inputs: tuple[str, ...]  # Conv2d/Linear layers whose input channels belong to the group


class ChannelGraph:
    """torch-pruning's dependency graph of one model, with groups named by layer and importances scored."""

    def __init__(self, model: nn.Module, example: torch.Tensor, importance: Importance) -> None:
        self.model, self.example, self.importance = model, example, IMPORTANCES[importance]()
        was_training = model.training
        self.graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
        model.train(was_training)
        names = {m: n for n, m in model.named_modules()}
        self.groups: dict[str, ChannelGroup] = {}
        self.scores: dict[str, torch.Tensor] = {}
        for group in self.graph.get_all_groups(ignored_layers=[classifier_layer(model)], root_module_types=LAYERS):
            outs = tuple(sorted(names[d.target.module] for d, _ in group if isinstance(d.target.module, LAYERS)
                                and self.graph.is_out_channel_pruning_fn(d.handler)))
            ins = tuple(sorted(names[d.target.module] for d, _ in group if isinstance(d.target.module, LAYERS)
                               and self.graph.is_in_channel_pruning_fn(d.handler)))
            score = self.importance(group)
            if not outs or score is None:  # e.g. BN-scale importance on a group without BatchNorm
                continue
            root = group[0].dep.target.module
            self.groups[outs[0]] = ChannelGroup(outs[0], int(self.graph.get_out_channels(root)), outs, ins)
            self.scores[outs[0]] = score.detach().float().cpu()

    def widths(self) -> dict[str, int]:
        return {name: g.width for name, g in self.groups.items()}

    def prune(self, keep: dict[str, int]) -> None:
        """Remove channels so that each named group keeps `keep[name]` (lowest importance goes first)."""
        ratios = {}
        for name, count in keep.items():
            width = self.groups[name].width
            if not 1 <= count <= width:
                raise ValueError(f"group {name}: cannot keep {count} of {width} channels")
            if count < width:  # +0.5: torch-pruning truncates width * (1 - ratio) to an int
                ratios[self.model.get_submodule(name)] = 1.0 - (count + 0.5) / width
        if not ratios:
            return
        pruner = tp.pruner.BasePruner(self.model, self.example, importance=self.importance, pruning_ratio=0.0,
                                      pruning_ratio_dict=ratios, ignored_layers=[classifier_layer(self.model)],
                                      root_module_types=list(LAYERS))
        pruner.step()


def round_keep(width: int, ratio: float, round_to: int) -> int:
    """Channels kept when `ratio` of `width` is removed, as a multiple of `round_to` (at least one multiple)."""
    ratio = min(max(ratio, 0.0), MAX_PRUNE_RATIO)
    if ratio == 0.0 or width < round_to:
        return width
    kept = width * (1.0 - ratio)
    floor_ok = max(round_to, int(math.ceil(width * (1.0 - MAX_PRUNE_RATIO) / round_to)) * round_to)
    return min(width, max(floor_ok, round_to * round(kept / round_to)))


def keep_counts(widths: dict[str, int], ratios: dict[str, float], round_to: int) -> dict[str, int]:
    return {name: round_keep(w, ratios.get(name, 0.0), round_to) for name, w in widths.items()}


def uniform_ratios(graph: ChannelGraph, ratio: float) -> dict[str, float]:
    return {name: ratio for name in graph.groups}


def global_ratios(graph: ChannelGraph, ratio: float) -> dict[str, float]:
    """Per-group ratios from one ranking of all channels (importances are mean-normalized per group)."""
    every = torch.cat(list(graph.scores.values()))
    n_removed = int(ratio * every.numel())
    if n_removed == 0:
        return uniform_ratios(graph, 0.0)
    threshold = torch.kthvalue(every, n_removed).values
    return {name: min(MAX_PRUNE_RATIO, float((s <= threshold).float().mean())) for name, s in graph.scores.items()}


class MacModel:
    """MACs of a pruned network predicted from per-group keep fractions, without pruning it.

    Each Conv2d/Linear costs macs * kept_out * kept_in (depthwise convolutions: macs * kept_out). Used to
    give EagleEye's random candidates the same MAC budget as the plan they are compared against. The
    per-layer MACs come from `spaces.compress.macs.count_macs`, the counter `evaluators.cost` scores candidates with,
    so a plan's predicted MACs and its scored MACs cannot drift apart.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, graph: ChannelGraph) -> None:
        self.macs, self.depthwise = count_macs(model, tuple(example.shape[1:])), set()
        self.out_group: dict[str, str] = {}
        self.in_group: dict[str, str] = {}
        for g in graph.groups.values():
            self.out_group.update(dict.fromkeys(g.outputs, g.name))
            self.in_group.update(dict.fromkeys(g.inputs, g.name))
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                self.depthwise.add(name)
        self.widths = graph.widths()

    def total(self, keep: dict[str, int]) -> float:
        frac = {name: keep.get(name, w) / w for name, w in self.widths.items()}
        out = 0.0
        for layer, macs in self.macs.items():
            k_out = frac.get(self.out_group.get(layer, ""), 1.0)
            k_in = 1.0 if layer in self.depthwise else frac.get(self.in_group.get(layer, ""), 1.0)
            out += macs * k_out * k_in
        return out


def candidate_plans(base: dict[str, float], macs: MacModel, round_to: int, count: int,
                    seed: int) -> list[dict[str, int]]:
    """EagleEye's candidates: the base plan, then random per-group ratios rescaled to the base plan's MACs."""
    widths = macs.widths
    plans = [keep_counts(widths, base, round_to)]
    target = macs.total(plans[0])
    rng = random.Random(seed)
    for _ in range(max(0, count - 1)):
        raw = {n: r * rng.uniform(0.5, 1.5) for n, r in base.items()}
        plans.append(_match_macs(raw, target, macs, round_to))
    return plans


def _match_macs(raw: dict[str, float], target: float, macs: MacModel, round_to: int) -> dict[str, int]:
    """Scale `raw` ratios by the factor whose rounded plan comes closest to `target` MACs (bisection)."""
    lo, hi = 0.0, MAX_PRUNE_RATIO / max(min((r for r in raw.values() if r > 0), default=1.0), 1e-6)
    best, best_err = keep_counts(macs.widths, raw, round_to), math.inf
    for _ in range(40):
        mid = (lo + hi) / 2
        plan = keep_counts(macs.widths, {n: r * mid for n, r in raw.items()}, round_to)
        total = macs.total(plan)
        if abs(total - target) < best_err:
            best, best_err = plan, abs(total - target)
        lo, hi = (mid, hi) if total > target else (lo, mid)
    return best


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches) -> int:
    """Adaptive BN (EagleEye): replace BatchNorm running statistics by those of `batches`; returns images seen.

    Only BatchNorm layers run in training mode (cumulative average, no gradients); dropout stays off.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    for x, _ in batches:
        model(x)
        seen += x.shape[0]
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    model.eval()
    return seen


# --- unstructured magnitude masks ---------------------------------------------------------------------------

def maskable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d/Linear except the classifier, whose few weights decide every class."""
    last = classifier_layer(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, LAYERS) and m is not last}


def magnitude_masks(model: nn.Module, sparsity: float, *, global_ranking: bool, importance: Importance,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing `sparsity` of the weights with the smallest magnitude (or random ones).

    L1 and L2 rank single weights identically (|w|); random scores give the random baseline.
    """
    layers = maskable_layers(model)
    gen = torch.Generator().manual_seed(seed)
    scores = {n: (torch.rand(m.weight.shape, generator=gen) if importance == Importance.RANDOM
                  else m.weight.detach().abs()) for n, m in layers.items()}
    if global_ranking:
        every = torch.cat([s.flatten() for s in scores.values()])
        k = int(sparsity * every.numel())
        threshold = torch.kthvalue(every, k).values if k else torch.tensor(-1.0)
        return {n: (s > threshold).float() for n, s in scores.items()}
    masks = {}
    for n, s in scores.items():
        k = int(sparsity * s.numel())
        threshold = torch.kthvalue(s.flatten(), k).values if k else torch.tensor(-1.0)
        masks[n] = (s > threshold).float()
    return masks


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Apply masks as torch pruning re-parametrizations: masked weights stay zero while training."""
    for name, mask in masks.items():
        module = model.get_submodule(name)
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
        torch_prune.custom_from_mask(module, "weight", mask)


def make_permanent(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bake masks into the weights (plain Parameters again) and return them, keyed by layer name."""
    masks = {}
    for name, module in model.named_modules():
        if hasattr(module, "weight_mask"):
            masks[name] = module.weight_mask.detach().clone()
            torch_prune.remove(module, "weight")
    return masks


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the maskable layers."""
    weights = [m.weight.detach() for m in maskable_layers(model).values()]
    return float(sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights)))


# --- layer pruning: whole residual blocks -------------------------------------------------------------------

def _resnet_branch(attr: str) -> Callable[[nn.Module], nn.Module | None]:
    return lambda block: getattr(block, attr) if block.downsample is None else None


# Block type -> its residual branch's last BatchNorm when the block is x + f(x) with matching shapes (so
# replacing it by the identity leaves a valid network), else None. A ResNet block's trailing ReLU may be
# dropped with it: its input is already the output of a ReLU.
RESIDUAL_BLOCKS: dict[type, Callable[[nn.Module], nn.Module | None]] = {
    BasicBlock: _resnet_branch("bn2"),
    Bottleneck: _resnet_branch("bn3"),
    InvertedResidual: lambda block: block.conv[-1] if block.use_res_connect else None,
}


def removable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Residual blocks that can become nn.Identity, by name, with the last BatchNorm of their branch."""
    found = {}
    for name, module in model.named_modules():
        rule = RESIDUAL_BLOCKS.get(type(module))
        branch = rule(module) if rule else None
        if branch is not None:
            found[name] = branch
    return found


def _bn_scale(branches: dict[str, nn.Module], model: nn.Module, batches: Batches, seed: int) -> dict[str, float]:
    return {n: float(b.weight.detach().abs().mean()) for n, b in branches.items()}


def _random(branches: dict[str, nn.Module], model: nn.Module, batches: Batches, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    return {n: float(torch.rand(1, generator=gen)) for n in branches}


def _branch_scores(branches: dict[str, nn.Module], model: nn.Module, batches: Batches,
                   score: Callable[[torch.Tensor], torch.Tensor], taylor: bool) -> dict[str, float]:
    """Score each branch output f through a gate g = 1 (f * g): Taylor's |dL/dg| = |sum f * dL/df|."""
    gates = {n: torch.ones((), requires_grad=True) for n in branches}
    totals = dict.fromkeys(branches, 0.0)

    def hook(name: str) -> Callable:
        def gated(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not taylor:
                totals[name] += float(score(output.detach()))
            return output * gates[name]
        return gated

    handles = [b.register_forward_hook(hook(n)) for n, b in branches.items()]
    model.eval()
    try:
        for x, y in batches:
            with torch.set_grad_enabled(taylor):
                loss = F.cross_entropy(model(x), y)
            if taylor:
                grads = torch.autograd.grad(loss, list(gates.values()))
                for n, g in zip(gates, grads, strict=True):
                    totals[n] += float(g.abs())
    finally:
        for h in handles:
            h.remove()
    return totals


BLOCK_IMPORTANCE: dict[Importance, Callable[[dict[str, nn.Module], nn.Module, Batches, int], dict[str, float]]] = {
    Importance.BN_SCALE: _bn_scale,
    Importance.RANDOM: _random,
    Importance.L1: lambda br, m, b, s: _branch_scores(br, m, b, lambda f: f.abs().mean(), taylor=False),
    Importance.L2: lambda br, m, b, s: _branch_scores(br, m, b, lambda f: f.pow(2).mean().sqrt(), taylor=False),
    Importance.TAYLOR: lambda br, m, b, s: _branch_scores(br, m, b, lambda f: f, taylor=True),
}


def remove_blocks(model: nn.Module, count: int, importance: Importance, batches: Batches,
                  seed: int = 0) -> list[str]:
    """Replace the `count` least important removable residual blocks by nn.Identity; returns their names."""
    branches = removable_blocks(model)
    if count > len(branches):
        raise ValueError(f"cannot remove {count} residual blocks: {type(model).__name__} has {len(branches)}")
    scores = BLOCK_IMPORTANCE[importance](branches, model, batches, seed)
    chosen = sorted(sorted(scores, key=lambda n: (scores[n], n))[:count])
    for name in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    return chosen


# --- facts about registered architectures, for recipe validation ------------------------------------------

@dataclass(frozen=True)
class NetworkFacts:
    has_batchnorm: bool
    removable_blocks: int
    module_names: frozenset[str]


@functools.cache
def network_facts(arch: str) -> NetworkFacts:
    """What recipe validation needs to know about a registered network (built once per process)."""
    model = create_model(arch)
    return NetworkFacts(
        has_batchnorm=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        removable_blocks=len(removable_blocks(model)),
        module_names=frozenset(n for n, _ in model.named_modules()),
    )
