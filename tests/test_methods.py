"""The training methods on real zoo models at tiny sizes.

Expected loss values are computed here from the models' outputs, independently of the methods:
logits from ``model(images)``, CAMs from ``forward_features`` and the classifier weights (Eq. 2),
stage maps by running the ResNet's layers one by one; then the loss functions of
``catkd.losses`` are applied by hand with the method's weights.
"""

import pytest
import torch
import torch.nn.functional as F

from catkd import cam, gradcam, losses, methods, models
from catkd.methods import cat as cat_module
from conftest import NUM_CLASSES, make_models

TERMS = {
    "ce": {"ce"}, "kd": {"ce", "kd"}, "dkd": {"ce", "dkd"}, "at": {"ce", "at"},
    "cat": {"cat"}, "catkd": {"ce", "cat"},
}


def make_method(name: str, **overrides) -> methods.Method:
    student, teacher = make_models()
    return methods.create(name, student, teacher if name != "ce" else None, **overrides)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 1, 16, 16, generator=generator)
    labels = torch.tensor([0, 3, 4, 1])
    return images, labels


def hand_cams(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Eq. 2, bias-free: (N, K, H, W) = sum over channels of FC weight * feature map."""
    features = model.forward_features(images)
    return torch.einsum("nchw,kc->nkhw", features, model.get_classifier().weight)


def hand_stage_maps(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """A CIFAR ResNet's three stage outputs, by calling its layers in order."""
    x = model.relu(model.bn1(model.conv1(images)))
    maps = []
    for layer in (model.layer1, model.layer2, model.layer3):
        x = layer(x)
        maps.append(x)
    return maps


# ----------------------------------------------------------------------------- the interface
@pytest.mark.parametrize("name", sorted(TERMS))
def test_forward_returns_logits_and_exactly_its_terms(name, batch):
    images, labels = batch
    logits, terms = make_method(name)(images, labels, epoch=0)
    assert logits.shape == (4, NUM_CLASSES)
    assert set(terms) == TERMS[name]
    for value in terms.values():
        assert value.shape == () and torch.isfinite(value)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_training_step_changes_the_student_never_the_teacher(name, batch):
    images, labels = batch
    method = make_method(name).train()
    student, teacher = method.student, method.teacher
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    if teacher is not None:
        teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
        grad_enabled = []
        # On the stem, which every method runs (CAT calls forward_features, not forward).
        teacher.conv1.register_forward_hook(
            lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)

    _, terms = method(images, labels, epoch=30)
    sum(terms.values()).backward()
    optimizer.step()

    assert student.training
    assert any(not torch.equal(student_before[k], v) for k, v in student.named_parameters())
    if teacher is None:
        return
    assert grad_enabled == [False]  # the teacher ran once, without autograd
    method.train()
    assert not any(module.training for module in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():  # parameters and BN buffers
        assert torch.equal(teacher_before[key], value), key


def test_state_dict_holds_each_weight_once_and_no_extra_state():
    method = make_method("catkd")
    student, teacher = method.student, method.teacher
    assert isinstance(student, models.GAPClassifier) and student is method.student_cam_model.model
    keys = list(method.state_dict())
    assert len(keys) == len(student.state_dict()) + len(teacher.state_dict())
    assert all(key.startswith(("student.", "teacher.")) for key in keys)
    assert method.extra_state_dict() == {}
    method.load_extra_state_dict({})
    with pytest.raises(ValueError, match="connector.weight"):
        method.load_extra_state_dict({"connector.weight": torch.zeros(1)})


def test_device_and_dtype_moves_reach_the_converted_models(batch):
    images, labels = batch
    method = make_method("cat").to(torch.float64)
    logits, terms = method(images.double(), labels, epoch=0)
    assert logits.dtype == torch.float64 and terms["cat"].dtype == torch.float64


# ----------------------------------------------------------------------------- loss values
def test_ce_value(batch):
    images, labels = batch
    method = make_method("ce").train()
    logits, terms = method(images, labels, epoch=0)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(method.student(images), labels))
    torch.testing.assert_close(logits, method.student(images))


def test_kd_value(batch):
    images, labels = batch
    method = make_method("kd", ce_weight=0.3, kd_weight=0.7, temperature=2.0).train()
    _, terms = method(images, labels, epoch=0)
    student_logits = method.student(images)
    with torch.no_grad():
        teacher_logits = method.teacher(images)
    torch.testing.assert_close(terms["ce"], 0.3 * F.cross_entropy(student_logits, labels))
    torch.testing.assert_close(terms["kd"], 0.7 * losses.kd_loss(student_logits, teacher_logits,
                                                                 temperature=2.0))


def test_kd_defaults(batch):
    images, labels = batch
    method = make_method("kd").train()
    _, terms = method(images, labels, epoch=0)
    student_logits, teacher_logits = method.student(images), method.teacher(images)
    torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(student_logits, labels))
    expected_kd = 0.9 * losses.kd_loss(student_logits, teacher_logits, temperature=4.0)
    torch.testing.assert_close(terms["kd"], expected_kd)


