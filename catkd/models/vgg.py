"""VGG for CIFAR (Simonyan & Zisserman, 2015, with BatchNorm): five blocks, GAP, one Linear.

Each block is conv3x3 (with bias)-BN-ReLU repeated; the blocks are 64, 128, 256, 512 and 512
wide. Parameter names follow the published CIFAR-100 teachers (``block0.0`` conv, ``block0.1``
BN, ``block0.3`` the next conv, ..., ``classifier``) so they load strictly. Blocks 0, 1 and 2
are followed by a 2x2 max-pool; block 3 only on inputs at least 64 wide (as published: the pool
is skipped on 32x32), so 32x32 inputs give 4x4 features.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register

# Inputs at least this wide get the fourth max-pool after block 3.
_FOURTH_POOL_MIN_WIDTH = 64


def _block(in_channels: int, width: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` x (conv3x3-BN-ReLU): (N, in_channels, H, W) -> (N, width, H, W)."""
    layers: list[nn.Module] = []
    for index in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class VGG(GAPClassifier):
    """VGG with ``convs_per_block[i]`` convs in block i; features (N, 512, H/8, W/8) at 32x32."""

    # Block 0 plays the part of a stem (AT and the other feature methods skip stems).
    stages = ("block1", "block2", "block3", "block4")

    def __init__(
        self, convs_per_block: tuple[int, ...], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.block0 = _block(in_channels, 64, convs_per_block[0])
        self.block1 = _block(64, 128, convs_per_block[1])
        self.block2 = _block(128, 256, convs_per_block[2])
        self.block3 = _block(256, 512, convs_per_block[3])
        self.block4 = _block(512, 512, convs_per_block[4])
        self.classifier = nn.Linear(512, num_classes)
        init_conv_bn(self)
        # Each block is [conv, BN, ReLU] * n. The tap is the last ReLU's input, not the BN's
        # output: the in-place ReLU overwrites that output after a forward hook has seen it.
        last = [3 * convs_per_block[int(stage[-1])] for stage in self.stages]
        self.preact_stages = tuple(f"{stage}.{end - 1}" for stage, end in zip(self.stages, last))
        self.preact_norms = tuple(f"{stage}.{end - 2}" for stage, end in zip(self.stages, last))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images -> (N, 512, H/8, W/8) features (H/16 from 64 wide)."""
        input_width = x.shape[-1]
        x = F.max_pool2d(self.block0(x), 2)
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        x = self.block3(x)
        if input_width >= _FOURTH_POOL_MIN_WIDTH:
            x = F.max_pool2d(x, 2)
        return self.block4(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier


# name -> convolutions in each of the five blocks
_CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}

for _name, _convs_per_block in _CONFIGS.items():
    register(_name)(partial(VGG, _convs_per_block))
