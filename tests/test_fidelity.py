"""Fidelity to the reference code: where catkd must compute what mdistiller and the CAT-KD
authors' fork (GzyAftermath/CAT-KD) compute, and the settings every CIFAR-100 config takes
from them.

Each test would have caught one departure that a step-by-step comparison with the reference
found: OFD's teacher in eval mode, a CAT-KD student with a classifier bias, OFD's
margins in float32, DKD's beta for ResNet50 -> MobileNetV2. Expected values are computed here
independently: BatchNorm's update by its formula and on an untouched copy of the teacher, CAMs
from the features and the classifier weights, margins with ``math.erfc`` in double precision,
settings from tables that name the reference file each one comes from.
"""

import copy
import math
from pathlib import Path

import pytest
import torch

from catkd import config, losses, methods
from conftest import NUM_CLASSES, make_models  # non-trivial BatchNorms and biases

TEACHER_METHODS = [name for name in methods.names() if methods.needs_teacher(name)]
TRAIN_LABELS = torch.arange(12) % NUM_CLASSES  # a tiny training set, for CRD's memories
SMALL = {"crd": {"negatives": 5}}


def make_method(name: str, student: torch.nn.Module, teacher: torch.nn.Module) -> methods.Method:
    return methods.create(name, student, teacher, train_labels=TRAIN_LABELS, **SMALL.get(name, {}))


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(4, 3, 32, 32) images, their labels and their training-set indices."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    return images, torch.tensor([0, 3, 4, 1]), torch.tensor([0, 3, 4, 1])


def step_inputs(name: str) -> tuple:
    images, labels, indices = batch()
    return (images, labels, 0, indices) if name == "crd" else (images, labels, 0)


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.named_buffers()}


# ------------------------------------------------------------------ 1. OFD's teacher
def test_ofd_moves_the_teacher_s_batchnorm_statistics_as_a_train_mode_teacher_would():
    student, teacher = make_models(in_channels=3)
    untouched = copy.deepcopy(teacher)
    method = make_method("ofd", student, teacher).train()
    images, labels, _ = batch()
    assert all(module.training for module in teacher.modules())

    method(images, labels, 0)

    # The stem's BatchNorm by its formula: momentum-weighted batch mean and unbiased variance.
    stem = untouched.bn1
    with torch.no_grad():
        inputs = untouched.conv1(images)
    mean, variance = inputs.mean(dim=(0, 2, 3)), inputs.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(teacher.bn1.running_mean,
                               (1 - stem.momentum) * stem.running_mean + stem.momentum * mean)
    torch.testing.assert_close(teacher.bn1.running_var,
                               (1 - stem.momentum) * stem.running_var + stem.momentum * variance)
    # Every BatchNorm: as the untouched copy's after one train-mode forward of the same batch.
    before = buffers(untouched)
    with torch.no_grad():
        untouched.train()(images)
    moved = buffers(untouched)
    assert all(not torch.equal(moved[key], before[key]) for key in moved)
    for key, value in teacher.named_buffers():
        assert torch.equal(value, moved[key]), key
    # The weights are never trained.
    for key, value in teacher.named_parameters():
        assert torch.equal(value, dict(untouched.named_parameters())[key]), key


def test_ofd_evaluates_with_an_eval_mode_teacher():
    student, teacher = make_models(in_channels=3)
    method = make_method("ofd", student, teacher)
    method.train()
    method.eval()
    assert not any(module.training for module in teacher.modules())
    before = buffers(teacher)
    with torch.no_grad():
        method(*step_inputs("ofd"))
    assert all(torch.equal(value, before[key]) for key, value in teacher.named_buffers())


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_only_ofd_trains_with_a_train_mode_teacher(name):
    student, teacher = make_models(in_channels=3)
    method = make_method(name, student, teacher).train()
    assert student.training
    assert {module.training for module in teacher.modules()} == {name == "ofd"}
    before = buffers(teacher)
    method(*step_inputs(name))
    unchanged = [torch.equal(value, before[key]) for key, value in teacher.named_buffers()]
    assert not any(unchanged) if name == "ofd" else all(unchanged)
    method.eval()
    assert not any(module.training for module in teacher.modules())


