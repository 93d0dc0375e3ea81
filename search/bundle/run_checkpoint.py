"""A run folder's F3 checkpoints (`checkpoints/<recipe hash>.pt`), read as data: tensors + recipe, no pickled module.

The final stage saves each F3 model in the bundle's `model.pt` format (`spaces.compress.model_record`); export and the
cascade scoring read it back with `torch.load(weights_only=True)` through `search.bundle.model_file.load_model`. A run
folder written before that pickled whole modules: such a file is never unpickled, and its error says what to do.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from search.bundle.model_file import BundleModelError
from search.bundle.model_file import load_model
from spaces.recipe import Recipe

REBUILD = (
    "re-run the study with this version (search.run --fresh), or delete the run's checkpoints/ and re-export "
    "(search.export then rebuilds the recipe at F3)"
)
STALE = (
    "an F3 checkpoint of a run made before checkpoints held tensors only (it pickles the module, which is never "
    f"unpickled): {REBUILD}"
)


def checkpoint_path(run: Path, recipe: Recipe) -> Path:
    return Path(run) / "checkpoints" / f"{recipe.hash()}.pt"


def load_f3(run: Path, recipe: Recipe, teacher: str) -> nn.Module | None:
    """The F3 model the run saved for `recipe` (eval mode), or None when it saved none. `teacher` is the network
    the study's teacher is built from (`TeacherConfig.network`)."""
    path = checkpoint_path(run, recipe)
    if not path.exists():
        return None
    model, saved = load_model(path, teacher=teacher, stale=STALE, outdated=REBUILD)
    if saved.hash() != recipe.hash():
        raise BundleModelError(
            f"{path} holds recipe {saved.hash()}, not {recipe.hash()}; delete it and re-export "
            "(the recipe is then rebuilt at F3)"
        )
    return model
