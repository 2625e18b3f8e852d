"""Relational knowledge distillation (Park et al., CVPR 2019), with mdistiller's weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import rkd_angle_loss, rkd_distance_loss
from catkd.methods.base import NON_NEGATIVE, Method, PooledRecorder


class RKD(Method):
    """``ce_weight`` * CE + ``distance_weight`` * RKD-D + ``angle_weight`` * RKD-A.

    Both relations are taken on the globally pooled penultimate features (the classifier's
    input) of student and teacher; no extra parameters. Terms: ``ce``, ``rkd_distance``,
    ``rkd_angle``.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "distance_weight": NON_NEGATIVE,
              "angle_weight": NON_NEGATIVE}
    reads_teacher_forward = True  # its pooled features are recorded during the call

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__(student, teacher)
        self.student_pooled = PooledRecorder(student)
        self.teacher_pooled = PooledRecorder(teacher)
        self.ce_weight = ce_weight
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "rkd_distance",
        "rkd_angle"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the pooled features
        student, teacher = self.student_pooled.pop(), self.teacher_pooled.pop()
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "rkd_distance": self.distance_weight * rkd_distance_loss(student, teacher),
            "rkd_angle": self.angle_weight * rkd_angle_loss(student, teacher),
        }
