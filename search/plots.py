"""pareto.png: accuracy against latency on each target, the front highlighted, the baselines marked; and
hypervolume.png: the normalised hypervolume against wall time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or Ray workers

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from search.history import HypervolumePoint  # noqa: E402


def _numeric(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    if frame.empty or any(c not in frame for c in columns):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in [*columns, "label"]})
    out = frame.copy()
    for c in columns:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.dropna(subset=list(columns))


def pareto_plot(path: Path, trials: pd.DataFrame, front: pd.DataFrame, baselines: pd.DataFrame,
                targets: Sequence[str], *, title: str, highlight: dict[str, float] | None = None) -> None:
    """One panel per target. Grey: every trial at F2 (validation). Red: the front at F3 (test).
    Blue squares: the baseline recipes at F3 (test). `highlight` ({"latency_<t>": x, "accuracy": y}) marks one
    point, e.g. the recipe an export bundle holds."""
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 5), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        lat = f"latency_{target}"
        t = _numeric(trials, f"f2_{lat}", "f2_accuracy")
        ax.scatter(t[f"f2_{lat}"], t["f2_accuracy"], s=14, c="0.65", label="trials (F2, validation)")
        f = _numeric(front, f"f3_{lat}", "f3_test_accuracy").sort_values(f"f3_{lat}")
        ax.plot(f[f"f3_{lat}"], f["f3_test_accuracy"], "o-", c="tab:red", ms=6, label="front (F3, test)")
        b = _numeric(baselines, f"f3_{lat}", "f3_test_accuracy")
        ax.scatter(b[f"f3_{lat}"], b["f3_test_accuracy"], marker="s", s=36, c="tab:blue",
                   label="baselines (F3, test)")
        for _, row in b.iterrows():
            ax.annotate(str(row.get("label", ""))[:24], (row[f"f3_{lat}"], row["f3_test_accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points", color="tab:blue")
        if highlight and lat in highlight:
            ax.scatter([highlight[lat]], [highlight["accuracy"]], marker="*", s=260, c="gold", edgecolors="k",
                       zorder=5, label="this bundle (test)")
        if len(t) + len(f) + len(b):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.text(0.5, 0.5, "no trial was scored (all rejected or failed)", ha="center", transform=ax.transAxes)
        ax.set_xlabel(f"modelled latency on {target} (ms, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hypervolume_plot(path: Path, history: Sequence[HypervolumePoint], *, title: str) -> None:
    """The normalised hypervolume of the F2 front against wall time: how fast the search found what it found."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if history:
        ax.plot([h.minutes for h in history], [h.hypervolume for h in history], drawstyle="steps-post",
                marker=".", c="tab:red")
    else:
        ax.text(0.5, 0.5, "no trial finished", ha="center", transform=ax.transAxes)
    ax.set_xlabel("wall time since the first trial started (min)")
    ax.set_ylabel("normalised hypervolume (F2 front, validation)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
