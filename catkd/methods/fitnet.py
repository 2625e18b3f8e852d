"""FitNets (Romero et al., ICLR 2015): a hint on one stage, with mdistiller's CIFAR settings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.losses import hint_loss
from catkd.methods.base import NON_NEGATIVE, Method, StageRecorder, probe_shapes


def hint_regressor(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Sequential:
    """Conv-BN-ReLU from an (N, C_s, H_s, W_s) student map to the (N, C_t, H_t, W_t) teacher's.

    H_s = 2 H_t: 3x3 conv, stride 2; 2 H_s = H_t: 4x4 transposed conv, stride 2; H_s >= H_t: a
    valid conv of kernel (1 + H_s - H_t, 1 + W_s - W_t) (1x1 at equal sizes). The ReLU makes the
    regressed hint non-negative like the post-ReLU teacher map it imitates.
    """
    student_channels, student_height, student_width = student_shape[1:]
    teacher_channels, teacher_height, teacher_width = teacher_shape[1:]
    if student_height == 2 * teacher_height:
        conv = nn.Conv2d(student_channels, teacher_channels, 3, stride=2, padding=1)
    elif 2 * student_height == teacher_height:
        conv = nn.ConvTranspose2d(student_channels, teacher_channels, 4, stride=2, padding=1)
    elif student_height >= teacher_height and student_width >= teacher_width:
        conv = nn.Conv2d(student_channels, teacher_channels,
                         (1 + student_height - teacher_height, 1 + student_width - teacher_width))
    else:
        raise ValueError(
            f"no hint regressor from a student map {tuple(student_shape[1:])} to a teacher map "
            f"{tuple(teacher_shape[1:])}: the student map must be half, twice or at least the "
            f"teacher map's size")
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels), nn.ReLU(inplace=True))


class FitNet(Method):
    """``ce_weight`` * CE + ``hint_weight`` * MSE(regressor(student stage), teacher stage).

    The hint is stage ``hint_stage`` (0-based index into ``model.stages``) of both models: 1 is
    the middle stage of the three-stage CIFAR nets (mdistiller's HINT_LAYER 2 counts the stem
    as 0). The regressor is sized on a 32x32 probe and trained with the student.
    Terms: ``ce``, ``hint``.

    The probe runs in eval mode and leaves the teacher as it was. mdistiller's FitNet sizes its
    regressor with a forward of random noise through the teacher while the teacher is still in
    training mode, which moves the teacher's BatchNorm running statistics 10% of the way
    towards the statistics of that one noise image before distillation starts. That is a quirk
    of the reference, not part of FitNets: catkd does not copy it, so its FitNet teacher is
    exactly the checkpoint, where the reference's starts slightly off it.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "hint_weight": NON_NEGATIVE,
              "hint_stage": (lambda value: value >= 0, "a stage index from 0")}
    reads_teacher_forward = True  # its stage maps are recorded during the call

    def __init__(self, student: nn.Module, teacher: nn.Module, *, ce_weight: float = 1.0,
                 hint_weight: float = 100.0, hint_stage: int = 1) -> None:
        super().__init__(student, teacher)
        self.student_stages = StageRecorder(student)
        self.teacher_stages = StageRecorder(teacher)
        stage_counts = (len(self.student_stages.names), len(self.teacher_stages.names))
        if not 0 <= hint_stage < min(stage_counts):
            raise ValueError(f"hint_stage must index a stage of both models "
                             f"(0..{min(stage_counts) - 1} here), got {hint_stage}")
        (student_shapes,) = probe_shapes(student, [self.student_stages])
        (teacher_shapes,) = probe_shapes(teacher, [self.teacher_stages])
        self.regressor = hint_regressor(student_shapes[hint_stage], teacher_shapes[hint_stage])
        self.ce_weight = ce_weight
        self.hint_weight = hint_weight
        self.hint_stage = hint_stage

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels -> (N, K) logits, {"ce", "hint"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the stage maps
        student_hint = self.regressor(self.student_stages.pop()[self.hint_stage])
        teacher_hint = self.teacher_stages.pop()[self.hint_stage]
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "hint": self.hint_weight * hint_loss(student_hint, teacher_hint),
        }
