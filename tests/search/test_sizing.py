"""A run sized to its budget (search.sizing.plan): real short runs of the MNIST study at its smoke profile, and the
sizing rule itself on given step times."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.teacher.prepare import build_teacher
from evaluators.training.precision import Precision
from evaluators.training.precision import cpu_has_bf16
from search.config import load_study
from search.sizing.plan import Counts
from search.sizing.plan import Price
from search.sizing.plan import RunPlan
from search.sizing.plan import StepTimes
from search.sizing.plan import Workload
from search.sizing.plan import measure
from search.sizing.plan import plan_run
from search.sizing.plan import teacher_choices
from search.sizing.plan import workload
from spaces.recipe import TEACHER
from spaces.recipe import PruneKind
from spaces.recipe import QuantKind
from spaces.recipe import finetunes
from tests.cli_helpers import search_cli
from tests.cli_helpers import study_args
from tests.user_data import write_generated_imagefolder

# The MNIST smoke study's work as `workload` counts it (20,000 training images at batch 128, 5,000 validation
# and 10,000 test images, 2 front recipes and 4 survey baselines): written out so the rule is checked on its own.
WORK = Workload(teacher_epoch_steps=156, teacher_eval_images=15_000,
                level_images={"f1": 3_012, "f2": 3_012, "f3": 16_012}, recovery_steps={"f1": 0, "f2": 0, "f3": 0},
                promoted=1 / 3, final_jobs=3, baseline_jobs=4)
TIMES = StepTimes(teacher_step=0.01, finetune_step=0.005, eval_image=2e-5)


def _plan(budget: str, *, given: bool = False) -> RunPlan:
    config = load_study("mlp_mnist", "smoke")
    config = replace(config, search=replace(config.search, budget=budget))
    return plan_run(config, TIMES, WORK, teacher_ready=given)


def test_the_rule_grows_with_the_budget_and_never_goes_below_its_minimums() -> None:
    tight, loose = _plan("5s"), _plan("30m")
    assert tight.counts.trials < loose.counts.trials and tight.counts.teacher_epochs < loose.counts.teacher_epochs
    assert tight.counts == Counts(teacher_epochs=1, trials=4, student_steps=0, f2_steps=10, f3_steps=20,
                                  final=2)  # minimums
    assert any("the search gets" in n for n in tight.notes)
    assert any("budget is too small for the minimum plan" in n for n in _plan("2s").notes)
    assert loose.counts.trials == 4 * 8 and loose.counts.teacher_epochs == 4 * 2 and not loose.notes  # at most 4x
    middle = _plan("60s")
    assert sum(middle.estimate.values()) <= 60 * 1.05 and middle.counts.trials > 8  # the profile fits, with room
    assert RunPlan.from_json(json.loads(json.dumps(middle.as_json()))) == middle


def test_students_are_priced_by_their_own_step_and_trained_longer_at_each_level() -> None:
    """A slow student (MobileNetV2 with its small stem costs 2.4x the teacher's step on a 2-core Xeon) shrinks the
    plan; the sized levels keep the profile's growth (F1 < F2 < F3 student steps) and F3 never fine-tunes less
    than F2."""
    config = load_study("resnet50_cifar10", "cpu")
    work = Workload(teacher_epoch_steps=351, teacher_eval_images=15_000,
                    level_images={"f1": 2_792, "f2": 2_792, "f3": 16_792}, recovery_steps={"f1": 0, "f2": 0, "f3": 0},
                    promoted=1 / 3, final_jobs=6, baseline_jobs=11,
                    search_students=(("resnet18", "logit"), ("mobilenet_v2", "logit")),
                    baseline_students=(("mobilenet_v2", "logit"), ("squeezenet1_0", "logit")),
                    student_levels={"f1": 200, "f2": 400, "f3": 800}, distill_images=45_000)
    base = StepTimes(teacher_step=0.6, finetune_step=0.4, eval_image=1e-3)
    fast = plan_run(config, replace(base, student_step={"resnet18": 0.1, "mobilenet_v2": 0.1, "squeezenet1_0": 0.1}),
                    work, teacher_ready=False)
    slow = plan_run(config, replace(base, student_step={"resnet18": 0.1, "mobilenet_v2": 1.0, "squeezenet1_0": 0.4}),
                    work, teacher_ready=False)
    assert slow.counts.student_steps < fast.counts.student_steps
    for plan in (fast, slow):
        assert sum(plan.estimate.values()) <= 3600 * 1.05, plan.describe()
        levels = plan.apply(config).fidelity
        steps = [getattr(levels, n).budget.student_steps for n in ("f1", "f2", "f3")]
        assert steps[0] < steps[1] < steps[2] == plan.counts.student_steps
        assert levels.f3.budget.finetune_steps >= levels.f2.budget.finetune_steps
        if plan.counts.f3_steps < plan.profile.f3_steps:  # recovery between iterative steps shrinks with it
            assert 0 < levels.f3.budget.recovery_steps < config.fidelity.f3.budget.recovery_steps
    assert "student steps (s): mobilenet_v2 1.000" in slow.describe()
    # a baseline fine-tunes and is evaluated on its own network: eleven MobileNetV2 baselines cost more than eleven
    # on the teacher's network, and the plan gives them fewer steps
    slow_times = replace(base, student_step={"resnet18": 0.1, "mobilenet_v2": 1.0, "squeezenet1_0": 0.4})
    on_teacher = Price(slow_times, work)
    on_mobilenet = Price(slow_times, replace(work, baseline_networks=("mobilenet_v2",) * 11))
    assert on_mobilenet.final(20, 100, 200) > on_teacher.final(20, 100, 200) + 11 * 100 * 0.4
    assert plan_run(config, slow_times, replace(work, baseline_networks=("mobilenet_v2",) * 11),
                    teacher_ready=False).counts.f3_steps < slow.counts.f3_steps


def test_a_ready_teacher_needs_no_teacher_time() -> None:
    trained, given = _plan("60s"), _plan("60s", given=True)
    assert given.counts.teacher_epochs == 0 and given.estimate["teacher"] == 0 and given.teacher_ready
    assert given.counts.trials >= trained.counts.trials
    config = load_study("mlp_mnist", "smoke")
    assert given.apply(config).teacher == config.teacher


def test_a_teacher_in_the_cache_needs_no_teacher_time(mnist_root: Path, tmp_path: Path) -> None:
    """The profile's teacher, once cached, is used as it is: the plan gives it no time and keeps its epochs."""
    cache = tmp_path / "cache"
    assert search_cli(*study_args(mnist_root, tmp_path / "plain", cache, "--baseline-only")).returncode == 0
    result = search_cli(*study_args(mnist_root, tmp_path / "sized", cache, "--budget", "8s", "--baseline-only"))
    assert result.returncode == 0, result.stderr
    plan = RunPlan.from_json(json.loads((tmp_path / "sized" / "plan.json").read_text()))
    assert plan.teacher_ready and plan.counts.teacher_epochs == 0 and "no training" in result.stdout
    assert "teacher mlp (cache;" in result.stdout


def test_a_tight_budget_plans_a_smaller_run_than_a_loose_one(mnist_root: Path, tmp_path: Path) -> None:
    """Each run has its own empty teacher cache: a cached profile teacher would need no time and no plan."""
    plans = {}
    for budget in ("8s", "20m"):
        out = tmp_path / budget
        result = search_cli(*study_args(mnist_root, out, tmp_path / f"cache-{budget}", "--budget", budget,
                                        "--baseline-only"))
        assert result.returncode == 0, result.stderr
        assert f"run plan for a budget of {budget}" in result.stdout and "measured here: teacher" in result.stdout
        plans[budget] = RunPlan.from_json(json.loads((out / "plan.json").read_text()))
        config = json.loads((out / "config.json").read_text())  # the run's resolved config is the sized one
        # the search may run more trials than priced while its clock lasts (the clock keeps the budget)
        assert config["search"]["trials"] == plans[budget].trial_cap >= plans[budget].counts.trials
        assert config["teacher"]["train"]["epochs"] == plans[budget].counts.teacher_epochs
        assert not plans[budget].teacher_ready
    tight, loose = plans["8s"].counts, plans["20m"].counts
    assert tight.trials < loose.trials and tight.teacher_epochs <= loose.teacher_epochs
    assert tight.f2_steps <= loose.f2_steps and tight.f3_steps <= loose.f3_steps
    assert (tight.trials, tight.f2_steps, tight.f3_steps) < (loose.trials, loose.f2_steps, loose.f3_steps)


def test_trials_given_with_a_budget_cap_the_plan(mnist_root: Path, tmp_path: Path) -> None:
    """A loose budget would grow the trials to 4x the profile's; `--trials 3` is the user's ceiling."""
    out = tmp_path / "run"
    result = search_cli(*study_args(mnist_root, out, tmp_path / "cache", "--budget", "20m", "--trials", "3",
                                    "--baseline-only"))
    assert result.returncode == 0, result.stderr
    plan = RunPlan.from_json(json.loads((out / "plan.json").read_text()))
    assert plan.counts.trials == 3 and "trials capped at 3" in result.stdout
    assert json.loads((out / "config.json").read_text())["search"]["trials"] == 3


def test_the_plan_is_printed_reported_and_kept_when_the_run_resumes(mnist_root: Path, tmp_path: Path) -> None:
    args = study_args(mnist_root, tmp_path / "run", tmp_path / "cache", "--budget", "15s")
    first = search_cli(*args)
    assert first.returncode == 0, first.stderr
    plan_file = tmp_path / "run" / "plan.json"
    saved = plan_file.read_bytes()
    plan = RunPlan.from_json(json.loads(saved))
    assert plan.describe() in first.stdout  # printed as one block, before the data and the teacher
    assert first.stdout.index("run plan for a budget of 15s") < first.stdout.index("teacher mlp")
    limit = re.search(r"search limit (\S+) \(the sized plan's", first.stdout)
    assert limit, first.stdout  # the budget less what the teacher really took and the final stage's estimate
    assert f"plan: up to {plan.trial_cap} trials or {limit.group(1)} of search wall time" in first.stdout
    # the baselines need no front: a sized run scores them first, so the search's clock knows what they took
    assert first.stdout.index("[baseline 1/") < first.stdout.index("search limit") < \
        first.stdout.index("(the baselines were scored before the search)")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Run plan (plan.json)" in report and plan.describe() in report
    again = search_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "run plan kept from" in again.stdout and "measured step times" not in again.stdout
    assert "search limit" not in again.stdout and f"or {limit.group(1)} of search wall time" in again.stdout
    assert plan_file.read_bytes() == saved
    other = search_cli(*args[:-1], "16s", "--baseline-only")  # another budget is planned anew
    assert other.returncode == 0, other.stderr
    assert "was made for a budget of 15s; sizing the run again" in other.stdout


def test_evaluation_is_priced_at_each_network_s_measured_speed_fake_quantized_where_the_recipe_is() -> None:
    """Evaluation does not scale like training: at 32 px on a 2-core Xeon a fake-quantized MobileNetV2 costs about 10x
    the float teacher per image, where its training step costs 2.2x. A quantized baseline is priced at its
    network's fake-quantized rate for the images it scores, at the float rate for calibration and BN statistics."""
    work = Workload(teacher_epoch_steps=351, teacher_eval_images=15_000,
                    level_images={"f1": 2_792, "f2": 2_792, "f3": 16_792}, recovery_steps={"f1": 0, "f2": 0, "f3": 0},
                    promoted=1 / 3, final_jobs=0, baseline_jobs=1, baseline_networks=("mobilenet_v2",),
                    scored_images={"f1": 1_000, "f2": 1_000, "f3": 15_000}, baseline_quantized=(True,))
    scaled = StepTimes(teacher_step=0.6, finetune_step=0.5, eval_image=1e-3, student_step={"mobilenet_v2": 1.1})
    measured = replace(scaled, eval_float={"teacher": 1e-3, "mobilenet_v2": 4e-3},
                       eval_quant={"teacher": 1.5e-3, "mobilenet_v2": 1e-2})
    old, new = Price(scaled, work), Price(measured, work)
    assert old.eval_image("mobilenet_v2", True) == old.eval_image("mobilenet_v2", False) == 1.1 / 0.5 * 1e-3
    f3 = new.level("f3", 0, "mobilenet_v2", 0, quantized=True)
    assert abs(f3 - (0.5 + 15_000 * 1e-2 + 1_792 * 4e-3)) < 1e-9
    assert new.final(10, 50) - old.final(10, 50) > 100  # the F3 test images alone: 15,000 x (10 - 2.2) ms
    float_work = replace(work, baseline_quantized=(False,))
    assert Price(measured, float_work).final(10, 50) < new.final(10, 50)
    # a search space that always quantizes prices its recipes' scoring at the fake-quantized rates
    space = replace(work, final_jobs=1, baseline_jobs=0, baseline_networks=(), baseline_quantized=(),
                    space_networks=("teacher", "mobilenet_v2"))
    assert Price(measured, replace(space, searched_quantized=1.0)).final(10, 50) > \
        Price(measured, replace(space, searched_quantized=0.0)).final(10, 50)
    plan = RunPlan.from_json(json.loads(json.dumps(plan_run(load_study("resnet50_cifar10", "cpu"), measured, work,
                                                            teacher_ready=False).as_json())))
    assert plan.times == measured  # the measured rates travel with plan.json


def test_the_teacher_gives_way_when_even_the_minimum_search_and_final_stage_do_not_fit() -> None:
    """The final stage has a floor (every baseline scored on the whole test split): on a slow machine the teacher's
    35% would leave less than that floor, and the run would overshoot its budget. Its epochs shrink instead, never
    below one."""
    work = replace(WORK, level_images={"f1": 3_012, "f2": 3_012, "f3": 300_000})  # a costly final stage
    config = load_study("mlp_mnist", "smoke")
    config = replace(config, search=replace(config.search, budget="60s"),
                     teacher=replace(config.teacher, train=replace(config.teacher.train, epochs=20)))
    roomy = plan_run(config, TIMES, WORK, teacher_ready=False)
    tight = plan_run(config, TIMES, work, teacher_ready=False)
    assert tight.counts.teacher_epochs < roomy.counts.teacher_epochs
    assert any("teacher epochs cut from" in n for n in tight.notes), tight.notes
    assert sum(tight.estimate.values()) <= 60 * 1.05, tight.describe()
    hopeless = plan_run(config, TIMES, replace(WORK, level_images={"f1": 3_012, "f2": 3_012, "f3": 3_000_000}),
                        teacher_ready=False)
    assert hopeless.counts.teacher_epochs == 1 and any("too small for the minimum plan" in n for n in hopeless.notes)


def test_the_search_limit_gives_the_teacher_s_error_back_to_the_search() -> None:
    """The run keeps to its budget when the teacher trains faster or slower than its measured steps said: the
    search gets what the budget leaves after the time really spent and the final stage's estimate, never less than a
    quarter of the planned search."""
    plan = replace(_plan("60s"), estimate={"teacher": 20.0, "search": 16.0, "final": 34.0}, front_stage=24.0)
    assert plan.search_seconds(20.0) == 16.0  # as planned
    assert plan.search_seconds(10.0) == 26.0  # a faster teacher: its 10 s go to the search
    assert plan.search_seconds(30.0) == 6.0
    assert plan.search_seconds(59.0) == 4.0  # an overrun teacher: a quarter of the planned search is kept
    assert replace(plan, front_stage=0.0).search_seconds(20.0) == 6.0  # a plan from before: the whole final stage


def test_the_plan_pins_the_teacher_s_faster_arithmetic(mnist_root: Path) -> None:
    """`auto` trains the teacher in bf16 wherever the CPU has bf16 instructions, but such a CPU is not always faster
    in bf16; the sizer times both there and the sized config trains in the faster one."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = load_study("mlp_mnist", "smoke")
    auto = replace(config.teacher.train, precision=Precision.AUTO)
    assert teacher_choices(replace(auto, precision=Precision.FP32), cpu) == ()
    assert teacher_choices(auto, cuda) == ()  # bf16 on CUDA is settled
    assert teacher_choices(auto, cpu) == ((Precision.BF16, Precision.FP32) if cpu_has_bf16() else ())
    config = replace(config, teacher=replace(config.teacher, train=auto))
    splits, batcher = prepare_data(config.data, mnist_root, allow_download=False)
    times = measure(config, lambda: build_teacher(config.teacher, splits.info.num_classes, splits.info.channels,
                                                  batcher.resolution), splits, batcher, cpu)
    sized = plan_run(replace(config, search=replace(config.search, budget="60s")), times, WORK,
                     teacher_ready=False).apply(config)
    if cpu_has_bf16():
        assert set(times.teacher_steps) == {"bf16", "fp32"}
        assert times.teacher_step == min(times.teacher_steps.values())
        assert times.teacher_steps[times.teacher_precision] == times.teacher_step
        assert sized.teacher.train.precision == Precision(times.teacher_precision)
    else:
        assert times.teacher_precision == "" and not times.teacher_steps
        assert sized.teacher.train.precision == Precision.AUTO


def test_recipes_that_train_nothing_after_their_student_are_priced_without_fine_tune_steps() -> None:
    """An unpruned PTQ baseline (the thesis's "PTQ ResNet-50") calibrates and is scored, nothing more: the plan of
    a 2-core Xeon run priced it with 10 F2 and 20 F3 fine-tune steps (25 s at 0.82 s per step) it never ran."""
    work = Workload(teacher_epoch_steps=351, teacher_eval_images=15_000,
                    level_images={"f1": 2_792, "f2": 2_792, "f3": 16_792}, recovery_steps={"f1": 0, "f2": 0, "f3": 0},
                    promoted=1 / 3, final_jobs=0, baseline_jobs=1, baseline_finetunes=(False,))
    times = StepTimes(teacher_step=1.4, finetune_step=0.8, eval_image=2e-3)
    ptq, qat = Price(times, work), Price(times, replace(work, baseline_finetunes=(True,)))
    assert abs(qat.final(10, 20) - ptq.final(10, 20) - (10 + 20) * 0.8) < 1e-9
    assert not finetunes(PruneKind.NONE, QuantKind.PTQ) and not finetunes(PruneKind.NONE, QuantKind.NONE)
    assert finetunes(PruneKind.NONE, QuantKind.QAT) and finetunes(PruneKind.STRUCTURED, QuantKind.PTQ)


def test_a_teacher_cut_to_one_epoch_trains_with_the_single_pass_settings() -> None:
    """On a slow machine the 60-minute plan leaves the ResNet-50 teacher one epoch, and the profile's many-epoch
    schedule (SGD one-cycle, augmentation) reached 29% test there (docs/results/cpu-xeon-3); a single pass trains
    with `teacher.single_pass` instead, and the plan says so. Two epochs or more keep the profile's schedule."""
    config = load_study("mlp_mnist", "smoke")
    single = (("augment", False), ("lr", 0.002), ("optimizer", "adam"))
    config = replace(config, teacher=replace(config.teacher, single_pass=single,
                                             train=replace(config.teacher.train, optimizer="sgd", augment=True)))
    for budget, epochs in (("5s", 1), ("30m", 8)):
        plan = plan_run(replace(config, search=replace(config.search, budget=budget)), TIMES, WORK,
                        teacher_ready=False)
        assert plan.counts.teacher_epochs == epochs
        train = plan.apply(config).teacher.train
        assert train.epochs == epochs
        one = epochs == 1
        assert (train.optimizer, train.augment, train.lr) == (("adam", False, 0.002) if one else
                                                              ("sgd", True, config.teacher.train.lr))
        assert any("teacher.single_pass" in n for n in plan.notes) == one
    ready = plan_run(replace(config, search=replace(config.search, budget="5s")), TIMES, WORK, teacher_ready=True)
    assert ready.apply(config).teacher == config.teacher  # a trained teacher is not retrained
    cpu = load_study("resnet50_cifar10", "cpu").teacher
    assert cpu.for_epochs(1).train.optimizer == "adamw"


def test_scoring_a_second_arithmetic_is_priced_at_every_level(tmp_path: Path) -> None:
    """A study whose targets compute differently (zcu104: the DPU's power-of-two int8; rpi4: per-channel) scores
    each recipe once more per level: it calibrates the DPU model on `calib_images` and scores the level's
    validation (and at F3 test) images on it. The plan prices exactly those images, at the quantized rate; one
    target (or the switch off) prices none, and the sized plan still fits the budget."""
    root = write_generated_imagefolder(tmp_path / "g", classes=3, per_class=20, size=16,
                                       splits=("train", "val", "test"))
    splits, _ = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=16), cache_dir=tmp_path)
    config = load_study("mlp_mnist", "smoke")
    assert config.hardware.extra_arithmetics() == ("dpu",)
    two = workload(config, splits, [])
    one = workload(replace(config, hardware=replace(config.hardware, targets=("rpi4",))), splits, [])
    off = workload(replace(config, hardware=replace(config.hardware, accuracy_per_arithmetic=False)), splits, [])
    assert one.arithmetic_images == off.arithmetic_images == {}
    for level in ("f1", "f2", "f3"):
        calib = getattr(config.fidelity, level).budget.calib_images
        assert two.arithmetic_images[level] == two.scored_images[level] + calib
    times = replace(TIMES, eval_quant={TEACHER: 1e-3})
    for level, steps in (("f1", 0), ("f2", 30), ("f3", 80)):
        extra = Price(times, two).level(level, steps, quantized=True) - Price(times, one).level(level, steps,
                                                                                                quantized=True)
        assert extra == pytest.approx(two.arithmetic_images[level] * 1e-3)
    plan = plan_run(replace(config, search=replace(config.search, budget="60s")), times, two)
    assert sum(plan.estimate.values()) <= 60 * 1.05
    assert plan.counts.trials <= plan_run(replace(config, search=replace(config.search, budget="60s")), times,
                                          one).counts.trials
