"""Contrastive representation distillation (Tian et al., ICLR 2020), CRD's CIFAR-100 settings.

Each training sample has one entry in a student memory and one in a teacher memory: unit
vectors that follow the sample's embeddings with momentum. A sample's student embedding is
scored against the teacher memory at its own index (the positive) and at K indices of samples of
other classes (the negatives, CRD's "exact" sampling), and symmetrically; an NCE loss asks
the positive to stand out. The memories are buffers (saved and resumed with the run); the two
embeddings are trained with the student.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from catkd.losses import crd_loss
from catkd.methods.base import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Method,
                                PooledRecorder)


class Embedding(nn.Module):
    """Linear map to ``dim`` then L2 normalisation: (N, C) -> (N, dim) unit vectors."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(features), dim=1)


def _from_every_rank(tensor: torch.Tensor) -> torch.Tensor:
    """Under DDP, the concatenation of every rank's (B, ...) ``tensor`` (each rank's batches have
    one size: the training loaders drop incomplete ones); else ``tensor`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


class CRD(Method):
    """``ce_weight`` * CE + ``crd_weight`` * (NCE of the student side + of the teacher side).

    Built with ``train_labels``, the (N_train,) labels of the training set (the memories have
    one entry per sample; negatives are drawn uniformly, with replacement, among the samples of
    other classes); its forward takes the batch's (B,) training-set ``indices``. Features are the
    pooled penultimate ones of both models. The normalising constant Z of each side is set from
    the first batch (mean score times N_train) and then kept. Terms: ``ce``, ``crd``.

    A deliberate departure: CRD's and mdistiller's data loaders draw each sample's K negatives
    without replacement (with replacement only when K exceeds the other-class samples). Here
    they are i.i.d. draws, one batched operation on the device instead of a permutation per
    sample in the loader; i.i.d. noise samples are what the NCE estimator assumes. On CIFAR-100
    (K = 16384 of 49,500 candidates) about 15% of a sample's draws repeat another.

    Under DDP every rank applies every rank's updates (the batch's embeddings and indices are
    gathered), so the memories stay identical across ranks and see the whole training set, as
    in one process.
    """

    ranges = {"ce_weight": NON_NEGATIVE, "crd_weight": NON_NEGATIVE, "embedding_dim": AT_LEAST_ONE,
              "negatives": AT_LEAST_ONE, "temperature": POSITIVE,
              "momentum": (lambda value: 0 <= value <= 1, "in [0, 1]")}

    # It reads the teacher by calling it too, but does not train in lockstep (reads_teacher_forward
    # stays False): its batches carry sample indices, which the other students' steps do not take.
    needs_sample_indices = True

    def __init__(self, student: nn.Module, teacher: nn.Module, train_labels: torch.Tensor, *,
                 ce_weight: float = 1.0, crd_weight: float = 0.8, embedding_dim: int = 128,
                 negatives: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5) -> None:
        super().__init__(student, teacher)
        train_labels = torch.as_tensor(train_labels).long()
        if train_labels.dim() != 1 or len(train_labels.unique()) < 2:
            raise ValueError(f"CRD needs the (N,) labels of a training set of at least two "
                             f"classes, got shape {tuple(train_labels.shape)} with classes "
                             f"{train_labels.unique().tolist()[:5]}")
        if negatives < 1 or not 0 <= momentum < 1:
            raise ValueError(f"negatives must be >= 1 and momentum in [0, 1), got {negatives} "
                             f"and {momentum}")
        self.student_pooled = PooledRecorder(student)
        self.teacher_pooled = PooledRecorder(teacher)
        self.student_embedding = Embedding(student.get_classifier().in_features, embedding_dim)
        self.teacher_embedding = Embedding(teacher.get_classifier().in_features, embedding_dim)
        size = len(train_labels)
        bound = 1 / math.sqrt(embedding_dim / 3)  # CRD's initial memory: uniform in +-bound
        self.register_buffer("student_memory", (2 * torch.rand(size, embedding_dim) - 1) * bound)
        self.register_buffer("teacher_memory", (2 * torch.rand(size, embedding_dim) - 1) * bound)
        # Z of the student side and of the teacher side; NaN until the first batch sets them.
        self.register_buffer("normalizers", torch.full((2,), math.nan))
        # The training set sorted by label, to draw other-class samples: derived, not saved.
        counts = torch.bincount(train_labels)
        self.register_buffer("by_label", train_labels.argsort(stable=True), persistent=False)
        self.register_buffer("class_start", counts.cumsum(0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.ce_weight = ce_weight
        self.crd_weight = crd_weight
        self.negatives = negatives
        self.temperature = temperature
        self.momentum = momentum

    def contrast_indices(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(B,) labels and training-set indices -> (B, 1 + K): each sample's own index, then K
        indices drawn uniformly among the samples of other classes."""
        count = self.class_count[labels][:, None]  # (B, 1)
        others = len(self.by_label) - count
        draws = (torch.rand(len(labels), self.negatives, device=labels.device) * others).long()
        draws = draws.minimum(others - 1)  # rand < 1, but float rounding could reach `others`
        # Positions in the label-sorted order, skipping the block of the sample's own class.
        positions = draws + (draws >= self.class_start[labels][:, None]) * count
        return torch.cat([indices[:, None], self.by_label[positions]], dim=1)

    def _scores(self, memory: torch.Tensor, embeddings: torch.Tensor,
                contrast: torch.Tensor) -> torch.Tensor:
        """exp(<memory entry, embedding> / T): (B, 1 + K) for (B, D) embeddings."""
        entries = memory[contrast]  # (B, 1 + K, D)
        return torch.exp((entries @ embeddings[:, :, None]).squeeze(2) / self.temperature)

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, embeddings: torch.Tensor,
                indices: torch.Tensor) -> None:
        moved = memory[indices] * self.momentum + embeddings * (1 - self.momentum)
        memory[indices] = F.normalize(moved, dim=1)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels, 0-based epoch, (N,) training-set indices -> (N, K)
        logits, {"ce", "crd"}."""
        logits, _ = self.both_logits(images)  # the hooks keep the pooled features
        size = len(self.student_memory)
        # float32 even under autocast: exp(score / 0.07) spans e^-14..e^14, too coarse in bf16.
        with torch.autocast(images.device.type, enabled=False):
            student = self.student_embedding(self.student_pooled.pop().float())
            teacher = self.teacher_embedding(self.teacher_pooled.pop().float())
            contrast = self.contrast_indices(labels, indices)
            student_scores = self._scores(self.teacher_memory, student, contrast)
            teacher_scores = self._scores(self.student_memory, teacher, contrast)
        first_batch = torch.stack([student_scores.detach().mean(), teacher_scores.detach().mean()])
        # torch.where, not an `if`: no host synchronisation per step.
        self.normalizers.copy_(torch.where(self.normalizers.isnan(), first_batch * size,
                                           self.normalizers))
        contrastive = (crd_loss(student_scores / self.normalizers[0], size)
                       + crd_loss(teacher_scores / self.normalizers[1], size))
        indices = _from_every_rank(indices)
        self._update(self.student_memory, _from_every_rank(student.detach()), indices)
        self._update(self.teacher_memory, _from_every_rank(teacher.detach()), indices)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, labels),
            "crd": self.crd_weight * contrastive,
        }
