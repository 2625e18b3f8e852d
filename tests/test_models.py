"""The zoo against the published CIFAR-100 teacher checkpoints' parameter names and shapes."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from catkd import cam, models
from conftest import calibrated

SHAPES = json.loads((Path(__file__).parent / "cifar100_teacher_state_dict_shapes.json").read_text())

# Parameter counts (millions, 100 classes) and CAM sizes on 32x32 inputs, from the paper's
# reference material (shared/reference/README.md).
PARAMS_M = {
    "resnet8x4": 1.234, "resnet32x4": 7.434, "wrn_40_2": 2.255, "resnet20": 0.278,
    "resnet56": 0.862, "resnet110": 1.737, "vgg13": 9.462, "vgg8": 3.965, "ResNet50": 23.705,
    "ShuffleV1": 0.949, "ShuffleV2": 1.356, "MobileNetV2": 0.813, "wrn_16_2": 0.703,
    "wrn_40_1": 0.570,
}
CAM_SIZE = {name: 8 for name in SHAPES if name.startswith(("resnet", "wrn"))}
CAM_SIZE.update({name: 4 for name in SHAPES if name.startswith(("vgg", "Shuffle", "ResNet"))})
CAM_SIZE["MobileNetV2"] = 2


def test_zoo_has_every_checkpoint_name():
    missing = set(SHAPES) - set(models.names())
    assert not missing, f"zoo lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_state_dict_matches_checkpoint(name):
    model = models.create(name, num_classes=100)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes) == list(SHAPES[name])  # same keys, same order
    assert shapes == SHAPES[name]
    # A checkpoint with these keys and shapes loads strictly.
    fake_checkpoint = {key: torch.zeros(shape) for key, shape in SHAPES[name].items()}
    model.load_state_dict(fake_checkpoint, strict=True)


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_count_matches_paper(name):
    model = models.create(name, num_classes=100)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(count, 3) == PARAMS_M[name]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_convention(name):
    model = models.create(name, num_classes=7, in_channels=1).eval()
    images = torch.randn(2, 1, 32, 32)
    features = model.forward_features(images)
    size = CAM_SIZE[name]
    assert features.shape[0] == 2 and features.shape[2:] == (size, size)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.in_features == features.shape[1]
    with torch.no_grad():
        logits = model(images)
        by_hand = features.mean(dim=(2, 3)) @ classifier.weight.T + classifier.bias
    assert logits.shape == (2, 7)
    torch.testing.assert_close(model.forward_head(features), logits)
    torch.testing.assert_close(by_hand, logits, atol=1e-5, rtol=1e-5)
    for stage in model.stages:
        model.get_submodule(stage)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet8x4"):
        models.create("resnet9")


@pytest.mark.parametrize("name", ["torchvision.resnet18", "torchvision.mobilenet_v3_small",
                                  "timm.resnet18"])
def test_models_from_outside_the_zoo_are_built_untrained_for_the_data(name):
    model = models.create(name, num_classes=10, in_channels=1).eval()
    logits = model(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 10)


def test_a_torchvision_teacher_gives_its_cams_and_a_head_that_is_not_gap_linear_says_so():
    resnet = models.create("torchvision.resnet18", num_classes=10, in_channels=1).eval()
    images = torch.randn(2, 1, 64, 64)
    logits, cams = cam.convert(resnet)(images)
    torch.testing.assert_close(logits, resnet(images))
    assert cams.shape == (2, 10, 2, 2)
    with pytest.raises(TypeError, match="global average pooling followed by exactly one"):
        cam.convert(models.create("torchvision.mobilenet_v3_small", num_classes=10))


@pytest.mark.parametrize("name, image_size, side", [
    ("torchvision.resnet18", 28, 7), ("torchvision.resnet18", 8, 2), ("timm.resnet18", 8, 2),
    ("torchvision.shufflenet_v2_x0_5", 8, 2)])
def test_an_outside_model_for_small_images_has_a_total_stride_of_4(name, image_size, side):
    """As the zoo's CIFAR ResNets: Fashion-MNIST's 28x28 -> 7x7 maps, digits' 8x8 -> 2x2;
    a ShuffleNetV2 downsamples on two branches at once, each set to stride 1 alike."""
    torch.manual_seed(0)
    images = torch.randn(2, 1, image_size, image_size)
    model = calibrated(models.create(name, num_classes=10, in_channels=1,
                                     image_size=image_size), images)
    with torch.no_grad():
        logits, cams = cam.convert(model)(images)
        original = model(images)
    assert cams.shape == (2, 10, side, side)
    torch.testing.assert_close(logits, original)
    bias = model.get_classifier().bias if hasattr(model, "get_classifier") else model.fc.bias
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + bias, original)


def test_an_outside_model_without_image_size_or_for_large_images_is_as_built():
    images = torch.randn(1, 3, 224, 224)
    for image_size in (None, 64):
        resnet = models.create("torchvision.resnet18", num_classes=10, image_size=image_size)
        with torch.no_grad():
            assert cam.convert(resnet.eval())(images)[1].shape == (1, 10, 7, 7)  # stride 32


def test_a_zoo_model_ignores_image_size():
    torch.manual_seed(0)
    built = models.create("resnet8", num_classes=10, in_channels=1).eval()
    torch.manual_seed(0)
    given = models.create("resnet8", num_classes=10, in_channels=1, image_size=8).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert given.forward_features(images).shape[2:] == (2, 2)
        torch.testing.assert_close(given(images), built(images))


@pytest.mark.parametrize("name, found", [
    ("torchvision.convnext_tiny", "it downsamples by features.0.0 (stride 4x4)"),
    ("torchvision.squeezenet1_1", "its last map on 28x28 images is 6x6, not the 7x7")])
def test_an_outside_model_whose_downsampling_cannot_reach_a_stride_of_4_is_refused(name, found):
    """ConvNeXt's patchify stem has stride 4; SqueezeNet's unpadded stem convolution and max
    pooling shrink the map by 2 pixels at stride 1."""
    with pytest.raises(ValueError, match=rf"model '{name}' cannot be adapted to 28x28 images: "
                                         rf".*{re.escape(found)}"):
        models.create(name, num_classes=10, in_channels=1, image_size=28)


@pytest.mark.parametrize("image_size", [0, -8])
def test_an_image_size_below_1_is_refused(image_size):
    with pytest.raises(ValueError, match=f"image_size .* must be >= 1, .*image_size={image_size}"):
        models.create("torchvision.resnet18", num_classes=10, image_size=image_size)


@pytest.mark.parametrize("name, listed", [
    ("resnt20", "or torchvision.<name>"), ("torchvision.resnet", "torchvision classifiers: "),
    ("timm.no_such_model", "timm's model names")])
def test_an_unknown_model_name_lists_what_would_be_right(name, listed):
    with pytest.raises(ValueError, match=f"unknown model '{name}'; valid names: .*{re.escape(listed)}"):
        models.create(name)


def _with_running_statistics(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affine weights away from 0 and 1,
    so that a fold that dropped or misapplied any of them would show."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5),
                                      (module.running_var, 0.5, 2.0),
                                      (module.weight.data, 0.5, 1.5),
                                      (module.bias.data, -0.2, 0.2)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet20", "resnet32x4", "wrn_16_2", "ShuffleV2",
                                  "MobileNetV2", "imagenet_resnet18"])
def test_folding_batchnorms_keeps_logits_features_and_stages(name):
    torch.manual_seed(0)
    model = _with_running_statistics(models.create(name, num_classes=10))
    size = 64 if name.startswith("imagenet") else 32
    images = torch.randn(2, 3, size, size)
    stage = model.get_submodule(model.stages[-1])  # where a feature method taps the model
    stage_outputs = []

    def outputs() -> tuple[torch.Tensor, ...]:
        hook = stage.register_forward_hook(lambda module, args, output: stage_outputs.append(output))
        with torch.no_grad():
            logits, features = model(images), model.forward_features(images)
        hook.remove()
        return logits, features, stage_outputs[-1]

    before = outputs()
    norms = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())

    folded = models.fold_batchnorm(model)

    left = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert folded > 0 and left == norms - folded
    for after, expected in zip(outputs(), before):
        torch.testing.assert_close(after, expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())


def test_folding_leaves_a_convolution_whose_output_is_used_twice():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            features = self.conv(x)
            return self.norm(features) + features  # the raw features are needed too

    model = _with_running_statistics(Branches())
    images = torch.randn(2, 3, 8, 8)
    expected = model(images)
    assert models.fold_batchnorm(model) == 0
    torch.testing.assert_close(model(images), expected)
