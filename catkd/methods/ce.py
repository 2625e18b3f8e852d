"""Plain cross-entropy training: vanilla students and the teachers themselves."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from catkd.methods.base import Method


class CE(Method):
    """The baseline: cross-entropy on the labels, no teacher. Term: ``ce``."""

    needs_teacher = False

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce"}."""
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}
