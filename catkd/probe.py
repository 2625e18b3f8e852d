"""Linear probing (paper Table 9): how well a frozen student's features transfer.

The backbone is frozen, BatchNorm included (eval mode), and a new Linear head is trained on the
target dataset with the recipe of the paper's transfer experiment: 40 epochs, batch 128, SGD
with LR 0.1 divided by 10 at epochs 10, 20 and 30, no weight decay. Since nothing before the
head changes, each image's pooled features are computed once and the head is trained on them;
the target images are resized to the size the student was trained at and are not augmented.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from catkd import data
from catkd import device as devices
from catkd.progress import bar
from catkd.runs import Run, atomic_save

RECIPE = {"epochs": 40, "batch_size": 128, "lr": 0.1, "milestones": [10, 20, 30], "gamma": 0.1,
          "momentum": 0.9, "weight_decay": 0.0}


@torch.no_grad()
def pooled_features(backbone: nn.Module, dataset: data.ImageDataset, image_size: int,
                    device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """(N, C) globally pooled ``forward_features`` of every image, resized to image_size^2."""
    backbone.eval()
    loader = data.BatchLoader(dataset, batch_size=batch_size, train=False, device=device)
    features = []
    for images, _ in bar(loader, f"features of {dataset.name}"):
        if images.shape[-1] != image_size or images.shape[-2] != image_size:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                   align_corners=False)
        features.append(backbone.forward_features(images).mean(dim=(2, 3)).float())
    return torch.cat(features)


def probe(run: Run | str | os.PathLike, dataset: str, root: str | None = None,
          seed: int = 0, device: str = "cpu", recipe: dict | None = None) -> dict:
    """Train a linear head on ``run``'s frozen student for ``dataset``; return its accuracy.

    ``device``: cpu, cuda, cuda:1, ... or auto (cuda when available).
    Writes ``<run>/probe-<dataset>/summary.json`` (``best_acc``, ``last_acc``, ...) and
    ``metrics.jsonl``, and returns that summary without training again when it holds the same
    recipe and seed. ``recipe`` overrides keys of ``RECIPE`` (e.g. fewer epochs for a test).
    """
    run = run if isinstance(run, Run) else Run.open(run)
    recipe = {**RECIPE, **(recipe or {})}
    unknown = set(recipe) - set(RECIPE)
    if unknown:
        raise ValueError(f"unknown probe recipe keys {sorted(unknown)}; valid: {sorted(RECIPE)}")
    path = run.path / f"probe-{dataset}"
    if (path / "summary.json").is_file():
        done = json.loads((path / "summary.json").read_text())
        if done.get("recipe") == recipe and done.get("seed") == seed:
            return {**done, "path": str(path)}
    device = devices.resolve(device)
    train_set, test_set = data.load(dataset, "train", root), data.load(dataset, "test", root)
    if train_set.in_channels != run.summary["in_channels"]:
        raise ValueError(f"{dataset} has {train_set.in_channels} channels but the student was "
                         f"trained on {run.summary['in_channels']}")
    backbone = run.model().to(device)
    image_size = run.summary["image_size"]
    train_features = pooled_features(backbone, train_set, image_size, device)
    test_features = pooled_features(backbone, test_set, image_size, device)
    train_labels, test_labels = train_set.labels.to(device), test_set.labels.to(device)

    torch.manual_seed(seed)
    head = nn.Linear(train_features.shape[1], train_set.num_classes).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe["milestones"],
                                                    recipe["gamma"])
    generator = torch.Generator().manual_seed(seed)
    path.mkdir(exist_ok=True)
    rows = []
    for epoch in range(recipe["epochs"]):
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        for batch in order.split(recipe["batch_size"]):
            loss = F.cross_entropy(head(train_features[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        with torch.no_grad():
            accuracy = 100 * (head(test_features).argmax(1) == test_labels).float().mean().item()
        rows.append({"epoch": epoch + 1, "test_acc": accuracy})
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    atomic_save({"model": head.state_dict()}, path / "head.pt")
    summary = {"dataset": dataset, "best_acc": max(row["test_acc"] for row in rows),
               "last_acc": rows[-1]["test_acc"], "epochs": recipe["epochs"],
               "feature_dim": train_features.shape[1], "run": str(run.path), "recipe": recipe,
               "seed": seed}
    (path / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["path"] = str(path)
    return summary


def probed(run: Run, dataset: str) -> dict | None:
    """The summary of ``run``'s linear probe on ``dataset`` (``best_acc``, ``last_acc``, ...),
    or None if it was not probed."""
    path = run.path / f"probe-{dataset}" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
