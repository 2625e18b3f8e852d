"""load_checkpoint accepts the layouts checkpoints are shipped in and names what does not fit."""

import pytest
import torch

from catkd import models


@pytest.fixture
def trained():
    torch.manual_seed(0)
    return models.create("resnet8", num_classes=10)


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "ddp", "compiled"])
def test_layouts_load_the_same_weights(tmp_path, trained, layout):
    state = trained.state_dict()
    wrapped = {
        "plain": state,
        "model": {"model": state, "epoch": 240},  # the CRD / mdistiller teachers' layout
        "state_dict": {"state_dict": state},
        "ddp": {"model": {f"module.{key}": value for key, value in state.items()}},
        "compiled": {f"_orig_mod.{key}": value for key, value in state.items()},
    }[layout]
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(wrapped, path)
    fresh = models.create("resnet8", num_classes=10)
    assert models.load_checkpoint(fresh, path) is fresh
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_mismatch_names_missing_unexpected_and_misshaped_keys(tmp_path, trained):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": trained.state_dict()}, path)
    with pytest.raises(ValueError) as error:
        models.load_checkpoint(models.create("resnet14", num_classes=10), path)
    message = str(error.value)
    assert "does not fit CifarResNet" in message
    assert "missing: layer1.1.conv1.weight" in message
    with pytest.raises(ValueError, match=r"wrong shape .*fc\.weight \(10, 64\) vs \(100, 64\)"):
        models.load_checkpoint(models.create("resnet8", num_classes=100), path)
    renamed = {f"backbone.{key}": value for key, value in trained.state_dict().items()}
    torch.save(renamed, path)
    with pytest.raises(ValueError, match="unexpected: backbone.conv1.weight"):
        models.load_checkpoint(models.create("resnet8", num_classes=10), path)


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "accuracy": 71.2}, path)
    with pytest.raises(ValueError, match="holds no state_dict"):
        models.load_checkpoint(models.create("resnet8"), path)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        models.load_checkpoint(models.create("resnet8"), tmp_path / "nowhere.pth")
