"""`python -m benchmarks.search_engine`: how good the engine's proxies and sampler are, and what it costs.

(a) proxy fidelity: Kendall tau of F1 and of F2 validation accuracy against F3's, over N random recipes
    of the study's space (default 24);
(b) search efficiency: hypervolume of the F2 front after N trials, the configured sampler against random
    search with the same N, averaged over seeds (one shared reference point per seed: accuracy 0 and 1.1 x
    the worst cost either run saw);
(c) overhead: the engine's own time per trial (ask, suggest, tell, storage) against the evaluation time;
(d) Ray: wall time of the same N trials with 1 and with 2 workers on this machine.

Every number is measured on the study's splits as the search uses them (validation for F1/F2/F3
accuracy); nothing here reads the test split. Results go to stdout (markdown) and `--out/benchmark.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna

from evaluators.candidate import Fidelity
from search import engine
from search.context import RunSpec
from search.context import load_context
from search.engine import SamplerKind
from search.objectives import direction
from search.pareto import hypervolume
from search.pareto import pareto_mask
from search.stats import kendall_tau
from spaces.space import SearchSpace


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="mlp_mnist")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--out", default="runs/benchmarks/search_engine")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--recipes", type=int, default=24, help="(a) random recipes scored at F1, F2 and F3")
    p.add_argument("--trials", type=int, default=40, help="(b) trials per search")
    p.add_argument("--seeds", type=int, default=3, help="(b) seeds averaged")
    p.add_argument("--ray-trials", type=int, default=12, help="(d) trials per Ray run (0 skips d)")
    p.add_argument("--only", default="abcd", help="which parts to run, e.g. 'ab'")
    return p.parse_args(argv)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def proxy_fidelity(ctx, n: int, seed: int = 123) -> dict:  # noqa: ANN001 - a search.context.Context
    """(a): n distinct random recipes, each at F1, F2 and F3."""
    space = SearchSpace(ctx.config.space, ctx.config.teacher.arch)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen, rows = set(), []
    for _ in range(20 * n):
        if len(rows) >= n:
            break
        recipe = space.suggest(study.ask())
        if recipe.hash() in seen:
            continue
        seen.add(recipe.hash())
        try:
            acc = [ctx.evaluator.evaluate(recipe, level)["accuracy"] for level in Fidelity]
        except Exception as err:  # noqa: BLE001 - a failing recipe is skipped and counted
            print(f"  skipped a failing recipe: {err}", file=sys.stderr)
            continue
        rows.append(acc)
        print(f"  (a) {len(rows)}/{n}: F1 {acc[0]:.2f}  F2 {acc[1]:.2f}  F3 {acc[2]:.2f}", file=sys.stderr, flush=True)
    a = np.array(rows)
    return {"recipes": len(rows), "tau_f1_f3": kendall_tau(a[:, 0], a[:, 2]),
            "tau_f2_f3": kendall_tau(a[:, 1], a[:, 2])}


def _search(ctx, sampler: SamplerKind, seed: int, trials: int) -> tuple[np.ndarray, float, float]:  # noqa: ANN001
    """One search as `search.run` does it, SQLite storage included (so (c) counts its cost)."""
    config = dataclasses.replace(ctx.config.search, sampler=sampler, seed=seed, trials=trials)
    objectives, constraints = ctx.plan.objectives, ctx.plan.constraints
    db = ctx.out / f"{sampler.value}-{seed}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    study = engine.open_study("bench", f"sqlite:///{db.resolve()}", config, objectives, bool(constraints))
    space = SearchSpace(ctx.config.space, ctx.config.teacher.arch)
    evaluation = 0.0
    t0 = time.monotonic()
    for trial, recipe in engine.asked(study, space, trials):
        outcome = engine.evaluate_trial(ctx.evaluator, recipe, constraints)
        evaluation += outcome.seconds
        engine.tell(study, trial, recipe, outcome, objectives, constraints)
    total = time.monotonic() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return np.array([t.values for t in done]), total, evaluation


def efficiency(ctx, trials: int, seeds: int) -> dict:  # noqa: ANN001
    """(b) and (c): the configured sampler against random search, same budget, same evaluator."""
    objectives = ctx.plan.objectives
    dirs = [direction(o) for o in objectives]
    mine, rand, overhead = [], [], []
    for seed in range(seeds):
        ours, total, evaluation = _search(ctx, ctx.config.search.sampler, seed, trials)
        theirs, _, _ = _search(ctx, SamplerKind.RANDOM, seed, trials)
        both = np.vstack([ours, theirs])
        ref = [0.0 if d == "max" else 1.1 * both[:, i].max() for i, d in enumerate(dirs)]
        mine.append(hypervolume(ours, ref, dirs))
        rand.append(hypervolume(theirs, ref, dirs))
        overhead.append(((total - evaluation) / trials, evaluation / trials))
        print(f"  (b) seed {seed}: {ctx.config.search.sampler.value} {mine[-1]:.4g} vs random {rand[-1]:.4g} "
              f"(front sizes {pareto_mask(ours, dirs).sum()} / {pareto_mask(theirs, dirs).sum()})", file=sys.stderr,
              flush=True)
    engine_s, eval_s = np.mean(overhead, axis=0)
    return {"sampler": ctx.config.search.sampler.value, "trials": trials, "seeds": seeds,
            "hypervolume": mine, "hypervolume_random": rand,
            "mean_ratio": float(np.mean(np.array(mine) / np.array(rand))),
            "wins": int(sum(m > r for m, r in zip(mine, rand, strict=True))),
            "engine_seconds_per_trial": float(engine_s), "evaluation_seconds_per_trial": float(eval_s)}


def ray_scaling(args: argparse.Namespace, out: Path) -> dict:
    """(d): the same study from scratch with 1 and 2 Ray workers (process start and Ray start included)."""
    walls = {}
    for workers in (1, 2):
        folder = out / f"ray{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [sys.executable, "-m", "search.run", "--study", args.study, "--profile", args.profile, "--out",
               str(folder), "--backend", "ray", "--workers", str(workers), "--trials", str(args.ray_trials),
               "--no-progress"] + (["--data-root", args.data_root] if args.data_root else []) + \
              (["--cache-dir", args.cache_dir] if args.cache_dir else [])
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        walls[workers] = time.monotonic() - t0
        print(f"  (d) {workers} worker(s): {walls[workers]:.1f} s", file=sys.stderr, flush=True)
    return {"trials": args.ray_trials, "wall_s_1_worker": walls[1], "wall_s_2_workers": walls[2],
            "speedup": walls[1] / walls[2]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = RunSpec.from_study(args.study, args.profile, str(out / "cache"), data_root=args.data_root,
                              cache_dir=args.cache_dir)
    _quiet()
    ctx = load_context(spec)
    found: dict = {"study": args.study, "profile": args.profile}
    if "a" in args.only:
        found["proxy_fidelity"] = proxy_fidelity(ctx, args.recipes)
    if "b" in args.only or "c" in args.only:
        found["efficiency"] = efficiency(ctx, args.trials, args.seeds)
    if "d" in args.only and args.ray_trials:
        found["ray"] = ray_scaling(args, out)
    (out / "benchmark.json").write_text(json.dumps(found, indent=2))
    print(report(found))
    return 0


def report(found: dict) -> str:
    lines = [f"# Search-engine benchmark: {found['study']} ({found['profile']})", ""]
    if "proxy_fidelity" in found:
        a = found["proxy_fidelity"]
        lines.append(f"- (a) Kendall tau over {a['recipes']} random recipes (validation accuracy): "
                     f"F1 vs F3 {a['tau_f1_f3']:.3f}, F2 vs F3 {a['tau_f2_f3']:.3f}")
    if "efficiency" in found:
        b = found["efficiency"]
        pairs = ", ".join(f"{m:.4g}/{r:.4g}" for m, r in zip(b["hypervolume"], b["hypervolume_random"], strict=True))
        lines.append(f"- (b) hypervolume after {b['trials']} trials, {b['sampler']} vs random, {b['seeds']} seeds: "
                     f"{pairs}"
                     f"; mean ratio {b['mean_ratio']:.3f}, {b['wins']} wins of {b['seeds']}")
        lines.append(f"- (c) engine overhead {b['engine_seconds_per_trial'] * 1000:.0f} ms per trial against "
                     f"{b['evaluation_seconds_per_trial']:.2f} s of evaluation")
    if "ray" in found:
        d = found["ray"]
        lines.append(f"- (d) Ray, {d['trials']} trials: 1 worker {d['wall_s_1_worker']:.1f} s, 2 workers "
                     f"{d['wall_s_2_workers']:.1f} s (speed-up {d['speedup']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
