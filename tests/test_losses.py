"""The losses against values worked out by hand or by plain numpy loops over samples and classes.

The numpy references below are written independently of ``catkd.losses``: explicit loops, one
(sample, class) map at a time, in float64.
"""

import math

import numpy as np
import pytest
import torch

from catkd.losses import at_loss, cat_loss, dkd_loss, kd_loss


# --------------------------------------------------------------------------- numpy references
def np_adaptive_pool(image, out_h, out_w):
    """PyTorch's adaptive average pooling of a 2-D array.

    Output cell i averages input rows floor(i * H / o) .. ceil((i + 1) * H / o) (same for columns).
    """
    in_h, in_w = image.shape
    pooled = np.zeros((out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * in_h) // out_h, -((-(i + 1) * in_h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * in_w) // out_w, -((-(j + 1) * in_w) // out_w)
            pooled[i, j] = image[r0:r1, c0:c1].mean()
    return pooled


def np_cat(student, teacher, r, normalize, binarize, classes):
    n_samples, n_classes = student.shape[:2]
    total, count = 0.0, 0
    for s in range(n_samples):
        scores = [teacher[s, k].mean() for k in range(n_classes)]
        order = sorted(range(n_classes), key=lambda k: scores[k], reverse=True)
        if classes is None:
            kept = order
        elif classes[0] == "top":
            kept = order[: classes[1]]
        else:
            kept = order[len(order) - classes[1]:]
        for k in kept:
            t_map = teacher[s, k].copy()
            if binarize == "mean":
                t_map = (t_map > t_map.mean()).astype(float)
            elif binarize == "mean_abs":
                t_map = (t_map > np.abs(t_map).mean()).astype(float)
            maps = [np_adaptive_pool(student[s, k], r, r), np_adaptive_pool(t_map, r, r)]
            if normalize == "l2":
                maps = [m / max(math.sqrt((m**2).sum()), 1e-12) for m in maps]
            elif normalize == "l1":
                maps = [m / max(np.abs(m).sum(), 1e-12) for m in maps]
            for value in ((maps[0] - maps[1]) ** 2).ravel():
                total += value
                count += 1
    return total / count


def np_softmax(logits):
    exps = [math.exp(v - max(logits)) for v in logits]
    return [e / sum(exps) for e in exps]


def np_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def np_kd(student, teacher, temperature):
    kls = [
        np_kl(np_softmax(list(t / temperature)), np_softmax(list(s / temperature)))
        for s, t in zip(student, teacher)
    ]
    return temperature**2 * sum(kls) / len(kls)


def np_dkd_parts(student, teacher, targets, temperature):
    """(TCKD, NCKD), each already times T^2 and averaged over the batch."""
    tckd = nckd = 0.0
    for s, t, y in zip(student, teacher, targets):
        p_s, p_t = np_softmax(list(s / temperature)), np_softmax(list(t / temperature))
        tckd += np_kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        others = [k for k in range(len(s)) if k != y]
        nckd += np_kl(
            np_softmax([t[k] / temperature for k in others]),
            np_softmax([s[k] / temperature for k in others]),
        )
    scale = temperature**2 / len(targets)
    return tckd * scale, nckd * scale


def np_at(student_stages, teacher_stages, p=2):
    total = 0.0
    for student, teacher in zip(student_stages, teacher_stages):
        height = min(student.shape[2], teacher.shape[2])
        width = min(student.shape[3], teacher.shape[3])
        stage_sum, count = 0.0, 0
        for s_feat, t_feat in zip(student, teacher):
            att = []
            for feat in (s_feat, t_feat):
                pooled = np.stack([np_adaptive_pool(ch, height, width) for ch in feat])
                a = (np.abs(pooled) ** p).mean(axis=0).ravel()
                att.append(a / np.linalg.norm(a))
            stage_sum += ((att[0] - att[1]) ** 2).sum()
            count += att[0].size
        total += stage_sum / count
    return total


def t64(array):
    return torch.tensor(np.asarray(array, dtype=np.float64))


# --------------------------------------------------------------------------- cat_loss: by hand
@pytest.mark.parametrize(
    "normalize, expected",
    [
        # student [3, 4, 0, 0], teacher [0, 1, 0, 0] (r = 2 keeps the 2x2 maps as they are)
        (None, (9 + 9 + 0 + 0) / 4),
        # l2: student / 5 = [.6, .8, 0, 0]: (.36 + .04) / 4
        ("l2", 0.4 / 4),
        # l1: student / 7: ((3/7)^2 + (3/7)^2) / 4
        ("l1", (18 / 49) / 4),
    ],
)
def test_cat_loss_normalize_by_hand(normalize, expected):
    student = t64([[[[3, 4], [0, 0]]]])
    teacher = t64([[[[0, 1], [0, 0]]]])
    loss = cat_loss(student, teacher, resolution=2, normalize=normalize)
    assert loss.item() == pytest.approx(expected)


def test_cat_loss_l1_uses_absolute_values_by_hand():
    # student [3, -1, 0, 0] / (3 + 1) = [.75, -.25, 0, 0]; teacher [0, 2, 0, 0] / 2 = [0, 1, 0, 0]
    student = t64([[[[3, -1], [0, 0]]]])
    teacher = t64([[[[0, 2], [0, 0]]]])
    expected = (0.75**2 + 1.25**2) / 4
    assert cat_loss(student, teacher, normalize="l1").item() == pytest.approx(expected)


def test_cat_loss_pools_different_native_sizes_by_hand():
    # Student 8x8 made of 4x4 blocks 1, 2 / 3, 4; teacher 4x4 made of 2x2 blocks 0, 2 / 3, 8.
    # Both pool to 2x2 as the block values; r = 1 pools them to their means 2.5 and 3.25.
    student = t64(np.kron([[1, 2], [3, 4]], np.ones((4, 4)))[None, None])
    teacher = t64(np.kron([[0, 2], [3, 8]], np.ones((2, 2)))[None, None])
    by_r = {2: (1 + 0 + 0 + 16) / 4, 1: (2.5 - 3.25) ** 2}
    for r, expected in by_r.items():
        loss = cat_loss(student, teacher, resolution=r, normalize=None)
        assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "binarize, expected",
    [
        (None, (9 + 1 + 0 + 4) / 4),
        # spatial mean 0: [-3, 1, 0, 2] -> [0, 1, 0, 1]
        ("mean", 2 / 4),
        # mean |CAM| = 1.5: [-3, 1, 0, 2] -> [0, 0, 0, 1]
        ("mean_abs", 1 / 4),
    ],
)
def test_cat_loss_binarize_by_hand(binarize, expected):
    student = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    teacher = t64([[[[-3, 1], [0, 2]]]])
    loss = cat_loss(student, teacher, resolution=2, normalize=None, binarize=binarize)
    assert loss.item() == pytest.approx(expected)


