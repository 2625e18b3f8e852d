"""ShuffleNet V1 (Zhang et al., 2018) and V2 (Ma et al., 2018), CIFAR variants (32x32 inputs).

The ImageNet stem (strided 3x3 conv and max pool) becomes a stride-1 1x1 conv to 24 channels,
so each of the three stages halves the map once: 32x32 inputs give 4x4 features. Parameter
names and shapes are those of the CRD / mdistiller CIFAR-100 checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd.models.base import GAPClassifier, init_conv_bn
from catkd.models.registry import register


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W), channels reordered so each group draws from every group.

    Channels are viewed as a (groups, C / groups) grid and read out column by column: the next
    grouped conv then sees channels of every group of the previous one.
    """
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _depthwise_conv(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, padding=1, groups=channels, bias=False)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 unit: 1x1 group conv, channel shuffle, 3x3 depthwise conv, 1x1 group conv.

    stride 1: (N, C, H, W) -> (N, C, H, W); the branch is added to the input.
    stride 2: (N, C_in, H, W) -> (N, C_out, H/2, W/2); the branch gives C_out - C_in channels,
    concatenated with the 3x3 average-pooled input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int,
                 first_conv_groups: int):
        super().__init__()
        self.stride = stride
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        bottleneck_channels = branch_channels // 4
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, groups=first_conv_groups,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck_channels)
        self.conv2 = _depthwise_conv(bottleneck_channels, stride)
        self.bn2 = nn.BatchNorm2d(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        # A module (not F.relu) so that a hook can read the unit's pre-ReLU output: its last call.
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.conv1.groups)
        # The paper has no ReLU after the depthwise conv; the checkpoints' training code has one.
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return self.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return self.relu(out + x)


class ShuffleNetV1(GAPClassifier):
    """ShuffleNet V1, 3 groups: (N, in_channels, H, W) -> features (N, 960, H/8, W/8).

    0.95M parameters with 100 classes.
    """

    GROUPS = 3
    STEM_CHANNELS = 24
    STAGE_CHANNELS = (240, 480, 960)
    STAGE_UNITS = (4, 8, 4)
    stages = ("layer1", "layer2", "layer3")

    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, self.STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.STEM_CHANNELS)
        widths = (self.STEM_CHANNELS, *self.STAGE_CHANNELS)
        # As in the paper, the very first pointwise conv is not grouped: 24 inputs are too few.
        self.layer1 = self._make_stage(widths[0], widths[1], self.STAGE_UNITS[0], 1)
        self.layer2 = self._make_stage(widths[1], widths[2], self.STAGE_UNITS[1], self.GROUPS)
        self.layer3 = self._make_stage(widths[2], widths[3], self.STAGE_UNITS[2], self.GROUPS)
        self.linear = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        self.preact_stages = tuple(f"{stage}.{units - 1}.relu"
                                   for stage, units in zip(self.stages, self.STAGE_UNITS))
        self.preact_norms = tuple(f"{stage}.{units - 1}.bn3"
                                  for stage, units in zip(self.stages, self.STAGE_UNITS))

    def _make_stage(self, in_channels: int, out_channels: int, units: int,
                    first_conv_groups: int) -> nn.Sequential:
        """A strided unit, then units - 1 stride-1 units: halves H and W."""
        return nn.Sequential(
            ShuffleV1Unit(in_channels, out_channels, 2, self.GROUPS, first_conv_groups),
            *(ShuffleV1Unit(out_channels, out_channels, 1, self.GROUPS, self.GROUPS)
              for _ in range(units - 1)),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def get_classifier(self) -> nn.Linear:
        return self.linear


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNet V2 downsampling unit: (N, C_in, H, W) -> (N, C_out, H/2, W/2).

    Both branches see the whole input and give C_out / 2 channels each: left is a strided
    depthwise conv then a 1x1 conv (conv1, conv2); right is 1x1, strided depthwise, 1x1
    (conv3, conv4, conv5). They are concatenated, then shuffled in 2 groups.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        branch_channels = out_channels // 2
        self.conv1 = _depthwise_conv(in_channels, stride=2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, branch_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(branch_channels)
        self.conv3 = nn.Conv2d(in_channels, branch_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.conv4 = _depthwise_conv(branch_channels, stride=2)
        self.bn4 = nn.BatchNorm2d(branch_channels)
        self.conv5 = nn.Conv2d(branch_channels, branch_channels, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(branch_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No ReLU after a depthwise conv (Ma et al., Fig. 3).
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleV2BasicUnit(nn.Module):
    """ShuffleNet V2 basic unit: (N, C, H, W) -> (N, C, H, W).

    Channel split: the first C / 2 channels pass unchanged, the other half go through 1x1,
    3x3 depthwise and 1x1 convs; the halves are concatenated, then shuffled in 2 groups.
    """

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise_conv(half, stride=1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], dim=1), 2)


class ShuffleNetV2(GAPClassifier):
    """ShuffleNet V2 1x: (N, in_channels, H, W) -> features (N, 1024, H/8, W/8).

    The stages end at 464 channels; a final 1x1 conv (conv2, bn2, ReLU) widens them to 1024.
    1.36M parameters with 100 classes.
    """

    STEM_CHANNELS = 24
    STAGE_CHANNELS = (116, 232, 464)
    STAGE_BASIC_UNITS = (3, 7, 3)
    FEATURE_CHANNELS = 1024
    stages = ("layer1", "layer2", "layer3")
    # Half of a unit's channels pass it untouched, so no single ReLU ends a stage: the stage
    # output stands for its pre-ReLU map, and there is no BN to take a margin from (no teacher
    # for OFD).
    preact_stages = stages

    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, self.STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.STEM_CHANNELS)
        widths = (self.STEM_CHANNELS, *self.STAGE_CHANNELS)
        self.layer1 = self._make_stage(widths[0], widths[1], self.STAGE_BASIC_UNITS[0])
        self.layer2 = self._make_stage(widths[1], widths[2], self.STAGE_BASIC_UNITS[1])
        self.layer3 = self._make_stage(widths[2], widths[3], self.STAGE_BASIC_UNITS[2])
        self.conv2 = nn.Conv2d(widths[3], self.FEATURE_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.FEATURE_CHANNELS)
        self.linear = nn.Linear(self.FEATURE_CHANNELS, num_classes)
        init_conv_bn(self)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, basic_units: int) -> nn.Sequential:
        """A downsampling unit, then basic_units basic units: halves H and W."""
        return nn.Sequential(
            ShuffleV2DownUnit(in_channels, out_channels),
            *(ShuffleV2BasicUnit(out_channels) for _ in range(basic_units)),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))

    def get_classifier(self) -> nn.Linear:
        return self.linear


@register("ShuffleV1")
def shufflenet_v1(num_classes: int, in_channels: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels)


@register("ShuffleV2")
def shufflenet_v2(num_classes: int, in_channels: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)
