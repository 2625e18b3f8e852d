"""The synthetic generator: shapes on a textured background, with object masks, reproducible
from a seed (``synthetic``), and its registered variants (``SYNTHETIC_VARIANTS``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from catkd.data.dataset import ImageDataset

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
SYNTHETIC_SHAPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "square": _square, "disc": _disc, "triangle": _triangle, "plus": _plus, "x": _x_cross,
    "ring": _ring, "frame": _frame, "diamond": _diamond,
    "horizontal bars": _horizontal_bars, "vertical bars": _vertical_bars,
}  # fmt: skip
# Every shape lies within this many radii of its centre (the corners of the x's and bars' box).
SYNTHETIC_SHAPE_EXTENT = 0.9 * 2**0.5
# Saturated colours, far from the grey background. Class k is shape k % 10 in colour k // 10.
SYNTHETIC_COLOURS: dict[str, tuple[float, float, float]] = {
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

    radius: tuple[float, float] = (0.18, 0.35)
    texture: float = 0.08
    noise: float = 0.03
    distractors: int = 0
    distractor_radius: tuple[float, float] = (0.08, 0.12)

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
SYNTHETIC_VARIANTS: dict[str, SyntheticDifficulty] = {
    "synthetic": SyntheticDifficulty(),
    # Two smaller objects of other classes per image, a stronger texture and more noise.
    "synthetic-distractors": SyntheticDifficulty(texture=0.15, noise=0.06, distractors=2),
}


def synthetic_class_names(num_classes: int) -> list[str]:
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
              difficulty: SyntheticDifficulty | None = None) -> ImageDataset:
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


def synthetic_reader(name: str) -> Callable[[str, Path | None, bool], ImageDataset]:
    """The loader of the registered synthetic dataset ``name`` (see ``SYNTHETIC_VARIANTS``)."""

    def load_split(split: str, root: Path | None, download: bool) -> ImageDataset:
        dataset = synthetic(SYNTHETIC_SIZES[split], seed=SYNTHETIC_SEEDS[split],
                            difficulty=SYNTHETIC_VARIANTS[name])
        return dataclasses.replace(dataset, name=name)

    return load_split

