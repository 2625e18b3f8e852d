"""Gradient class maps (Grad-CAM) for any differentiable classifier.

``catkd.cam.convert`` gives a GAP + Linear classifier's exact CAMs, its logits decomposed over
space. A head that is not linear after its pooling (ConvNeXt's norm, MobileNetV3's and VGG's
MLPs) has none; Grad-CAM (Selvaraju et al.) still gives one map per class, from the gradients
of the logits at a feature map: a first-order, per-channel linearisation of the head. They can
be CAT's teacher maps (``catkd.methods.CAT(teacher_maps="gradcam")``, paper Appendix A.4) but
are not the model's logits decomposed; ``catkd.metrics.map_agreement`` measures how far they
are from exact CAMs where both exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from catkd.cam import feature_layer, tokens_to_map

__all__ = ["GradCAMModel", "grad_cam", "grad_cam_from_cams"]


class GradCAMModel(nn.Module):
    """Gradient class maps (Grad-CAM) for any differentiable classifier: ``forward(x)`` returns
    ``(logits, maps)``, logits (N, K) and maps (N, K, h, w), neither carrying autograd history.

    These maps are **not** the model's logits decomposed: for class c, with F the (N, C, h, w)
    map at ``layer``, ``alpha_c`` = the spatial mean of d logit_c / d F (one weight per channel)
    and the map is ReLU(sum_j alpha_cj F_j) (Selvaraju et al.; without the ReLU if ``relu`` is
    False). Only for a GAP + Linear head taken at its pooled map is that exact: then
    alpha_cj = w_cj / (h w), so the maps are ReLU(CAM) / (h w) (``grad_cam_from_cams``); use
    ``convert`` there. Elsewhere (ConvNeXt's norm after the pooling, MobileNetV3's and VGG's MLP
    heads, an intermediate layer of any model) they are a first-order, per-channel linearisation
    of the head, and ``catkd.metrics.map_agreement`` measures how far that is from exact CAMs
    where both exist.
    Use them as targets (CAT's teacher maps, ``catkd.methods.CAT(teacher_maps="gradcam")``),
    never as a student's maps: no gradient flows through them.

    ``layer`` None takes F = ``model.forward_features(x)`` and runs ``model.forward_head`` on it
    (a model without them: the output of the module its last global average pooling reads,
    ``catkd.cam.feature_layer``, e.g. "layer4" of a torchvision ResNet); a submodule name
    (e.g. "features" of a torchvision VGG, "stages.2" of a timm ConvNeXt) takes F = that
    module's output with a forward hook, for any model. F may be (N, T, D) tokens
    (a ViT): the first ``model.num_prefix_tokens`` (0 if absent) are left out and the rest laid
    out on the patch grid (``tokens_to_map``).

    Cost: one forward, then per class a backward from the logits to F: K backward passes of
    the part of the model after F. The gradients are taken per sample, so samples must not
    interact: eval mode (BatchNorm's running statistics), as a frozen teacher is.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, relu: bool = True) -> None:
        super().__init__()
        if layer is None and not (hasattr(model, "forward_features")
                                  and hasattr(model, "forward_head")):
            try:
                layer = feature_layer(model)
            except TypeError as error:
                raise ValueError(f"{error} (model has no forward_features / forward_head); "
                                 f"e.g. layer='features'") from error
        if layer is not None:
            model.get_submodule(layer)  # an AttributeError naming the path if there is none
        self.model = model
        self.layer = layer
        self.relu = relu

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C_in, H_in, W_in) images -> logits (N, K) and maps (N, K, h, w), both detached."""
        # The caller may be under no_grad (a teacher's targets are); the gradients are ours.
        with torch.enable_grad():
            if self.layer is None:
                with torch.no_grad():  # nothing before F needs a graph
                    output = self.model.forward_features(x)
                shifted, features, shift = self._shift(output, x.shape[-2:])
                logits = self.model.forward_head(shifted)
            else:
                logits, features, shift = self._through_layer(x)
            if not shift.requires_grad or not logits.requires_grad:
                raise RuntimeError("GradCAMModel needs autograd (it cannot run in "
                                   "torch.inference_mode)")
            # d logit_c / d shift = the sum over positions of d logit_c / d F: Grad-CAM's
            # channel weights times h w, without ever holding the (N, K, C, h, w) Jacobian.
            sums = self._class_gradients(logits, shift)  # (N, K, C)
        weights = sums / (features.shape[2] * features.shape[3])
        maps = torch.einsum("nkc,nchw->nkhw", weights, features)
        return logits.detach(), (F.relu(maps) if self.relu else maps).detach()

    def _shift(self, output: torch.Tensor, image_size: torch.Size
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the model goes on with (``output`` plus a zero shift per sample and channel),
        the (N, C, h, w) map F, and the (N, C) shift whose gradients are summed over positions.

        ``output`` is detached first: no backward goes further back than the layer."""
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(f"Grad-CAM needs a (N, C, h, w) map or (N, T, D) tokens at the "
                             f"layer, got {shape}")
        output = output.detach()
        if output.dim() == 4:
            shift = output.new_zeros(output.shape[:2]).requires_grad_()
            return output + shift[:, :, None, None], output, shift
        prefix = getattr(self.model, "num_prefix_tokens", 0)
        patches = output[:, prefix:]  # (N, h w, D)
        shift = output.new_zeros(output.shape[0], output.shape[2]).requires_grad_()
        shifted = torch.cat([output[:, :prefix], patches + shift[:, None, :]], dim=1)
        return shifted, tokens_to_map(patches, image_size), shift

    def _through_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        caught: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if caught:
                raise RuntimeError(f"layer {self.layer!r} runs more than once per forward: its "
                                   f"output is not one map")
            shifted, features, shift = self._shift(output, x.shape[-2:])
            caught.append((features, shift))
            return shifted  # a forward hook's return value replaces the module's output

        handle: RemovableHandle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if not caught:
            raise RuntimeError(f"layer {self.layer!r} did not run in the forward")
        return logits, *caught[0]

    def _class_gradients(self, logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """(N, K) logits, (N, C) shift -> (N, K, C): d logit_nk / d shift_n for every class k.

        Samples are independent, so one backward of a one-hot over class k for the whole batch
        gives every sample's gradient of its own logit k."""
        count = logits.shape[1]
        rows = [torch.autograd.grad(logits[:, cls].sum(), shift, retain_graph=True)[0]
                for cls in range(count)]
        return torch.stack(rows, dim=1)


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) of every class, (N, K, h, w), computed with autograd.

    For class c: alpha_c = the spatial mean of d logit_c / d F (one weight per channel of the
    map F at ``layer``: by default the last feature map, from ``forward_features``), and the map
    is ReLU(sum_j alpha_cj F_j). Any differentiable classifier (``GradCAMModel``). For a GAP +
    Linear head at its last feature map it equals ``grad_cam_from_cams`` of the CAMs.
    """
    return GradCAMModel(model, layer)(images)[1]


def grad_cam_from_cams(cams: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from (N, K, h, w) CAMs of a GAP + Linear head: ReLU(CAM) / (h w).

    Through GAP + Linear, d logit_c / d F_j is w_cj / (h w) at every position, so Grad-CAM's
    channel weights are the FC weights over h w and its map is the CAM's positive part, scaled:
    the same maps without a backward pass.
    """
    return F.relu(cams) / (cams.shape[2] * cams.shape[3])
