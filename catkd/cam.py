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

``convert`` accepts four kinds of model:

* the catkd zoo and timm-style models (``forward_features`` / ``forward_head``): the head is
  traced with ``torch.fx`` and checked to be GAP + one Linear;
* token models (``forward_features`` returning (N, T, D) tokens, e.g. timm's ViT / DeiT with
  ``global_pool="avg", fc_norm=False``) whose head slices off its prefix tokens (a class token,
  register tokens), averages the remaining h x w patch tokens and applies one Linear: the
  average over the patch grid is a GAP, so applying the Linear to each patch token gives CAMs
  (N, K, h, w) whose mean is the logits (``tokens_to_map`` lays the tokens out on their grid);
* other classifiers that ``torch.fx`` can trace (torchvision's ResNets, ShuffleNetV2,
  MobileNetV2, ...): the model is split at its last global average pooling and the part after
  it is checked the same way;
* anything else gets a ``TypeError`` that says what head is needed, never a wrong CAM: a
  class-token head (``x[:, 0]``), a norm or an MLP after the pooling, attention pooling.

Between the pooling and the Linear the head may flatten, reshape or apply dropout. Dropout is
the identity in eval mode; the converted model leaves it out in training mode too (the CAMs are
the quantity trained on, and no zoo student has head dropout).

