"""What one recipe evaluates besides its scored images, per fidelity level: the images a run's plan prices.

Why per recipe: the plan priced every recipe as if it calibrated, recalibrated BN and scored EagleEye candidates at
every level, so a searched trial was priced at several times what it cost (the `cpu` run of cpu-xeon-4 priced a
trial at about 57 s with its students and ran 49 trials at about 16 s in the time priced for 10). What runs, as
`spaces.compress.apply` does it: PTQ and QAT calibrate on `calib_images`; one-shot structured pruning scores each of its
EagleEye candidates (at most `max_candidates`) after adaptive BN on `bn_images` + `score_images`; iterative and
unstructured pruning recalibrate BN on `bn_images` per step; layer pruning scores blocks on `score_images`.
"""

from __future__ import annotations

from itertools import product

from spaces.compress.apply import Budget
from spaces.recipe import PruneKind
from spaces.recipe import PruneSchedule
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.space import SpaceConfig


def unscored_images(
    budget: Budget, prune: PruneKind, schedule: PruneSchedule, candidates: int, steps: int, quant: QuantKind
) -> int:
    """Images a recipe of these kinds runs through its network at a level, besides the ones it is scored on."""
    images = budget.calib_images if quant != QuantKind.NONE else 0
    if prune == PruneKind.STRUCTURED and schedule == PruneSchedule.ONESHOT:
        count = min(candidates, budget.max_candidates)
        images += (budget.bn_images + (budget.score_images if count > 1 else 0)) * count
    elif prune == PruneKind.LAYER:
        images += budget.score_images
    elif prune != PruneKind.NONE:
        images += budget.bn_images * (steps if schedule == PruneSchedule.ITERATIVE else 1)
    return images


def recipe_unscored(recipe: Recipe, budget: Budget) -> int:
    p = recipe.prune
    return unscored_images(budget, p.kind, p.schedule, p.candidates, p.steps, recipe.quant.kind)


def searched_unscored(space: SpaceConfig, budget: Budget) -> float:
    """The mean over the space's pruning kinds, schedules and quantization kinds (each drawn alike)."""
    combos = list(product(space.prune_kinds, space.schedules, space.quant_kinds))
    return sum(unscored_images(budget, p, s, space.candidates, space.iterative_steps, q) for p, s, q in combos) / max(
        len(combos), 1
    )