# ------------------------------------------------------------ 2. the CAT-KD student's bias
@pytest.mark.parametrize("name", ["cat", "catkd"])
def test_the_cat_student_s_logits_are_gap_of_its_cams_without_a_bias(name):
    student, teacher = make_models(in_channels=3)
    teacher_bias = teacher.fc.bias.clone()
    method = make_method(name, student, teacher).train()
    bias = student.fc.bias
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert torch.equal(bias, torch.zeros(NUM_CLASSES)) and not bias.requires_grad
    assert all(p is not bias for p in trainable)
    images, labels, _ = batch()

    logits, terms = method(images, labels, 0)
    _, cams = method.student_cam_model(images)  # the same batch: BN normalises it alike
    assert torch.equal(logits, cams.mean(dim=(2, 3)))  # Eq. 3-4 exactly: nothing added
    # Eq. 2 by hand, from the features and the classifier weights.
    hand_cams = torch.einsum("nchw,kc->nkhw", student.forward_features(images), student.fc.weight)
    torch.testing.assert_close(logits, hand_cams.mean(dim=(2, 3)))
    torch.testing.assert_close(student(images), logits)  # the saved model's own forward

    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=5e-4)
    sum(terms.values()).backward()
    optimizer.step()
    assert torch.equal(bias, torch.zeros(NUM_CLASSES))
    assert torch.equal(teacher.fc.bias, teacher_bias)  # the teacher keeps its bias


# ------------------------------------------------------------------ 4. OFD's margins
def reference_margin(weight: float, bias: float) -> float:
    """E[x | x < 0] for x ~ N(bias, weight^2) in double precision; -3|weight| where
    P(x < 0) <= 0.001, as OFD's code decides."""
    scale = abs(weight)
    negative_mass = 0.5 * math.erfc(bias / scale / math.sqrt(2))
    if negative_mass <= 0.001:
        return -3 * scale
    density = math.exp(-((bias / scale) ** 2) / 2) / math.sqrt(2 * math.pi)
    return bias - scale * density / negative_mass


def margin_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) BatchNorm weights (some negative) and biases whose ratio sweeps the lower tail up to
    P(x < 0) = 0.001 (where float32 is least accurate) and a few beyond it."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.rand(520, generator=generator, dtype=torch.float64) * 2 + 0.05
    sign = torch.where(torch.rand(520, generator=generator) < 0.2, -1.0, 1.0).double()
    ratio = torch.cat([torch.linspace(-3.0, 3.08, 512, dtype=torch.float64),
                       torch.tensor([3.1, 3.2, 4.0, 5.0, 8.0, -5.0, 0.0, 1.0],
                                    dtype=torch.float64)])
    return scale * sign, ratio * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ofd_margins_are_computed_in_double_precision(dtype):
    weight, bias = (tensor.to(dtype) for tensor in margin_inputs())
    expected = torch.tensor([reference_margin(w, b) for w, b in
                             zip(weight.double().tolist(), bias.double().tolist())],
                            dtype=torch.float64)
    margins = losses.ofd_margins(weight, bias)
    assert margins.dtype == dtype and margins.device == weight.device
    # Within float32's rounding of the double result (computing in float32 is 1e-4 off).
    rtol = 1.2e-7 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(margins.double(), expected, rtol=rtol, atol=0)


def test_ofd_margins_of_bf16_norms_are_float32():
    weight, bias = margin_inputs()
    margins = losses.ofd_margins(weight.bfloat16(), bias.bfloat16())
    assert margins.dtype == torch.float32
    torch.testing.assert_close(margins, losses.ofd_margins(weight.bfloat16().float(),
                                                           bias.bfloat16().float()))


