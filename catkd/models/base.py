"""The convention every zoo model follows (the one timm uses).

``forward_features(x)`` returns the last feature map, (N, C, H, W): what the classifier pools.
``forward_head(features)`` is global average pooling followed by one ``nn.Linear``: (N, K).
``forward(x)`` is ``forward_head(forward_features(x))``, so a model is an ordinary classifier.
``get_classifier()`` returns that ``nn.Linear``; ``catkd.cam.convert`` turns it into a 1x1 conv.
``stages`` names the submodules whose outputs are the stage feature maps, from shallow to deep,
as the feature-based methods (AT) pair them; they take these maps with forward hooks. A final
1x1 conv after the last stage (ShuffleV2, MobileNetV2) is not a stage.
``preact_stages`` names, per stage, where the stage's pre-ReLU map can be read with a hook (OFD,
ReviewKD): the input of an ``nn.ReLU`` at its last call in a forward (the ReLU that ends the stage),
or the output of any other module (the BatchNorm that the next ReLU rectifies, or the stage itself
where no ReLU ends it). ``preact_norms`` names the BatchNorm whose scale and shift describe each of
those maps (OFD's margin). Both are empty on models that do not declare them.
"""

from __future__ import annotations

import torch
from torch import nn


class GAPClassifier(nn.Module):
    """Base class of the zoo: a feature extractor, global average pooling and one Linear."""

    stages: tuple[str, ...] = ()
    preact_stages: tuple[str, ...] = ()
    preact_norms: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) features -> (N, K) logits."""
        return self.get_classifier()(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal convolutions (zero bias), BatchNorm as the identity: scale 1, shift 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
