"""A compressed model as tensors and plain values: the one format of a bundle's `model.pt` and a run's F3 checkpoints.

Both files travel (a bundle to a colleague, a run folder copied from a cluster), so neither holds a pickled
module: `torch.load(weights_only=True)` reads them, and the network is rebuilt from its name, its stem, the
state dict's shapes and the recorded bit-widths (`search.bundle.model_file.load_model`). A run's F3 checkpoint
records the recipe's student as its network, `teacher` included: the reader knows which teacher that is.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spaces.models.network import model_stem
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import is_quantized
from spaces.quant.scheme import DEFAULT_SCHEME
from spaces.recipe import Recipe

FORMAT = 3  # 1: the module was pickled beside the state dict; 2: no quantizers between layers


def model_record(
    model: nn.Module,
    recipe: Recipe,
    *,
    network: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    quant_scheme: str = DEFAULT_SCHEME,
) -> dict[str, Any]:
    """What rebuilds `model`: tensors (on the CPU), the recipe, and the plain values the rebuild reads
    (`quant_scheme`: the scheme whose quantizers between layers the model carries, `spaces.quant.scheme`)."""
    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "recipe": recipe.to_json(),
        "quant_scheme": quant_scheme,
        "recipe_hash": recipe.hash(),
        "network": network,
        "stem": model_stem(model),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "quantized": is_quantized(model),
        "bit_widths": {k: list(v) for k, v in bit_widths(model).items()},
    }
