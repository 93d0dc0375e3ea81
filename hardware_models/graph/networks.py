"""Network construction shared by the hardware models' spec strings and the project's architecture registry.

The thesis replaced each torchvision classifier with extra hidden fully-connected layers before the
10-way output; both the calibration networks (`thesis:KEY`) and the search's students need exactly
that head, so it lives here, at the bottom of the dependency graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def hidden_head(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear-ReLU blocks of the given widths followed by the classifier, as the thesis deployed them."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def attach_thesis_head(model: nn.Module, hidden: Sequence[int], num_classes: int) -> nn.Module:
    """Replace a torchvision classifier by the thesis's head, in place; returns the model.

    ResNets (`fc`) and MobileNetV2 (`classifier[-1]`) get the hidden layers; SqueezeNet keeps its
    final 1x1 convolution, resized to `num_classes`, because that is what the thesis deployed.
    """
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = hidden_head(model.fc.in_features, hidden, num_classes)
        return model
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        # Flattened, so layer names match the thesis's (`classifier.1` is the first hidden layer).
        head = hidden_head(classifier[-1].in_features, hidden, num_classes)
        model.classifier = nn.Sequential(*list(classifier)[:-1], *head)
        return model
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[1], nn.Conv2d):
        if hidden:
            raise ValueError("SqueezeNet's classifier is a 1x1 convolution; it takes no hidden layers")
        conv = classifier[1]
        classifier[1] = nn.Conv2d(conv.in_channels, num_classes, kernel_size=1)
        return model
    raise ValueError(f"don't know where the classifier of {type(model).__name__} is")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_input(input_shape: Sequence[int], batch: int = 1) -> torch.Tensor:
    """A zero tensor of shape (batch, C, H, W) from a C x H x W shape."""
    return torch.zeros((batch, *input_shape))
