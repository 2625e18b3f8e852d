"""CIFAR ResNets (He et al., 2016, section 4.2): depth 6n + 2, three stages of n basic blocks.

``resnet{depth}`` has widths 16/32/64 after a 16-wide stem; ``resnet{depth}x4`` has a 32-wide
stem and widths 64/128/256. Parameter names follow the published CIFAR-100 teachers
(``layerS.B.conv1``, ``layerS.B.downsample.0`` / ``.1``, ``fc``) so they load strictly.
On 32x32 inputs the stages give 32x32, 16x16 and 8x8 maps.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU: (N, C_in, H, W) -> (N, C_out, H/s, W/s).

    The shortcut is the identity, or a 1x1 conv + BN projection when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def _stage(in_channels: int, width: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` basic blocks; only the first changes the width and the resolution."""
    return nn.Sequential(
        BasicBlock(in_channels, width, stride),
        *(BasicBlock(width, width, stride=1) for _ in range(num_blocks - 1)),
    )


class CifarResNet(GAPClassifier):
    """Stem conv3x3-BN-ReLU, three stages of basic blocks (strides 1, 2, 2) and ``fc``.

    Features: (N, widths[-1], H/4, W/4), post-ReLU.
    """

    stages = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        stem_width: int,
        widths: tuple[int, int, int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(stem_width, widths[0], blocks_per_stage, stride=1)
        self.layer2 = _stage(widths[0], widths[1], blocks_per_stage, stride=2)
        self.layer3 = _stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)
        # A block calls its one ReLU twice; the last call rectifies conv branch + shortcut. The
        # BN before the addition stands for the sum's statistics (as in OFD's code).
        last = blocks_per_stage - 1
        self.preact_stages = tuple(f"{stage}.{last}.relu" for stage in self.stages)
        self.preact_norms = tuple(f"{stage}.{last}.bn2" for stage in self.stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images -> (N, widths[-1], H/4, W/4) features."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def get_classifier(self) -> nn.Linear:
        return self.fc


# name -> (depth, stem width, stage widths)
_CONFIGS: dict[str, tuple[int, int, tuple[int, int, int]]] = {
    **{f"resnet{depth}": (depth, 16, (16, 32, 64)) for depth in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{depth}x4": (depth, 32, (64, 128, 256)) for depth in (8, 32)},
}


for _name, _config in _CONFIGS.items():
    register(_name)(partial(CifarResNet, *_config))
