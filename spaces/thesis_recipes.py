"""The compressions the thesis and the survey report, written as Recipes so the same pipeline can rerun them.

Table I of the thesis (ZCU104 DPU, rows as in `../shared/calibration/zcu104_dpu.csv`): ResNet-50 with PTQ and
with QAT (from its trained weights, and from scratch); ResNet-50 pruned one-step ("OS") by 20% and 95%; and
SqueezeNet, ResNet-18 and MobileNetV2 students distilled from ResNet-50, each alone and pruned by 20% (SqueezeNet
iteratively, "It"). Everything ends in 8-bit PTQ, because the DPU runs INT8 only.

Percentages. Vitis AI's pruning ratio is the fraction of *operations* removed (the csv's GOPs show it: OS 20%
keeps 79% of ResNet-50's MACs, OS 95% keeps 6%), while `Pruning.ratio` is a fraction of *channels*. So each
row's channel ratio is the uniform ratio that removes that fraction of MACs from that network, found on the
network itself (`channel_ratio_for_macs`). Vitis AI's one-step pruning is EagleEye-style adaptive-BN search,
which is what our one-shot schedule does. The thesis distilled with Hinton's logit loss; its temperature is
not recorded, so the recipe defaults (T = 4, alpha = 0.9) are used.

"QAT ResNet-50 scratch" starts from a freshly initialised ResNet-50 (student "resnet50", trained on the labels
for the budget's `student_steps`, then through the quantizers); "weights" starts from the trained teacher.

The survey's quantization comparison (FP32 vs PTQ 8-bit vs QAT 8-bit vs QAT 4-bit on one network) is
`survey_quantization_recipes`; "4-bit" means 4-bit weights with 8-bit activations.
"""

from __future__ import annotations

import functools

import torch

from spaces.compress import checks
from spaces.compress.pruning import ChannelGraph
from spaces.compress.pruning import MacModel
from spaces.compress.pruning import keep_counts
from spaces.compress.pruning import uniform_ratios
from spaces.models.architectures import create_model
from spaces.recipe import MAX_PRUNE_RATIO
from spaces.recipe import TEACHER
from spaces.recipe import Distillation
from spaces.recipe import DistillKind
from spaces.recipe import Importance
from spaces.recipe import PruneKind
from spaces.recipe import PruneSchedule
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

PTQ8 = Quantization(kind=QuantKind.PTQ, weight_bits=8, act_bits=8)
QAT8 = Quantization(kind=QuantKind.QAT, weight_bits=8, act_bits=8)
KD = Distillation(kind=DistillKind.LOGIT)
ITERATIVE_STEPS = 2  # the thesis does not say how many; two halves of the target


@functools.cache
def channel_ratio_for_macs(arch: str, mac_reduction: float, resolution: int = 32) -> float:
    """The uniform channel ratio (3 decimals) that removes `mac_reduction` of `arch`'s Conv/Linear MACs."""
    model = create_model(arch, resolution=resolution).eval()  # the stem, and so the MACs, depend on the size
    example = torch.zeros(1, 3, resolution, resolution)
    graph = ChannelGraph(model, example, Importance.RANDOM)  # any importance: only the widths matter here
    macs = MacModel(model, example, graph)
    full = macs.total({})
    lo, hi = 0.0, MAX_PRUNE_RATIO
    for _ in range(30):
        mid = (lo + hi) / 2
        kept = macs.total(keep_counts(graph.widths(), uniform_ratios(graph, mid), 1)) / full
        lo, hi = (mid, hi) if kept > 1.0 - mac_reduction else (lo, mid)
    return round((lo + hi) / 2, 3)


def _pruned(arch: str, mac_reduction: float, schedule: PruneSchedule) -> Pruning:
    steps = ITERATIVE_STEPS if schedule == PruneSchedule.ITERATIVE else 1
    return Pruning(kind=PruneKind.STRUCTURED, ratio=channel_ratio_for_macs(arch, mac_reduction), schedule=schedule,
                   steps=steps)


def thesis_table_recipes(teacher_arch: str = "resnet50") -> list[Recipe]:
    """The 11 rows of the thesis's Table I, labelled as the calibration csv names them."""
    os_ = PruneSchedule.ONESHOT
    rows = [
        Recipe(label="PTQ ResNet-50", quant=PTQ8),
        Recipe(label="QAT ResNet-50 weights", quant=QAT8),
        Recipe(label="QAT ResNet-50 scratch", student=teacher_arch, quant=QAT8),
        Recipe(label="OS 20% + PTQ", prune=_pruned(teacher_arch, 0.20, os_), quant=PTQ8),
        Recipe(label="OS 95% + PTQ", prune=_pruned(teacher_arch, 0.95, os_), quant=PTQ8),
    ]
    students = (("SqueezeNet", "squeezenet1_0", PruneSchedule.ITERATIVE, "It"), ("ResNet-18", "resnet18", os_, "OS"),
                ("MobileNet", "mobilenet_v2", os_, "OS"))
    rows += [Recipe(label=f"{name} + PTQ", student=arch, distill=KD, quant=PTQ8) for name, arch, _, _ in students]
    rows += [Recipe(label=f"{name} + {short} 20% + PTQ", student=arch, distill=KD, prune=_pruned(arch, 0.20, schedule),
                    quant=PTQ8) for name, arch, schedule, short in students]
    for recipe in rows:
        checks.validate(recipe, teacher_arch)
    return rows


def survey_quantization_recipes() -> list[Recipe]:
    """The survey's quantization table: the same network in FP32, PTQ 8-bit, QAT 8-bit and QAT 4-bit weights."""
    return [
        Recipe(label="FP32", student=TEACHER),
        Recipe(label="PTQ 8-bit", quant=PTQ8),
        Recipe(label="QAT 8-bit", quant=QAT8),
        Recipe(label="QAT 4-bit", quant=Quantization(kind=QuantKind.QAT, weight_bits=4, act_bits=8)),
    ]
