"""What the search's clock may still start: each trial priced by its own network, from the run's plan.

Why: the search's clock stops asking for trials once less than half a mean trial is left (`search.engine.budget.Clock`),
but a trial's cost depends on its network by an order of magnitude (a fake-quantized MobileNetV2 evaluates about
10x slower than the float ResNet-50 teacher on a 2-core Xeon, and its student trains first), so a MobileNetV2 trial
priced at the space's mean ran 156 s past the clock in issue 30's run.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from evaluators.data.splits import Splits
from search.config import StudyConfig
from search.engine import final
from search.sizing.plan import Price
from search.sizing.plan import RunPlan
from search.sizing.plan import workload
from spaces.recipe import TEACHER
from spaces.recipe import Recipe


def trial_prices(plan: RunPlan, config: StudyConfig, splits: Splits, study: optuna.Study) -> Callable[[Recipe], float]:
    """Seconds a trial of a recipe is priced at under `plan` (`config` is the sized config): its own network's F1
    and F2 (should it be promoted), and its student's training at F1 and F2 where no trial of `study` has trained
    that student yet, times what the study's finished trials really took against their price (the plan's step
    times are measured in seconds and can be off by more than the clock's margin). Before any trial has finished
    the price is 0: the first trial always starts, and calibrates the rest."""
    work = workload(config, splits, final.baselines(config.search.baselines, config.teacher.arch))
    price = Price(plan.times, work)
    steps = sum(dict.fromkeys(work.student_steps(n, plan.counts.student_steps) for n in ("f1", "f2")))
    f2 = plan.counts.f2_steps

    def priced(recipe: Recipe, promoted: bool, trained: set[tuple[str, str]]) -> float:
        pair = (recipe.student, str(recipe.distill.kind))
        student = 0.0 if recipe.student == TEACHER or pair in trained else steps * price.student_step(pair)
        level = price.searched_level("f2", f2, (recipe.student,)) if promoted else 0.0
        return price.searched_level("f1", 0, (recipe.student,)) + level + student

    def cost(recipe: Recipe) -> float:
        done = sorted(
            (
                t
                for t in study.get_trials(deepcopy=False)
                if t.state.is_finished()
                and "recipe" in t.user_attrs
                and isinstance(t.user_attrs.get("seconds"), (int, float))
            ),
            key=lambda t: t.number,
        )
        if not done:
            return 0.0
        trained: set[tuple[str, str]] = set()
        spent = asked = 0.0
        for t in done:  # what each finished trial was priced at as it ran: F2 if promoted, its student if first
            r = Recipe.from_json(t.user_attrs["recipe"])
            asked += priced(r, "f2" in t.user_attrs, trained)
            spent += t.user_attrs["seconds"]
            trained.add((r.student, str(r.distill.kind)))
        ratio = min(max(spent / max(asked, 1e-9), 0.25), 4.0)
        return ratio * priced(recipe, True, trained)

    return cost
