"""Datasets by name, the paper's reductions, and a loader that augments whole batches on the device.

The bottom layer of ``catkd``: it imports no other ``catkd`` module.

- ``ImageDataset``: a dataset held in memory as a uint8 tensor, with its labels, class names and
  normalisation statistics.
- ``load(name, split)`` / ``names()``: cifar100, fashion-mnist, digits, stl10, tiny-imagenet,
  synthetic and synthetic-distractors (shapes on a textured background, with object masks; also
  ``synthetic(...)``).
  Files are looked for in ``root``, else ``$CATKD_DATA``, else ``data/`` next to the package (and
  for Fashion-MNIST also in ``/usr/share/datasets/fashion-mnist``, where Debian's package
  ``dataset-fashion-mnist`` installs it). Where a dataset is missing, torchvision downloads it if it
  can; otherwise a ``FileNotFoundError`` says where to put it and how to get it. No dataset is ever
  replaced by another one.
- ``keep_classes`` / ``keep_fraction``: train on part of the classes (Figure 4 right) or on a
  fraction of the images of each class (Figure 7 left).
- ``BatchLoader``: keeps the images on the device and yields normalised float batches, with random
  crop (zero padding) and horizontal flip done for the whole batch at once; DDP sharding.
- ``imagenet_loader``: a torch ``DataLoader`` for ImageNet-sized folders that do not fit in memory.
"""

import dataclasses
import gzip
import os
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SPLITS = ("train", "test")
REPO_DATA = Path(__file__).resolve().parent.parent / "data"
# Debian/Ubuntu's package dataset-fashion-mnist installs the four .gz files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


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
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    name: str
    masks: Optional[torch.Tensor] = None

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


def _select(dataset: ImageDataset, index: torch.Tensor) -> ImageDataset:
    """A new dataset with the images at ``index`` (int64 (M,)), in that order."""
    masks = None if dataset.masks is None else dataset.masks[index]
    return dataclasses.replace(
        dataset, images=dataset.images[index], labels=dataset.labels[index], masks=masks
    )


# ---------------------------------------------------------------------------- where files live
def data_root(root: Optional[Union[str, Path]] = None) -> Path:
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


