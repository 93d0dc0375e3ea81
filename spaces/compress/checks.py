"""Whether a recipe can be applied to a study's networks: the checks that build the networks.

`Recipe.problems()` checks what the recipe says on its own and stays free of torch; the checks here need the
student and teacher themselves (does the student exist at this input size, has it the residual blocks and
the layers the recipe names), so they sit above the architectures and pruning they ask.
"""

from __future__ import annotations

from collections.abc import Callable

from spaces.compress.pruning import network_facts
from spaces.models.architectures import get_architecture
from spaces.recipe import TEACHER
from spaces.recipe import Importance
from spaces.recipe import PruneKind
from spaces.recipe import Recipe
from spaces.recipe import raise_problems


def problems(recipe: Recipe, teacher_arch: str, *, resolution: int | None = None) -> list[str]:
    """Every reason `recipe` cannot be applied to `teacher_arch` (or its student) at `resolution`-px inputs
    (default: the teacher's design resolution)."""
    found = recipe.problems()
    student_arch = teacher_arch if recipe.student == TEACHER else recipe.student
    unknown = _known_student(student_arch, teacher_arch, resolution)
    if unknown:
        return [*found, unknown]  # the other rules build the networks
    return found + [reason for rule in NETWORK_RULES if (reason := rule(recipe, student_arch, teacher_arch))]


def validate(recipe: Recipe, teacher_arch: str, *, resolution: int | None = None) -> None:
    """Raise ValueError naming every problem (one line) when `recipe` cannot be applied to `teacher_arch`."""
    raise_problems(recipe, problems(recipe, teacher_arch, resolution=resolution))


def _known_student(student: str, teacher: str, resolution: int | None) -> str | None:
    try:
        s, t = get_architecture(student), get_architecture(teacher)
    except KeyError as err:
        return str(err.args[0])
    if s.fixed_resolution and (resolution or t.default_resolution) != s.default_resolution:
        return f"student {student} only takes {s.default_resolution}x{s.default_resolution} inputs"
    return None


def _removable_blocks(r: Recipe, student: str, teacher: str) -> str | None:
    available = network_facts(student).removable_blocks
    if r.prune.kind == PruneKind.LAYER and r.prune.blocks_removed > available:
        return f"layer pruning removes {r.prune.blocks_removed} residual blocks but {student} has {available}"
    return None


def _batchnorm(r: Recipe, student: str, teacher: str) -> str | None:
    uses_bn = r.prune.kind in (PruneKind.STRUCTURED, PruneKind.LAYER) and r.prune.importance == Importance.BN_SCALE
    if uses_bn and not network_facts(student).has_batchnorm:
        return f"importance 'bn_scale' needs BatchNorm layers; {student} has none"
    return None


def _feature_layers(r: Recipe, student: str, teacher: str) -> str | None:
    missing = [f"{s} (student)" for s, _ in r.distill.feature_pairs if s not in network_facts(student).module_names]
    missing += [f"{t} (teacher)" for _, t in r.distill.feature_pairs if t not in network_facts(teacher).module_names]
    return f"distill.feature_pairs name no such layer: {', '.join(missing)}" if missing else None


NETWORK_RULES: tuple[Callable[[Recipe, str, str], str | None], ...] = (_removable_blocks, _batchnorm, _feature_layers)
