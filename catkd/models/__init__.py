"""The model zoo.

CIFAR models (32x32 inputs) carry the parameter names and shapes of the published CIFAR-100
teacher checkpoints, so those load with ``strict=True``. ImageNet models are prefixed
``imagenet_``. ``vit_micro`` and ``vit_tiny`` are small vision transformers with the same GAP +
Linear head over their patch tokens. Every model follows the convention of ``catkd.models.base``.

>>> import torch
>>> from catkd import models
>>> model = models.create("resnet8x4", num_classes=100)
>>> model.forward_features(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 256, 8, 8])
"""

from catkd.models import (  # noqa: F401  (importing a module registers its models)
    cifar_imagenet_resnet,
    cifar_resnet,
    imagenet,
    mobilenet_v2,
    shufflenet,
    vgg,
    vit,
    wrn,
)
from catkd.models.base import GAPClassifier
from catkd.models.checkpoint import load_checkpoint
from catkd.models.fold import fold_batchnorm
from catkd.models.registry import (check, create, has_forward_features, names, register,
                                   revision)

__all__ = ["GAPClassifier", "check", "create", "fold_batchnorm", "has_forward_features",
           "load_checkpoint", "names", "register", "revision"]
