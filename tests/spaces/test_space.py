"""The search space and recipe validation: suggestions are valid, names keep one distribution, the recipe hash
is stable across processes, and Ray Tune's OptunaSearch drives the same space."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from search.config import build
from spaces.compress import checks
from spaces.models.architectures import create_model
from spaces.quant.quantization import resolve_bits
from spaces.recipe import TEACHER
from spaces.recipe import Distillation
from spaces.recipe import DistillKind
from spaces.recipe import Importance
from spaces.recipe import PruneKind
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.space import BitGrouping
from spaces.space import SearchSpace
from spaces.space import SpaceConfig
from tests.search.test_user_study import readme_block

REPO = Path(__file__).resolve().parents[2]
ALL_CNN_STUDENTS = (TEACHER, "resnet18", "resnet50", "mobilenet_v2", "squeezenet1_0", "squeezenet1_1", "small_cnn")
FIXED = Recipe(student="resnet18", distill=Distillation(kind=DistillKind.LOGIT, temperature=3.0),
               prune=Pruning(kind=PruneKind.STRUCTURED, ratio=0.25, round_to=16),
               quant=Quantization(kind=QuantKind.PTQ, layer_bits=(("layer3", 4, 8),)), label="fixed")

optuna.logging.set_verbosity(optuna.logging.WARNING)


pytestmark = pytest.mark.usefixtures("one_thread")


def _ask(space: SearchSpace, trials: int, seed: int, sampler: type = optuna.samplers.RandomSampler) -> optuna.Study:
    study = optuna.create_study(sampler=sampler(seed=seed))
    for _ in range(trials):
        trial = study.ask()
        trial.set_user_attr("recipe", space.suggest(trial).to_json())
        study.tell(trial, 0.0)
    return study


@pytest.mark.parametrize("grouping", list(BitGrouping))
def test_suggestions_validate_and_each_name_keeps_one_distribution(grouping: BitGrouping) -> None:
    space = SearchSpace(SpaceConfig(students=ALL_CNN_STUDENTS, grouping=grouping), "resnet50")
    study = _ask(space, 120, seed=0)
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    kinds = collections.defaultdict(set)
    for trial in study.trials:
        recipe = Recipe.from_json(trial.user_attrs["recipe"])
        checks.validate(recipe, "resnet50")
        assert space.from_params(trial.params) == recipe  # parameters alone rebuild the recipe
        for name, dist in trial.distributions.items():
            assert seen.setdefault(name, dist) == dist, name
        for part in ("distill", "prune", "quant"):
            kinds[part].add(getattr(recipe, part).kind)
        kinds["student"].add(recipe.student)
    assert kinds["distill"] == set(DistillKind) and kinds["prune"] == set(PruneKind)
    assert kinds["quant"] == {QuantKind.NONE, QuantKind.PTQ, QuantKind.QAT}
    assert kinds["student"] == set(ALL_CNN_STUDENTS)
    assert any(n.startswith("quant.high_fraction" if grouping == BitGrouping.SENSITIVITY else "quant.bits")
               for n in seen)


def test_impossible_choices_are_never_suggested() -> None:
    space = SearchSpace(SpaceConfig(students=(TEACHER, "squeezenet1_1")), "resnet50")
    for trial in _ask(space, 60, seed=1).trials:
        recipe = Recipe.from_json(trial.user_attrs["recipe"])
        if recipe.student == TEACHER:
            assert recipe.distill.kind != DistillKind.FEATURE
        else:  # no residual blocks, no BatchNorm
            assert recipe.prune.kind != PruneKind.LAYER and recipe.prune.importance != Importance.BN_SCALE


def test_same_seed_same_recipes_and_tpe_runs() -> None:
    space = SearchSpace(SpaceConfig(), "resnet50")
    runs = [[t.user_attrs["recipe"] for t in _ask(space, 15, seed=7).trials] for _ in range(2)]
    assert runs[0] == runs[1]
    _ask(space, 15, seed=0, sampler=optuna.samplers.TPESampler)


def test_space_config_rejects_bad_values_and_builds_from_a_table() -> None:
    bad = [{"ratio_min": 0.8, "ratio_max": 0.2}, {"bit_choices": (4, 9)}, {"students": ("resnet999",)},
           {"quant_kinds": ()}, {"ratio_min": 0.0}]
    for kwargs in bad:
        with pytest.raises(ValueError, match="invalid search space"):
            SpaceConfig(**kwargs)
    assert SpaceConfig(distill_kinds=("none", "logit")).distill_kinds == (DistillKind.NONE, DistillKind.LOGIT)
    built = build(SpaceConfig, {"ratio_max": 0.5, "round_to": 16, "grouping": "layer"}, "study.toml [space]")
    assert built.round_to == 16 and built.grouping == BitGrouping.LAYER


def test_sensitivity_grouping_samples_two_numbers_whatever_the_depth() -> None:
    config = SpaceConfig(grouping="sensitivity", layer_precisions=[8, 16, 32], high_fraction_max=0.3,
                         quant_kinds=("ptq",))
    study = _ask(SearchSpace(config, "resnet50"), 20, seed=3)
    for trial in study.trials:
        quant = Recipe.from_json(trial.user_attrs["recipe"]).quant
        assert {n for n in trial.params if n.startswith("quant.") and "calibration" not in n} == \
            {"quant.high_bits", "quant.high_fraction"}
        assert quant.allocation == "sensitivity" and quant.weight_bits == 8 and quant.layer_bits == ()
        assert quant.high_bits in (16, 32) and 0.0 <= quant.high_fraction <= 0.3
    pinned = _ask(SearchSpace(replace(config, layer_precisions=(8, 32)), "resnet50"), 3, seed=3)
    assert all("quant.high_bits" not in t.params for t in pinned.trials)  # one higher precision: nothing to sample
    for bad, reason in [({"layer_precisions": (8,)}, "at least two layer_precisions"),
                        ({"layer_precisions": (8, 12)}, "bit widths [12]"),
                        ({"high_fraction_min": 0.6, "high_fraction_max": 0.2}, "minimum exceeds")]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            SpaceConfig(grouping="sensitivity", **bad)
    built = build(SpaceConfig, {"grouping": "sensitivity", "layer_precisions": [8, 16, 32]}, "study.toml [space]")
    assert built.layer_precisions == (8, 16, 32) and built.grouping == BitGrouping.SENSITIVITY
    guide = "docs/guides/search-and-budget.md"
    readme = build(SpaceConfig, tomllib.loads(readme_block("space", guide))["space"], f"{guide} [space]")
    assert readme.grouping == BitGrouping.SENSITIVITY and readme.high_fraction_max == 0.3


@pytest.mark.parametrize(("recipe", "reason"), [
    (Recipe(distill=Distillation(kind=DistillKind.FEATURE, feature_pairs=(("layer4", "layer4"),))),
     "feature distillation needs a separate student"),
    (Recipe(prune=Pruning(kind=PruneKind.STRUCTURED, ratio=0.99)), "outside 0 .. 0.95"),
    (Recipe(prune=Pruning(kind=PruneKind.STRUCTURED)), "removes nothing"),
    (Recipe(quant=Quantization(kind=QuantKind.PTQ, weight_bits=9)), "bit widths [9]"),
    (Recipe(quant=Quantization(kind=QuantKind.PTQ, layer_bits=(("layer1", 4, 12),))), "bit widths [12]"),
    (Recipe(student="squeezenet1_0", prune=Pruning(kind=PruneKind.LAYER, blocks_removed=1)), "has 0"),
    (Recipe(student="squeezenet1_0", prune=Pruning(kind=PruneKind.STRUCTURED, ratio=0.3,
                                                    importance=Importance.BN_SCALE)), "needs BatchNorm"),
    (Recipe(prune=Pruning(kind=PruneKind.UNSTRUCTURED, ratio=0.5, importance=Importance.TAYLOR)), "single weights"),
    (Recipe(student="mlp"), "only takes 28x28"),
    (Recipe(student="resnet999"), "unknown architecture"),
    (Recipe(student="resnet18", distill=Distillation(kind=DistillKind.FEATURE, feature_pairs=(("layer9", "fc"),))),
     "layer9 (student)"),
])
def test_invalid_recipes_are_rejected_with_a_reason(recipe: Recipe, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid recipe") as err:
        checks.validate(recipe, "resnet50")
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_recipe_hash_is_the_same_in_another_process() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from spaces.recipe import Recipe; "
            "print(Recipe.from_json(sys.argv[2]).hash())")
    out = subprocess.run([sys.executable, "-c", code, str(REPO), FIXED.to_json()], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == FIXED.hash()
    assert FIXED.hash() == Recipe.from_json(FIXED.to_json()).hash()


@pytest.mark.ray
def test_ray_tune_optuna_search_drives_the_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from ray.tune.search.optuna import OptunaSearch

    space = SearchSpace(SpaceConfig(students=(TEACHER, "resnet18")), "resnet18")
    searcher = OptunaSearch(space=space.define_by_run, metric="score", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        checks.validate(Recipe.from_json(config["recipe"]), "resnet18")
        assert space.from_params(config) == Recipe.from_json(config["recipe"])

    # Tune runs in a process of its own, as a user's sweep does: after another Ray session in this process (the
    # API's ray test), Tune's actors were cancelled before they started ("actor never ran"), here and on CI.
    ray_dir = tempfile.TemporaryDirectory(prefix="ray")  # short: Ray's socket paths must stay within 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",  # nothing written under ~/.ray
           "RAY_memory_monitor_refresh_ms": "0"}  # the other test worker's peak is not this test's OOM
    try:
        done = subprocess.run([sys.executable, "-c", TUNE_SWEEP, ray_dir.name, str(tmp_path / "results")], env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        ray_dir.cleanup()
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["errors"], out["errors"]  # the workers' tracebacks, for CI's log
    assert len(out["hashes"]) == 2 and all(len(h) == 16 for h in out["hashes"])


TUNE_SWEEP = """
import json, sys
import optuna, ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from spaces.compress import checks
from spaces.recipe import TEACHER, Recipe
from spaces.space import SearchSpace, SpaceConfig

