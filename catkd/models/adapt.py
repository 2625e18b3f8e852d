"""Models from outside the zoo made to fit small images, as the zoo's CIFAR ResNets are built.

torchvision's and timm's CNNs downsample ImageNet's 224x224 images 32 times (a ResNet: a
stride-2 stem, a stride-2 max pooling, then three stride-2 stages), so a 28x28 image leaves
them a 1x1 map: no class attention to transfer. The CIFAR ResNets keep their stem at
stride 1 and downsample twice, a total stride of 4: 32x32 -> 8x8, 28x28 -> 7x7, 8x8 -> 2x2.
``reduce_stride`` gives an outside CNN that total stride by setting its earliest
downsamplings to stride 1; nothing is added or removed, so the parameters stay the same.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

# Below this side, ImageNet's total stride of 32 leaves a map of 2x2 or less.
SMALL_IMAGE_SIZE = 64
TOTAL_STRIDE = 4  # the zoo's CIFAR ResNets': two stride-2 levels kept
# The size the outside models are built for: every downsampling level shows in a probe of it.
NOMINAL_SIZE = 224
DOWNSAMPLING_TYPES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
# hook(name, module, its forward's arguments, its output), called on each of them in a probe.
Hook = Callable[[str, nn.Module, tuple, torch.Tensor], None]


def reduce_stride(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Set ``model``'s earliest downsamplings to stride 1 so that its total stride is 4: its
    last feature map on (N, ``in_channels``, S, S) images is then (N, C, ceil(S/4), ceil(S/4)),
    e.g. 7x7 on 28x28 images, 2x2 on 8x8. Changed in place, and returned.

    The downsamplings are the convolutions and poolings of stride 2, grouped by the side of the
    map they act on (a ResNet block's strided conv and its shortcut's 1x1 conv act on the same
    map) in a probe at ImageNet's 224x224; every level but the last two gets stride 1. A padded
    ("same") convolution or pooling keeps the size at stride 1. A model whose downsampling is
    not made of such levels, e.g. a stride-4 patchify stem or a token model's patch embedding,
    or whose last map on the images does not come out at ceil(S/4), is a ValueError.
    """
    levels = _downsampling_levels(model, in_channels)
    for level in levels[:-2]:
        for module in level.values():
            module.stride = (1, 1)
    expected = math.ceil(image_size / TOTAL_STRIDE)
    side = _last_map_side(model, in_channels, image_size)
    if side != (expected, expected):
        reduced = [name for level in levels[:-2] for name in level]
        raise ValueError(
            f"with stride 1 on {', '.join(reduced) or 'none of its downsamplings'} "
            f"({len(levels)} stride-2 levels found, the last two kept), its last map on "
            f"{image_size}x{image_size} images is {side[0]}x{side[1]}, not the "
            f"{expected}x{expected} of a total stride of {TOTAL_STRIDE}: it needs at least two "
            f"stride-2 levels and layers that keep the size at stride 1 (padded)")
    return model


def _downsampling_levels(model: nn.Module, in_channels: int) -> list[dict[str, nn.Module]]:
    """{name: module} of the stride-2 convolutions and poolings acting on each map side, in
    forward order (largest side first)."""
    levels: dict[tuple[int, int], dict[str, nn.Module]] = {}
    strides: dict[str, tuple[int, int]] = {}

    def record(name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        if stride != (1, 1):
            strides[name] = stride
            levels.setdefault(tuple(args[0].shape[-2:]), {})[name] = module

    _probe(model, in_channels, NOMINAL_SIZE, record)
    refused = {name: stride for name, stride in strides.items() if stride != (2, 2)}
    if refused:
        found = ", ".join(f"{name} (stride {stride[0]}x{stride[1]})"
                          for name, stride in refused.items())
        raise ValueError(f"it downsamples by {found}; only stride-2 convolutions and poolings "
                         f"can be set to stride 1 level by level (a patchify stem or a token "
                         f"model's patch embedding cannot)")
    return list(levels.values())


def _last_map_side(model: nn.Module, in_channels: int, image_size: int) -> tuple[int, int]:
    """(H, W) of the output of the last convolution or pooling on an image_size probe: the map
    the head pools (normalisations and activations keep its size)."""
    sides: list[tuple[int, int]] = []
    _probe(model, in_channels, image_size,
           lambda name, module, args, output: sides.append(tuple(output.shape[-2:])))
    if not sides:
        raise ValueError("it has no nn.Conv2d, nn.MaxPool2d or nn.AvgPool2d to downsample with")
    return sides[-1]


@torch.no_grad()
def _probe(model: nn.Module, in_channels: int, image_size: int, hook: Hook) -> None:
    """One forward of a blank (1, in_channels, image_size, image_size) image in eval mode, with
    ``hook(name, module, args, output)`` on every convolution and pooling; the model's mode is
    left as it was."""
    handles = [module.register_forward_hook(
        lambda module, args, output, name=name: hook(name, module, args, output))
        for name, module in model.named_modules() if isinstance(module, DOWNSAMPLING_TYPES)]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
