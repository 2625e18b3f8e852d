"""MobileNet-V2 (Sandler et al., 2018), CIFAR "mobile_half" variant (width 0.5, 32x32 inputs).

The stages follow the paper's (t, c, n, s) table with every width halved, except that the
second stage keeps stride 1, so the total stride is 16 and 32x32 inputs give 2x2 features.
As in the CRD / mdistiller code that trained the published numbers: ReLU (not ReLU6), an
expansion 1x1 conv even where t = 1, and a final 1x1 conv to 1280 channels that is not
halved. Parameter names and shapes are those checkpoints'.
"""

from __future__ import annotations

import torch
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register


class InvertedResidual(nn.Module):
    """1x1 expansion (x t), 3x3 depthwise (stride s), linear 1x1 projection: (N, C_in, H, W) ->
    (N, C_out, H/s, W/s), plus the input when the shapes agree.

    ``conv`` holds conv, BN, ReLU, conv, BN, ReLU, conv, BN: the projection has no activation,
    because a ReLU on the narrow output would destroy information (Sandler et al., section 3.2).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(GAPClassifier):
    """MobileNet-V2 x0.5: (N, in_channels, H, W) -> features (N, 1280, H/16, W/16).

    ``blocks[i]`` is the i-th row of the (t, c, n, s) table. The stage maps are those of
    blocks 1, 2, 4 and 6 (H/2, H/4, H/8, H/16: the last block of each resolution); the final
    1x1 conv ``conv2`` (BN, ReLU) follows the last stage. 0.81M parameters with 100 classes.
    """

    WIDTH = 0.5
    STEM_CHANNELS = 32
    FEATURE_CHANNELS = 1280
    # (expansion t, output channels c before WIDTH, blocks n, stride s of the first block)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    stages = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
    # Linear bottlenecks: no ReLU ends a stage, so its output is the pre-ReLU map; the last
    # block's projection BN (conv.7) stands for its statistics.
    preact_stages = stages
    preact_norms = ("blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7",
                    "blocks.6.0.conv.7")

    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        width = int(self.STEM_CHANNELS * self.WIDTH)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList()
        for expansion, channels, num_blocks, stride in self.SETTINGS:
            out_channels = int(channels * self.WIDTH)
            layers = []
            for index in range(num_blocks):
                layers.append(InvertedResidual(width, out_channels, stride if index == 0 else 1,
                                               expansion))
                width = out_channels
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = nn.Sequential(
            nn.Conv2d(width, self.FEATURE_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(self.FEATURE_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Linear(self.FEATURE_CHANNELS, num_classes))
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.conv2(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[0]


@register("MobileNetV2")
def mobilenet_v2(num_classes: int, in_channels: int) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels)
