"""Beyond GAP + Linear CNNs: exact CAMs of token models, gradient maps of any classifier, and
class attention transfer between CNNs and vision transformers (issue 18, parts 1-3).

Expected values are computed here from the models' own outputs: CAMs of a token model from its
``forward_features`` tokens and its head's weights, gradient maps from the CAMs they must equal.
"""

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from catkd import cam, gradcam, losses, methods, metrics, models
from conftest import calibrated

timm = pytest.importorskip("timm")


def tiny_vit(**overrides) -> nn.Module:
    """A two-layer timm ViT on 32x32 inputs (patch 8: a 4x4 grid), eval mode, 10 classes."""
    torch.manual_seed(0)
    settings = dict(pretrained=False, num_classes=10, img_size=32, patch_size=8, depth=2)
    model = timm.create_model("vit_tiny_patch16_224", **{**settings, **overrides}).eval()
    nn.init.normal_(model.head.bias)  # a bias that matters: CAMs leave it out, logits keep it
    return model


# ------------------------------------------------------------ 1. exact CAMs of token models
@pytest.mark.parametrize("tokens", [dict(class_token=False), dict(class_token=True),
                                    dict(class_token=True, reg_tokens=2)])
def test_average_pooled_vit_converts_exactly(tokens):
    model = tiny_vit(global_pool="avg", fc_norm=False, **tokens)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, cams = cam.convert(model)(images)
        original = model(images)
        # Independently: the head's Linear applied to each patch token, laid out row by row.
        patches = model.forward_features(images)[:, model.num_prefix_tokens:]  # (3, 16, 192)
    assert cams.shape == (3, 10, 4, 4)
    assert (logits - original).abs().max().item() <= 1e-5
    expected = (patches @ model.head.weight.T).transpose(1, 2).reshape(3, 10, 4, 4)
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.head.bias, original,
                               atol=1e-5, rtol=1e-5)


def test_token_grid_follows_the_image_shape():
    model = tiny_vit(global_pool="avg", fc_norm=False, class_token=False, dynamic_img_size=True)
    images = torch.randn(2, 3, 32, 48)  # a 4 x 6 grid of patches
    with torch.no_grad():
        logits, cams = cam.convert(model)(images)
        assert cams.shape == (2, 10, 4, 6)
        torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-5)
    # Row-major: token 7 is row 1, column 1.
    tokens = torch.arange(24.0).view(1, 24, 1)
    assert cam.tokens_to_map(tokens, (32, 48))[0, 0, 1, 1].item() == 7
    with pytest.raises(ValueError, match="do not form a grid"):
        cam.tokens_to_map(torch.zeros(1, 17, 4), (32, 32))


@pytest.mark.parametrize("overrides, says", [
    (dict(global_pool="token"), "head starts with x[:, 0]"),  # the class token's head
    (dict(global_pool="avg"), "where the Linear should be"),  # fc_norm: a norm after pooling
    (dict(global_pool="map", class_token=False), "where the token average should be"),
    (dict(global_pool="avg", fc_norm=False, pool_include_prefix=True),
     "has 1 prefix token(s) but its head averages its tokens from index 0 on"),
])
def test_token_heads_that_are_not_an_average_and_one_linear_are_refused(overrides, says):
    with pytest.raises(TypeError, match="global average pooling followed by exactly one") as error:
        cam.convert(tiny_vit(**overrides))
    message = str(error.value)
    assert says in message and "\n" not in message
    if overrides == dict(global_pool="avg"):  # timm's fc_norm, as a module or its function
        assert "fc_norm" in message or "layer_norm" in message
    if "map" in overrides.values():
        assert "attn_pool" in message


# ------------------------------------------------------------ 2. gradient maps
def calibrated_resnet8(num_classes: int = 6) -> nn.Module:
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=num_classes)
    return calibrated(model, torch.randn(16, 3, 32, 32))


