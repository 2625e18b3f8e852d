"""How well CAMs find the object, and how closely two models' CAMs agree.

Localisation, against a bool object mask at image size (``catkd.data.synthetic`` gives them):

- ``pointing_game``: does the CAM's maximum fall inside the mask;
- ``energy_inside``: the share of the CAM's positive part that lies inside the mask;
- ``iou``: intersection over union of the CAM thresholded at a fraction of its maximum with the
  mask.

Each takes CAMs of one class per image, (N, h, w), or of every class, (N, K, h, w), with the
labels that pick each image's true class. CAMs smaller than the mask are upsampled bilinearly to
its size first (``catkd.cam.upsample``), so the metrics compare maps at image resolution.

Agreement, without masks: ``correlation`` is the Pearson correlation of two models' CAMs, per
(image, class) or for the true class. It ignores each map's offset and scale, so it needs no
normalisation; maps of different native sizes are compared after average-pooling the larger to
the smaller (as CAT pools the CAMs it transfers).

``localisation(model, dataset)`` and ``agreement(students, teacher, dataset)`` compute the means
over a dataset for trained models. ``map_agreement`` measures, as CAT sees them, how far
gradient maps (``catkd.gradcam``) are from a model's exact CAMs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catkd import cam, data
from catkd.losses import NORMALIZE, cat_loss

__all__ = ["map_agreement", "true_class", "pointing_game", "energy_inside", "iou", "correlation",
           "localisation", "agreement", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.5  # of each map's maximum, for ``iou``


def true_class(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each image's CAM of its label: (N, K, h, w) and int64 (N,) -> (N, h, w)."""
    if cams.dim() != 4:
        raise ValueError(f"true_class expects CAMs of every class, (N, K, h, w), got "
                         f"{tuple(cams.shape)}")
    if labels.shape != cams.shape[:1]:
        raise ValueError(f"labels must be (N,) with N = {cams.shape[0]}, got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= cams.shape[1]):
        raise ValueError(f"labels must lie in 0..{cams.shape[1] - 1} (the CAMs' classes)")
    return cams[torch.arange(len(labels), device=cams.device), labels.to(cams.device)]


def _one_map_per_image(cams: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, h, w) as it is, or (N, K, h, w) reduced to the labels' classes, as float32."""
    if cams.dim() == 4:
        if labels is None:
            raise ValueError("CAMs of every class, (N, K, h, w), need labels (N,) to pick each "
                             "image's true class; or pass that class's CAMs, (N, h, w)")
        cams = true_class(cams, labels)
    elif cams.dim() != 3:
        raise ValueError(f"CAMs must be (N, h, w) or (N, K, h, w), got {tuple(cams.shape)}")
    return cams.float()


def _at_mask_size(cams: torch.Tensor, masks: torch.Tensor,
                  labels: torch.Tensor | None) -> torch.Tensor:
    """The true class's CAMs upsampled to the masks' size: float32 (N, H, W)."""
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool (N, H, W), got {masks.dtype} {tuple(masks.shape)}")
    maps = _one_map_per_image(cams, labels)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} CAMs but {len(masks)} masks: they must match one to one")
    if maps.shape[1] > masks.shape[1] or maps.shape[2] > masks.shape[2]:
        raise ValueError(f"CAMs of size {tuple(maps.shape[1:])} are larger than the masks "
                         f"{tuple(masks.shape[1:])}; masks are at image size, CAMs at most that")
    if maps.shape[1:] != masks.shape[1:]:
        maps = cam.upsample(maps[:, None], tuple(masks.shape[1:]))[:, 0]
    return maps


def pointing_game(cams: torch.Tensor, masks: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Whether each CAM's maximum (after upsampling) falls inside its mask.

    cams: (N, h, w), or (N, K, h, w) with ``labels`` int64 (N,); masks: bool (N, H, W) with
    H >= h, W >= w. Returns bool (N,); its mean is the hit rate. Of tied maxima the first in
    row-major order counts. No tolerance margin around the mask.
    """
    maps = _at_mask_size(cams, masks, labels)
    peak = maps.flatten(1).argmax(dim=1)
    return masks.to(maps.device).flatten(1).gather(1, peak[:, None])[:, 0]


def energy_inside(cams: torch.Tensor, masks: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """The share of each CAM's positive part (after upsampling) that lies inside its mask.

    cams: (N, h, w), or (N, K, h, w) with ``labels`` int64 (N,); masks: bool (N, H, W).
    Returns float32 (N,) in [0, 1]; a CAM with no positive value scores 0.
    """
    maps = _at_mask_size(cams, masks, labels).clamp_min(0).flatten(1)
    inside = (maps * masks.to(maps.device).flatten(1)).sum(dim=1)
    total = maps.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)


def iou(cams: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None,
        threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """IoU of each CAM's region (after upsampling) with its mask.

    The region is where the CAM reaches ``threshold`` times its maximum (0 <= threshold <= 1);
    a CAM whose maximum is not positive has an empty region. cams: (N, h, w), or (N, K, h, w)
    with ``labels`` int64 (N,); masks: bool (N, H, W). Returns float32 (N,) in [0, 1]; 0 where
    both region and mask are empty.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a fraction of each CAM's maximum, in [0, 1]; got "
                         f"{threshold}")
    maps = _at_mask_size(cams, masks, labels).flatten(1)
    peak = maps.max(dim=1, keepdim=True).values
    region = (maps >= threshold * peak) & (peak > 0)
    masks = masks.to(maps.device).flatten(1)
    intersection = (region & masks).sum(dim=1)
    union = (region | masks).sum(dim=1)
    return intersection.float() / union.clamp_min(1).float()


def _pool_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool (N, ..., h, w) maps to (N, ..., *size); unchanged if already that size."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    leading = maps.shape[:-2]
    pooled = F.adaptive_avg_pool2d(maps.reshape(-1, 1, *maps.shape[-2:]), size)
    return pooled.reshape(*leading, *size)


def correlation(first: torch.Tensor, second: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of two models' CAMs of the same images, map by map.

    first, second: (N, h1, w1) and (N, h2, w2) (one class per image), or (N, K, h, w) each; with
    ``labels`` int64 (N,), CAMs of every class are first reduced to each image's true class.
    Sizes may differ: each map is average-pooled to the smaller height and the smaller width.
    Returns float32 (N,) for one map per image, else (N, K), values in [-1, 1]; 0 where a map is
    constant (its correlation is undefined).
    """
    if labels is not None or first.dim() != second.dim():
        first, second = _one_map_per_image(first, labels), _one_map_per_image(second, labels)
    elif first.dim() not in (3, 4):
        raise ValueError(f"CAMs must be (N, h, w) or (N, K, h, w), got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    if first.shape[:-2] != second.shape[:-2]:
        raise ValueError(f"the CAMs must cover the same images and classes: got "
                         f"{tuple(first.shape)} and {tuple(second.shape)}")
    size = (min(first.shape[-2], second.shape[-2]), min(first.shape[-1], second.shape[-1]))
    first = _pool_to(first.float(), size).flatten(-2)
    second = _pool_to(second.float(), size).to(first.device).flatten(-2)
    first = first - first.mean(dim=-1, keepdim=True)
    second = second - second.mean(dim=-1, keepdim=True)
    scale = first.norm(dim=-1) * second.norm(dim=-1)
    # Constant maps: numerator and scale are both 0 (up to rounding), so the result is 0.
    return (first * second).sum(dim=-1) / scale.clamp_min(1e-12)


@torch.no_grad()
def _batches(models: list[nn.Module], dataset: data.ImageDataset, device: str | torch.device,
             batch_size: int):
    """For each test batch of ``dataset``, in order: (labels (B,), [(logits, cams) per model]).

    The models are converted (``catkd.cam.convert``), moved to ``device`` and run in eval mode,
    in float32; each model's train/eval mode is restored afterwards.
    """
    converted = [cam.convert(model).to(device) for model in models]
    modes = [model.training for model in converted]
    for model in converted:
        model.eval()
    try:
        loader = data.BatchLoader(dataset, batch_size, train=False, device=device)
        for inputs, labels in loader:
            yield labels, [model(inputs) for model in converted]
    finally:
        for model, mode in zip(converted, modes):
            model.train(mode)


def localisation(model: nn.Module, dataset: data.ImageDataset, device: str | torch.device = "cpu",
                 batch_size: int = 500, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Accuracy and the localisation metrics of a GAP + Linear classifier on ``dataset``.

    Every image counts, classified right or not, with its true class's CAM. ``dataset`` must have
    ``masks``. Returns {"accuracy": top-1 in %, "pointing": hit rate, "energy": mean share of
    positive CAM energy inside the mask, "iou": mean IoU at ``threshold``}, the last three in
    [0, 1]. The model is moved to ``device``.
    """
    if dataset.masks is None:
        raise ValueError(f"localisation needs a dataset with object masks (synthetic, "
                         f"synthetic-distractors); {dataset.name!r} has none. For two models' "
                         f"agreement without masks use catkd.metrics.agreement")
    totals = {"accuracy": 0.0, "pointing": 0.0, "energy": 0.0, "iou": 0.0}
    start = 0
    for labels, [(logits, cams)] in _batches([model], dataset, device, batch_size):
        masks = dataset.masks[start:start + len(labels)].to(device)
        start += len(labels)
        totals["accuracy"] += 100 * (logits.argmax(dim=1) == labels).sum().item()
        totals["pointing"] += pointing_game(cams, masks, labels).sum().item()
        totals["energy"] += energy_inside(cams, masks, labels).sum().item()
        totals["iou"] += iou(cams, masks, labels, threshold).sum().item()
    return {name: total / len(dataset) for name, total in totals.items()}


def agreement(students: list[nn.Module], teacher: nn.Module, dataset: data.ImageDataset,
              device: str | torch.device = "cpu", batch_size: int = 500) -> list[dict[str, float]]:
    """Mean Pearson correlation of each student's CAMs with its teacher's on ``dataset``.

    Returns, for each of ``students`` in order, {"true_class": mean over images of the true
    class's maps, "all_classes": mean over every (image, class)}. The teacher's CAMs are computed
    once per batch for all of them. CAMs of different sizes are compared after pooling the larger
    to the smaller. The models are moved to ``device``; no masks needed.
    """
    if isinstance(students, nn.Module):
        raise TypeError(f"agreement takes a list of students, got one model "
                        f"({type(students).__name__}): pass [model]")
    true, every, count = [0.0] * len(students), [0.0] * len(students), 0
    for labels, outputs in _batches([*students, teacher], dataset, device, batch_size):
        *student_outputs, (_, teacher_cams) = outputs
        for number, (_, student_cams) in enumerate(student_outputs):
            true[number] += correlation(student_cams, teacher_cams, labels).sum().item()
            every[number] += correlation(student_cams, teacher_cams).mean(dim=1).sum().item()
        count += len(labels)
    return [{"true_class": true_sum / count, "all_classes": every_sum / count}
            for true_sum, every_sum in zip(true, every)]


def map_agreement(maps: torch.Tensor, cams: torch.Tensor, resolution: int = 2,
                  normalize: str | None = "l2", top: int | None = None) -> dict[str, float]:
    """How far class maps (e.g. ``catkd.gradcam.GradCAMModel``'s) are from exact CAMs, as CAT
    sees them.

    Both (N, K, h, w) and (N, K, H, W) (sizes may differ, e.g. maps of an earlier layer) are
    average-pooled to ``resolution`` x ``resolution`` and, per (sample, class), normalised by
    ``normalize`` ("l2", "l1" or None), as ``catkd.losses.cat_loss`` does. ``top`` n keeps, per
    sample, the n classes of highest exact score (the CAM's mean: the logit without bias);
    None keeps all K. Returns the means over the kept (sample, class) pairs of:

    * ``cosine``: cosine similarity of the pooled maps (1: the same up to a positive scale;
      0 also where a map is all zero, as Grad-CAM's ReLU makes it for a class absent
      everywhere);
    * ``relative_l2``: ||maps - cams|| / ||cams|| of the pooled, normalised maps;
    * ``cat_loss``: ``cat_loss(maps, cams, resolution, normalize)`` over the kept classes, the
      CAT term (without beta) of a student whose maps were these, against the exact CAMs.
    """
    if maps.dim() != 4 or cams.dim() != 4 or maps.shape[:2] != cams.shape[:2]:
        raise ValueError(f"maps and CAMs must be (N, K, h, w) with the same N and K, got "
                         f"{tuple(maps.shape)} and {tuple(cams.shape)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {NORMALIZE}")
    maps, cams = maps.detach().float(), cams.detach().float()
    pooled = []
    for each in (maps, cams):
        each = F.adaptive_avg_pool2d(each, resolution).flatten(2)  # (N, K, r r)
        if normalize is not None:
            each = each / each.norm(p=2 if normalize == "l2" else 1, dim=2,
                                    keepdim=True).clamp_min(1e-12)
        pooled.append(each)
    cosine = F.cosine_similarity(pooled[0], pooled[1], dim=2)  # (N, K)
    relative = (pooled[0] - pooled[1]).norm(dim=2) / pooled[1].norm(dim=2).clamp_min(1e-12)
    classes = None
    if top is not None:
        kept = cams.mean(dim=(2, 3)).topk(top, dim=1).indices  # (N, top)
        cosine, relative = cosine.gather(1, kept), relative.gather(1, kept)
        classes = ("top", top)
    loss = cat_loss(maps, cams, resolution, normalize, classes=classes)
    return {"cosine": cosine.mean().item(), "relative_l2": relative.mean().item(),
            "cat_loss": loss.item()}
