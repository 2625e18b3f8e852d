"""The loaders: ``BatchLoader`` keeps a small dataset on the device and augments whole batches
there; ``imagenet_loader`` reads ImageNet-sized folders that do not fit in memory; ``loaders``
answers "the loaders of this config" for either, in one shape (``Loaders``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from catkd.data.dataset import SPLITS, ImageDataset, keep_classes, keep_fraction
from catkd.data.readers import data_root, load, missing

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -------------------------------------------------------------------------------- batch loader
def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixing (seed, epoch), so nearby pairs give unrelated random streams."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class BatchLoader:
    """Batches of a small ``ImageDataset`` kept on ``device``, augmented a whole batch at a time.

    The uint8 images are moved to ``device`` once (stored N x H x W x C, so a pixel's channels
    are adjacent for the gathers). Each iteration yields ``(images, labels)``: float32
    (B, C, H, W) normalised with the dataset's mean and std, and int64 (B,), both on ``device``.

    train=True: a fresh permutation per epoch, the last incomplete batch dropped, and per image a
    random crop of the original size from the image zero-padded by ``crop_padding`` pixels (zero
    in pixel values, before normalisation, as torchvision's RandomCrop) and, if ``flip``, a random
    horizontal flip. Every random number comes from the loader's own ``torch.Generator`` seeded
    by (``seed``, epoch): the global RNG is never used, and the same seed and epoch give the same
    batches on any device. An iteration uses the current epoch and then advances it by one; call
    ``set_epoch(epoch)`` to resume at an epoch (or to follow DistributedSampler's habit).

    train=False: every image once, in order, unaugmented.

    DDP (``world_size`` > 1): train: rank r takes positions r, r + W, r + 2W, ... of the epoch's
    permutation, N // W images per rank (the few left over differ every epoch); test: rank r takes
    the contiguous slice [r * N // W, (r + 1) * N // W), without padding, so the shards cover the
    test set exactly once but may differ in size by one image (and in number of batches: reduce
    the metrics after the loop, not per batch). ``batch_size`` is per rank.

    channels_last=True gives batches in torch.channels_last memory format.

    sample_indices=True yields ``(images, labels, indices)``: the int64 (B,) positions of the
    batch's images in ``dataset``, on ``device``, for methods that keep per-sample state (CRD).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, train: bool,
                 device: str | torch.device = "cpu", seed: int = 0, crop_padding: int = 4,
                 flip: bool = True, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, sample_indices: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.device = torch.device(device)
        self.seed, self.crop_padding, self.flip = seed, crop_padding, flip
        self.rank, self.world_size = rank, world_size
        self.sample_indices = sample_indices
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0
        self.images = dataset.images.permute(0, 2, 3, 1).contiguous().to(self.device)  # N H W C
        self.labels = dataset.labels.to(self.device)
        std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device)
        self._scale, self._shift = 1 / (255 * std), -mean / std  # x/255 normalised = x*scale+shift
        if train and len(self) == 0:
            raise ValueError(f"{len(dataset)} images over {world_size} rank(s) make no full "
                             f"batch of {batch_size}")

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        if self.train:
            return len(self.dataset) // self.world_size // self.batch_size
        return -(-len(self._test_positions()) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if not self.train:
            return self._test_batches()
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._train_batches(epoch)

    def _test_positions(self) -> range:
        n = len(self.dataset)
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def _test_batches(self):
        positions = self._test_positions()
        for start in range(positions.start, positions.stop, self.batch_size):
            stop = min(start + self.batch_size, positions.stop)
            index = torch.arange(start, stop, device=self.device)
            yield self._batch(self.images[start:stop], index)

    def _train_batches(self, epoch: int):
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        # Drawn for all N positions on every rank alike, so ranks share the stream but not draws.
        order = torch.randperm(n, generator=generator)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(
            n, dtype=torch.bool)
        mine = torch.arange(self.rank, n - n % self.world_size, self.world_size)
        order, offsets, flips = (t[mine].to(self.device) for t in (order, offsets, flips))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = slice(start, start + self.batch_size)
            index = order[batch]
            images = self._crop_and_flip(self.images[index], offsets[batch], flips[batch])
            yield self._batch(images, index)

    def _batch(self, images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 (B, H, W, C) images at dataset positions ``index`` -> the yielded tuple."""
        batch = (self._finish(images), self.labels[index])
        return (*batch, index) if self.sample_indices else batch

    def _crop_and_flip(self, images: torch.Tensor, offsets: torch.Tensor,
                       flips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> (B, H, W, C): output pixel (y, x) of image b is pixel
        (y + dy_b, x' + dx_b) of the image padded by p, with x' = W-1-x if flipped else x."""
        p = self.crop_padding
        height, width = images.shape[1:3]
        padded = F.pad(images, (0, 0, p, p, p, p))  # zeros around H and W, not C
        rows = offsets[:, 0, None] + torch.arange(height, device=self.device)  # (B, H)
        columns = torch.arange(width, device=self.device).expand(len(images), width)
        columns = torch.where(flips[:, None], width - 1 - columns, columns)
        columns = offsets[:, 1, None] + columns  # (B, W)
        batch = torch.arange(len(images), device=self.device)
        return padded[batch[:, None, None], rows[:, :, None], columns[:, None, :]]

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> normalised float32 (B, C, H, W) in the requested memory format."""
        normalised = images.float() * self._scale + self._shift  # broadcast over the last dim
        return normalised.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)


# ------------------------------------------------------------------------------------ ImageNet
class FolderLoader(torch.utils.data.DataLoader):
    """A DataLoader with ``set_epoch``, like ``BatchLoader``, so training loops treat both alike."""

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training sampler for ``epoch``; the test sampler has a fixed order."""
        if isinstance(self.sampler, torch.utils.data.DistributedSampler):
            self.sampler.set_epoch(epoch)


class _WithIndices(torch.utils.data.Dataset):
    """An image folder's samples with their index: (image, label, index)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)


def imagenet_loader(split: str, batch_size: int, root: str | Path | None = None,
                    workers: int = 8, rank: int = 0, world_size: int = 1,
                    seed: int = 0, sample_indices: bool = False) -> FolderLoader:
    """ImageNet from ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

    Yields float32 (B, 3, 224, 224) normalised with ImageNet's mean and std, and int64 (B,)
    labels; with ``sample_indices`` also the (B,) indices of the samples in the folder (CRD).
    ``loader.dataset.targets`` lists every sample's label.
    train: RandomResizedCrop 224 + horizontal flip, shuffled by a DistributedSampler seeded by
    ``seed`` (call ``set_epoch`` every epoch), the last incomplete batch dropped; with
    ``world_size`` > 1 each rank gets an equal share. test: Resize 256 + CenterCrop 224, in order;
    rank r gets the contiguous slice [r * N // W, (r + 1) * N // W), without padding.
    ``batch_size`` is per rank.
    """
    import torchvision
    from torchvision import transforms

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    folder = data_root(root) / "imagenet" / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise missing(
            "ImageNet", [folder],
            "Get ILSVRC2012 from https://image-net.org (registration needed) and put it in "
            f"{folder.parent} as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the validation images "
            "sorted into one folder per class). It is not downloaded automatically.",
        )
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if split == "train":
        augment = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        augment = [transforms.Resize(256), transforms.CenterCrop(224)]
    dataset = torchvision.datasets.ImageFolder(str(folder), transforms.Compose(augment + normalise))
    if sample_indices:
        dataset = _WithIndices(dataset)
    if split == "train":
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    else:
        n = len(dataset)
        sampler = range(rank * n // world_size, (rank + 1) * n // world_size)
    return FolderLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        drop_last=split == "train", pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # Seeds the workers' augmentation, so the global RNG plays no part.
        generator=torch.Generator().manual_seed(seed),
    )


# ---------------------------------------------------------------------- the loaders of a config
# ILSVRC2012's classes, and the side of the crops imagenet_loader yields.
IMAGENET_CLASSES, IMAGENET_SIZE = 1000, 224


def datasets(config: dict) -> tuple[ImageDataset, ImageDataset]:
    """The (training, test) sets of a config (``catkd.config``'s resolved dict), its reductions
    applied to the training set."""
    spec = config["data"]
    train_set = load(spec["dataset"], "train", spec["root"])
    test_set = load(spec["dataset"], "test", spec["root"])
    if spec["classes"] is not None:
        train_set = keep_classes(train_set, spec["classes"])
    if spec["fraction"] < 1:
        train_set = keep_fraction(train_set, spec["fraction"], seed=config["seed"])
    return train_set, test_set


@dataclasses.dataclass
class Loaders:
    """What the engine needs of a config's data, the same for every dataset.

    train, test: yield ``(images, labels)`` (plus the samples' indices from ``train`` when asked
        for): float32 (B, C, H, W) normalised images and int64 (B,) labels; both have
        ``set_epoch(epoch)``.
    num_classes, in_channels, image_size: the shape of the classifier's input and output.
    train_labels: int64 (N,), the label of every training sample, in the order that the
        indices count (a per-sample memory, CRD's, is sized by it).
    """

    train: BatchLoader | FolderLoader
    test: BatchLoader | FolderLoader
    num_classes: int
    in_channels: int
    image_size: int
    train_labels: torch.Tensor


def loaders(config: dict, device: str | torch.device = "cpu", rank: int = 0,
            world_size: int = 1, sample_indices: bool = False) -> Loaders:
    """The training and test loaders of process ``rank`` of ``world_size`` for ``config`` (a
    resolved config dict), on ``device``; ``sample_indices``: the training loader also yields
    the samples' indices.

    ``data.batch_size`` is the batch of one step over all processes (the recipe's), so each
    process gets its share. ImageNet is read from its folders as it goes; every other dataset
    is held on ``device``.
    """
    spec, runtime = config["data"], config["runtime"]
    if spec["batch_size"] % world_size:
        raise ValueError(f"data.batch_size {spec['batch_size']} is the batch of one step over all "
                         f"{world_size} processes: make it a multiple of {world_size}")
    batch_size = spec["batch_size"] // world_size
    if spec["dataset"] == "imagenet":
        train, test = (imagenet_loader(split, batch_size, spec["root"], runtime["workers"], rank,
                                       world_size, config["seed"],
                                       sample_indices and split == "train")
                       for split in SPLITS)
        return Loaders(train, test, IMAGENET_CLASSES, 3, IMAGENET_SIZE,
                       torch.as_tensor(train.dataset.targets))
    train_set, test_set = datasets(config)
    common = dict(batch_size=batch_size, device=device, seed=config["seed"],
                  rank=rank, world_size=world_size, channels_last=runtime["channels_last"])
    train = BatchLoader(train_set, train=True, crop_padding=spec["crop_padding"],
                        flip=spec["flip"], sample_indices=sample_indices, **common)
    test = BatchLoader(test_set, train=False, **common)
    return Loaders(train, test, test_set.num_classes, test_set.in_channels, test_set.image_size,
                   train_set.labels)