@pytest.mark.parametrize("warmup_epochs, epoch, factor", [
    (20, 0, 1 / 20), (20, 1, 2 / 20), (20, 18, 19 / 20), (20, 19, 1.0), (20, 200, 1.0),
    (4, 0, 0.25), (1, 0, 1.0),
])
def test_dkd_value_and_warmup(batch, warmup_epochs, epoch, factor):
    images, labels = batch
    method = make_method("dkd", warmup_epochs=warmup_epochs, ce_weight=0.5, alpha=2.0, beta=3.0,
                         temperature=3.0).train()
    _, terms = method(images, labels, epoch=epoch)
    student_logits, teacher_logits = method.student(images), method.teacher(images)
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(student_logits, labels))
    full = losses.dkd_loss(student_logits, teacher_logits, labels, alpha=2.0, beta=3.0,
                           temperature=3.0)
    torch.testing.assert_close(terms["dkd"], factor * full)


def test_dkd_rejects_no_warmup_length():
    with pytest.raises(ValueError, match="warmup_epochs"):
        make_method("dkd", warmup_epochs=0)


def test_at_value(batch):
    images, labels = batch
    method = make_method("at", ce_weight=0.5, at_weight=100.0, p=2).train()
    _, terms = method(images, labels, epoch=0)
    student_maps = hand_stage_maps(method.student, images)
    teacher_maps = hand_stage_maps(method.teacher, images)
    student_logits = method.student.forward_head(student_maps[-1])
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(student_logits, labels))
    torch.testing.assert_close(terms["at"], 100.0 * losses.at_loss(student_maps, teacher_maps, 2))


@pytest.mark.parametrize("name, overrides, ce_weight, beta, cat_settings", [
    ("cat", {}, None, 50.0, dict(resolution=2, normalize="l2", binarize=None, classes=None)),
    ("catkd", {}, 1.0, 15.0, dict(resolution=2, normalize=None, binarize=None, classes=None)),
    ("catkd", dict(ce_weight=0.5, beta=3.0, resolution=1, normalize="l1", binarize="mean",
                   classes=("top", 2)),
     0.5, 3.0, dict(resolution=1, normalize="l1", binarize="mean", classes=("top", 2))),
])
def test_cat_values(batch, name, overrides, ce_weight, beta, cat_settings):
    images, labels = batch
    method = make_method(name, **overrides).train()
    _, terms = method(images, labels, epoch=0)
    student_cams = hand_cams(method.student, images)
    with torch.no_grad():
        teacher_cams = hand_cams(method.teacher, images)
    assert student_cams.shape == teacher_cams.shape == (4, NUM_CLASSES, 4, 4)
    expected_cat = beta * losses.cat_loss(student_cams, teacher_cams, **cat_settings)
    torch.testing.assert_close(terms["cat"], expected_cat)
    if ce_weight is not None:
        student_logits = method.student(images)
        torch.testing.assert_close(terms["ce"], ce_weight * F.cross_entropy(student_logits, labels))


def test_cat_transfers_grad_cam_maps_when_asked(batch):
    images, labels = batch
    method = make_method("cat", teacher_maps="gradcam").train()
    _, terms = method(images, labels, epoch=0)
    student_cams = hand_cams(method.student, images)
    teacher_maps = gradcam.grad_cam(method.teacher, images)  # autograd, by Grad-CAM's definition
    expected = 50.0 * losses.cat_loss(student_cams, teacher_maps, resolution=2, normalize="l2")
    torch.testing.assert_close(terms["cat"], expected)
    with pytest.raises(ValueError, match="unknown teacher_maps 'gradcams'"):
        make_method("cat", teacher_maps="gradcams")


def test_cat_is_label_free(batch):
    images, labels = batch
    method = make_method("cat").eval()
    _, terms = method(images, labels, epoch=0)
    for other_labels in (labels.flip(0), torch.full_like(labels, 10_000)):  # even invalid ones
        _, other_terms = method(images, other_labels, epoch=0)
        assert torch.equal(other_terms["cat"], terms["cat"])
    # No logit reaches the loss: the classifier bias, which only the logits use, gets no gradient.
    terms["cat"].backward()
    assert method.student.fc.bias.grad is None
    assert method.student.fc.weight.grad is not None


def test_models_are_converted_once(monkeypatch, batch):
    images, labels = batch
    converted = []
    convert = cat_module.convert

    def counting_convert(model):
        converted.append(model)
        return convert(model)

    monkeypatch.setattr(cat_module, "convert", counting_convert)
    method = make_method("catkd")
    for epoch in range(2):
        method(images, labels, epoch)
    assert converted == [method.student, method.teacher]


