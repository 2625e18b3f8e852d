"""ImageNet models (224x224 inputs, 7x7 feature maps).

The ResNets and MobileNet-V2 are torchvision's, with torchvision's parameter names, so
torchvision's pretrained weights load with ``load_checkpoint``; they only gain the zoo's
``forward_features`` / ``forward_head`` convention. MobileNet-V1 (Howard et al., 2017), the
ImageNet student of the paper's Table 8, has no torchvision version and is written here.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenetv2, resnet

from catkd.models.base import GAPClassifier
from catkd.models.registry import register


class ImageNetResNet(GAPClassifier, resnet.ResNet):
    """torchvision's ResNet; features (N, 512 or 2048, H/32, W/32).

    Stages: layer1-4 (H/4 .. H/32). Each stage's pre-ReLU map is the residual sum of its last
    block, read at that block's ReLU (called last after the sum), described by the block's last
    BatchNorm (before the sum, as OFD and mdistiller take it).
    """

    stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        last_norm = "bn3" if block is resnet.Bottleneck else "bn2"
        self.preact_stages = tuple(f"{stage}.{blocks - 1}.relu"
                                   for stage, blocks in zip(self.stages, layers))
        self.preact_norms = tuple(f"{stage}.{blocks - 1}.{last_norm}"
                                  for stage, blocks in zip(self.stages, layers))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def get_classifier(self) -> nn.Linear:
        return self.fc


def _resnet(block: type[nn.Module], layers: list[int], num_classes: int, in_channels: int):
    model = ImageNetResNet(block, layers, num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register("imagenet_resnet18")
def imagenet_resnet18(num_classes: int, in_channels: int) -> ImageNetResNet:
    return _resnet(resnet.BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register("imagenet_resnet34")
def imagenet_resnet34(num_classes: int, in_channels: int) -> ImageNetResNet:
    return _resnet(resnet.BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


@register("imagenet_resnet50")
def imagenet_resnet50(num_classes: int, in_channels: int) -> ImageNetResNet:
    return _resnet(resnet.Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


class ImageNetMobileNetV2(GAPClassifier, mobilenetv2.MobileNetV2):
    """torchvision's MobileNet-V2; features (N, 1280, H/32, W/32)."""

    stages = ("features",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[1]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        # torchvision's head is dropout then the Linear; keep the dropout for training.
        return self.classifier(features.mean(dim=(2, 3)))


@register("imagenet_mobilenet_v2")
def imagenet_mobilenet_v2(num_classes: int, in_channels: int) -> ImageNetMobileNetV2:
    model = ImageNetMobileNetV2(num_classes=num_classes)
    if in_channels != 3:
        model.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
    return model


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(GAPClassifier):
    """MobileNet-V1 (width 1.0): a strided 3x3 conv, then 13 depthwise-separable blocks.

    Features (N, 1024, H/32, W/32); 4.2M parameters with 1000 classes. Stages: the last block
    at each resolution from H/4 on (128, 256, 512, 1024 channels), as ResNets' layer1-4 and
    mdistiller's MobileNet-V1 features; their pre-ReLU maps are the pointwise BatchNorms' outputs.
    """

    # (output channels, stride) of each depthwise-separable block.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
    stages = ("features.3", "features.5", "features.11", "features.13")
    # Block i is features.i = (depthwise, pointwise), each conv, BN, ReLU.
    preact_stages = tuple(f"{stage}.1.2" for stage in stages)
    preact_norms = tuple(f"{stage}.1.1" for stage in stages)

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers = [_conv_bn_relu(in_channels, 32, 3, stride=2)]
        width = 32
        for out_channels, stride in self.BLOCKS:
            layers.append(nn.Sequential(
                _conv_bn_relu(width, width, 3, stride, groups=width),  # depthwise
                _conv_bn_relu(width, out_channels, 1, stride=1),  # pointwise
            ))
            width = out_channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def get_classifier(self) -> nn.Linear:
        return self.fc


@register("imagenet_mobilenet_v1")
def imagenet_mobilenet_v1(num_classes: int, in_channels: int) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels)
