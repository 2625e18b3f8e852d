"""Datasets by name (``load``, ``names``): the file readers of cifar100, fashion-mnist, stl10,
tiny-imagenet and digits, and the registered synthetic sets.

Files are looked for in ``root``, else ``$CATKD_DATA``, else ``data/`` next to the package (and
for Fashion-MNIST also in ``/usr/share/datasets/fashion-mnist``, where Debian's package
``dataset-fashion-mnist`` installs it). Where a dataset is missing, torchvision downloads it if it
can; otherwise a ``FileNotFoundError`` says where to put it and how to get it. No dataset is ever
replaced by another one.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from catkd.data.dataset import SPLITS, ImageDataset, stratified_choice
from catkd.data.synthetic import synthetic_reader

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
# Debian/Ubuntu's package dataset-fashion-mnist installs the four .gz files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


# ---------------------------------------------------------------------------- where files live
def data_root(root: str | Path | None = None) -> Path:
    """Where datasets live: ``root`` if given, else ``$CATKD_DATA``, else ``<repo>/data``.

    A given ``root`` that is not a folder is a FileNotFoundError, never a reason to look
    elsewhere: it is the folder the caller meant."""
    if root is not None:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"the dataset folder {root} (data.root, probe --root) does "
                                    f"not exist: give an existing folder, or none for "
                                    f"$CATKD_DATA or {REPO_DATA}")
        return Path(root)
    if os.environ.get("CATKD_DATA"):
        return Path(os.environ["CATKD_DATA"])
    return REPO_DATA


def missing(name: str, looked_in: Sequence[Path], how: str) -> FileNotFoundError:
    places = "\n".join(f"  {place}" for place in looked_in)
    return FileNotFoundError(f"{name} not found. Looked in:\n{places}\n{how}")


# Download failures show up as URLError/socket errors (OSError) or as torchvision's RuntimeError.
_DOWNLOAD_ERRORS = (OSError, RuntimeError)


def _from_torchvision(make: Callable[[bool], object], download: bool, error: FileNotFoundError):
    """``make(download=False)``, else ``make(download=True)`` if allowed, else raise ``error``.

    ``make`` builds a torchvision dataset; torchvision raises RuntimeError when the files are
    missing (or fail their checksum).
    """
    try:
        return make(False)
    except RuntimeError:
        if not download:
            raise error from None
    try:
        return make(True)
    except _DOWNLOAD_ERRORS as download_error:
        raise error from download_error


# ---------------------------------------------------------------------------------- CIFAR-100
def _load_cifar100(split: str, root: Path | None, download: bool) -> ImageDataset:
    import torchvision

    folder = data_root(root)
    error = missing(
        "CIFAR-100", [folder / "cifar-100-python"],
        "It is downloaded by torchvision on first use where a network exists; or fetch "
        "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
        f"in {folder} (giving {folder / 'cifar-100-python'}).",
    )
    cifar = _from_torchvision(
        lambda allow: torchvision.datasets.CIFAR100(str(folder), train=split == "train",
                                                    download=allow),
        download, error,
    )
    images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2).contiguous()  # from N H W C
    return ImageDataset(images, torch.tensor(cifar.targets, dtype=torch.int64),
                        list(cifar.classes), CIFAR100_MEAN, CIFAR100_STD, "cifar100")


# ------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes: big-endian header, then the array."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            raw = file.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # truncated or damaged .gz
        raise ValueError(f"{path} is damaged ({error}): replace it with a complete "
                         f"copy") from error
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_folders(folder: Path) -> list[Path]:
    return [folder / "fashion-mnist", folder / "FashionMNIST" / "raw", SYSTEM_FASHION_MNIST]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    return None


def _fashion_mnist_files(folders: Sequence[Path], prefix: str) -> tuple[Path, Path] | None:
    """The first folder's (images, labels) files for ``prefix`` ("train" or "t10k"), if any."""
    for folder in folders:
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def _load_fashion_mnist(split: str, root: Path | None, download: bool) -> ImageDataset:
    """From the first of ``_fashion_mnist_folders`` holding the split's two idx files."""
    folder = data_root(root)
    folders = _fashion_mnist_folders(folder)
    prefix = "train" if split == "train" else "t10k"
    files = _fashion_mnist_files(folders, prefix)
    if files is None:
        error = missing(
            "Fashion-MNIST", folders,
            f"Put {prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz (and the other "
            f"split's two files) in {folder / 'fashion-mnist'}. Debian/Ubuntu: sudo apt-get "
            f"install dataset-fashion-mnist (installs the four files in {SYSTEM_FASHION_MNIST}, "
            "found there); elsewhere downloaded by torchvision on first use.",
        )
        if not download:
            raise error
        _download_fashion_mnist(folder, error)
        files = _fashion_mnist_files(folders, prefix)
    images, labels = (_read_idx(path) for path in files)
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),  # frombuffer is read-only
                        torch.from_numpy(labels.astype(np.int64)),
                        list(FASHION_MNIST_CLASSES), FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                        "fashion-mnist")


def _download_fashion_mnist(folder: Path, error: FileNotFoundError) -> None:
    """Download into ``folder/FashionMNIST/raw`` with torchvision, or raise ``error``."""
    import torchvision

    try:
        torchvision.datasets.FashionMNIST(str(folder), train=True, download=True)
    except _DOWNLOAD_ERRORS as download_error:
        raise error from download_error