def test_grad_maps_of_a_gap_linear_model_are_its_cams():
    model = calibrated_resnet8()
    images = torch.randn(3, 3, 32, 32)
    cams = cam.class_activation_maps(model, images)  # (3, 6, 8, 8)
    logits, maps = gradcam.GradCAMModel(model)(images)
    torch.testing.assert_close(logits, model(images))
    torch.testing.assert_close(maps, gradcam.grad_cam_from_cams(cams), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(maps, gradcam.grad_cam(model, images))
    # Without the ReLU, h w times the maps are the CAMs themselves; at the same map reached by
    # a hook on the last stage instead of forward_features, the same.
    _, signed = gradcam.GradCAMModel(model, "layer3", relu=False)(images)
    torch.testing.assert_close(signed * 64, cams, atol=1e-5, rtol=1e-4)
    assert not maps.requires_grad and not logits.requires_grad


def test_grad_maps_of_an_average_pooled_vit_are_its_token_cams():
    model = tiny_vit(global_pool="avg", fc_norm=False, class_token=True)
    images = torch.randn(2, 3, 32, 32)
    cams = cam.class_activation_maps(model, images)
    _, signed = gradcam.GradCAMModel(model, relu=False)(images)  # tokens, class token left out
    torch.testing.assert_close(signed * 16, cams, atol=1e-5, rtol=1e-4)
    # A class-token head has no CAMs, but gradient maps on the same grid.
    _, maps = gradcam.GradCAMModel(tiny_vit(global_pool="token"))(images)
    assert maps.shape == (2, 10, 4, 4) and (maps >= 0).all()


def test_grad_maps_of_a_model_without_forward_features_are_taken_where_its_pooling_reads():
    # torchvision's ResNet has no forward_features: the maps come from the map its global
    # average pooling reads (layer4), and for its GAP + Linear head they are its CAMs.
    model = torchvision.models.resnet18(num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    assert cam.feature_layer(model) == "layer4"
    logits, signed = gradcam.GradCAMModel(model, relu=False)(images)
    torch.testing.assert_close(logits, model(images))
    torch.testing.assert_close(signed * 4, cam.class_activation_maps(model, images),
                               atol=1e-5, rtol=1e-4)


def test_grad_maps_run_under_no_grad_and_name_what_is_missing():
    model = calibrated_resnet8()
    with torch.no_grad():  # as CAT computes its teacher's maps
        _, maps = gradcam.GradCAMModel(model)(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="no global average pooling.*name the layer"):
        gradcam.GradCAMModel(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()))
    with pytest.raises(AttributeError, match="no_such_layer"):
        gradcam.GradCAMModel(model, "no_such_layer")


def test_map_agreement():
    model = calibrated_resnet8()
    images = torch.randn(4, 3, 32, 32)
    cams = cam.class_activation_maps(model, images)
    same = metrics.map_agreement(cams, cams)
    assert same["cosine"] == pytest.approx(1.0) and same["relative_l2"] == pytest.approx(0.0)
    assert same["cat_loss"] == pytest.approx(0.0, abs=1e-12)
    # Exact up to scale: signed gradient maps at the last map.
    _, signed = gradcam.GradCAMModel(model, relu=False)(images)
    assert metrics.map_agreement(signed, cams)["cosine"] == pytest.approx(1.0, abs=1e-5)
    # Grad-CAM proper (the ReLU drops the negative part), and from an earlier, larger map.
    for maps in (gradcam.grad_cam(model, images), gradcam.grad_cam(model, images, "layer2")):
        agreement = metrics.map_agreement(maps, cams, resolution=2, normalize="l2")
        assert -1.0 <= agreement["cosine"] < 1.0 - 1e-4 and agreement["relative_l2"] > 0
        top = metrics.map_agreement(maps, cams, top=2)
        expected = losses.cat_loss(maps, cams, 2, "l2", classes=("top", 2)).item()
        assert top["cat_loss"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="same N and K"):
        metrics.map_agreement(cams[:, :3], cams)


def mlp_head_model(num_classes: int = 5) -> nn.Module:
    """A VGG-like classifier without forward_features: convs, 2x2 pooling, an MLP head."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        pool=nn.AdaptiveAvgPool2d(2), flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, num_classes)),
    )).eval()


def one_cat_step(method: methods.Method, images: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """One SGD step; checks the loss is finite, the student changes and the teacher does not."""
    method.train()
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in method.student.named_parameters()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    _, terms = method(images, labels, epoch=0)
    loss = sum(terms.values())
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(student_before[k], v) for k, v in method.student.named_parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in method.teacher.state_dict().items())
    assert all(p.grad is None for p in method.teacher.parameters())
    return terms


@pytest.mark.parametrize("teacher_name", ["convnext_atto", "mobilenetv3_small_050"])
def test_gradient_maps_of_a_teacher_without_cams_are_cat_targets(teacher_name):
    torch.manual_seed(0)
    teacher = timm.create_model(teacher_name, pretrained=False, num_classes=5, in_chans=1).eval()
    student = models.create("resnet8", num_classes=5, in_channels=1)
    images, labels = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match="global average pooling followed by exactly one"):
        methods.create("cat", student, teacher)  # its CAMs do not exist
    method = methods.create("cat", student, teacher, teacher_maps="gradcam")
    assert isinstance(method.teacher_cam_model, gradcam.GradCAMModel)
    with torch.no_grad():
        student_cams = cam.convert(student)(images)[1]  # (4, 5, 16, 16)
    teacher_maps = gradcam.grad_cam(teacher, images)  # (4, 5, 2, 2)
    assert teacher_maps.shape == (4, 5, 2, 2)
    terms = one_cat_step(method, images, labels)
    expected = 50.0 * losses.cat_loss(student_cams, teacher_maps, 2, "l2")
    torch.testing.assert_close(terms["cat"], expected)


def test_a_teacher_given_as_gradient_maps_at_a_layer():
    teacher = gradcam.GradCAMModel(mlp_head_model(), "features")  # an MLP head: only grad maps
    student = models.create("resnet8", num_classes=5, in_channels=1)
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    method = methods.create("catkd", student, teacher, teacher_maps="gradcam")
    assert method.teacher_cam_model is teacher
    with torch.no_grad():
        assert teacher(images)[1].shape == (4, 5, 8, 8)
    terms = one_cat_step(method, images, labels)
    assert set(terms) == {"ce", "cat"}


# ------------------------------------------------------------ 3. the zoo's vision transformer
@pytest.mark.parametrize("size, grid", [(28, 7), (32, 8)])
def test_zoo_vit_features_are_its_token_grid_and_convert_exactly(size, grid):
    model = models.create("vit_micro", num_classes=10, in_channels=1).eval()
    images = torch.randn(3, 1, size, size)
    with torch.no_grad():
        features = model.forward_features(images)
        logits, cams = cam.convert(model)(images)
        original = model(images)
    assert features.shape == (3, 64, grid, grid)
    assert cams.shape == (3, 10, grid, grid)
    assert (logits - original).abs().max().item() <= 1e-5
    torch.testing.assert_close(features.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias,
                               original, atol=1e-5, rtol=1e-5)
    assert model.stages == ()  # tokens are no stage maps: the feature methods refuse it


@pytest.mark.parametrize("name", ["cat", "catkd"])
@pytest.mark.parametrize("teacher_name", ["resnet8", "vgg8"])  # 8x8 and 4x4 CAMs at 32x32
def test_a_vit_student_learns_from_a_cnn_teacher(name, teacher_name):
    torch.manual_seed(0)
    student = models.create("vit_micro", num_classes=5, in_channels=1)
    teacher = models.create(teacher_name, num_classes=5, in_channels=1)
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    method = methods.create(name, student, teacher)
    one_cat_step_and_grads(method, images, labels)


def one_cat_step_and_grads(method: methods.Method, images: torch.Tensor,
                           labels: torch.Tensor) -> None:
    terms = one_cat_step(method, images, labels)
    assert all(torch.isfinite(value) for value in terms.values())
    # Gradients reached the first layer of the student, through every block.
    first = next(p for p in method.student.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["cat", "catkd"])
def test_a_cnn_student_learns_from_a_vit_teacher(name):
    torch.manual_seed(0)
    teacher = models.create("vit_micro", num_classes=5, in_channels=1)  # 8x8 CAMs at 32x32
    student = models.create("MobileNetV2", num_classes=5, in_channels=1)  # 2x2 CAMs
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    method = methods.create(name, student, teacher)
    with torch.no_grad():
        assert cam.convert(teacher)(images)[1].shape == (4, 5, 8, 8)
        assert cam.convert(student)(images)[1].shape == (4, 5, 2, 2)
    one_cat_step_and_grads(method, images, labels)
