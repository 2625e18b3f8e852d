"""The dataset record: ``ImageDataset``, a labelled image set held in memory, and the paper's
reductions of a training set (``keep_classes``, ``keep_fraction``)."""

from __future__ import annotations

import dataclasses

import torch

SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class ImageDataset:
    """A labelled image dataset held in memory.

    images: uint8 (N, C, H, W), square images.
    labels: int64 (N,), values in 0 .. len(classes) - 1.
    classes: class names; ``classes[k]`` names label k. A reduced dataset keeps the full list, so
        ``num_classes`` (the width of the classifier) does not change.
    mean, std: per-channel statistics in [0, 1] used to normalise ``images / 255``.
    name: the dataset's name (``load`` names it, e.g. "cifar100").
    masks: bool (N, H, W) object masks (synthetic data only), else None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    masks: torch.Tensor | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"images must be square, got {tuple(self.images.shape[2:])}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 (N,) with N = {len(self.images)}, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if not len(self.mean) == len(self.std) == self.images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({self.images.shape[1]})")
        if self.masks is not None and (
            self.masks.dtype != torch.bool or self.masks.shape != self.images[:, 0].shape
        ):
            raise ValueError("masks must be bool (N, H, W) matching the images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels."""
        return self.images.shape[-1]


def select(dataset: ImageDataset, index: torch.Tensor) -> ImageDataset:
    """A new dataset with the images at ``index`` (int64 (M,)), in that order."""
    masks = None if dataset.masks is None else dataset.masks[index]
    return dataclasses.replace(
        dataset, images=dataset.images[index], labels=dataset.labels[index], masks=masks
    )


def stratified_choice(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """bool (N,): round(fraction * count) images of each class, chosen by a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        order = torch.randperm(len(members), generator=generator)
        chosen[members[order[: round(fraction * len(members))]]] = True
    return chosen


# ---------------------------------------------------------------------------------- reductions
def keep_classes(dataset: ImageDataset, n: int) -> ImageDataset:
    """Only the images of classes 0 .. n-1 (Figure 4 right), in their original order.

    Labels and ``classes`` are unchanged, so a K-way classifier still fits the reduced dataset.
    """
    if not 1 <= n <= dataset.num_classes:
        raise ValueError(f"n must be in 1..{dataset.num_classes}, got {n}")
    return select(dataset, torch.nonzero(dataset.labels < n).squeeze(1))


def keep_fraction(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """round(fraction * count) images of each class (Python's round), chosen reproducibly from
    ``seed``, in their original order (Figure 7 left)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen = stratified_choice(dataset.labels, fraction, seed)
    return select(dataset, torch.nonzero(chosen).squeeze(1))

