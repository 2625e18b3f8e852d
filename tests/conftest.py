"""Helpers the test files share (``from conftest import ...``: pytest puts this folder on the
path), and the ``slow`` marker's meaning: tests that take more than a few seconds (training
runs, the notebooks, the book); ``pytest -m "not slow"`` (``make test-fast``) leaves them out."""

import json
import os
from pathlib import Path

import torch
from torch import nn

from catkd import config, models, runs, sweep

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quick"

# A run that trains in seconds on a CPU: digits (8x8), a resnet8, two epochs.
TINY = ["data.dataset=digits", "data.batch_size=32", "data.crop_padding=1", "student=resnet8",
        "optim.epochs=2", "optim.milestones=[1]", "runtime.device=cpu"]
# The classes of the models make_models gives.
NUM_CLASSES = 5


def tiny(out, *overrides: str) -> list[str]:
    """The overrides of a tiny run writing into folder ``out``, then ``overrides``."""
    return [*TINY, f"out={out}", *overrides]


def calibrated(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """``model`` in eval mode, its BN layers given the running statistics of ``images`` (N, C,
    H, W), as a trained model has them.

    With the initial running statistics (mean 0, variance 1) a deep residual network's
    activations grow exponentially with depth in eval mode, and logits of 1e6 would make an
    absolute tolerance meaningless; no trained teacher does that.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, its statistics
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def make_models(seed: int = 0, in_channels: int = 1) -> tuple[nn.Module, nn.Module]:
    """(student resnet8, teacher resnet14) of ``NUM_CLASSES`` classes, with non-trivial BN
    statistics and classifier biases."""
    torch.manual_seed(seed)
    student = models.create("resnet8", num_classes=NUM_CLASSES, in_channels=in_channels)
    teacher = models.create("resnet14", num_classes=NUM_CLASSES, in_channels=in_channels)
    # Non-trivial BN statistics and classifier bias, so that a teacher forward in training mode,
    # or CAMs that included the bias, would give different numbers.
    for model in (student, teacher):
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        torch.nn.init.uniform_(model.fc.bias, -1.0, 1.0)
    return student, teacher


def write_sweep(folder: Path, text: str) -> Path:
    """A sweep file ``table.yaml`` in ``folder`` from ``text``, where QUICK names the quick
    configs' folder."""
    path = folder / "table.yaml"
    path.write_text(text.replace("QUICK", os.path.relpath(QUICK, folder)))
    return path


def fake_run(experiment: sweep.Experiment, best: float, last: float) -> None:
    """A finished run folder as `fit` leaves it, as far as a report reads it."""
    experiment.path.mkdir(parents=True)
    (experiment.path / "config.yaml").write_text(config.dump(experiment.config))
    (experiment.path / runs.SUMMARY).write_text(json.dumps({"best_acc": best, "last_acc": last}))