def _missing(name: str, looked_in: Sequence[Path], how: str) -> FileNotFoundError:
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
def _load_cifar100(split: str, root: Optional[Path], download: bool) -> ImageDataset:
    import torchvision

    folder = data_root(root)
    error = _missing(
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


def _fashion_mnist_folders(folder: Path) -> List[Path]:
    return [folder / "fashion-mnist", folder / "FashionMNIST" / "raw", SYSTEM_FASHION_MNIST]


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    return None


def _fashion_mnist_files(folders: Sequence[Path], prefix: str) -> Optional[Tuple[Path, Path]]:
    """The first folder's (images, labels) files for ``prefix`` ("train" or "t10k"), if any."""
    for folder in folders:
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def _load_fashion_mnist(split: str, root: Optional[Path], download: bool) -> ImageDataset:
    """From the first of ``_fashion_mnist_folders`` holding the split's two idx files."""
    folder = data_root(root)
    folders = _fashion_mnist_folders(folder)
    prefix = "train" if split == "train" else "t10k"
    files = _fashion_mnist_files(folders, prefix)
    if files is None:
        error = _missing(
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
def _load_stl10(split: str, root: Optional[Path], download: bool) -> ImageDataset:
    import torchvision

    folder = data_root(root)
    error = _missing(
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
def _tiny_imagenet_classes(folder: Path) -> Tuple[List[str], List[str]]:
    """(wnids sorted, readable names): a name is the first synonym in words.txt, else the wnid."""
    wnids = sorted(path.name for path in (folder / "train").iterdir() if path.is_dir())
    words = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, synonyms = line.partition("\t")
            words[wnid] = synonyms.split(",")[0].strip()
    return wnids, [words.get(wnid, wnid) for wnid in wnids]


def _tiny_imagenet_files(folder: Path, split: str, wnids: List[str]) -> List[Tuple[Path, int]]:
    """(JPEG path, label) pairs: train/<wnid>/images/*.JPEG, or val/ via val_annotations.txt."""
    if split == "train":
        return [(path, label) for label, wnid in enumerate(wnids)
                for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG"))]
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    rows = sorted(line.split("\t")[:2] for line in annotations if line.strip())
    return [(folder / "val" / "images" / filename, label_of[wnid]) for filename, wnid in rows]


def _load_tiny_imagenet(split: str, root: Optional[Path], download: bool) -> ImageDataset:
    """Tiny ImageNet's 64x64 RGB JPEGs decoded into memory; "test" is the labelled val split."""
    from PIL import Image

    folder = data_root(root) / "tiny-imagenet-200"
    needed = [folder / "train", folder / "val" / "images", folder / "val" / "val_annotations.txt"]
    if not all(path.exists() for path in needed):
        raise _missing(
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


def _stratified_choice(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """bool (N,): round(fraction * count) images of each class, chosen by a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        order = torch.randperm(len(members), generator=generator)
        chosen[members[order[: round(fraction * len(members))]]] = True
    return chosen


def _load_digits(split: str, root: Optional[Path], download: bool) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, values 0..16 scaled to 0..255), split 80/20 per
    class with a fixed seed. Normalised with the train split's own mean and std."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    in_train = _stratified_choice(labels, DIGITS_TRAIN_FRACTION, DIGITS_SPLIT_SEED)
    train_pixels = images[in_train].double() / 255
    keep = in_train if split == "train" else ~in_train
    return ImageDataset(images[keep], labels[keep], [str(d) for d in range(10)],
                        (train_pixels.mean().item(),), (train_pixels.std().item(),), "digits")


# ----------------------------------------------------------------------------------- synthetic
def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _disc(u, v):
    return u * u + v * v <= 1.0


def _triangle(u, v):  # apex up (v grows downwards, as image rows do)
    return (v >= -0.9) & (v <= 0.8) & (u.abs() <= 0.55 * (v + 0.9))


def _plus(u, v):
    return ((u.abs() <= 0.3) & (v.abs() <= 1.0)) | ((v.abs() <= 0.3) & (u.abs() <= 1.0))


def _x_cross(u, v):
    diagonals = ((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4)
    return diagonals & (torch.maximum(u.abs(), v.abs()) <= 0.9)


def _ring(u, v):
    radius = torch.sqrt(u * u + v * v)
    return (radius >= 0.55) & (radius <= 1.0)


def _frame(u, v):
    extent = torch.maximum(u.abs(), v.abs())
    return (extent >= 0.5) & (extent <= 0.9)


def _diamond(u, v):
    return u.abs() + v.abs() <= 1.0


def _stripes(across, along):  # three bars across the box, two gaps between them
    band = torch.floor((across + 0.9) / 0.36)
    return (torch.maximum(across.abs(), along.abs()) <= 0.9) & (band % 2 == 0)


def _horizontal_bars(u, v):
    return _stripes(v, u)


def _vertical_bars(u, v):
    return _stripes(u, v)


# Shapes on coordinates (u, v) in units of the object's radius, centred on the object.
SYNTHETIC_SHAPES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "square": _square, "disc": _disc, "triangle": _triangle, "plus": _plus, "x": _x_cross,
    "ring": _ring, "frame": _frame, "diamond": _diamond,
    "horizontal bars": _horizontal_bars, "vertical bars": _vertical_bars,
}  # fmt: skip
# Every shape lies within this many radii of its centre (the corners of the x's and bars' box).
SYNTHETIC_SHAPE_EXTENT = 0.9 * 2**0.5
# Saturated colours, far from the grey background. Class k is shape k % 10 in colour k // 10.
SYNTHETIC_COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.95, 0.20, 0.15), "green": (0.20, 0.85, 0.25), "blue": (0.20, 0.40, 0.95),
    "yellow": (0.95, 0.90, 0.20), "magenta": (0.90, 0.20, 0.85), "cyan": (0.20, 0.90, 0.90),
    "orange": (1.00, 0.55, 0.10), "white": (0.97, 0.97, 0.97),
}  # fmt: skip
SYNTHETIC_MAX_CLASSES = len(SYNTHETIC_SHAPES) * len(SYNTHETIC_COLOURS)
# Measured over synthetic(20000, 10, 32, seed=0); shared by all splits and variants so they
# normalise alike (approximate for other settings: normalisation only needs to be roughly right).
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.4725, 0.3650, 0.3579), (0.1980, 0.1326, 0.1428)
SYNTHETIC_SIZES = {"train": 10_000, "test": 2_000}
SYNTHETIC_SEEDS = {"train": 0, "test": 1}
_SYNTHETIC_CHUNK = 2048  # bounds memory; fixed, because the random stream depends on it
# Candidate positions tried per distractor; the one farthest from the object is kept.
_DISTRACTOR_CANDIDATES = 8


@dataclasses.dataclass(frozen=True)
class SyntheticDifficulty:
    """How hard the synthetic images are; the defaults are the "synthetic" dataset.

    radius: (low, high) object radius as a fraction of the image side, 0 < low <= high < 0.5.
    texture: amplitude of the smooth background texture (0 to 1 pixel scale), >= 0.
    noise: standard deviation of the per-pixel grey noise (same scale), >= 0.
    distractors: objects of other classes drawn in each image, outside its mask, >= 0. They are
        smaller than the object (so the label names the largest object), placed as far from it as
        a few random tries allow, and drawn before it, so they never cover it.
    distractor_radius: (low, high) distractor radius as a fraction of the image side, with
        0 < low <= high < radius[0].
    """

    radius: Tuple[float, float] = (0.18, 0.35)
    texture: float = 0.08
    noise: float = 0.03
    distractors: int = 0
    distractor_radius: Tuple[float, float] = (0.08, 0.12)

    def __post_init__(self):
        low, high = self.radius
        if not 0 < low <= high < 0.5:
            raise ValueError(f"radius must be (low, high) with 0 < low <= high < 0.5 (a fraction "
                             f"of the image side), got {self.radius}")
        if self.texture < 0 or self.noise < 0:
            raise ValueError(f"texture and noise must be >= 0, got texture={self.texture}, "
                             f"noise={self.noise}")
        if not isinstance(self.distractors, int) or self.distractors < 0:
            raise ValueError(f"distractors must be an integer >= 0, got {self.distractors!r}")
        small, large = self.distractor_radius
        if self.distractors and not 0 < small <= large < low:
            raise ValueError(f"distractor_radius must be (low, high) with 0 < low <= high < the "
                             f"object's smallest radius {low}, got {self.distractor_radius}")


# The registered synthetic datasets: name -> difficulty.
SYNTHETIC_VARIANTS: Dict[str, SyntheticDifficulty] = {
    "synthetic": SyntheticDifficulty(),
    # Two smaller objects of other classes per image, a stronger texture and more noise.
    "synthetic-distractors": SyntheticDifficulty(texture=0.15, noise=0.06, distractors=2),
}


def synthetic_class_names(num_classes: int) -> List[str]:
    """["red square", "red disc", ...]: class k is shape k % 10 drawn in colour k // 10."""
    shapes, colours = list(SYNTHETIC_SHAPES), list(SYNTHETIC_COLOURS)
    return [f"{colours[k // len(shapes)]} {shapes[k % len(shapes)]}" for k in range(num_classes)]


def _shape_masks(labels: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor,
                 size: int) -> torch.Tensor:
    """bool (n, S, S): the shape of each int64 (n,) label at centre (n, 2) (x, y in pixels) and
    radius (n,) (pixels)."""
    pixels = torch.arange(size, dtype=torch.float32)
    u = (pixels[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # (n, 1, S)
    v = (pixels[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # (n, S, 1)
    masks = torch.zeros(len(labels), size, size, dtype=torch.bool)
    shape_ids = labels % len(SYNTHETIC_SHAPES)
    for shape_id, draw in enumerate(SYNTHETIC_SHAPES.values()):
        members = shape_ids == shape_id
        masks[members] = draw(u[members], v[members])
    return masks


def _synthetic_chunk(labels: torch.Tensor, num_classes: int, image_size: int,
                     difficulty: SyntheticDifficulty, generator: torch.Generator):
    """uint8 (n, 3, S, S) images and bool (n, S, S) masks for int64 (n,) labels.

    The random numbers of the distractors are drawn after all the others, so the images without
    distractors do not depend on how many distractors other settings ask for.
    """
    n, size = len(labels), image_size
    palette = torch.tensor(list(SYNTHETIC_COLOURS.values()))

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    def colour_of(classes):  # (n,) -> (n, 3, 1, 1), brightness varying per object
        colour = palette[classes // len(SYNTHETIC_SHAPES)] * uniform(0.8, 1.0, n, 1)
        return colour[:, :, None, None]

    # Object: radius and centre in pixels, so that it lies wholly inside the image.
    radius = uniform(*difficulty.radius, n) * size
    centre = radius[:, None] - 0.5 + uniform(0, 1, n, 2) * (size - 2 * radius[:, None])
    masks = _shape_masks(labels, centre, radius, size)
    colour = colour_of(labels)
    # Background: a slightly tinted grey level per image plus a smooth low-frequency texture.
    grey = uniform(0.25, 0.55, n, 1, 1, 1) + 0.03 * torch.randn(n, 3, 1, 1, generator=generator)
    texture = F.interpolate(torch.randn(n, 1, 4, 4, generator=generator), size=(size, size),
                            mode="bilinear", align_corners=False)
    images = grey + difficulty.texture * texture
    noise = difficulty.noise * torch.randn(n, 1, size, size, generator=generator)
    for _ in range(difficulty.distractors):
        other = (labels + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
        small = uniform(*difficulty.distractor_radius, n) * size
        candidates = (small[:, None, None] - 0.5 + uniform(0, 1, n, _DISTRACTOR_CANDIDATES, 2)
                      * (size - 2 * small[:, None, None]))  # (n, candidates, 2)
        gap = ((candidates - centre[:, None]).norm(dim=2)
               - SYNTHETIC_SHAPE_EXTENT * (radius + small)[:, None])
        where = candidates[torch.arange(n), gap.argmax(dim=1)]
        images = torch.where(_shape_masks(other, where, small, size)[:, None], colour_of(other),
                             images)
    images = torch.where(masks[:, None], colour, images)  # last: nothing covers the object
    images += noise
    # Few large in-place passes: this is what sets the speed.
    return images.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8), masks


def synthetic(num_images: int, num_classes: int = 10, image_size: int = 32, seed: int = 0,
              difficulty: Optional[SyntheticDifficulty] = None) -> ImageDataset:
    """Each image holds one object of its class on a noisy textured grey background.

    Class k is a shape (square, disc, triangle, plus, x, ring, frame, diamond, horizontal bars,
    vertical bars: k % 10) in a colour (k // 10), at a random position and size (by default
    radius 18-35% of the side), so the first ten classes differ by shape only. ``difficulty``
    (default ``SyntheticDifficulty()``) sets the size range, the texture, the noise and the
    number of smaller distractor objects of other classes. Classes are balanced (in random
    order). Reproducible from ``seed``. Returns RGB uint8 images (N, 3, S, S) with ``masks``
    bool (N, S, S) marking the object's pixels (never a distractor's).
    """
    difficulty = SyntheticDifficulty() if difficulty is None else difficulty
    if not 1 <= num_classes <= SYNTHETIC_MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{SYNTHETIC_MAX_CLASSES}, got {num_classes}")
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    if difficulty.distractors and num_classes < 2:
        raise ValueError("distractors are objects of other classes: they need num_classes >= 2")
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_images) % num_classes)[torch.randperm(num_images,
                                                                     generator=generator)]
    chunks = [_synthetic_chunk(part, num_classes, image_size, difficulty, generator)
              for part in labels.split(_SYNTHETIC_CHUNK)]
    images = torch.cat([chunk[0] for chunk in chunks])
    masks = torch.cat([chunk[1] for chunk in chunks])
    return ImageDataset(images, labels,
                        synthetic_class_names(num_classes), SYNTHETIC_MEAN, SYNTHETIC_STD,
                        "synthetic", masks)


def _synthetic_loader(name: str) -> Callable[[str, Optional[Path], bool], ImageDataset]:
    """The loader of the registered synthetic dataset ``name`` (see ``SYNTHETIC_VARIANTS``)."""

    def load_split(split: str, root: Optional[Path], download: bool) -> ImageDataset:
        dataset = synthetic(SYNTHETIC_SIZES[split], seed=SYNTHETIC_SEEDS[split],
                            difficulty=SYNTHETIC_VARIANTS[name])
        return dataclasses.replace(dataset, name=name)

    return load_split


# ------------------------------------------------------------------------------------- by name
_LOADERS = {
    "cifar100": _load_cifar100,
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "stl10": _load_stl10,
    "tiny-imagenet": _load_tiny_imagenet,
    "synthetic": _synthetic_loader("synthetic"),
    "synthetic-distractors": _synthetic_loader("synthetic-distractors"),
}


def names() -> List[str]:
    """Every dataset name; all but "imagenet" work with ``load``."""
    return list(_LOADERS) + ["imagenet"]


def load(name: str, split: str = "train", root: Optional[Union[str, Path]] = None, *,
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


# ---------------------------------------------------------------------------------- reductions
def keep_classes(dataset: ImageDataset, n: int) -> ImageDataset:
    """Only the images of classes 0 .. n-1 (Figure 4 right), in their original order.

    Labels and ``classes`` are unchanged, so a K-way classifier still fits the reduced dataset.
    """
    if not 1 <= n <= dataset.num_classes:
        raise ValueError(f"n must be in 1..{dataset.num_classes}, got {n}")
    return _select(dataset, torch.nonzero(dataset.labels < n).squeeze(1))


def keep_fraction(dataset: ImageDataset, fraction: float, seed: int = 0) -> ImageDataset:
    """round(fraction * count) images of each class (Python's round), chosen reproducibly from
    ``seed``, in their original order (Figure 7 left)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen = _stratified_choice(dataset.labels, fraction, seed)
    return _select(dataset, torch.nonzero(chosen).squeeze(1))


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
                 device: Union[str, torch.device] = "cpu", seed: int = 0, crop_padding: int = 4,
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

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
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

    def _batch(self, images: torch.Tensor, index: torch.Tensor) -> Tuple[torch.Tensor, ...]:
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


def imagenet_loader(split: str, batch_size: int, root: Optional[Union[str, Path]] = None,
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
        raise _missing(
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