def test_cat_loss_binarizes_before_pooling_by_hand():
    # Teacher 4x4 rows [0, 0, 0, 9] x 4: mean 2.25, so only the last column is 1. Pooled to 2x2:
    # [0, .5, 0, .5]. Pooling first would give [0, 4.5, 0, 4.5], binarised [0, 1, 0, 1].
    teacher = t64(np.tile([0, 0, 0, 9], (4, 1))[None, None])
    student = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    loss = cat_loss(student, teacher, resolution=2, normalize=None, binarize="mean")
    assert loss.item() == pytest.approx(2 * 0.25 / 4)


# N = 2, K = 3, 1x1 maps, r = 1, no normalisation: the loss is the mean of (teacher - student)^2
# over the kept (sample, class) pairs. Teacher scores: sample 0 [3, 1, 2], sample 1 [0, 5, -1];
# student [1, 0, 0] and [0, 0, 2]; squared errors [4, 1, 4] and [0, 25, 9].
SELECTION_TEACHER = [[[[3.0]], [[1.0]], [[2.0]]], [[[0.0]], [[5.0]], [[-1.0]]]]
SELECTION_STUDENT = [[[[1.0]], [[0.0]], [[0.0]]], [[[0.0]], [[0.0]], [[2.0]]]]


@pytest.mark.parametrize(
    "classes, expected",
    [
        (("top", 1), (4 + 25) / 2),  # classes 0 and 1; top n-1 = 0 classes is meaningless
        (("top", 2), (4 + 4 + 25 + 0) / 4),  # {0, 2} and {1, 0}; n-1 would give 14.5
        (("top", 3), (4 + 1 + 4 + 0 + 25 + 9) / 6),
        (("bottom", 1), (1 + 9) / 2),  # classes 1 and 2; n+1 would give 3.5
        (("bottom", 2), (1 + 4 + 9 + 0) / 4),  # {1, 2} and {2, 0}; n+1 would give 43/6
        (["bottom", 2], (1 + 4 + 9 + 0) / 4),  # a list, as a YAML config gives it
        (None, (4 + 1 + 4 + 0 + 25 + 9) / 6),
    ],
)
def test_cat_loss_keeps_exactly_n_classes_per_sample_by_hand(classes, expected):
    student, teacher = t64(SELECTION_STUDENT), t64(SELECTION_TEACHER)
    loss = cat_loss(student, teacher, resolution=1, normalize=None, classes=classes)
    assert loss.item() == pytest.approx(expected)