# ----------------------------------------------------------------------------- AT hooks
def test_at_hooks_capture_every_stage_once(batch):
    images, labels = batch
    method = make_method("at").eval()
    for _ in range(2):
        method(images, labels, epoch=0)
    assert len(method.student.layer1._forward_hooks) == 1  # registered in __init__ only
    with torch.no_grad():
        method.student(images)
        method.teacher(images)
        student_maps, teacher_maps = method.student_stages.pop(), method.teacher_stages.pop()
        expected_student = hand_stage_maps(method.student, images)
    assert [m.shape for m in student_maps] == [(4, 16, 16, 16), (4, 32, 8, 8), (4, 64, 4, 4)]
    assert len(teacher_maps) == 3
    for captured, expected in zip(student_maps, expected_student):
        torch.testing.assert_close(captured, expected)


def test_at_stage_mismatch_names_both_models_stages():
    student = models.create("resnet8", num_classes=NUM_CLASSES)
    teacher = models.create("vgg8", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError) as error:
        methods.create("at", student, teacher)
    message = str(error.value)
    assert "('layer1', 'layer2', 'layer3')" in message
    assert "('block1', 'block2', 'block3', 'block4')" in message
    assert not student.layer1._forward_hooks  # nothing left behind


# ----------------------------------------------------------------------------- registry
def test_settings_are_the_reference_defaults():
    assert methods.names() == ["at", "cat", "catkd", "ce", "crd", "dkd", "fitnet", "kd", "ofd",
                               "reviewkd", "rkd"]
    assert methods.settings("ce") == {}
    assert methods.settings("kd") == dict(ce_weight=0.1, kd_weight=0.9, temperature=4.0)
    assert methods.settings("dkd") == dict(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0,
                                           warmup_epochs=20)
    assert methods.settings("at") == dict(ce_weight=1.0, at_weight=1000.0, p=2)
    assert methods.settings("cat") == dict(beta=50.0, resolution=2, normalize="l2",
                                           binarize=None, classes=None, teacher_maps="cam")
    assert methods.settings("catkd") == dict(ce_weight=1.0, beta=15.0, resolution=2,
                                             normalize=None, binarize=None, classes=None,
                                             teacher_maps="cam")


def test_unknown_method_lists_valid_names():
    student, teacher = make_models()
    with pytest.raises(ValueError, match="'catdk'.*at, cat, catkd, ce, crd, dkd, fitnet, kd"):
        methods.create("catdk", student, teacher)
    with pytest.raises(ValueError, match="valid names"):
        methods.settings("fitnets")


def test_unknown_setting_is_named_with_the_valid_ones():
    student, teacher = make_models()
    with pytest.raises(ValueError, match="betta.*'cat'.*beta, resolution, normalize"):
        methods.create("cat", student, teacher, betta=3)


@pytest.mark.parametrize("name", ["kd", "dkd", "at", "cat", "catkd"])
def test_teacher_is_required(name):
    assert methods.needs_teacher(name)
    student, _ = make_models()
    with pytest.raises(ValueError, match="teacher"):
        methods.create(name, student)


def test_ce_refuses_a_teacher_and_a_model_cannot_teach_itself():
    assert not methods.needs_teacher("ce")
    student, teacher = make_models()
    with pytest.raises(ValueError, match="without a teacher"):
        methods.create("ce", student, teacher)
    with pytest.raises(ValueError, match="separate model"):
        methods.create("kd", student, student)
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("name", methods.names())
def test_each_declared_range_names_a_setting_and_holds_its_default(name):
    defaults = methods.settings(name)
    ranges = methods._method_class(name).ranges
    assert set(ranges) <= set(defaults), name
    for key, (test, what) in ranges.items():
        assert test(defaults[key]), (name, key, what)
    methods.check_settings(name, defaults)  # the defaults themselves pass


@pytest.mark.parametrize("name, setting, value, what", [
    ("catkd", "beta", -1, "a non-negative number"),
    ("cat", "resolution", 0, "at least 1"),
    ("kd", "temperature", 0, "a positive number"),
    ("dkd", "alpha", -0.5, "a non-negative number"),
    ("crd", "momentum", 1.5, r"in \[0, 1\]"),
    ("reviewkd", "warmup_epochs", 0, "at least 1"),
    ("kd", "kd_weight", "heavy", "a non-negative number"),
])
def test_settings_outside_their_range_are_refused_with_what_fits(name, setting, value, what):
    with pytest.raises(ValueError, match=f"loss.{setting} of method '{name}' must be {what}"):
        methods.check_settings(name, {setting: value}, prefix="loss.")
