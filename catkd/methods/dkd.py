"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), with mdistiller's settings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import dkd_loss
from catkd.methods.base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Method


class DKD(Method):
    """``ce_weight`` * CE + warm-up * (``alpha`` * TCKD + ``beta`` * NCKD). Terms: ``ce``, ``dkd``.

    The DKD term is ramped linearly: with the 0-based ``epoch`` its factor is
    ``min((epoch + 1) / warmup_epochs, 1)``, so epoch 0 gives 1/20 and epochs 19 on give 1 with
    the default 20. That is mdistiller's ramp, which counts epochs from 1.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "alpha": NON_NEGATIVE, "beta": NON_NEGATIVE,
              "temperature": POSITIVE, "warmup_epochs": AT_LEAST_ONE}
    reads_teacher_forward = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: int = 20) -> None:
        super().__init__(student, teacher)
        self.ce_weight = ce_weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels, 0-based epoch -> (N, K) logits, {"ce", "dkd"}."""
        logits, teacher_logits = self.both_logits(images)
        warmup = min((epoch + 1) / self.warmup_epochs, 1.0)
        decoupled = dkd_loss(logits, teacher_logits, labels, self.alpha, self.beta,
                             self.temperature)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "dkd": warmup * decoupled,
        }
