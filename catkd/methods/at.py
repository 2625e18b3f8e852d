"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), with mdistiller's weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import at_loss
from catkd.methods.base import NON_NEGATIVE, POSITIVE, Method, StageRecorder


class AT(Method):
    """``ce_weight`` * CE + ``at_weight`` * attention transfer over the paired stages.

    Stage i of the student is paired with stage i of the teacher (``model.stages``, shallow to
    deep). Terms: ``ce``, ``at``.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "at_weight": NON_NEGATIVE, "p": POSITIVE}
    reads_teacher_forward = True  # its stage maps are recorded during the call

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 at_weight: float = 1000.0, p: float = 2) -> None:
        super().__init__(student, teacher)
        student_stages = tuple(getattr(student, "stages", ()))
        teacher_stages = tuple(getattr(teacher, "stages", ()))
        if not student_stages or len(student_stages) != len(teacher_stages):
            raise ValueError(
                f"AT pairs stages one to one: student {type(student).__name__} has stages "
                f"{student_stages}, teacher {type(teacher).__name__} has {teacher_stages}")
        self.student_stages = StageRecorder(student)
        self.teacher_stages = StageRecorder(teacher)
        self.ce_weight = ce_weight
        self.at_weight = at_weight
        self.p = p

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "at"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the stage maps
        attention = at_loss(self.student_stages.pop(), self.teacher_stages.pop(), self.p)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "at": self.at_weight * attention,
        }