For heads that are not linear after the pooling (ConvNeXt's norm, MobileNetV3's MLP, VGG's MLP)
no CAM exists: ``catkd.gradcam`` gives gradient maps instead, which are *not* the model's logits
decomposed.
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["CAMModel", "convert", "class_activation_maps", "feature_layer", "tokens_to_map",
           "upsample"]

HEAD_NEEDED = (
    "catkd.cam.convert needs a classifier whose head is global average pooling followed by "
    "exactly one nn.Linear (flatten, reshape or dropout may sit between them; a token model's "
    "mean over its patch tokens, prefix tokens sliced off, counts as the pooling)"
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
    (N, K, H, W) where H x W is the size of the last feature map, or a token model's patch grid.
    """
    if isinstance(model, CAMModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        head = _trace(_HeadOf(model), name)
        features_node = next(node for node in head.graph.nodes if node.op == "placeholder")
        classifier, prefix = _classifier_after(head, features_node, name)
        if prefix is None:  # a feature map (N, C, H, W)
            return CAMModel(model, model.forward_features, classifier)
        return CAMModel(model, _token_features(model, prefix, name), classifier)

    traced = _trace(model, name)
    pools = [node for node in traced.graph.nodes if _is_global_average_pool(node, traced)]
    if not pools:
        raise TypeError(f"{HEAD_NEEDED}; {name} has no global average pooling")
    features_node = pools[-1].args[0]
    classifier, _ = _classifier_after(traced, features_node, name)
    return CAMModel(model, _truncate(traced, features_node).forward, classifier)


def feature_layer(model: nn.Module) -> str:
    """The name of the submodule whose output ``model``'s last global average pooling reads:
    its last feature map (torchvision's ResNets: "layer4"; MobileNets: "features"), for
    models without ``forward_features``. Found by tracing with torch.fx, whatever the head after
    the pooling; a TypeError where no module's output is pooled (VGG pools to 7x7, DenseNet
    pools a ReLU applied after its features)."""
    name = type(model).__name__
    traced = _trace(model, name)
    nodes = list(traced.graph.nodes)
    pools = [node for node in nodes if _is_global_average_pool(node, traced)]
    if pools:
        pooled = pools[-1].args[0]
        # The modules that were running when fx recorded the pooled map, outermost first ("@1"
        # marks a module's second call); the outermost that computes nothing afterwards returned it.
        later = {path.split("@")[0] for node in nodes[nodes.index(pooled) + 1:]
                 for path in node.meta.get("nn_module_stack", {})}
        for path in pooled.meta.get("nn_module_stack", {}):
            if "@" not in path and path not in later:
                return path
    raise TypeError(f"{name} has no global average pooling of a submodule's output: name "
                    f"the layer whose output is the feature map")


def _token_features(model: nn.Module, prefix: int, name: str
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature map of a token model whose head drops ``prefix`` tokens and averages the rest.

    timm-style models say how many prefix tokens they have (``num_prefix_tokens``); a head that
    slices off another number averages a class token with the patches (or drops patches), and
    the mean over the patch grid would no longer be the pooled vector.
    """
    declared = getattr(model, "num_prefix_tokens", prefix)
    if declared != prefix:
        raise TypeError(f"{HEAD_NEEDED}; {name} has {declared} prefix token(s) but its head "
                        f"averages its tokens from index {prefix} on")
    return partial(_token_map, model, prefix)


def _token_map(model: nn.Module, prefix: int, images: torch.Tensor) -> torch.Tensor:
    """(N, C_in, H_in, W_in) images -> the (N, D, h, w) patch tokens of a token model."""
    tokens = model.forward_features(images)  # (N, T, D), T = prefix + h w
    if tokens.dim() != 3:
        raise ValueError(f"{type(model).__name__}'s head averages tokens over dimension 1, but its "
                         f"forward_features gave shape {tuple(tokens.shape)}, not (N, T, D)")
    return tokens_to_map(tokens[:, prefix:], images.shape[-2:])


def tokens_to_map(tokens: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Lay (N, L, D) patch tokens out on their (h, w) grid: (N, D, h, w).

    Patch tokens are in row-major order (as a patch-embedding conv's output flattened), and the
    grid has the image's aspect ratio: h = sqrt(L H / W). Prefix tokens must be sliced off first.
    """
    count = tokens.shape[1]
    height = max(1, round(math.sqrt(count * image_size[0] / image_size[1])))
    width = count // height
    if height * width != count:
        raise ValueError(f"{count} patch tokens do not form a grid of the aspect ratio of "
                         f"{tuple(image_size)} images (are prefix tokens left in?)")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


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


def _token_slice_start(node: fx.Node) -> int | None:
    """p for ``x[:, p:]`` (prefix tokens dropped along dimension 1), else None."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    index = node.args[1]
    if (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
            and isinstance(index[1], slice) and index[1].stop is None
            and index[1].step in (None, 1) and isinstance(index[1].start, (int, type(None)))):
        return index[1].start or 0
    return None


def _is_token_mean(node: fx.Node) -> bool:
    """The mean over dimension 1 of (N, T, D) tokens: a GAP over the patch grid."""
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean)
    if not is_mean:
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dims in (1, -2, (1,), (-2,), [1], [-2])


def _render_index(index) -> str:
    def one(part) -> str:
        if isinstance(part, slice):
            text = ":".join("" if value is None else str(value)
                            for value in (part.start, part.stop))
            return text + (f":{part.step}" if part.step is not None else "")
        return str(part)

    return ", ".join(one(part) for part in (index if isinstance(index, tuple) else (index,)))


def _describe(node: fx.Node, graph_module: fx.GraphModule) -> str:
    module = _target_module(graph_module, node)
    if module is not None:
        return f"{node.target} ({type(module).__name__})"
    if node.op == "call_function" and node.target is operator.getitem:
        return f"x[{_render_index(node.args[1])}] (indexing)"  # e.g. x[:, 0], a class token
    return f"{getattr(node.target, '__name__', node.target)} ({node.op})"


def _classifier_after(graph_module: fx.GraphModule, features_node: fx.Node,
                      name: str) -> tuple[nn.Linear, int | None]:
    """Check that the graph goes features -> GAP -> [reshape/dropout]* -> Linear -> output.

    The GAP is a mean over a feature map's two spatial dimensions, or, on (N, T, D) tokens, a
    mean over dimension 1 after an optional ``x[:, p:]`` that drops the p prefix tokens.
    Returns the Linear and p (None for a feature map).
    """

    def only_user(node: fx.Node) -> fx.Node:
        users = _data_users(node)
        if len(users) != 1:
            found = ", ".join(_describe(user, graph_module) for user in users) or "nothing"
            raise TypeError(f"{HEAD_NEEDED}; in {name} the head branches into {found}")
        return users[0]

    node = only_user(features_node)
    prefix = _token_slice_start(node)
    if prefix is not None:
        sliced, node = node, only_user(node)
        if not _is_token_mean(node):
            raise TypeError(f"{HEAD_NEEDED}; {name}'s head takes "
                            f"{_describe(sliced, graph_module)} and then has "
                            f"{_describe(node, graph_module)} where the token average should be")
    elif _is_token_mean(node):
        prefix = 0
    elif not _is_global_average_pool(node, graph_module):
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
    return classifier, prefix


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


def upsample(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (N, K, h, w) CAMs to (N, K, *size), e.g. the image size."""
    if cams.dim() != 4:
        raise ValueError(f"upsample expects CAMs of shape (N, K, h, w), got {tuple(cams.shape)}")
    return F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
