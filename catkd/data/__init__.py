"""Datasets by name, the paper's reductions, and the loaders that feed the engine.

The bottom layer of ``catkd``: it imports no other ``catkd`` module. Its files follow its jobs:

- ``dataset``: ``ImageDataset``, a dataset held in memory as a uint8 tensor, with its labels,
  class names and normalisation statistics; ``keep_classes`` / ``keep_fraction`` train on part
  of the classes (Figure 4 right) or on a fraction of the images of each class (Figure 7 left).
- ``readers``: ``load(name, split)`` / ``names()``: cifar100, fashion-mnist, digits, stl10,
  tiny-imagenet, synthetic and synthetic-distractors, read from files (or generated).
- ``synthetic``: shapes on a textured background, with object masks (``synthetic(...)``).
- ``loaders``: ``BatchLoader`` keeps the images on the device and yields normalised float
  batches, with random crop (zero padding) and horizontal flip done for the whole batch at once;
  ``imagenet_loader`` reads ImageNet-sized folders; ``loaders(config, ...)`` gives the engine
  the training and test loaders of a config with its classes, channels, image size and training
  labels, whatever the dataset.
"""

from catkd.data.dataset import SPLITS, ImageDataset, keep_classes, keep_fraction
from catkd.data.loaders import (BatchLoader, FolderLoader, Loaders, datasets, imagenet_loader,
                                loaders)
from catkd.data.readers import data_root, load, names, num_classes
from catkd.data.synthetic import (SYNTHETIC_MAX_CLASSES, SYNTHETIC_VARIANTS, SyntheticDifficulty,
                                  synthetic, synthetic_class_names)

__all__ = ["SPLITS", "SYNTHETIC_MAX_CLASSES", "SYNTHETIC_VARIANTS", "BatchLoader", "FolderLoader",
           "ImageDataset", "Loaders", "SyntheticDifficulty", "data_root", "datasets",
           "imagenet_loader", "keep_classes", "keep_fraction", "load", "loaders", "names", "num_classes",
           "synthetic", "synthetic_class_names"]
