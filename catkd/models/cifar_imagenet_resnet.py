"""ImageNet-layout ResNets (He et al., 2016) adapted to 32x32 inputs: ``ResNet18``, ``ResNet50``.

The 7x7 stride-2 stem and the max pool become one 3x3 stride-1 conv (64 channels, BN, ReLU);
the four stages (widths 64/128/256/512, times 4 for bottlenecks) have strides 1, 2, 2, 2, so
32x32 inputs give 32, 16, 8 and 4 pixel maps. Parameter names and shapes are those of the
CRD / mdistiller CIFAR-100 checkpoints (projection shortcut ``shortcut.0`` conv, ``shortcut.1``
BN; classifier ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 conv + BN projection where the block changes the shape."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs plus shortcut, then ReLU: (N, C_in, H, W) -> (N, width, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(in_channels, width, stride)
        # A module (not F.relu) so that a hook can read the pre-ReLU sum: its last call.
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride s), 1x1 expand (x4) plus shortcut, then ReLU:
    (N, C_in, H, W) -> (N, 4 * width, H/s, W/s)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU()  # a module, so that a hook can read the pre-ReLU sum (last call)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarImageNetResNet(GAPClassifier):
    """(N, in_channels, H, W) -> features (N, 512 * expansion, H/8, W/8)."""

    STAGE_WIDTHS = (64, 128, 256, 512)
    STAGE_STRIDES = (1, 2, 2, 2)
    stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, block: type[BasicBlock | Bottleneck], blocks_per_stage: tuple[int, ...],
                 num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        stem_width = self.STAGE_WIDTHS[0]
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        channels = stem_width
        stage_layers = []
        for width, stride, num_blocks in zip(self.STAGE_WIDTHS, self.STAGE_STRIDES,
                                             blocks_per_stage):
            blocks = []
            for index in range(num_blocks):
                blocks.append(block(channels, width, stride if index == 0 else 1))
                channels = width * block.expansion
            stage_layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stage_layers
        self.linear = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        last_norm = "bn3" if block is Bottleneck else "bn2"  # the BN before the addition
        self.preact_stages = tuple(f"{stage}.{blocks - 1}.relu"
                                   for stage, blocks in zip(self.stages, blocks_per_stage))
        self.preact_norms = tuple(f"{stage}.{blocks - 1}.{last_norm}"
                                  for stage, blocks in zip(self.stages, blocks_per_stage))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def get_classifier(self) -> nn.Linear:
        return self.linear


@register("ResNet18")
def resnet18(num_classes: int, in_channels: int) -> CifarImageNetResNet:
    return CifarImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register("ResNet50")
def resnet50(num_classes: int, in_channels: int) -> CifarImageNetResNet:
    return CifarImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
