"""The structure revisit (paper Section 3.1, Figure 1, Eq. 1-4): CAMs out of the forward pass.

A classifier whose head is global average pooling (GAP) followed by one Linear computes

    logits_i = sum_j w_ij GAP(F_j) + b_i = GAP(CAM_i) + b_i,   CAM_i = sum_j w_ij F_j   (Eq. 1-3)

so turning the Linear into a 1x1 convolution and moving the GAP after it (Eq. 4) yields the class
activation maps of every class during the ordinary forward pass, without changing the logits.

The FC bias: a CAM here is Eq. 2, the 1x1 convolution *without* the bias, as in the paper and
the authors' code. The bias is constant over space, so leaving it out changes no CAM's shape,
only its mean. The converted model adds the bias after pooling, so that
``logits == cams.mean((2, 3)) + bias`` as the original model computed them: conversion changes
no model. That is catkd's choice, not the authors' training setup: their CAT and CAT-KD
students have no bias at all (logits = GAP(CAM)), which ``catkd.methods.cat`` reproduces by
zeroing and freezing the student's bias.

``convert`` accepts three kinds of model:

* the catkd zoo and timm-style models (``forward_features`` / ``forward_head``): the head is
  traced with ``torch.fx`` and checked to be GAP + one Linear;
* other classifiers that ``torch.fx`` can trace (torchvision's ResNets, ShuffleNetV2,
  MobileNetV2, ...): the model is split at its last global average pooling and the part after
  it is checked the same way;
* anything else gets a ``TypeError`` that says what head is needed, never a wrong CAM.

Between the pooling and the Linear the head may flatten, reshape or apply dropout. Dropout is
the identity in eval mode; the converted model leaves it out in training mode too (the CAMs are
the quantity trained on, and no zoo student has head dropout).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["CAMModel", "convert", "class_activation_maps", "grad_cam", "grad_cam_from_cams",
           "upsample"]

HEAD_NEEDED = (
    "catkd.cam.convert needs a classifier whose head is global average pooling followed by "
    "exactly one nn.Linear (flatten, reshape or dropout may sit between them)"
)


class CAMModel(nn.Module):
    """A classifier converted per Figure 1: ``forward(x)`` returns ``(logits, cams)``.

    It shares every parameter with the model it was made from (``self.model``), so training it
    trains that model, and ``self.model.state_dict()`` is the original layout.
    """

    def __init__(self, model: nn.Module, features: Callable[[torch.Tensor], torch.Tensor],
                 classifier: nn.Linear):
        super().__init__()
        self.model = model
        # A bound method, not a submodule: its parameters are already registered in ``model``.
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C_in, H_in, W_in) images -> logits (N, K) and CAMs (N, K, H, W)."""
        features = self.features(x)
        weight = self.classifier.weight
        cams = F.conv2d(features, weight.view(*weight.shape, 1, 1))  # Eq. 2, no bias
        logits = cams.mean(dim=(2, 3))  # Eq. 3-4
        if self.classifier.bias is not None:
            logits = logits + self.classifier.bias
        return logits, cams