def test_cat_loss_ranks_classes_by_raw_teacher_score_not_binarised():
    # Class 0 has the higher raw score (mean 4) but, binarised, class 1 (mean 0.5 vs 0.25) would
    # rank first. Student zeros, r = 2, no normalisation: the kept class's binarised map counts.
    teacher = t64([[[[16, 0], [0, 0]], [[-1, 1], [-1, 1]]]])
    student = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    loss = cat_loss(student, teacher, normalize=None, binarize="mean", classes=("top", 1))
    assert loss.item() == pytest.approx(1 / 4)  # class 0 binarised: [1, 0, 0, 0]


# --------------------------------------------------------------------------- cat_loss: numpy loops
@pytest.mark.parametrize("num_classes", [3, 7])
@pytest.mark.parametrize("sizes", [(8, 4), (4, 8), (4, 4), (7, 4)])
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("normalize", ["l2", "l1", None])
def test_cat_loss_matches_numpy_loops(num_classes, sizes, r, normalize):
    rng = np.random.default_rng(num_classes * 100 + sizes[0] * 10 + r)
    student = rng.normal(size=(3, num_classes, sizes[0], sizes[0]))
    teacher = rng.normal(size=(3, num_classes, sizes[1], sizes[1]))
    loss = cat_loss(t64(student), t64(teacher), resolution=r, normalize=normalize)
    assert loss.item() == pytest.approx(np_cat(student, teacher, r, normalize, None, None))


@pytest.mark.parametrize("binarize", [None, "mean", "mean_abs"])
@pytest.mark.parametrize("classes", [None, ("top", 1), ("top", 4), ("bottom", 2), ("bottom", 7)])
def test_cat_loss_binarize_and_classes_match_numpy_loops(binarize, classes):
    rng = np.random.default_rng(7)
    student = rng.normal(size=(4, 7, 8, 8))
    teacher = rng.normal(size=(4, 7, 4, 4))
    loss = cat_loss(t64(student), t64(teacher), 2, "l2", binarize, classes)
    assert loss.item() == pytest.approx(np_cat(student, teacher, 2, "l2", binarize, classes))


def test_cat_loss_all_zero_map_is_finite_and_half_precision_is_computed_in_float32():
    # A constant teacher CAM binarises to all zeros; normalising it must not divide by zero.
    student = torch.ones(2, 3, 4, 4, dtype=torch.float16)
    teacher = torch.full((2, 3, 4, 4), 5.0, dtype=torch.float16)
    loss = cat_loss(student, teacher, binarize="mean")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1 / 4)  # student l2-normalised: [.5] * 4, teacher 0


# --------------------------------------------------------------------------- kd_loss
def test_kd_loss_is_zero_for_equal_logits():
    logits = torch.tensor([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0]])
    assert kd_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_by_hand():
    # T = 2: teacher [2 ln 3, 0] / 2 -> p = [.75, .25]; student [0, 0] -> q = [.5, .5].
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)
    student = torch.zeros(1, 2, dtype=torch.float64)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl)


def test_kd_loss_matches_numpy_loops():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    for temperature in (1.0, 4.0):
        loss = kd_loss(t64(student), t64(teacher), temperature)
        assert loss.item() == pytest.approx(np_kd(student, teacher, temperature))