# ----------------------------------------------------- 3. every CIFAR-100 config's settings
MDISTILLER = "megvii-research/mdistiller"
FORK = "GzyAftermath/CAT-KD"  # the CAT-KD authors' fork of mdistiller
CFG = f"{MDISTILLER} mdistiller/engine/cfg.py"
DKD_FILES = f"{MDISTILLER} configs/cifar100/dkd/"
CATKD_FILES = f"{FORK} configs/cifar100/CAT_KD/"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SMALL_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")

# Each method's settings in the reference where no per-pair file changes them, in catkd's names.
REFERENCE_DEFAULTS = {
    # The vanilla students: no loss settings (configs/cifar100/vanilla.yaml)
    "ce": (f"{MDISTILLER} configs/cifar100/vanilla.yaml", {}),
    # CFG.KD: TEMPERATURE 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9
    "kd": (CFG, dict(ce_weight=0.1, kd_weight=0.9, temperature=4.0)),
    # CFG.DKD: CE_WEIGHT 1, ALPHA 1, BETA 8, T 4, WARMUP 20
    "dkd": (CFG, dict(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)),
    # CFG.AT: P 2, CE_WEIGHT 1, FEAT_WEIGHT 1000
    "at": (CFG, dict(ce_weight=1.0, at_weight=1000.0, p=2)),
    # CFG.FITNET: HINT_LAYER 2 (the stem is 0: catkd's middle stage 1), CE 1, FEAT_WEIGHT 100
    "fitnet": (CFG, dict(ce_weight=1.0, hint_weight=100.0, hint_stage=1)),
    # CFG.RKD: DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50, CE 1
    "rkd": (CFG, dict(ce_weight=1.0, distance_weight=25.0, angle_weight=50.0)),
    # CFG.OFD: CE 1, FEAT_WEIGHT 0.001; every stage but the stem (get_stage_channels()[1:])
    "ofd": (CFG, dict(ce_weight=1.0, ofd_weight=1e-3, stages=None)),
    # CFG.CRD: CE 1, FEAT_WEIGHT 0.8, FEAT.DIM 128, NCE.K 16384, NCE.TEMPERATURE 0.07, MOMENTUM 0.5
    "crd": (CFG, dict(ce_weight=1.0, crd_weight=0.8, embedding_dim=128, negatives=16384,
                      temperature=0.07, momentum=0.5)),
    # CFG.REVIEWKD: CE 1, REVIEWKD_WEIGHT 1, WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT False
    "reviewkd": (CFG, dict(ce_weight=1.0, review_weight=1.0, warmup_epochs=20,
                           max_mid_channels=512, student_preact=False)),
    # The fork's CAT_KD configs: CE_WEIGHT 1; IF_BINARIZE False, IF_OnlyTransferPartialCAMs False
    "catkd": (CATKD_FILES + "*.yaml",
              dict(ce_weight=1.0, beta=None, resolution=2, normalize=None, binarize=None,
                   classes=None, teacher_maps="cam")),
    # The fork's CAT config: onlyCAT True, CAT_loss_weight 50, CAM_RESOLUTION 2, IF_NORMALIZE True
    "cat": (f"{FORK} configs/cifar100/CAT/CAT/res32x4_res32x4.yaml",
            dict(beta=50.0, resolution=2, normalize="l2", binarize=None, classes=None,
                 teacher_maps="cam")),
}

