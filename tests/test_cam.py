"""The structure revisit: converted models give the original logits and the Eq. 2 CAMs."""

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from catkd import cam, gradcam, models
from conftest import calibrated

torch.manual_seed(0)


def check_conversion(model: nn.Module, images: torch.Tensor, classifier: nn.Linear,
                     features: torch.Tensor):
    converted = cam.convert(model)
    with torch.no_grad():
        logits, cams = converted(images)
        original = model(images)
    # Logits unchanged (the bar: 1e-5 absolute, float32, eval mode).
    assert logits.shape == original.shape
    assert (logits - original).abs().max().item() <= 1e-5
    # CAMs are Eq. 2 computed independently: per class, a weighted sum of feature channels.
    n, k = original.shape
    assert cams.shape == (n, k, *features.shape[2:])
    expected = torch.stack(
        [sum(classifier.weight[i, j] * features[:, j] for j in range(features.shape[1]))
         for i in range(k)], dim=1)
    torch.testing.assert_close(cams, expected, atol=1e-4, rtol=1e-4)
    # The bias: GAP(CAM) + bias == logits.
    bias = classifier.bias if classifier.bias is not None else 0.0
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + bias, original, atol=1e-5, rtol=1e-5)
    return converted


@pytest.mark.parametrize("name", models.names())
def test_zoo_conversion_keeps_logits(name):
    size = 64 if name.startswith("imagenet_") else 32
    images = torch.rand(4, 3, size, size)
    model = calibrated(models.create(name, num_classes=10), images)
    with torch.no_grad():
        features = model.forward_features(images)
    check_conversion(model, images, model.get_classifier(), features)


TORCHVISION = {
    "resnet18": lambda m: m.fc,
    "shufflenet_v2_x0_5": lambda m: m.fc,
    "mobilenet_v2": lambda m: m.classifier[1],
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_conversion_keeps_logits(name):
    images = torch.rand(4, 3, 64, 64)
    model = calibrated(torchvision.models.get_model(name, num_classes=10), images)
    # The feature map, captured with a hook on the classifier's input side: what the head
    # pools is the input of the last feature stage's consumer.
    captured = {}
    last_stage = {"resnet18": "layer4", "shufflenet_v2_x0_5": "conv5",
                  "mobilenet_v2": "features"}[name]
    handle = model.get_submodule(last_stage).register_forward_hook(
        lambda module, args, output: captured.update(features=output))
    with torch.no_grad():
        model(images)
    handle.remove()
    check_conversion(model, images, TORCHVISION[name](model), captured["features"])


class TimmStyle(nn.Module):
    """A timm-style model: pooling module, dropout and a bias-free Linear in forward_head."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes, bias=False)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_timm_style_conversion_without_bias():
    model = TimmStyle().eval()
    images = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        features = model.forward_features(images)
    check_conversion(model, images, model.fc, features)


def test_real_timm_models():
    timm = pytest.importorskip("timm")
    images = torch.rand(2, 3, 64, 64)
    model = calibrated(timm.create_model("resnet18", num_classes=10), images)
    with torch.no_grad():
        features = model.forward_features(images)
    check_conversion(model, images, model.get_classifier(), features)
    # MobileNetV3 pools first and then applies a conv and an activation: no CAM exists.
    with pytest.raises(TypeError, match="conv_head"):
        cam.convert(timm.create_model("mobilenetv3_small_100", num_classes=10))


@pytest.mark.parametrize("model, says", [
    (torchvision.models.vgg16(num_classes=10), "VGG has no global average pooling"),
    (nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8),
                   nn.ReLU(), nn.Linear(8, 2)), "goes on after its Linear"),
    (nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)),
     "no global average pooling"),
])
def test_heads_that_are_not_gap_plus_linear_are_refused(model, says):
    with pytest.raises(TypeError, match="global average pooling followed by exactly one") as error:
        cam.convert(model)
    assert says in str(error.value)


def test_converted_model_shares_parameters_and_trains_the_original():
    model = models.create("resnet8", num_classes=10)
    converted = cam.convert(model)
    assert converted.model is model
    assert {id(p) for p in converted.parameters()} == {id(p) for p in model.parameters()}
    assert list(converted.model.state_dict()) == list(model.state_dict())
    before = model.get_classifier().weight.detach().clone()
    logits, cams = converted(torch.rand(4, 3, 32, 32))
    (logits.sum() + cams.square().mean()).backward()
    torch.optim.SGD(converted.parameters(), lr=0.1).step()
    assert not torch.equal(model.get_classifier().weight, before)
    assert cam.convert(converted) is converted


def test_class_activation_maps_keeps_training_mode():
    model = models.create("resnet8", num_classes=10).train()
    maps = cam.class_activation_maps(model, torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 10, 8, 8) and not maps.requires_grad
    assert model.training
    cam.class_activation_maps(model.eval(), torch.rand(2, 3, 32, 32))
    assert not model.training


def test_upsample():
    cams = torch.arange(8.0).view(1, 2, 2, 2)
    assert cam.upsample(cams, (32, 32)).shape == (1, 2, 32, 32)


def test_grad_cam_by_autograd_is_the_positive_part_of_the_cam_over_its_area():
    model = calibrated(models.create("resnet8", num_classes=5), torch.randn(16, 3, 32, 32))
    images = torch.randn(3, 3, 32, 32)
    maps = gradcam.grad_cam(model, images)
    cams = cam.class_activation_maps(model, images)
    assert maps.shape == cams.shape == (3, 5, 8, 8)
    # Independently: Grad-CAM by its definition, class by class, with torch.func's Jacobian.
    features = model.forward_features(images).detach()
    for cls in range(5):
        jacobian = torch.func.jacrev(lambda f: model.forward_head(f)[:, cls].sum())(features)
        weights = jacobian.mean(dim=(2, 3))  # (N, C)
        expected = torch.relu(torch.einsum("nc,nchw->nhw", weights, features))
        torch.testing.assert_close(maps[:, cls], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps, gradcam.grad_cam_from_cams(cams), atol=1e-5, rtol=1e-4)
    assert (maps == 0).any() and (maps > 0).any()  # the ReLU matters: CAMs go negative


def test_cam_imports_no_plotting_library():
    # Every training run imports catkd.cam; only the figures need matplotlib.
    command = "import sys, catkd.cam; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", command],
                            capture_output=True, text=True, check=True).stdout
    assert "'matplotlib'" not in loaded