# --------------------------------------------------------------------------- dkd_loss
# Sample 0, target 0: teacher ln[2, 1, 1] -> p = [.5, .25, .25], student [0, 0, 0] -> q = 1/3 each.
#   TCKD: KL((.5, .5) || (1/3, 2/3)); NCKD: non-targets (.5, .5) vs (.5, .5) -> 0.
# Sample 1, target 2: teacher ln[1, 3, 4] -> p = [1/8, 3/8, 1/2], student ln[1, 1, 2] -> q =
#   [1/4, 1/4, 1/2]. TCKD: (.5, .5) vs (.5, .5) -> 0; NCKD: KL((1/4, 3/4) || (1/2, 1/2)).
DKD_TEACHER = np.log([[2.0, 1.0, 1.0], [1.0, 3.0, 4.0]])
DKD_STUDENT = np.log([[1.0, 1.0, 1.0], [1.0, 1.0, 2.0]])
DKD_TARGETS = [0, 2]
HAND_TCKD = (0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))) / 2
HAND_NCKD = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 2


def test_dkd_loss_by_hand():
    targets = torch.tensor(DKD_TARGETS)
    for temperature in (1.0, 4.0):
        # Scaling the logits by T leaves the softened distributions as above; the loss gains T^2.
        student, teacher = t64(DKD_STUDENT * temperature), t64(DKD_TEACHER * temperature)
        loss = dkd_loss(student, teacher, targets, alpha=1.0, beta=8.0, temperature=temperature)
        assert loss.item() == pytest.approx(temperature**2 * (HAND_TCKD + 8 * HAND_NCKD))


def test_dkd_loss_alpha_and_beta_scale_the_two_parts():
    student, teacher, targets = t64(DKD_STUDENT), t64(DKD_TEACHER), torch.tensor(DKD_TARGETS)
    only_tckd = dkd_loss(student, teacher, targets, alpha=3.0, beta=0.0, temperature=1.0)
    only_nckd = dkd_loss(student, teacher, targets, alpha=0.0, beta=5.0, temperature=1.0)
    assert only_tckd.item() == pytest.approx(3 * HAND_TCKD)
    assert only_nckd.item() == pytest.approx(5 * HAND_NCKD)


def test_dkd_loss_matches_numpy_loops():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(6, 7)) * 3, rng.normal(size=(6, 7)) * 3
    targets = [0, 6, 3, 3, 1, 5]
    tckd, nckd = np_dkd_parts(student, teacher, targets, 4.0)
    loss = dkd_loss(t64(student), t64(teacher), torch.tensor(targets), 1.5, 2.0, 4.0)
    assert loss.item() == pytest.approx(1.5 * tckd + 2.0 * nckd)


# --------------------------------------------------------------------------- at_loss
def test_at_loss_two_stages_by_hand():
    # Stage 0: student 1 channel [1, 0] -> attention [1, 0]; teacher 3 channels, each [0, 1] ->
    #   mean_c f^2 = [0, 1]. Mean squared difference (1 + 1) / 2 = 1.
    # Stage 1: student 1x4 [1, 3, 0, 2] is pooled (as a feature) to 1x2 [2, 1] -> f^2 [4, 1]
    #   -> / sqrt(17); teacher [1, 1] -> / sqrt(2). (Pooling the attention map instead would give
    #   [5, 2] / sqrt(29) and a different value.)
    student = [t64([[[[1, 0]]]]), t64([[[[1, 3, 0, 2]]]])]
    teacher = [t64([[[[0, 1]], [[0, 1]], [[0, 1]]]]), t64([[[[1, 1]]]])]
    half = 1 / math.sqrt(2)
    stage1 = ((4 / math.sqrt(17) - half) ** 2 + (1 / math.sqrt(17) - half) ** 2) / 2
    assert at_loss(student, teacher).item() == pytest.approx(1 + stage1)


def test_at_loss_matches_numpy_loops():
    rng = np.random.default_rng(2)
    student = [rng.normal(size=(2, 4, 8, 8)), rng.normal(size=(2, 8, 4, 4))]
    teacher = [rng.normal(size=(2, 16, 8, 8)), rng.normal(size=(2, 32, 2, 2))]
    loss = at_loss([t64(f) for f in student], [t64(f) for f in teacher])
    assert loss.item() == pytest.approx(np_at(student, teacher))


