"""Knowledge review (ReviewKD, Chen et al., CVPR 2021), with mdistiller's settings.

The student's stage maps and pooled features, deepest first, pass through attention-based
fusion (ABF) modules: each fuses its level with the fused result of the level below (deeper),
then maps it to the teacher's channels and size at that level. The hierarchical context loss
(HCL) compares them with the teacher's pre-ReLU stage maps and pooled features.

The channels come from the two models (a 32x32 probe) and the sizes from each batch, which
gives, for every pair of Tables 5-6, the per-pair settings (IN/OUT_CHANNELS, SHAPES,
OUT_SHAPES) of the ReviewKD / mdistiller CIFAR-100 code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import hcl_loss
from catkd.methods.base import (AT_LEAST_ONE, NON_NEGATIVE, Method, PooledRecorder,
                                PreReLURecorder, StageRecorder, probe_shapes)


class AttentionFusion(nn.Module):
    """ABF: (N, C_in, H, W) student level [+ (N, C_mid, h, w) residual] -> (N, C_out, H', W')
    output and the (N, C_mid, H', W') fused map handed to the next, shallower, level.

    The level goes through 1x1 conv + BN to C_mid; with a residual (every level but the
    deepest), the residual is resized (nearest) to H x W and the two are mixed with per-pixel
    weights from a 1x1 conv + sigmoid on both. The result is resized (nearest) to the teacher's
    H' x W' and mapped to C_out by a 3x3 conv + BN.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
                          if fuse else None)
        # ReviewKD's initialisation: He-uniform with a = 1 on both convs.
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, level: torch.Tensor, residual: torch.Tensor | None,
                out_size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.reduce(level)
        if self.attention is not None:
            residual = F.interpolate(residual, size=fused.shape[2:], mode="nearest")
            weights = self.attention(torch.cat([fused, residual], dim=1))
            fused = fused * weights[:, :1] + residual * weights[:, 1:]
        if fused.shape[2:] != out_size:
            fused = F.interpolate(fused, size=out_size, mode="nearest")
        return self.output(fused), fused


class ReviewKD(Method):
    """``ce_weight`` * CE + ``review_weight`` * warm-up * HCL over stages and pooled features.

    Student levels: the stage outputs (``model.stages``, post-ReLU, mdistiller's CIFAR setting;
    with ``student_preact``, its ImageNet setting, the pre-ReLU maps ``model.preact_stages``)
    and the pooled features as a 1x1 map; teacher levels: the pre-ReLU stage maps
    (``model.preact_stages``) and the pooled features. The fusion modules' middle width is
    min(``max_mid_channels``, the student's pooled width). The warm-up factor is
    ``min((epoch + 1) / warmup_epochs, 1)`` for the 0-based epoch (mdistiller's ramp, which
    counts epochs from 1). Terms: ``ce``, ``review``.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "review_weight": NON_NEGATIVE,
              "warmup_epochs": AT_LEAST_ONE, "max_mid_channels": AT_LEAST_ONE}
    reads_teacher_forward = True  # its stage maps are recorded during the call

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 review_weight: float = 1.0, warmup_epochs: int = 20,
                 max_mid_channels: int = 512, student_preact: bool = False) -> None:
        super().__init__(student, teacher)
        self.student_stages = (PreReLURecorder(student) if student_preact
                               else StageRecorder(student))
        self.student_pooled = PooledRecorder(student)
        self.teacher_preacts = PreReLURecorder(teacher)
        self.teacher_pooled = PooledRecorder(teacher)
        if len(self.student_stages.names) != len(self.teacher_preacts.names):
            raise ValueError(
                f"ReviewKD pairs stages one to one: student {type(student).__name__} has "
                f"{self.student_stages.names}, teacher {type(teacher).__name__} has "
                f"{self.teacher_preacts.names}")
        student_shapes = sum(probe_shapes(student, [self.student_stages, self.student_pooled]),
                             [])
        teacher_shapes = sum(probe_shapes(teacher, [self.teacher_preacts, self.teacher_pooled]),
                             [])
        in_channels = [shape[1] for shape in student_shapes]
        out_channels = [shape[1] for shape in teacher_shapes]
        mid_channels = min(max_mid_channels, in_channels[-1])
        # Deepest (the pooled features) first, the order in which the levels are fused.
        self.fusions = nn.ModuleList(
            AttentionFusion(in_channels[level], mid_channels, out_channels[level],
                            fuse=level < len(in_channels) - 1)
            for level in reversed(range(len(in_channels))))
        self.ce_weight = ce_weight
        self.review_weight = review_weight
        self.warmup_epochs = warmup_epochs

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels, 0-based epoch -> (N, K) logits, {"ce", "review"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the maps
        student_levels = [*self.student_stages.pop(), self.student_pooled.pop()[:, :, None, None]]
        teacher_levels = [*self.teacher_preacts.pop(), self.teacher_pooled.pop()[:, :, None, None]]
        reviewed, residual = [], None
        for fusion, level, target in zip(self.fusions, reversed(student_levels),
                                         reversed(teacher_levels)):
            output, residual = fusion(level, residual, target.shape[2:])
            reviewed.insert(0, output)
        warmup = min((epoch + 1) / self.warmup_epochs, 1.0)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "review": self.review_weight * warmup * hcl_loss(reviewed, teacher_levels),
        }
