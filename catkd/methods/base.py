"""The interface every distillation method implements, and the teacher handling they share.

A method owns the student (trained) and the teacher (frozen) as submodules, so moving the method
to a device or wrapping it in DistributedDataParallel moves or wraps both. Its forward turns one
batch into the student's logits and the named loss terms whose sum the trainer optimises.
"""

from __future__ import annotations

import torch
from torch import nn

_MODEL_PREFIXES = ("student.", "teacher.")


class Method(nn.Module):
    """Base class: ``forward(images, labels, epoch) -> (student logits, {name: weighted loss})``.

    The teacher is frozen once here (no gradients, eval mode) and stays in eval mode when the
    method is put in training mode: its BatchNorm statistics are those it was trained with.
    """

    needs_teacher: bool = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{name} distils from a teacher; pass one")
        if not self.needs_teacher and teacher is not None:
            raise ValueError(f"{name} trains without a teacher; got one")
        if teacher is student:
            raise ValueError("the teacher must be a separate model: freezing it would freeze "
                             "the student")
        self.student = student
        self.register_module("teacher", teacher)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels, 0-based epoch -> (N, K) logits, scalar loss terms."""
        raise NotImplementedError

    def both_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) images -> (N, K) logits of the student and, without autograd, of the
        teacher."""
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return logits, teacher_logits

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """The state that belongs to neither model (e.g. trainable connectors); saved apart."""
        return {key: value for key, value in self.state_dict().items()
                if not key.startswith(_MODEL_PREFIXES)}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what ``extra_state_dict`` returned; the keys must match exactly."""
        expected = set(self.extra_state_dict())
        if set(state) != expected:
            raise ValueError(f"{type(self).__name__} expects extra state keys {sorted(expected)}, "
                             f"got {sorted(state)}")
        self.load_state_dict(state, strict=False)