# Per config file (configs/cifar100/<method>/<stem>.yaml): the reference file its settings come
# from and what that file changes from the defaults above. Complete for the methods whose
# reference has a file per experiment; otherwise the exceptions to the defaults.
PER_EXPERIMENT = ("cat", "catkd", "dkd")
REFERENCE_FILES = {
    "dkd": {
        "resnet56-resnet20": (DKD_FILES + "res56_res20.yaml", dict(beta=2.0)),
        "resnet110-resnet32": (DKD_FILES + "res110_res32.yaml", dict(beta=2.0)),
        "resnet32x4-resnet8x4": (DKD_FILES + "res32x4_res8x4.yaml", {}),
        "wrn_40_2-wrn_16_2": (DKD_FILES + "wrn40_2_wrn_16_2.yaml", dict(beta=6.0)),
        "wrn_40_2-wrn_40_1": (DKD_FILES + "wrn40_2_wrn_40_1.yaml", dict(beta=6.0)),
        "vgg13-vgg8": (DKD_FILES + "vgg13_vgg8.yaml", dict(beta=6.0)),
        "resnet32x4-ShuffleV1": (DKD_FILES + "res32x4_shuv1.yaml", {}),
        "resnet32x4-ShuffleV2": (DKD_FILES + "res32x4_shuv2.yaml", {}),
        "wrn_40_2-ShuffleV1": (DKD_FILES + "wrn40_2_shuv1.yaml", {}),
        "vgg13-MobileNetV2": (DKD_FILES + "vgg13_mv2.yaml", dict(beta=6.0)),
        "ResNet50-MobileNetV2": (DKD_FILES + "res50_mv2.yaml", {}),
    },
    "catkd": {
        "resnet56-resnet20": (CATKD_FILES + "res56_res20.yaml", dict(beta=0.7)),
        "resnet110-resnet32": (CATKD_FILES + "res110_res32.yaml", dict(beta=1.8)),
        "resnet32x4-resnet8x4": (CATKD_FILES + "res32x4_res8x4.yaml", dict(beta=15.0)),
        "wrn_40_2-wrn_16_2": (CATKD_FILES + "wrn_40_2_wrn_16_2.yaml", dict(beta=12.0)),
        "wrn_40_2-wrn_40_1": (CATKD_FILES + "wrn_40_2_wrn_40_1.yaml", dict(beta=1.5)),
        "vgg13-vgg8": (CATKD_FILES + "vgg13_vgg8.yaml", dict(beta=4.5)),
        "resnet32x4-ShuffleV1": (CATKD_FILES + "res32x4_shuv1.yaml",
                                 dict(beta=600.0, resolution=4, normalize="l2")),
        "resnet32x4-ShuffleV2": (CATKD_FILES + "res32x4_shuv2.yaml",
                                 dict(beta=600.0, resolution=4, normalize="l2")),
        "wrn_40_2-ShuffleV1": (CATKD_FILES + "wrn40_2_shuv1.yaml",
                               dict(beta=80.0, resolution=4, normalize="l2")),
        "vgg13-MobileNetV2": (CATKD_FILES + "vgg13_mv2.yaml",
                              dict(beta=15.0, normalize="l2")),
        "ResNet50-MobileNetV2": (CATKD_FILES + "res50_mv2.yaml",
                                 dict(beta=40.0, normalize="l2")),
        # No reference file: beta 50 is the paper's best for resnet56 in Table 12, r and the
        # normalisation those of the fork's other ShuffleV1 students.
        "resnet56-ShuffleV1": ("the paper's Table 12; the fork's res32x4_shuv1.yaml",
                               dict(beta=50.0, resolution=4, normalize="l2")),
    },
    "reviewkd": {
        "resnet32x4-resnet8x4": (f"{MDISTILLER} configs/cifar100/reviewkd.yaml",
                                 dict(review_weight=5.0)),
    },
    "cat": {
        **{f"resnet32x4-{student}-{r}x{r}": (f"the paper's Table 2 (r {r}); {FORK} "
                                              "configs/cifar100/CAT/CAT/res32x4_res32x4.yaml",
                                              dict(resolution=r))
           for student in ("resnet32x4", "resnet8x4", "resnet20") for r in (2, 4, 8)},
        "resnet32x4-ResNet50-2x2": ("the paper's Table 3", {}),
        **{stem: (f"{FORK} configs/cifar100/CAT/CAT_Binarization/res32x4_res32x4.yaml",
                  dict(beta=300.0, binarize="mean_abs"))
           for stem in ("resnet32x4-resnet32x4-binarized", "resnet32x4-ResNet50-binarized")},
        # The fork transfers the bottom 75 (Strategy 1, CAMs_Nums 75); the figure sweeps n.
        "resnet32x4-resnet8x4-top10": (
            f"{FORK} configs/cifar100/CAT/CAT_Only_Transfer_Certain_Classes/res32x4_res8x4.yaml",
            dict(beta=300.0, classes=["top", 10])),
        "resnet32x4-resnet8x4-first50classes": (
            f"{FORK} configs/cifar100/CAT/CAT_Dataset_Reduction/res32x4_res32x4.yaml", {}),
        **{f"{producer}-{student}": ("the paper's Tables 1, 10, 11 (CAT's settings of Table 2)", {})
           for producer, student in [("resnet56", "ShuffleV1"), ("resnet110", "ShuffleV1"),
                                     ("ResNet50", "ShuffleV1"), ("resnet56", "resnet110"),
                                     ("resnet110", "resnet110"), ("resnet32x4", "resnet110"),
                                     ("resnet56", "resnet32x4"), ("ResNet50", "resnet32x4")]},
    },
}
# mdistiller's and the fork's SOLVER sections for CIFAR-100: batch 64, 240 epochs, SGD with
# momentum 0.9 and weight decay 5e-4, x0.1 at 150, 180, 210; LR 0.05, 0.01 for ShuffleNet and
# MobileNet students.
RECIPE = dict(batch_size=64, epochs=240, momentum=0.9, weight_decay=5e-4,
              milestones=[150, 180, 210], gamma=0.1)