def trainable(config):
    recipe = Recipe.from_json(config["recipe"])
    checks.validate(recipe, "resnet18")
    return {"score": recipe.prune.ratio, "hash": recipe.hash()}

space = SearchSpace(SpaceConfig(students=(TEACHER, "resnet18")), "resnet18")
# "local": never join a cluster another test (or user) left on this machine (/tmp/ray/ray_current_cluster)
ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1], log_to_driver=False)
try:
    searcher = OptunaSearch(space=space.define_by_run, metric="score", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=2,
                                                              max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0))
    results = tuner.fit()
finally:
    ray.shutdown()
print(json.dumps({"errors": [str(e)[-1500:] for e in results.errors],
                  "hashes": [r.metrics.get("hash", "") for r in results if not r.error]}))
"""


@pytest.mark.parametrize("resolution", [32, 224])
def test_bit_groups_are_those_of_the_stem_the_student_gets_at_the_training_size(resolution: int) -> None:
    """MobileNetV2's small stem (below 64 px) merges features.1-3 into one stage: the space must name the groups
    of the network that will be trained, or resolve_bits refuses the recipe at that size."""
    space = SearchSpace(SpaceConfig(students=("mobilenet_v2",), grouping=BitGrouping.GROUP,
                                    quant_kinds=(QuantKind.PTQ,)), "resnet50", resolution)
    recipe = Recipe.from_json(_ask(space, 1, seed=0).trials[0].user_attrs["recipe"])
    names = [name for name, _, _ in recipe.quant.layer_bits]
    assert ("features.1-3" in names) == (resolution == 32)
    resolve_bits(create_model("mobilenet_v2", resolution=resolution), recipe.quant)  # every group exists there


def test_a_distillation_grid_samples_only_its_values_and_fixed_profiles_keep_their_recipes() -> None:
    """The ResNet-50 study searches KD on a grid (each setting one cached student); its smoke and cpu profiles
    fix T = 4, alpha = 0.9, exactly as the fixed ranges did, so their recipes and cached results stay the same."""
    from search.config import load_study
    from spaces.space import distillation_variants

    paper = load_study("resnet50_cifar10", "paper").space
    assert distillation_variants(paper) == 6 and DistillKind.FEATURE in paper.distill_kinds
    grid = _ask(SearchSpace(paper, "resnet50", resolution=224), 80, seed=3)
    settings = {(r.distill.kind, r.distill.temperature, r.distill.alpha)
                for r in (Recipe.from_json(t.user_attrs["recipe"]) for t in grid.trials)
                if r.distill.kind != DistillKind.NONE}
    assert {t for _, t, _ in settings} == {2.0, 4.0, 8.0} and {a for _, _, a in settings} == {0.5, 0.9}
    assert {k for k, _, _ in settings} == {DistillKind.LOGIT, DistillKind.FEATURE}
    assert all(isinstance(t.distributions.get("distill.temperature", optuna.distributions.CategoricalDistribution(
        [0])), optuna.distributions.CategoricalDistribution) for t in grid.trials)
    cpu = load_study("resnet50_cifar10", "cpu").space
    ranged = replace(cpu, temperatures=(), alphas=(), temperature_min=4.0, temperature_max=4.0, alpha_min=0.9,
                     alpha_max=0.9)
    assert distillation_variants(cpu) == 1 and distillation_variants(SpaceConfig()) is None
    fixed = [[t.user_attrs["recipe"] for t in _ask(SearchSpace(c, "resnet50", resolution=32), 20, seed=5).trials]
             for c in (cpu, ranged)]
    assert fixed[0] == fixed[1]
    with pytest.raises(ValueError, match="out of range"):
        SpaceConfig(alphas=(0.5, 1.5))
