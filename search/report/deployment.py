"""Per-target deployment columns of the tables and the report's "what runs where" section.

Whether a recipe deploys on a target, and at what precision it runs there, is a property of the recipe's
structure and bit-widths, not of a fidelity level: trials.csv and pareto.csv carry it once per target, as
`deployable_<target>`, `runs_as_<target>` and `int8_share_<target>` (the share of its Conv/Linear layers the target
runs as int8) (and `not_deployable_<target>`, the reason, when refused),
from the highest level the recipe reached. The numbers come from `hardware_models.capability` through
`evaluators.candidate.hardware_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluators.metric_names import PerTarget
from hardware_models.targets import capability
from search.engine.final import Candidate
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.recipe import describe

PREFIXES = tuple(
    f"{kind.value}_"
    for kind in (PerTarget.DEPLOYABLE, PerTarget.RUNS_AS, PerTarget.NOT_DEPLOYABLE, PerTarget.INT8_SHARE)
)
LEVELS = ("f3", "f2", "f1")  # highest first
PACKED_STORAGE = frozenset({"packed", "packed_sparse"})


def is_deployment_key(key: str) -> bool:
    return key.startswith(PREFIXES)


def deployment_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The deployment keys of the highest level reached, unprefixed."""
    for level in LEVELS:
        found = {k: v for k, v in metrics.get(level, {}).items() if is_deployment_key(k)}
        if found:
            return found
    return {}


def sub8_bits(recipe: Recipe) -> list[int]:
    """The integer weight widths below 8 the recipe asks for (none for fp32/fp16 recipes)."""
    q = recipe.quant
    if q.kind not in (QuantKind.PTQ, QuantKind.QAT):
        return []
    return sorted({b for b in (q.weight_bits, *(w for _, w, _ in q.layer_bits)) if b < 8})


def _cell(metrics: dict[str, Any], recipe: Recipe, target: str) -> str:
    if f"deployable_{target}" not in metrics:
        return "?"
    if not metrics[f"deployable_{target}"]:
        return f"not deployable ({metrics.get(f'not_deployable_{target}', '')})"
    text = f"runs as {metrics.get(f'runs_as_{target}') or '?'}"
    if recipe.quant.kind == QuantKind.NONE and capability(target).float_network is not None:
        text += " (its toolchain quantizes the fp32 network: Vitis AI; accuracy measured in fp32)"
    return text


def deployment_section(front: Sequence[Candidate], targets: Sequence[str], storage: str) -> list[str]:
    """Markdown lines: per target, whether each front member deploys and at what precision it runs, and what
    sub-8-bit layers still gain (the stored size under a packed storage rule; nothing else)."""
    head = ["| from | recipe | " + " | ".join(targets) + " |", "|" + "---|" * (2 + len(targets))]
    rows = []
    for c in front:
        cols = deployment_columns(c.metrics)
        rows.append(f"| {c.source} | {c.recipe.label or describe(c.recipe)} | "
                    + " | ".join(_cell(cols, c.recipe, t) for t in targets) + " |")
    low = [c for c in front if sub8_bits(c.recipe)]
    if storage in PACKED_STORAGE:
        gain = (f"they still shrink the stored model: `size_mb` counts them at their own width (storage rule "
                f"`{storage}`), and a bundle can ship them packed")
    else:
        gain = f"they gain nothing here: the storage rule `{storage}` stores them as 8-bit (or wider) too"
    return ["## Where each front member runs, and at what precision", "",
            "Every latency and energy above is costed at the precision the board executes (`runs_as_<target>` "
            "in trials.csv and pareto.csv). A recipe that a target cannot run is rejected at F0 and never "
            "reaches the front.", "", *head, *rows, "",
            f"Sub-8-bit layers ({len(low)} of {len(front)} front members have some) run as int8 on every "
            f"target here ({', '.join(targets)}): no faster and no less energy than 8-bit; {gain}.", ""]


def append_deployment_section(path: Path, front: Sequence[Candidate], targets: Sequence[str], storage: str) -> None:
    """Add the section to an already written report.md."""
    text = path.read_text()
    path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(deployment_section(front, targets, storage)))
