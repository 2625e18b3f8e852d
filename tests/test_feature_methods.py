"""The feature-based baselines of Tables 5-6 (fitnet, rkd, ofd, crd, reviewkd).

Loss values are checked against hand computations (numpy loops, worked numbers); the methods
train on every teacher/student pair of the tables at a tiny size; their extra modules are saved
and resumed.
"""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from catkd import config, data, losses, methods, models, runs, train
from catkd.methods.base import PooledRecorder, PreReLURecorder, StageRecorder
from conftest import calibrated

FEATURE_METHODS = ("fitnet", "rkd", "ofd", "crd", "reviewkd")
TERMS = {"fitnet": {"ce", "hint"}, "rkd": {"ce", "rkd_distance", "rkd_angle"},
         "ofd": {"ce", "ofd"}, "crd": {"ce", "crd"}, "reviewkd": {"ce", "review"}}
PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
         ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
         ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2")]
ZOO = sorted({name for pair in PAIRS for name in pair})
TRAIN_LABELS = torch.arange(12) % 4  # a 12-image training set of 4 classes, for CRD
SMALL = {"crd": {"negatives": 5}}  # CRD's 16384 negatives are the paper's, not a unit test's


def forward_args(name: str, images, labels, indices=torch.tensor([0, 5, 10])):
    return (images, labels, 0, indices) if name == "crd" else (images, labels, 0)


def build(name: str, teacher: str, student: str, images: torch.Tensor) -> methods.Method:
    torch.manual_seed(0)
    return methods.create(name, models.create(student, num_classes=100),
                          calibrated(models.create(teacher, num_classes=100), images),
                          train_labels=TRAIN_LABELS, **SMALL.get(name, {}))


