"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis, 2016) for CIFAR, without dropout.

A 16-wide conv3x3 stem, three groups of n = (d - 4) / 6 pre-activation blocks of widths 16k,
32k, 64k (strides 1, 2, 2), then BN-ReLU, pooling and ``fc``. Parameter names follow the
published CIFAR-100 teachers (``blockG.layer.B.bn1``, ``convShortcut``, ``bn1``, ``fc``) so
they load strictly. On 32x32 inputs the groups give 32x32, 16x16 and 8x8 maps.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut: (N, C_in, H, W) -> (N, C_out, H/s, W/s).

    When the width changes, the shortcut is a 1x1 ``convShortcut`` applied to the
    pre-activated input, as in the original WRN; otherwise it is the identity on the raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        # WRN groups change width exactly where they change resolution, so one test suffices.
        self.convShortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return out + shortcut


class WideGroup(nn.Module):
    """``num_blocks`` pre-activation blocks under ``layer``; only the first changes shape."""

    def __init__(self, in_channels: int, width: int, num_blocks: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            PreActBlock(in_channels, width, stride),
            *(PreActBlock(width, width, stride=1) for _ in range(num_blocks - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(GAPClassifier):
    """WRN-``depth``-``widen``; features (N, 64 * widen, H/4, W/4), after the final BN-ReLU."""

    # Pre-activation: the group outputs are not yet normalised; the last one gives the
    # features before the final BN-ReLU.
    stages = ("block1", "block2", "block3")
    # Each group's output is normalised by the BN that opens the next group (the final bn1 for
    # the last): its output is what the next ReLU rectifies.
    preact_stages = preact_norms = ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1")

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WRN has depth 6n + 4, got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.block1 = WideGroup(16, widths[0], blocks_per_group, stride=1)
        self.block2 = WideGroup(widths[0], widths[1], blocks_per_group, stride=2)
        self.block3 = WideGroup(widths[1], widths[2], blocks_per_group, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[2], num_classes)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images -> (N, 64 * widen, H/4, W/4) features."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc


# name -> (depth, widen factor)
_CONFIGS: dict[str, tuple[int, int]] = {
    f"wrn_{depth}_{widen}": (depth, widen) for depth in (16, 40) for widen in (1, 2)
}

for _name, _config in _CONFIGS.items():
    register(_name)(partial(WideResNet, *_config))