# --------------------------------------------------------------------------- gradients
def _student_and_teacher(*shape):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(*shape, generator=generator, requires_grad=True)
    teacher = torch.randn(*shape, generator=generator, requires_grad=True)
    return student, teacher


@pytest.mark.parametrize(
    "loss_fn, shape",
    [
        (lambda s, t: cat_loss(s, t, binarize="mean_abs", classes=("top", 2)), (2, 3, 4, 4)),
        (lambda s, t: cat_loss(s, t, normalize=None), (2, 3, 4, 4)),
        (kd_loss, (2, 5)),
        (lambda s, t: dkd_loss(s, t, torch.tensor([1, 4])), (2, 5)),
        (lambda s, t: at_loss([s, s * 2], [t, t]), (2, 3, 4, 4)),
    ],
)
def test_gradients_reach_the_student_but_not_the_teacher(loss_fn, shape):
    student, teacher = _student_and_teacher(*shape)
    loss_fn(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --------------------------------------------------------------------------- bad input
CAMS = torch.zeros(2, 3, 8, 8)
SMALL_CAMS = torch.zeros(2, 3, 4, 4)


@pytest.mark.parametrize(
    "student, teacher, kwargs, expected_in_message",
    [
        (torch.zeros(2, 3, 8), SMALL_CAMS, {}, ["(2, 3, 8)", "4-D"]),
        (CAMS, torch.zeros(3, 4, 4), {}, ["(3, 4, 4)", "4-D"]),
        (CAMS, torch.zeros(5, 3, 4, 4), {}, ["(2, 3, 8, 8)", "(5, 3, 4, 4)"]),
        (CAMS, torch.zeros(2, 4, 4, 4), {}, ["(2, 3, 8, 8)", "(2, 4, 4, 4)"]),
        (CAMS, SMALL_CAMS, {"resolution": 0}, ["(2, 3, 8, 8)", "(2, 3, 4, 4)", "1..4"]),
        (CAMS, SMALL_CAMS, {"resolution": 5}, ["(2, 3, 8, 8)", "(2, 3, 4, 4)", "1..4"]),
        (CAMS, SMALL_CAMS, {"resolution": 2.0}, ["2.0", "(2, 3, 8, 8)", "(2, 3, 4, 4)"]),
        (CAMS, torch.zeros(2, 3, 4, 2), {"resolution": 3}, ["(2, 3, 4, 2)", "1..2"]),
        (CAMS, SMALL_CAMS, {"classes": ("top", 0)}, ["n=0", "K = 3", "(2, 3, 4, 4)"]),
        (CAMS, SMALL_CAMS, {"classes": ("bottom", 4)}, ["n=4", "K = 3", "(2, 3, 4, 4)"]),
        (CAMS, SMALL_CAMS, {"classes": ("middle", 1)}, ["'middle'", "'top'", "'bottom'"]),
        (CAMS, SMALL_CAMS, {"classes": "top"}, ["'top'", "('bottom', n)"]),
        (CAMS, SMALL_CAMS, {"normalize": "l3"}, ["'l3'", "'l2'", "'l1'", "None"]),
        (CAMS, SMALL_CAMS, {"binarize": "median"}, ["'median'", "'mean'", "'mean_abs'"]),
    ],
)
def test_cat_loss_rejects_bad_input(student, teacher, kwargs, expected_in_message):
    with pytest.raises(ValueError) as error:
        cat_loss(student, teacher, **kwargs)
    for text in expected_in_message:
        assert text in str(error.value)


def test_logit_losses_reject_bad_input():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"\(2, 5\) and \(2, 4\)"):
        kd_loss(logits, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 5\) and \(3, 5\)"):
        dkd_loss(logits, torch.zeros(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3,\)"):
        dkd_loss(logits, logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"K >= 2.*\(2, 1\)"):
        dkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 0]))


def test_at_loss_rejects_bad_input():
    feature = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="got 2 and 1"):
        at_loss([feature, feature], [feature])
    with pytest.raises(ValueError, match="non-zero number of stages, got 0 and 0"):
        at_loss([], [])
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) and \(5, 3, 4, 4\)"):
        at_loss([feature], [torch.zeros(5, 3, 4, 4)])
    with pytest.raises(ValueError, match=r"4-D.*\(2, 3, 4\)"):
        at_loss([feature], [torch.zeros(2, 3, 4)])