# ------------------------------------------------------------------ training on every pair
@pytest.mark.parametrize("teacher,student", PAIRS, ids=["-".join(pair) for pair in PAIRS])
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_two_steps_on_every_pair_of_tables_5_and_6(name, teacher, student):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2])
    method = build(name, teacher, student, images).train()
    teacher_before = {key: value.clone() for key, value in method.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in method.student.parameters()]
    extras_before = {key: value.clone() for key, value in method.extra_state_dict().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    for _ in range(2):
        logits, terms = method(*forward_args(name, images, labels))
        assert logits.shape == (3, 100) and set(terms) == TERMS[name]
        assert all(torch.isfinite(value) and value.dim() == 0 for value in terms.values())
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
    # OFD's teacher runs in train mode, as in the reference: its BatchNorm statistics may move
    # (test_fidelity checks how), its weights never.
    kept = dict(method.teacher.named_parameters()) if name == "ofd" else method.teacher.state_dict()
    assert all(torch.equal(value, teacher_before[key]) for key, value in kept.items())
    assert any(not torch.equal(p, before)
               for p, before in zip(method.student.parameters(), student_before))
    if name == "rkd":
        assert method.extra_parameter_count() == 0 and not extras_before
    else:
        assert method.extra_parameter_count() > 0
        assert any(not torch.equal(value, extras_before[key])
                   for key, value in method.extra_state_dict().items())


# ------------------------------------------------------------------------ feature taps
@pytest.mark.parametrize("name", ZOO)
def test_pre_relu_taps_see_what_becomes_each_stage_output(name):
    """relu(pre-ReLU map) is the stage output, where a ReLU ends the stage; the opening BN of
    the next group for WRN; the output itself for linear-bottleneck stages; and hooks leave
    the logits unchanged."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=100).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
        stages, preacts = StageRecorder(model), PreReLURecorder(model)
        pooled = PooledRecorder(model)
        assert torch.equal(model(images), plain)
        outputs, maps = stages.pop(), preacts.pop()
        assert torch.allclose(pooled.pop(), model.forward_features(images).mean(dim=(2, 3)))
    assert len(maps) == len(outputs)
    norms = model.preact_norms or (None,) * len(outputs)
    for output, preact, norm_name in zip(outputs, maps, norms):
        if name.startswith("wrn"):
            with torch.no_grad():
                expected = model.get_submodule(norm_name)(output)
            assert torch.allclose(preact, expected, atol=1e-5)
        elif name in ("MobileNetV2", "ShuffleV2"):
            assert torch.equal(preact, output)
        else:
            assert torch.allclose(F.relu(preact), output, atol=1e-5)
            assert (preact < 0).any()  # really before the ReLU
    if name != "ShuffleV2":
        assert len(model.preact_norms) == len(model.preact_stages)
        assert all(isinstance(model.get_submodule(norm), torch.nn.BatchNorm2d)
                   for norm in model.preact_norms)


# ---------------------------------------------------------------- losses by hand
def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def np_distances(features: np.ndarray) -> np.ndarray:
    n = len(features)
    distances = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                distances[i, j] = math.sqrt(sum((features[i] - features[j]) ** 2))
    return distances / (distances.sum() / (n * (n - 1)))


def np_angles(features: np.ndarray) -> np.ndarray:
    n = len(features)
    angles = np.zeros((n, n, n))
    for j in range(n):
        for i in range(n):
            for k in range(n):
                if i != j and k != j:
                    a, b = features[i] - features[j], features[k] - features[j]
                    angles[j, i, k] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return angles


def test_rkd_losses_by_hand():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(4, 3, generator=generator)
    teacher = 3 * torch.randn(4, 5, generator=generator)
    s, t = student.double().numpy(), teacher.double().numpy()
    d_s, d_t = np_distances(s), np_distances(t)
    expected = np.mean([huber(x) for x in (d_s - d_t).ravel()])
    assert losses.rkd_distance_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    a_s, a_t = np_angles(s), np_angles(t)
    expected = np.mean([huber(x) for x in (a_s - a_t).ravel()])
    assert losses.rkd_angle_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # Scaling the student changes neither relation.
    assert losses.rkd_distance_loss(7 * student, student).item() == pytest.approx(0, abs=1e-6)
    assert losses.rkd_angle_loss(7 * student, student).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match=r"same N >= 2"):
        losses.rkd_distance_loss(student, teacher[:3])


def test_rkd_distance_worked_example():
    # Student on a line at 0, 1, 2: distances 1, 1, 2 (mean over ordered pairs 4/3);
    # teacher at 0, 1, 3: 1, 2, 3 (mean 2). Normalised: student 3/4, 3/4, 3/2, teacher
    # 1/2, 1, 3/2; the 6 off-diagonal differences 1/4, -1/4, 0 twice each: Huber 1/32 each,
    # 4/32 over 9 entries.
    student = torch.tensor([[0.0], [1.0], [2.0]])
    teacher = torch.tensor([[0.0], [1.0], [3.0]])
    assert losses.rkd_distance_loss(student, teacher).item() == pytest.approx(4 / 32 / 9)


def test_hint_loss_by_hand():
    student = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]])  # (1, 2, 1, 2)
    teacher = torch.tensor([[[[0.0, 2.0]], [[2.0, 1.0]]]])
    assert losses.hint_loss(student, teacher).item() == pytest.approx((1 + 0 + 4 + 4) / 4)
    with pytest.raises(ValueError, match="same shape"):
        losses.hint_loss(student, teacher[:, :1])


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_ofd_margins_are_the_mean_of_the_negative_part():
    weight = torch.tensor([1.0, 2.0, -0.5, 1.0])
    bias = torch.tensor([0.0, 1.0, 0.25, 4.0])
    margins = losses.ofd_margins(weight, bias)
    # N(0, 1): E[x | x < 0] = -phi(0) / Phi(0) = -sqrt(2 / pi).
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-5)
    for channel in (1, 2):
        s, m = abs(weight[channel].item()), bias[channel].item()
        density = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
        assert margins[channel].item() == pytest.approx(m - s * density / normal_cdf(-m / s),
                                                        rel=1e-5)
    assert margins[3].item() == pytest.approx(-3.0)  # P(x < 0) = 3e-5: the -3s fallback
    # The margin is the mean of samples below 0.
    samples = torch.randn(400_000, generator=torch.Generator().manual_seed(0)) * 2 + 1
    assert samples[samples < 0].mean().item() == pytest.approx(margins[1].item(), abs=0.01)


def test_ofd_loss_by_hand():
    # Stage 0 (weight 1/2): student (1, 1, 1, 1) against a teacher map (1, 1, 2, 2) pooled
    # to its mean; stage 1 (weight 1): two channels, two positions.
    student0 = torch.tensor([[[[0.5]]]])
    teacher0 = torch.tensor([[[[-1.0, -3.0], [-2.0, -2.0]]]])  # mean -2, below the margin -1
    student1 = torch.tensor([[[[-2.0, 3.0]], [[-0.5, 0.2]]]])  # (1, 2, 1, 2)
    teacher1 = torch.tensor([[[[-1.0, 1.0]], [[-0.1, -4.0]]]])
    margins = [torch.tensor([-1.0]), torch.tensor([-0.5, -0.3])]
    # stage 0: target max(-2, -1) = -1 <= 0, student 0.5 > -1 counts: (1.5)^2 = 2.25.
    # stage 1, channel 0: target -1 (student -2 below it and target <= 0: skipped),
    #   target 1 > 0: (3 - 1)^2 = 4; channel 1: target max(-0.1, -0.3) = -0.1, student -0.5
    #   below: skipped; target max(-4, -0.3) = -0.3, student 0.2 above: 0.25.
    expected = 2.25 / 2 + (4 + 0.25)
    value = losses.ofd_loss([student0, student1], [teacher0, teacher1], margins)
    assert value.item() == pytest.approx(expected)
    # The sum over positions is averaged over the batch: two copies give the same value.
    doubled = losses.ofd_loss([torch.cat([s, s]) for s in (student0, student1)],
                              [torch.cat([t, t]) for t in (teacher0, teacher1)], margins)
    assert doubled.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="one margin per stage"):
        losses.ofd_loss([student0], [teacher0], margins)


def test_crd_loss_worked_numbers():
    scores = torch.tensor([[0.5, 0.1, 0.3], [2.0, 0.0, 1.0]])
    size = 4  # noise: K / size = 2 / 4 = 0.5
    eps = 1e-7
    expected = 0.0
    for row in scores.tolist():
        expected += math.log(row[0] / (row[0] + 0.5 + eps))
        expected += sum(math.log(0.5 / (negative + 0.5 + eps)) for negative in row[1:])
    assert losses.crd_loss(scores, size).item() == pytest.approx(-expected / 2, rel=1e-6)
    with pytest.raises(ValueError, match="K >= 1 negatives"):
        losses.crd_loss(scores[:, :1], size)


def np_pool(x: np.ndarray, side: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, side, h // side, side, w // side).mean(axis=(3, 5))


def test_hcl_loss_by_hand():
    generator = torch.Generator().manual_seed(5)
    student = [torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 4, 1, 1,
                                                                           generator=generator)]
    teacher = [torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 4, 1, 1,
                                                                           generator=generator)]
    s, t = student[0].double().numpy(), teacher[0].double().numpy()
    # 8x8: full size (weight 1), 4x4 (1/2), 2x2 (1/4), 1x1 (1/8); divided by 15/8.
    level0 = np.mean((s - t) ** 2)
    for side, weight in ((4, 0.5), (2, 0.25), (1, 0.125)):
        level0 += weight * np.mean((np_pool(s, side) - np_pool(t, side)) ** 2)
    level0 /= 1 + 0.5 + 0.25 + 0.125
    level1 = np.mean((student[1].double().numpy() - teacher[1].double().numpy()) ** 2)  # 1x1
    assert losses.hcl_loss(student, teacher).item() == pytest.approx(level0 + level1, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        losses.hcl_loss(student[:1], teacher[1:])


# --------------------------------------------------------------------- method details
def test_crd_draws_other_class_negatives_and_moves_its_memory():
    images = torch.randn(3, 3, 32, 32)
    method = build("crd", "resnet56", "resnet20", images)
    labels = TRAIN_LABELS[[0, 5, 10]]
    indices = torch.tensor([0, 5, 10])
    contrast = method.contrast_indices(labels, indices)
    assert contrast.shape == (3, 1 + 5) and torch.equal(contrast[:, 0], indices)
    assert (TRAIN_LABELS[contrast[:, 1:]] != labels[:, None]).all()
    many = method.contrast_indices(labels.repeat(200), indices.repeat(200))
    drawn = set(many[:, 1:][labels.repeat(200) == labels[0]].unique().tolist())
    assert drawn == set(torch.nonzero(TRAIN_LABELS != labels[0]).flatten().tolist())
    memory_before = method.student_memory.clone()
    method(images, labels, 0, indices)
    normalizers = method.normalizers.clone()
    assert torch.isfinite(normalizers).all()
    moved = (method.student_memory != memory_before).any(dim=1)
    assert moved.tolist() == [index in (0, 5, 10) for index in range(12)]
    assert torch.allclose(method.student_memory[indices].norm(dim=1), torch.ones(3))
    method(images, labels, 1, indices)
    assert torch.equal(method.normalizers, normalizers)  # set once, from the first batch


def test_reviewkd_warms_up_like_dkd():
    images = torch.randn(3, 3, 32, 32)
    method = build("reviewkd", "resnet56", "resnet20", images).eval()
    labels = torch.tensor([0, 1, 2])
    values = [method(images, labels, epoch)[1]["review"].item() for epoch in (0, 9, 19, 30)]
    assert values[0] == pytest.approx(values[3] / 20, rel=1e-5)
    assert values[1] == pytest.approx(values[3] / 2, rel=1e-5)
    assert values[2] == pytest.approx(values[3], rel=1e-5)


def test_fitnet_value_is_the_hint_of_the_middle_stage():
    images = torch.randn(3, 3, 32, 32)
    method = build("fitnet", "resnet32x4", "ShuffleV1", images).eval()
    labels = torch.tensor([0, 1, 2])
    _, terms = method(images, labels, 0)
    with torch.no_grad():
        student, teacher = method.student, method.teacher
        x = F.relu(student.bn1(student.conv1(images)))
        student_map = student.layer2(student.layer1(x))  # 8x8 against the teacher's 16x16
        x = teacher.relu(teacher.bn1(teacher.conv1(images)))
        teacher_map = teacher.layer2(teacher.layer1(x))
    assert isinstance(method.regressor[0], torch.nn.ConvTranspose2d)
    expected = 100 * (method.regressor(student_map) - teacher_map).pow(2).mean()
    assert terms["hint"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_clear_errors():
    images = torch.randn(3, 3, 32, 32)
    with pytest.raises(ValueError, match="BatchNorms"):
        build("ofd", "ShuffleV2", "resnet20", images)
    with pytest.raises(ValueError, match="hint_stage must index a stage"):
        methods.create("fitnet", models.create("resnet8"), models.create("resnet14"),
                       hint_stage=3)
    with pytest.raises(ValueError, match="pass train_labels"):
        methods.create("crd", models.create("resnet8"), models.create("resnet14"))
    with pytest.raises(ValueError, match="declares no preact_stages"):
        methods.create("reviewkd", models.create("resnet8"),
                       models.create("imagenet_mobilenet_v2"))
    with pytest.raises(ValueError, match="ShuffleNetV2 declares no get_classifier()"):
        methods.create("rkd", models.create("resnet8"),
                       models.create("torchvision.shufflenet_v2_x0_5", num_classes=100))


# ------------------------------------------------------------------------ saving, resuming
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_extra_state_round_trip(name):
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 2])
    trained = build(name, "resnet56", "resnet20", images).train()
    trained(*forward_args(name, images, labels))
    state = {key: value.clone() for key, value in trained.extra_state_dict().items()}
    torch.manual_seed(1)  # another initialisation of the extra modules
    fresh = methods.create(name, models.create("resnet20"), calibrated(models.create("resnet56", num_classes=100), images),
                           train_labels=TRAIN_LABELS, **SMALL.get(name, {}))
    fresh.load_extra_state_dict(state)
    assert all(torch.equal(value, state[key]) for key, value in fresh.extra_state_dict().items())
    assert not any(key.startswith(("student.", "teacher.")) for key in state)
    if name == "crd":
        assert {"student_memory", "teacher_memory", "normalizers"} <= set(state)
        assert "by_label" not in state  # derived from the labels, not saved


TINY = ["data.dataset=digits", "data.batch_size=32", "data.crop_padding=1", "student=resnet8",
        "teacher.model=resnet14", "teacher.epochs=1", "optim.epochs=2", "optim.milestones=[1]",
        "runtime.device=cpu", "method=crd", "loss.negatives=16"]


def test_an_interrupted_crd_run_resumes_its_memory_and_embeddings(tmp_path, monkeypatch):
    whole = train.fit(None, [*TINY, f"out={tmp_path}", "name=whole"], quiet=True)
    assert whole.summary["extra_parameters"] == 2 * (64 * 128 + 128) == \
        methods.create("crd", models.create("resnet8", 10, 1), models.create("resnet14", 10, 1),
                       train_labels=TRAIN_LABELS).extra_parameter_count()
    real_evaluate = train.evaluate
    calls = []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.fit(None, [*TINY, f"out={tmp_path}", "name=cut"], quiet=True)
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    resumed = train.fit(None, [*TINY, f"out={tmp_path}", "name=cut"], quiet=True)
    assert resumed.metrics() == [{**row, "seconds": resumed.metrics()[i]["seconds"]}
                                 for i, row in enumerate(whole.metrics())]
    extras = [torch.load(run.path / runs.LAST, weights_only=True)["extras"]
              for run in (whole, resumed)]
    assert set(extras[0]) == set(extras[1]) and "student_memory" in extras[0]
    assert all(torch.equal(extras[0][key], extras[1][key]) for key in extras[0])


def test_loader_yields_the_sample_indices():
    dataset = data.load("digits", "train")
    loader = data.BatchLoader(dataset, 100, train=True, sample_indices=True)
    images, labels, indices = next(iter(loader))
    assert torch.equal(labels, dataset.labels[indices]) and len(indices.unique()) == 100
    test_loader = data.BatchLoader(dataset, 100, train=False, sample_indices=True)
    assert torch.equal(next(iter(test_loader))[2], torch.arange(100))
    assert len(next(iter(data.BatchLoader(dataset, 100, train=True)))) == 2


# ------------------------------------------------------------------------------ configs
CONFIGS = Path(__file__).parent.parent / "configs"
IMAGENET_ONLY = {"stages", "student_preact"}  # OFD's and ReviewKD's mdistiller ImageNet settings


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_configs_resolve_for_every_pair(name):
    for teacher, student in PAIRS:
        resolved = config.resolve(CONFIGS / "cifar100" / name / f"{teacher}-{student}.yaml")
        assert (resolved["method"], resolved["teacher"]["model"], resolved["student"]) == \
            (name, teacher, student)
        # Every CIFAR setting is stated; the ImageNet-only ones keep their CIFAR defaults.
        assert set(resolved["loss"]) == set(methods.settings(name)) - IMAGENET_ONLY
        small_student = student in ("ShuffleV1", "ShuffleV2", "MobileNetV2")
        assert resolved["optim"]["lr"] == (0.01 if small_student else 0.05)
    assert len(list((CONFIGS / "cifar100" / name).glob("*.yaml"))) == len(PAIRS)
    quick = config.resolve(CONFIGS / "quick" / f"{name}.yaml")
    assert quick["method"] == name and quick["data"]["dataset"] == "fashion-mnist"


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks)
               for module in model.modules())


@pytest.mark.parametrize("name", ["at", "fitnet", "ofd", "reviewkd", "rkd", "crd"])
def test_a_model_given_to_two_methods_keeps_one_set_of_hooks(name):
    student, teacher = models.create("resnet8"), models.create("resnet20")
    first = methods.create(name, student, teacher, train_labels=TRAIN_LABELS,
                           **SMALL.get(name, {}))
    hooks = _hooks(student), _hooks(teacher)
    second = methods.create(name, student, teacher, train_labels=TRAIN_LABELS,
                            **SMALL.get(name, {}))
    assert (_hooks(student), _hooks(teacher)) == hooks
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    second(*forward_args(name, images, labels))  # the second method's hooks record
    with pytest.raises(RuntimeError, match="no forward recorded"):
        first(*forward_args(name, images, labels))
    for recorder in vars(second).values():
        if isinstance(recorder, (PooledRecorder, PreReLURecorder, StageRecorder)):
            recorder.remove()
    assert _hooks(student) == _hooks(teacher) == 0


def test_methods_of_a_shared_teacher_read_one_forward_per_batch():
    """On a teacher shared by students of one batch (lockstep), every method keeps its own
    recorders, and all of them read what the one forward of the teacher's features recorded:
    the losses are those of the same methods on their own teachers."""
    torch.manual_seed(0)
    names = ["at", "fitnet", "rkd", "reviewkd", "kd"]
    teacher = models.create("resnet20").eval()
    students = {name: models.create("resnet8") for name in names}
    alone = {name: methods.create(name, students[name], copy.deepcopy(teacher)) for name in names}
    shared_teacher = copy.deepcopy(teacher)
    methods.share_forward(shared_teacher)
    shared = {name: methods.create(name, copy.deepcopy(students[name]), shared_teacher)
              for name in names}
    for name in names:  # the same connectors (FitNet's regressor, ReviewKD's fusions)
        shared[name].load_extra_state_dict(alone[name].extra_state_dict())
    first_convs = []
    shared_teacher.conv1.register_forward_pre_hook(lambda module, inputs: first_convs.append(1))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for name in names:
        _, expected = alone[name](images, labels, 0)
        _, losses = shared[name](images, labels, 0)
        assert losses.keys() == expected.keys()
        for term in losses:
            torch.testing.assert_close(losses[term], expected[term], msg=f"{name} {term}")
    assert len(first_convs) == 1
