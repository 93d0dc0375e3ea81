"""Which recipe of a finished study to export: a trial number, the knee, or a rule such as
`max accuracy with latency_zcu104 <= 5`.

Rules are applied to the front's F3 numbers with *validation* accuracy (`f3_accuracy`): choosing by test
accuracy would make the test split part of model selection. Every failure is one line that says what
exists instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evaluators import metric_names as names
from search.analysis.objectives import Pick
from search.analysis.objectives import known_metrics
from search.analysis.objectives import parse_pick
from spaces.models.architectures import list_architectures
from spaces.recipe import TEACHER
from spaces.recipe import Recipe


class SelectionError(ValueError):
    """The run folder has nothing that matches; the message says what there is."""


@dataclass(frozen=True)
class Selected:
    recipe: Recipe
    trial: int | None
    how: str
    metrics: dict  # the row's columns (f1_/f2_/f3_ metrics)


def read_tables(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, front) as a finished study wrote them, empty or not."""
    trials_csv, front_csv = run / "trials.csv", run / "pareto.csv"
    if not trials_csv.exists() or not front_csv.exists():
        raise SelectionError(f"{run} holds no finished study (no trials.csv/pareto.csv); run "
                             "`python -m search.run --study NAME --profile P` first, or pass --run DIR")
    trials = pd.read_csv(trials_csv) if trials_csv.stat().st_size > 1 else pd.DataFrame()
    front = pd.read_csv(front_csv) if front_csv.stat().st_size > 1 else pd.DataFrame()
    return trials, front


def read_run(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, front) of a finished study with something to export, or a SelectionError saying why not."""
    trials, front = read_tables(run)
    if trials.empty or not (trials["state"] == "COMPLETE").any():
        raise SelectionError(f"the study in {run} has no completed trial to export (all rejected or failed: "
                             "see trials.csv's reason column)")
    return trials, front


def _row(frame: pd.DataFrame, index: int, how: str) -> Selected:
    row = frame.iloc[index].to_dict()
    trial = row.get("trial")
    if trial is None and isinstance(row.get("source"), str) and row["source"].startswith("trial "):
        trial = int(row["source"].split()[1])
    return Selected(recipe_of(row, how), None if pd.isna(trial) else int(trial), how, row)


def recipe_of(row: dict, how: str) -> Recipe:
    """The row's recipe; the table is data, so its student must be a registered network (a name in a CSV never
    imports code) and anything that is no recipe is a one-line SelectionError."""
    try:
        recipe = Recipe.from_json(str(row.get("recipe_json")))
    except (ValueError, TypeError, KeyError) as error:
        raise SelectionError(f"{how}: its recipe_json is not a recipe ({str(error).splitlines()[0][:160]}); re-run "
                             "the study or pick another row") from None
    if recipe.student != TEACHER and recipe.student not in list_architectures():
        raise SelectionError(f"{how}: its recipe names student {recipe.student!r}, which is not a registered network "
                             "(a name in a table never imports code); re-run the study or pick another row")
    return recipe


def by_trial(trials: pd.DataFrame, number: int) -> Selected:
    match = trials.index[(trials["trial"] == number) & (trials["state"] == "COMPLETE")]
    if len(match) == 0:
        done = sorted(trials.loc[trials["state"] == "COMPLETE", "trial"].astype(int))
        shown = ", ".join(map(str, done[:20])) + (" ..." if len(done) > 20 else "")
        raise SelectionError(f"unknown trial {number}: no completed trial has that number; completed: {shown}")
    return _row(trials, trials.index.get_loc(match[0]), f"trial {number}")


def knee(front: pd.DataFrame) -> Selected:
    if front.empty or "knee" not in front:
        raise SelectionError("the study has an empty front: nothing to export (see report.md)")
    return _row(front, int(front.index.get_loc(front.index[front["knee"].astype(bool)][0])), "knee of the front")


def by_rule(front: pd.DataFrame, text: str, targets: tuple[str, ...]) -> Selected:
    # a target's own accuracy (accuracy_zcu104) where the study scored one: its columns say so
    own = [a for t in targets if names.column("f3", a := names.per_target(names.PerTarget.ACCURACY, t)) in front]
    try:
        pick: Pick = parse_pick(text, (*known_metrics(targets), *own))
    except ValueError as err:
        raise SelectionError(str(err)) from None
    if front.empty:
        raise SelectionError("the study has an empty front: nothing to export (see report.md)")
    ok = pd.Series(True, index=front.index)
    f3 = {c.column: names.column("f3", c.column) for c in pick.constraints}
    for c in pick.constraints:
        if f3[c.column] not in front:
            raise SelectionError(f"--pick {text!r}: the front has no {c.column} column (a study run before it was "
                                 "recorded); drop the @ bound or rerun the study")
        ok &= front[f3[c.column]].apply(lambda v, c=c: c.satisfied({c.column: v}))
    if not ok.any():
        rules = " and ".join(str(c) for c in pick.constraints)
        lows = ", ".join(f"{c.column} from {front[f3[c.column]].min():.4g}" for c in pick.constraints)
        raise SelectionError(f"--pick {text!r}: no front recipe satisfies {rules} (the front has {lows})")
    values = front.loc[ok, names.column("f3", pick.metric)]
    index = values.idxmax() if pick.goal == "max" else values.idxmin()
    return _row(front, int(front.index.get_loc(index)), f"{pick.goal} {pick.metric} ({text})")


def best_cascade(front: pd.DataFrame) -> Selected:
    """The most accurate (F3 validation) cascade on the front: `--pick cascade`."""
    rows = front.index[front["cascade"].fillna(False).astype(bool)] if "cascade" in front else []
    if not len(rows):
        raise SelectionError("the front has no cascade: run the study with `[search] cascades = true`, or export "
                             "any recipe with --cascade")
    best = front.loc[rows, names.column("f3", "accuracy")].idxmax()
    return _row(front, int(front.index.get_loc(best)), "most accurate cascade of the front")


def select(run: Path, targets: tuple[str, ...], *, trial: int | None, pick: str | None) -> Selected:
    trials, front = read_run(run)
    if trial is not None:
        return by_trial(trials, trial)
    if pick in (None, "knee"):
        return knee(front)
    if pick == "cascade":
        return best_cascade(front)
    return by_rule(front, pick, targets)
