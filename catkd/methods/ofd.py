"""Overhaul of feature distillation (Heo et al., ICCV 2019), with mdistiller's settings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import ofd_loss, ofd_margins
from catkd.methods.base import NON_NEGATIVE, Method, PreReLURecorder, probe_shapes


def connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """1x1 conv (no bias) + BN from the student's channels to the teacher's; the conv is
    He-initialised over its outputs, the BN starts as the identity."""
    conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


class OFD(Method):
    """``ce_weight`` * CE + ``ofd_weight`` * partial L2 between pre-ReLU stage maps.

    Stage i of the student (``model.preact_stages``) goes through its own connector (trained
    with the student) and is compared with stage i of the teacher, pooled to the student's size,
    against margins taken once from the teacher's BatchNorms (``model.preact_norms``).
    ``stages`` keeps only that many of the deepest stages (None: all; mdistiller's ImageNet OFD
    distils the three deepest). Terms: ``ce``, ``ofd``.

    Unlike the other methods, ``train()`` puts the teacher in training mode too
    (``teacher_batchnorm_trains``), as OFD's own code (``t_net.train()``) and mdistiller's OFD
    (its ``train()`` override) do, which is how the published OFD numbers were made: in the
    student's step the teacher's BatchNorms normalise with the batch's statistics and move their
    running statistics, in memory only (its weights, its checkpoint and the margins stay as they
    are). ``eval()`` puts it back in eval mode.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "ofd_weight": NON_NEGATIVE,
              "stages": (lambda value: value is None or value >= 1, "null or at least 1")}

    revision = 2  # 2: the teacher in train mode during the step; margins in float64
    teacher_batchnorm_trains = True

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 ofd_weight: float = 1e-3, stages: int | None = None) -> None:
        super().__init__(student, teacher)
        self.student_preacts = PreReLURecorder(student, stages)
        self.teacher_preacts = PreReLURecorder(teacher, stages)
        student_count = len(self.student_preacts.names)
        teacher_norms = tuple(getattr(teacher, "preact_norms", ()))
        if student_count != len(self.teacher_preacts.names) or not teacher_norms:
            raise ValueError(
                f"OFD pairs pre-ReLU stages one to one and needs the teacher's BatchNorms: "
                f"student {type(student).__name__} has {self.student_preacts.names}, teacher "
                f"{type(teacher).__name__} has {self.teacher_preacts.names} with BatchNorms "
                f"{teacher_norms}")
        teacher_norms = teacher_norms[len(teacher_norms) - student_count:]  # the kept stages' norms
        (student_shapes,) = probe_shapes(student, [self.student_preacts])
        (teacher_shapes,) = probe_shapes(teacher, [self.teacher_preacts])
        self.connectors = nn.ModuleList(
            connector(student_shape[1], teacher_shape[1])
            for student_shape, teacher_shape in zip(student_shapes, teacher_shapes))
        # Derived from the teacher's weights: rebuilt, not saved.
        for stage, name in enumerate(teacher_norms):
            norm = teacher.get_submodule(name)
            self.register_buffer(f"margin{stage}", ofd_margins(norm.weight, norm.bias),
                                 persistent=False)
        self.ce_weight = ce_weight
        self.ofd_weight = ofd_weight

    def margins(self) -> list[torch.Tensor]:
        """The (C_i,) margin of each teacher stage."""
        return [getattr(self, f"margin{stage}") for stage in range(len(self.connectors))]

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "ofd"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the pre-ReLU maps
        connected = [connect(features) for connect, features
                     in zip(self.connectors, self.student_preacts.pop())]
        distance = ofd_loss(connected, self.teacher_preacts.pop(), self.margins())
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "ofd": self.ofd_weight * distance,
        }
