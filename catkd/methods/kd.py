"""Hinton et al.'s knowledge distillation, with mdistiller's weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import kd_loss
from catkd.methods.base import NON_NEGATIVE, POSITIVE, Method


class KD(Method):
    """``ce_weight`` * CE + ``kd_weight`` * T^2 KL(teacher || student) at temperature T.

    Terms: ``ce``, ``kd``.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "kd_weight": NON_NEGATIVE, "temperature": POSITIVE}
    reads_teacher_forward = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 0.1,
                 kd_weight: float = 0.9, temperature: float = 4.0) -> None:
        super().__init__(student, teacher)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "kd"}."""
        logits, teacher_logits = self.both_logits(images)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "kd": self.kd_weight * kd_loss(logits, teacher_logits, self.temperature),
        }