# -------------------------------------------------------------------------------------- STL-10
def _load_stl10(split: str, root: Path | None, download: bool) -> ImageDataset:
    import torchvision

    folder = data_root(root)
    error = missing(
        "STL-10", [folder / "stl10_binary"],
        "It is downloaded by torchvision on first use where a network exists; or fetch "
        "stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and unpack it in "
        f"{folder} (giving {folder / 'stl10_binary'}).",
    )
    stl = _from_torchvision(
        lambda allow: torchvision.datasets.STL10(str(folder), split=split, download=allow),
        download, error,
    )
    images = torch.from_numpy(stl.data).contiguous()  # torchvision hands a transposed view
    return ImageDataset(images, torch.from_numpy(stl.labels.astype(np.int64)), list(stl.classes),
                        STL10_MEAN, STL10_STD, "stl10")


# ------------------------------------------------------------------------------- Tiny ImageNet
def _tiny_imagenet_classes(folder: Path) -> tuple[list[str], list[str]]:
    """(wnids sorted, readable names): a name is the first synonym in words.txt, else the wnid."""
    wnids = sorted(path.name for path in (folder / "train").iterdir() if path.is_dir())
    words = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, synonyms = line.partition("\t")
            words[wnid] = synonyms.split(",")[0].strip()
    return wnids, [words.get(wnid, wnid) for wnid in wnids]


def _tiny_imagenet_files(folder: Path, split: str, wnids: list[str]) -> list[tuple[Path, int]]:
    """(JPEG path, label) pairs: train/<wnid>/images/*.JPEG, or val/ via val_annotations.txt."""
    if split == "train":
        return [(path, label) for label, wnid in enumerate(wnids)
                for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG"))]
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    rows = sorted(line.split("\t")[:2] for line in annotations if line.strip())
    return [(folder / "val" / "images" / filename, label_of[wnid]) for filename, wnid in rows]


def _load_tiny_imagenet(split: str, root: Path | None, download: bool) -> ImageDataset:
    """Tiny ImageNet's 64x64 RGB JPEGs decoded into memory; "test" is the labelled val split."""
    from PIL import Image

    folder = data_root(root) / "tiny-imagenet-200"
    needed = [folder / "train", folder / "val" / "images", folder / "val" / "val_annotations.txt"]
    if not all(path.exists() for path in needed):
        raise missing(
            "Tiny ImageNet", [folder],
            f"Fetch tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip "
            f"and unzip it in {folder.parent} (giving train/<wnid>/images/*.JPEG, val/images/ and "
            "val/val_annotations.txt). It is not downloaded automatically.",
        )
    wnids, names = _tiny_imagenet_classes(folder)
    files = _tiny_imagenet_files(folder, split, wnids)
    images = np.empty((len(files), 64, 64, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=f"tiny-imagenet {split}", disable=None)):
        with Image.open(path) as image:
            images[i] = np.asarray(image.convert("RGB"))  # a few of the JPEGs are greyscale
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, names,
                        TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, "tiny-imagenet")


# -------------------------------------------------------------------------------------- digits
DIGITS_TRAIN_FRACTION = 0.8
DIGITS_SPLIT_SEED = 0

def _load_digits(split: str, root: Path | None, download: bool) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, values 0..16 scaled to 0..255), split 80/20 per
    class with a fixed seed. Normalised with the train split's own mean and std."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    in_train = stratified_choice(labels, DIGITS_TRAIN_FRACTION, DIGITS_SPLIT_SEED)
    train_pixels = images[in_train].double() / 255
    keep = in_train if split == "train" else ~in_train
    return ImageDataset(images[keep], labels[keep], [str(d) for d in range(10)],
                        (train_pixels.mean().item(),), (train_pixels.std().item(),), "digits")


# ------------------------------------------------------------------------------------- by name
_LOADERS = {
    "cifar100": _load_cifar100,
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "stl10": _load_stl10,
    "tiny-imagenet": _load_tiny_imagenet,
    "synthetic": synthetic_reader("synthetic"),
    "synthetic-distractors": synthetic_reader("synthetic-distractors"),
}


# Known without loading a dataset, so that a config's data.classes is checked before any work.
_CLASS_COUNTS = {"cifar100": 100, "fashion-mnist": 10, "digits": 10, "stl10": 10,
                 "tiny-imagenet": 200, "synthetic": 10, "synthetic-distractors": 10,
                 "imagenet": 1000}


def names() -> list[str]:
    """Every dataset name; all but "imagenet" work with ``load``."""
    return list(_LOADERS) + ["imagenet"]


def num_classes(name: str) -> int:
    """The number of classes of dataset ``name``, without loading it."""
    if name not in _CLASS_COUNTS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    return _CLASS_COUNTS[name]


def load(name: str, split: str = "train", root: str | Path | None = None, *,
         download: bool = True) -> ImageDataset:
    """The dataset ``name`` (see ``names()``), split "train" or "test", held in memory.

    Files are looked for in ``root``, else ``$CATKD_DATA``, else ``<repo>/data``. A missing dataset
    that torchvision can fetch (cifar100, fashion-mnist, stl10) is downloaded there when
    ``download`` is true; otherwise, or when the download fails, a ``FileNotFoundError`` says where
    to put the files and how to get them. digits and synthetic need no files.
    """
    if name == "imagenet":
        raise ValueError("imagenet does not fit in memory: use catkd.data.imagenet_loader(split, "
                         "batch_size, root) instead of load")
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return _LOADERS[name](split, None if root is None else Path(root), download)