def convert(model: nn.Module) -> CAMModel:
    """Convert a GAP + Linear classifier so that its forward also returns CAMs.

    The result's logits equal ``model``'s (up to float rounding); its CAMs have shape
    (N, K, H, W) where H x W is the size of the last feature map.
    """
    if isinstance(model, CAMModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        head = _trace(_HeadOf(model), name)
        features_node = next(node for node in head.graph.nodes if node.op == "placeholder")
        classifier = _classifier_after(head, features_node, name)
        return CAMModel(model, model.forward_features, classifier)

    traced = _trace(model, name)
    pools = [node for node in traced.graph.nodes if _is_global_average_pool(node, traced)]
    if not pools:
        raise TypeError(f"{HEAD_NEEDED}; {name} has no global average pooling")
    features_node = pools[-1].args[0]
    classifier = _classifier_after(traced, features_node, name)
    return CAMModel(model, _truncate(traced, features_node).forward, classifier)


class _HeadOf(nn.Module):
    """Wraps a timm-style model so that fx traces its ``forward_head`` alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)


def _trace(module: nn.Module, name: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(module)
    except Exception as error:  # fx raises many types; all mean the same thing here
        raise TypeError(
            f"{HEAD_NEEDED}; {name} could not be traced by torch.fx to check its head "
            f"({type(error).__name__}: {error}). Give it forward_features(x) -> feature map "
            f"and forward_head(features) -> logits."
        ) from error


def _target_module(graph_module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return graph_module.get_submodule(node.target) if node.op == "call_module" else None


def _is_one(size) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))


def _is_global_average_pool(node: fx.Node, graph_module: fx.GraphModule) -> bool:
    """Average pooling over the whole of both spatial dimensions of a 4-D map."""
    module = _target_module(graph_module, node)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _is_one(module.output_size)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return _is_one(node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"))
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean)
    if is_mean:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = {dims} if isinstance(dims, int) else set(dims or ())
        return dims in ({2, 3}, {-2, -1})
    return False


_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, F.dropout}
_PASSTHROUGH_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)


def _is_passthrough(node: fx.Node, graph_module: fx.GraphModule) -> bool:
    """Operations allowed between the pooling and the Linear: reshapes and dropout."""
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    if node.op == "call_function":
        return node.target in _RESHAPE_FUNCTIONS
    return isinstance(_target_module(graph_module, node), _PASSTHROUGH_MODULES)


def _data_users(node: fx.Node) -> list[fx.Node]:
    """Users of a node's values, ignoring reads of its shape (``x.size(0)`` in ``x.view``)."""
    return [user for user in node.users
            if not (user.op == "call_method" and user.target in ("size", "dim"))
            and not (user.op == "call_function" and user.target is getattr)]


def _describe(node: fx.Node, graph_module: fx.GraphModule) -> str:
    module = _target_module(graph_module, node)
    if module is not None:
        return f"{node.target} ({type(module).__name__})"
    return f"{getattr(node.target, '__name__', node.target)} ({node.op})"


def _classifier_after(graph_module: fx.GraphModule, features_node: fx.Node,
                      name: str) -> nn.Linear:
    """Check that the graph goes features -> GAP -> [reshape/dropout]* -> Linear -> output."""

    def only_user(node: fx.Node) -> fx.Node:
        users = _data_users(node)
        if len(users) != 1:
            found = ", ".join(_describe(user, graph_module) for user in users) or "nothing"
            raise TypeError(f"{HEAD_NEEDED}; in {name} the head branches into {found}")
        return users[0]

    node = only_user(features_node)
    if not _is_global_average_pool(node, graph_module):
        raise TypeError(f"{HEAD_NEEDED}; {name}'s head starts with {_describe(node, graph_module)}")
    node = only_user(node)
    while _is_passthrough(node, graph_module):
        node = only_user(node)
    classifier = _target_module(graph_module, node)
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"{HEAD_NEEDED}; {name}'s head has {_describe(node, graph_module)} where "
                        f"the Linear should be")
    after = only_user(node)
    if after.op != "output":
        raise TypeError(f"{HEAD_NEEDED}; {name}'s head goes on after its Linear with "
                        f"{_describe(after, graph_module)}")
    return classifier


def _truncate(traced: fx.GraphModule, features_node: fx.Node) -> fx.GraphModule:
    """The part of a traced model that computes ``features_node``, sharing its submodules."""
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    for node in traced.graph.nodes:
        copies[node] = graph.node_copy(node, lambda arg: copies[arg])
        if node is features_node:
            break
    graph.output(copies[features_node])
    features = fx.GraphModule(traced, graph)
    features.graph.eliminate_dead_code()
    features.recompile()
    return features


@torch.no_grad()
def class_activation_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CAMs of every class, (N, K, H, W), for (N, C, H_in, W_in) images; eval mode, no grad."""
    converted = convert(model)
    was_training = model.training  # the new wrapper's own flag says nothing about the model's
    converted.eval()
    try:
        return converted(images)[1]
    finally:
        model.train(was_training)


def grad_cam(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) of every class, (N, K, h, w), computed with autograd.

    For class c: alpha_c = the spatial mean of d logit_c / d F (one weight per channel of the
    last feature map F, from ``forward_features``), and the map is ReLU(sum_j alpha_cj F_j).
    Any model with ``forward_features`` / ``forward_head``; one backward pass through the head
    per class. For a GAP + Linear head it equals ``grad_cam_from_cams`` of the CAMs.
    """
    features = model.forward_features(images).detach().requires_grad_()  # (N, C, h, w)
    logits = model.forward_head(features)  # (N, K)
    maps = []
    for cls in range(logits.shape[1]):
        (gradient,) = torch.autograd.grad(logits[:, cls].sum(), features, retain_graph=True)
        weights = gradient.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        maps.append(F.relu((weights * features).sum(dim=1)))
    return torch.stack(maps, dim=1).detach()


def grad_cam_from_cams(cams: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from (N, K, h, w) CAMs of a GAP + Linear head: ReLU(CAM) / (h w).

    Through GAP + Linear, d logit_c / d F_j is w_cj / (h w) at every position, so Grad-CAM's
    channel weights are the FC weights over h w and its map is the CAM's positive part, scaled:
    the same maps without a backward pass.
    """
    return F.relu(cams) / (cams.shape[2] * cams.shape[3])


def upsample(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (N, K, h, w) CAMs to (N, K, *size), e.g. the image size."""
    if cams.dim() != 4:
        raise ValueError(f"upsample expects CAMs of shape (N, K, h, w), got {tuple(cams.shape)}")
    return F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
