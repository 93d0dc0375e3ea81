"""How the front grew: the normalised hypervolume of the feasible F2 front after each trial, against wall time.

Why: a final hypervolume says where a run ended, not how fast it got there; comparing two samplers or two
budgets at equal wall time needs the curve. Times are optuna's `datetime_complete` of each trial, measured from
the first trial's start (a resumed run's pause is included: it is wall time the user waited). Only trials
told at F2 count: an F1-only or F0-rejected trial is no point of the front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from search.analysis.reference import ReferenceBox
from search.engine.loop import told_at_f2


@dataclass(frozen=True)
class HypervolumePoint:
    minutes: float  # since the first trial started
    trials: int  # trials finished by then, whatever their state
    hypervolume: float  # normalised, in [0, 1]


def hypervolume_history(study: optuna.Study, box: ReferenceBox) -> list[HypervolumePoint]:
    """One point per finished trial, in completion order; the value changes only when a trial joins the front."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None
              and t.datetime_start is not None and t.state != TrialState.RUNNING]
    if not trials:
        return []
    trials.sort(key=lambda t: t.datetime_complete)
    start = min(t.datetime_start for t in trials)
    scored: list[list[float]] = []
    history, value = [], 0.0
    for n, t in enumerate(trials, 1):
        if told_at_f2(t) and t.values is not None and t.user_attrs.get("feasible", True):
            scored.append(list(t.values))
            value = box.hypervolume(np.array(scored))
        history.append(HypervolumePoint((t.datetime_complete - start).total_seconds() / 60, n, value))
    return history
