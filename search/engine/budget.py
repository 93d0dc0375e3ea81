"""The search's wall-clock budget: `[search] budget = "60m"` or `--budget 1h30m`.

Why a clock next to the trial count: a trial's cost varies by orders of magnitude (an F1-only trial takes a
second, a promoted one tens of seconds, a student's first distillation minutes), so a count says little about
when a run ends. The two are limits together: no new trial is asked once the count is reached or the clock is
up (less than half a mean trial left, `Clock.up`); trials already running finish, then the final stage runs.
The time spent is kept in the study's storage, so a resumed run spends only what is left.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

import optuna

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
SPENT_ATTR = "search_seconds"  # study user attribute: search wall time spent by earlier runs


class Sizing(StrEnum):
    """What a budget bounds (`[search] sizing`)."""

    FIT = "fit"  # the whole run: teacher epochs, trials and F2/F3 steps sized to it (search.sizing.plan)
    OFF = "off"  # the search alone; the profile's counts are kept


def parse_duration(text: str) -> float:
    """Seconds in `"90s"`, `"60m"`, `"1h30m"`, `"1h30m15s"` (hours, minutes, seconds in that order)."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or not match:
        raise ValueError(f"{text!r} is not a wall-clock time; use hours, minutes and seconds such as '90s', "
                         "'60m' or '1h30m'")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"{text!r} leaves no time to search; give a positive time such as '90s' or '60m'")
    return float(total)


def describe_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


@dataclass
class Clock:
    """Search wall time: what earlier runs of the study spent plus this run's; `limit` None means no budget.

    The clock is up once less than half a mean trial is left, not at the limit itself: a trial cannot be stopped
    midway, so one started with less left would, on average, run past the limit by more than the time it fills
    (the rule that makes the expected gap between the search's end and its limit smallest). The mean is over the
    study's recorded trial times, a resumed run's earlier ones included; with none yet, the limit itself."""

    limit: float | None
    spent_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    trial_seconds: list[float] = field(default_factory=list)

    @classmethod
    def of_study(cls, study: optuna.Study, limit: float | None) -> Clock:
        seconds = [float(t.user_attrs["seconds"]) for t in study.get_trials(deepcopy=False)
                   if isinstance(t.user_attrs.get("seconds"), (int, float))]
        return cls(limit, float(study.user_attrs.get(SPENT_ATTR, 0.0)), trial_seconds=seconds)

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def mean_trial(self) -> float:
        return sum(self.trial_seconds) / len(self.trial_seconds) if self.trial_seconds else 0.0

    def up(self) -> bool:
        return self.limit is not None and self.spent() + self.mean_trial() / 2 >= self.limit

    def left(self) -> float | None:
        return None if self.limit is None else max(self.limit - self.spent(), 0.0)

    def record(self, study: optuna.Study, trial_seconds: float | None = None) -> None:
        """Store the time spent (a resumed run spends only the rest); `trial_seconds`: one more finished trial."""
        if trial_seconds is not None:
            self.trial_seconds.append(float(trial_seconds))
        study.set_user_attr(SPENT_ATTR, round(self.spent(), 1))
