"""The run folder: what ``catkd.train.fit`` writes, and how everything else reads it.

    runs/<name>/config.yaml      the resolved config
    runs/<name>/environment.json versions, device, world size
    runs/<name>/metrics.jsonl    one line per epoch: lr, each loss term, train/test accuracy
    runs/<name>/last.pt          the full resume state, written atomically every epoch
    runs/<name>/best.pt          {"model": state_dict} of the best epoch
    runs/<name>/summary.json     best_acc, last_acc, epochs, seconds, ... (when finished)

A folder is identified by its config (``finished_run`` refuses one made by another config), a
run is finished when its summary exists, and ``Run`` reads a finished one. Nothing here trains:
reports, probes and sweeps read runs through this module without importing the training loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from catkd import config as configs, models

CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY = "summary.json"
# The accuracies a finished run's summary holds, finite numbers (what a report reads).
SUMMARY_ACCURACIES = ("best_acc", "last_acc")


def build_student(config: dict, shape: tuple[int, int, int]) -> nn.Module:
    """The untrained student of ``config`` for ``shape`` = (classes, input channels, image
    side), the data's (``models.create``'s arguments)."""
    return models.create(config["student"], *shape)


@dataclass
class Run:
    """A finished run: its folder, resolved config and summary."""

    path: Path
    config: dict
    summary: dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        path = Path(path)
        if not (path / SUMMARY).is_file():
            raise FileNotFoundError(f"{path} holds no finished run (no {SUMMARY})")
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path / SUMMARY} is not JSON ({error})") from error
        for key in SUMMARY_ACCURACIES:
            value = summary.get(key) if isinstance(summary, dict) else None
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{path / SUMMARY} has {key} {value!r}, not a finite number")
        return cls(path, configs.load_file(path / CONFIG), summary)

    def metrics(self) -> list[dict]:
        """The per-epoch metrics, one dict per epoch."""
        return read_metrics(self.path / METRICS)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(classes, input channels, image side) of the data it trained on."""
        return self.summary["num_classes"], self.summary["in_channels"], self.summary["image_size"]

    def model(self, which: str = "last") -> nn.Module:
        """The trained student ("last" or "best" epoch), on the CPU, in eval mode: built for
        the data it trained on, as it was trained."""
        student = build_student(self.config, self.shape)
        checkpoint = self.path / (LAST if which == "last" else BEST)
        return models.load_checkpoint(student, checkpoint).eval()


def finished_run(path: Path, config: dict) -> Run | None:
    """The finished run of ``config`` in folder ``path``, or None if it has not finished (or
    not started). A folder made by another config, or one whose files cannot be read, is a
    ValueError: it is never silently used or overwritten."""
    if not (path / CONFIG).is_file():
        return None
    try:
        existing = configs.load_file(path / CONFIG)
        same = configs.identity(configs.resolve(existing)) == configs.identity(config)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is corrupt ({path / CONFIG}: {error}); move it away "
                         f"to train this run again") from error
    if not same:
        raise ValueError(f"{path} holds a run of a different config; choose another name or "
                         f"out folder (its config: {path / CONFIG})")
    if not (path / SUMMARY).is_file():
        return None
    try:
        return Run.open(path)
    except ValueError as error:
        raise ValueError(f"{path} is corrupt ({error}); move it away to train this run "
                         f"again") from error


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file, one dict per epoch; none if it does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


@contextlib.contextmanager
def claim(path: Path, lock: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on run folder ``path`` (a file beside it) for the block; nothing
    if not ``lock``. ``log`` says so when another process holds it.

    A second process that reaches the same run waits here, then finds it finished (or resumes
    it if the first one died: the operating system releases the lock of a killed process).
    """
    if not lock:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path.parent / f".{path.name}.lock", "a")  # "a": never truncated
    except OSError as error:
        raise OSError(f"cannot write the run folder {path} ({error.strerror}): set out= to a "
                      f"folder you can write to") from error
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for the process that is training {path}")
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield
