"""Distillation losses as pure functions on tensors.

Every function takes student and teacher tensors and returns a scalar loss. The teacher is a
target: its tensors are detached, so no gradient ever reaches the teacher. Nothing assumes a
device, a batch size or a number of classes K. Half-precision inputs are computed in float32
(sums over many classes and small norms are not safe in bf16/fp16); other dtypes are kept.

- ``cat_loss``: class attention transfer (CAT-KD, Guo et al., CVPR 2023, Eq. 5).
- ``kd_loss``: Hinton's knowledge distillation.
- ``dkd_loss``: decoupled knowledge distillation (Zhao et al., CVPR 2022).
- ``at_loss``: attention transfer (Zagoruyko & Komodakis, ICLR 2017).
- ``hint_loss``: FitNets' hint (Romero et al., ICLR 2015).
- ``rkd_distance_loss``, ``rkd_angle_loss``: relational KD (Park et al., CVPR 2019).
- ``ofd_margins``, ``ofd_loss``: overhaul of feature distillation (Heo et al., ICCV 2019).
- ``crd_loss``: contrastive representation distillation's NCE loss (Tian et al., ICLR 2020).
- ``hcl_loss``: ReviewKD's hierarchical context loss (Chen et al., CVPR 2021).
"""

import math
from typing import Sequence

import torch
import torch.nn.functional as F

NORMALIZE = ("l2", "l1", None)
BINARIZE = (None, "mean", "mean_abs")
CLASS_SELECTIONS = ("top", "bottom")
_EPS = 1e-12  # guards the normalisation of an all-zero map (e.g. a binarised constant CAM)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _check_4d(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(tensor.shape)}")


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both be (N, K) with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def _kl_per_batch(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of (N, K) log-probabilities, summed over K, averaged over N."""
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def _parse_classes(classes, cams_shape: torch.Size) -> tuple[str, int] | None:
    # Lists are accepted too, because YAML configs give lists, not tuples.
    if classes is None:
        return None
    num_classes = cams_shape[1]
    valid = (
        f"valid: None, ('top', n) or ('bottom', n) with 1 <= n <= K = {num_classes} "
        f"for CAMs of shape {tuple(cams_shape)}"
    )
    if not isinstance(classes, (tuple, list)) or len(classes) != 2:
        raise ValueError(f"unknown classes spec {classes!r}; {valid}")
    which, n = classes
    if which not in CLASS_SELECTIONS:
        raise ValueError(f"unknown class selection {which!r} in classes={classes!r}; {valid}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_classes:
        raise ValueError(f"classes={classes!r} asks for n={n!r} classes; {valid}")
    return which, n


def cat_loss(
    student_cams: torch.Tensor,
    teacher_cams: torch.Tensor,
    resolution: int = 2,
    normalize: str | None = "l2",
    binarize: str | None = None,
    classes: tuple[str, int] | None = None,
) -> torch.Tensor:
    """Class attention transfer loss: the paper's Eq. 5 divided by r^2, averaged over the batch.

    Args:
        student_cams: (N, K, H_s, W_s) student class activation maps.
        teacher_cams: (N, K, H_t, W_t) teacher class activation maps; the sizes may differ from
            the student's (e.g. 8x8 vs 4x4) because each side is pooled on its own.
        resolution: r, the side of the pooled maps; 1 <= r <= min(H_s, W_s, H_t, W_t).
        normalize: "l2" or "l1" (divide each pooled (sample, class) map by its norm over the
            r*r cells) or None.
        binarize: teacher maps become 1 where they exceed a per-map threshold, else 0, before
            pooling. "mean": the map's spatial mean (the paper); "mean_abs": the mean of |CAM|
            (the authors' code); None: no binarisation.
        classes: None (all K classes) or ("top", n) / ("bottom", n): per sample, keep exactly n
            classes with the highest / lowest teacher score GAP(CAM) (the logit without bias,
            Eq. 3), measured on the raw teacher CAMs.

    Returns:
        Scalar: squared difference of the pooled (normalised) maps, averaged over the batch, the
        kept classes and the r*r cells.
    """
    _check_4d("student_cams", student_cams)
    _check_4d("teacher_cams", teacher_cams)
    if student_cams.shape[:2] != teacher_cams.shape[:2]:
        raise ValueError(
            "student_cams and teacher_cams must have the same N and K, got shapes "
            f"{tuple(student_cams.shape)} and {tuple(teacher_cams.shape)}"
        )
    smallest_side = min(*student_cams.shape[2:], *teacher_cams.shape[2:])
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or not 1 <= resolution <= smallest_side
    ):
        raise ValueError(
            f"resolution must be an int in 1..{smallest_side} (no larger than either CAM's height "
            f"or width), got {resolution!r} for student_cams {tuple(student_cams.shape)} and "
            f"teacher_cams {tuple(teacher_cams.shape)}"
        )
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {NORMALIZE}")
    if binarize not in BINARIZE:
        raise ValueError(f"unknown binarize {binarize!r}; valid: {BINARIZE}")
    selection = _parse_classes(classes, teacher_cams.shape)

    student_cams = _at_least_float32(student_cams)
    teacher_cams = _at_least_float32(teacher_cams.detach())
    teacher_scores = teacher_cams.mean(dim=(2, 3))  # (N, K): the teacher's logits without bias

    if binarize is not None:
        source = teacher_cams.abs() if binarize == "mean_abs" else teacher_cams
        threshold = source.mean(dim=(2, 3), keepdim=True)
        teacher_cams = (teacher_cams > threshold).to(teacher_cams.dtype)

    pooled = []
    for cams in (student_cams, teacher_cams):
        cams = F.adaptive_avg_pool2d(cams, resolution).flatten(2)  # (N, K, r*r)
        if normalize is not None:
            norm_order = 2 if normalize == "l2" else 1
            cams = cams / cams.norm(p=norm_order, dim=2, keepdim=True).clamp_min(_EPS)
        pooled.append(cams)
    student_maps, teacher_maps = pooled

    if selection is not None:
        which, n = selection
        kept = teacher_scores.topk(n, dim=1, largest=which == "top").indices  # (N, n)
        kept = kept.unsqueeze(2).expand(-1, -1, student_maps.shape[2])
        student_maps, teacher_maps = student_maps.gather(1, kept), teacher_maps.gather(1, kept)

    return (student_maps - teacher_maps).pow(2).mean()


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton's KD: T^2 * KL(teacher || student) of the T-softened (N, K) logits.

    Summed over the K classes, averaged over the N samples; a scalar.
    """
    _check_logits(student_logits, teacher_logits)
    student_log_probs = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=1)
    teacher_logits = _at_least_float32(teacher_logits.detach())
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    return _kl_per_batch(teacher_log_probs, student_log_probs) * temperature**2


def _binary_and_other_log_probs(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (N, K) logits at the (N,) target classes.

    Returns the (N, 2) log-probabilities of (target, any non-target) and the (N, K-1)
    log-probabilities among the non-target classes alone. The target logit is dropped (gathered
    around) rather than masked with a large negative number, so the result is exact for any logit
    scale; log(1 - p_target) is taken in log space, so it stays finite when p_target is near 1.
    """
    targets = targets.long().unsqueeze(1)  # (N, 1)
    other_classes = torch.arange(logits.shape[1] - 1, device=logits.device).unsqueeze(0)
    other_classes = other_classes + (other_classes >= targets).long()  # (N, K-1): skips target
    other_logits = logits.gather(1, other_classes)
    binary_logits = torch.cat(
        [logits.gather(1, targets), other_logits.logsumexp(dim=1, keepdim=True)], dim=1
    )
    return F.log_softmax(binary_logits, dim=1), F.log_softmax(other_logits, dim=1)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD, both at temperature T and times T^2.

    Args:
        student_logits, teacher_logits: (N, K) logits, K >= 2.
        targets: (N,) integer class labels in 0..K-1.

    TCKD is KL(teacher || student) of the binary (target, all non-target) distributions; NCKD is
    KL(teacher || student) of the distributions over the K-1 non-target classes. Each is summed
    over its classes and averaged over the batch. Returns a scalar.
    """
    _check_logits(student_logits, teacher_logits)
    if student_logits.shape[1] < 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"dkd_loss needs (N, K) logits with K >= 2 and (N,) targets, got logits of shape "
            f"{tuple(student_logits.shape)} and targets of shape {tuple(targets.shape)}"
        )
    student_binary, student_other = _binary_and_other_log_probs(
        _at_least_float32(student_logits) / temperature, targets
    )
    teacher_binary, teacher_other = _binary_and_other_log_probs(
        _at_least_float32(teacher_logits.detach()) / temperature, targets
    )
    tckd = _kl_per_batch(teacher_binary, student_binary)
    nckd = _kl_per_batch(teacher_other, student_other)
    return (alpha * tckd + beta * nckd) * temperature**2


def _attention_map(features: torch.Tensor, p: float) -> torch.Tensor:
    """(N, C, H, W) features -> (N, H*W) L2-normalised map of mean_c |f|^p."""
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    p: int | float = 2,
) -> torch.Tensor:
    """Attention transfer, summed over stages.

    Args:
        student_features, teacher_features: one (N, C_i, H_i, W_i) feature map per stage, in the
            same order; the channel counts may differ between student and teacher.
        p: exponent of the attention map mean_c |f|^p (|f|^p = f^p for p = 2).

    Where the spatial sizes of a stage differ, the larger feature map (not its attention map) is
    adaptively average pooled to the smaller size before its attention map is computed. Per
    stage: the mean over batch and positions of the squared difference of the L2-normalised
    attention maps. Returns the scalar sum over stages.
    """
    if len(student_features) != len(teacher_features) or len(student_features) == 0:
        raise ValueError(
            "student_features and teacher_features need the same, non-zero number of stages, got "
            f"{len(student_features)} and {len(teacher_features)}"
        )
    total = 0.0
    for stage, (student, teacher) in enumerate(zip(student_features, teacher_features)):
        _check_4d(f"student_features[{stage}]", student)
        _check_4d(f"teacher_features[{stage}]", teacher)
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"stage {stage}: student and teacher batch sizes differ, got shapes "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        # Pool both to the smaller height and the smaller width. A map of that size already is
        # left as it is: pooling it would change nothing but costs a pass (and one more in the
        # backward) over the largest maps.
        common_size = tuple(map(min, student.shape[2:], teacher.shape[2:]))
        student, teacher = (
            F.adaptive_avg_pool2d(features, common_size)
            if tuple(features.shape[2:]) != common_size else features
            for features in (_at_least_float32(student), _at_least_float32(teacher.detach())))
        total = total + (_attention_map(student, p) - _attention_map(teacher, p)).pow(2).mean()
    return total


def _check_pairs(name: str, student_features: Sequence[torch.Tensor],
                 teacher_features: Sequence[torch.Tensor]) -> None:
    if len(student_features) != len(teacher_features) or len(student_features) == 0:
        raise ValueError(
            f"{name} needs the same, non-zero number of student and teacher maps, got "
            f"{len(student_features)} and {len(teacher_features)}"
        )


def hint_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets' hint: mean squared difference of (N, C, H, W) maps of the same shape.

    ``student_hint`` is the student's map after the regressor that gives it the teacher's shape.
    Averaged over every element; a scalar.
    """
    _check_4d("student_hint", student_hint)
    if student_hint.shape != teacher_hint.shape:
        raise ValueError(
            "student_hint (after the regressor) and teacher_hint must have the same shape, got "
            f"{tuple(student_hint.shape)} and {tuple(teacher_hint.shape)}"
        )
    teacher_hint = _at_least_float32(teacher_hint.detach())
    return (_at_least_float32(student_hint) - teacher_hint).pow(2).mean()


def _check_embeddings(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0] \
            or student.shape[0] < 2:
        raise ValueError(
            "student and teacher features must be (N, D_s) and (N, D_t) with the same N >= 2, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _normalised_distances(features: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean distances divided by their mean over the off-diagonal pairs."""
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * features @ features.T
    # Clamped before the root: a zero distance (the diagonal) has no gradient through sqrt.
    distances = squared.clamp_min(1e-12).sqrt()
    off_diagonal = ~torch.eye(len(features), dtype=torch.bool, device=features.device)
    distances = distances * off_diagonal
    return distances / distances[off_diagonal].mean()


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss of (N, D_s) student and (N, D_t) teacher features (D may differ).

    Pairwise Euclidean distances within the batch, each side divided by its mean distance over
    the N(N-1) off-diagonal pairs; the Huber (smooth L1, threshold 1) difference averaged over
    all N*N entries (the diagonal is 0 on both sides). A scalar.
    """
    _check_embeddings(student, teacher)
    teacher_distances = _normalised_distances(_at_least_float32(teacher.detach()))
    student_distances = _normalised_distances(_at_least_float32(student))
    return F.smooth_l1_loss(student_distances, teacher_distances)


def _angles(features: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N, N): cosine of the angle at vertex j between e_i - e_j and e_k - e_j,
    entry [j, i, k]; 0 where i or k equals j."""
    directions = F.normalize(features[None, :, :] - features[:, None, :], dim=2)  # [j, i]
    return directions @ directions.transpose(1, 2)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss of (N, D_s) student and (N, D_t) teacher features.

    For every triplet (i, j, k) of the batch, the cosine of the angle at j of the triangle
    e_i, e_j, e_k; the Huber (smooth L1, threshold 1) difference averaged over the N^3 triplets.
    A scalar.
    """
    _check_embeddings(student, teacher)
    teacher_angles = _angles(_at_least_float32(teacher.detach()))
    return F.smooth_l1_loss(_angles(_at_least_float32(student)), teacher_angles)


def ofd_margins(bn_weight: torch.Tensor, bn_bias: torch.Tensor) -> torch.Tensor:
    """OFD's margin per channel: E[x | x < 0] for x ~ N(bias, weight^2), the distribution a
    BatchNorm's output has; (C,) weights and biases -> (C,) margins (negative).

    m - s * phi(m / s) / Phi(-m / s) with s = |weight|, m = bias; where fewer than 0.1% of the
    values are negative (Phi(-m/s) <= 0.001) the expectation is unstable and -3s is used.
    Computed in float64, as the reference does (scipy): in float32, Phi's lower tail put the
    margins up to 7e-5 (relative) off. Returned on the weights' device, in their dtype promoted
    to at least float32.
    """
    if bn_weight.dim() != 1 or bn_weight.shape != bn_bias.shape:
        raise ValueError(f"bn_weight and bn_bias must both be (C,), got "
                         f"{tuple(bn_weight.shape)} and {tuple(bn_bias.shape)}")
    # On the CPU, which has float64 where some accelerators (MPS) do not. A zero scale (a dead
    # channel) would divide by zero: treat it as a tiny one.
    scale = bn_weight.detach().to("cpu", torch.float64).abs().clamp_min(1e-12)
    mean = bn_bias.detach().to("cpu", torch.float64)
    negative_mass = torch.special.ndtr(-mean / scale)
    density = torch.exp(-((mean / scale) ** 2) / 2) / math.sqrt(2 * math.pi)
    expectation = mean - scale * density / negative_mass.clamp_min(1e-12)
    margins = torch.where(negative_mass > 0.001, expectation, -3 * scale)
    return margins.to(bn_weight.device, torch.promote_types(bn_weight.dtype, torch.float32))


def ofd_loss(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    margins: Sequence[torch.Tensor],
) -> torch.Tensor:
    """OFD's partial L2 distance between pre-ReLU maps, over stages.

    Args:
        student_features: one (N, C_i, H_i, W_i) map per stage: the student's pre-ReLU map after
            its connector, so it has the teacher's channels.
        teacher_features: one (N, C_i, H'_i, W'_i) teacher pre-ReLU map per stage, at least as
            large as the student's: it is adaptively average pooled to (H_i, W_i).
        margins: one (C_i,) margin per stage (``ofd_margins``).

    Per stage the target is max(teacher, margin); a position counts unless both the student is
    at or below the target and the target is at or below 0 (a ReLU would make both zero). The
    squared differences are summed over C, H, W and averaged over N; stage i of n is weighted
    1 / 2^(n-1-i), so the deepest counts fully. Returns the scalar sum over stages.
    """
    _check_pairs("ofd_loss", student_features, teacher_features)
    if len(margins) != len(student_features):
        raise ValueError(f"ofd_loss needs one margin per stage, got {len(margins)} margins for "
                         f"{len(student_features)} stages")
    count = len(student_features)
    total = 0.0
    for stage, (student, teacher, margin) in enumerate(
            zip(student_features, teacher_features, margins)):
        _check_4d(f"student_features[{stage}]", student)
        _check_4d(f"teacher_features[{stage}]", teacher)
        if (student.shape[:2] != teacher.shape[:2] or margin.shape != student.shape[1:2]
                or student.shape[2] > teacher.shape[2] or student.shape[3] > teacher.shape[3]):
            raise ValueError(
                f"stage {stage}: student (N, C, H, W), teacher (N, C, H', W') with H' >= H, "
                f"W' >= W and margin (C,) needed, got {tuple(student.shape)}, "
                f"{tuple(teacher.shape)} and {tuple(margin.shape)}"
            )
        student = _at_least_float32(student)
        teacher = F.adaptive_avg_pool2d(_at_least_float32(teacher.detach()), student.shape[2:])
        target = torch.maximum(teacher, _at_least_float32(margin)[:, None, None])
        counted = (student > target) | (target > 0)
        squared = (student - target).pow(2) * counted
        total = total + squared.sum() / len(student) / 2 ** (count - 1 - stage)
    return total


_NCE_EPS = 1e-7  # CRD's guard against a zero denominator


def crd_loss(scores: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """CRD's NCE loss for one side (student or teacher embedding against the other's memory).

    Args:
        scores: (N, K + 1) normalised scores exp(<v, m_j> / T) / Z of each sample against its
            own memory entry (column 0, the positive) and K negatives.
        dataset_size: the number of training samples, whose uniform 1 / size is the noise
            distribution.

    The positive's probability of being real, P / (P + K / size), and each negative's of being
    noise, (K / size) / (P + K / size), are log-summed and averaged over the batch, negated.
    A scalar.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (N, K + 1) with K >= 1 negatives, got "
                         f"{tuple(scores.shape)}")
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    scores = _at_least_float32(scores)
    noise = (scores.shape[1] - 1) / dataset_size
    positive, negatives = scores[:, 0], scores[:, 1:]
    log_real = torch.log(positive / (positive + noise + _NCE_EPS))
    log_noise = torch.log(noise / (negatives + noise + _NCE_EPS))
    return -(log_real.sum() + log_noise.sum()) / len(scores)


_HCL_LEVELS = (4, 2, 1)  # ReviewKD's context pyramid: pooled sides, each at half the weight


def hcl_loss(student_features: Sequence[torch.Tensor],
             teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss, summed over levels.

    Args:
        student_features, teacher_features: one (N, C_i, H_i, W_i) map per level, the same shape
            on both sides (the student's after its fusion modules).

    Per level: the mean squared difference at full size (weight 1), plus, for each side l in
    4, 2, 1 smaller than H_i, the mean squared difference of both maps average pooled to l x l
    (weights 1/2, 1/4, 1/8); divided by the sum of the weights used. A scalar.
    """
    _check_pairs("hcl_loss", student_features, teacher_features)
    total = 0.0
    for level, (student, teacher) in enumerate(zip(student_features, teacher_features)):
        _check_4d(f"student_features[{level}]", student)
        if student.shape != teacher.shape:
            raise ValueError(f"level {level}: student and teacher maps must have the same shape, "
                             f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
        student = _at_least_float32(student)
        teacher = _at_least_float32(teacher.detach())
        loss, weight, weights = F.mse_loss(student, teacher), 1.0, 1.0
        for side in _HCL_LEVELS:
            if side >= student.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, side),
                                              F.adaptive_avg_pool2d(teacher, side))
            weights += weight
        total = total + loss / weights
    return total