def config_files(method: str) -> list[Path]:
    return sorted((CONFIGS / "cifar100" / method).glob("*.yaml"))


@pytest.mark.parametrize("method", sorted(REFERENCE_DEFAULTS))
def test_every_cifar100_config_has_its_reference_settings(method):
    default_source, defaults = REFERENCE_DEFAULTS[method]
    rows = REFERENCE_FILES.get(method, {})
    files = config_files(method)
    assert files
    unlisted = sorted(set(rows) - {path.stem for path in files})
    assert not unlisted, f"rows without a config: {unlisted}"
    for path in files:
        if method in PER_EXPERIMENT:
            assert path.stem in rows, f"{path.name} has no row in this test's table"
        source, changes = rows.get(path.stem, (default_source, {}))
        expected = {**defaults, **changes}
        resolved = config.resolve(path)
        stated = {**methods.settings(method), **resolved["loss"]}
        assert stated == expected, f"{path.name} against {source} ({default_source})"
        student = resolved["student"]
        assert resolved["optim"]["lr"] == (0.01 if student in SMALL_STUDENTS else 0.05), path.name
        recipe = {"batch_size": resolved["data"]["batch_size"],
                  **{key: resolved["optim"][key] for key in RECIPE if key != "batch_size"}}
        assert recipe == RECIPE, path.name


@pytest.mark.parametrize("pair,source,expected", [
    # The paper pools to 2x2 unless stated; the fork's r34_r18.yaml says CAM_RESOLUTION 4 (a
    # departure each config file states).
    ("resnet34-resnet18", "the paper, Section 4.1 and A.5 (r 2); "
     f"{FORK} configs/imagenet/CAT-KD/r34_r18.yaml (beta 0.5, not normalised)",
     dict(beta=0.5, resolution=2, normalize=None)),
    ("resnet50-mobilenet_v1", f"{FORK} configs/imagenet/CAT-KD/r50_mv2.yaml",
     dict(beta=10.0, resolution=2, normalize="l2")),
])
def test_imagenet_catkd_settings(pair, source, expected):
    resolved = config.resolve(CONFIGS / "imagenet" / f"catkd-{pair}.yaml")
    assert {key: resolved["loss"][key] for key in expected} == expected, source
