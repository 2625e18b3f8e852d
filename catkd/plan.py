"""How long the runs that are missing will take on this machine, measured before they train.

``estimate(configs)`` finds which of the runs (and the teachers they train first) have no
finished run folder, times a few training steps of each distinct method and pair of models on
this machine (``catkd.bench.step_ms``, on random images of the dataset's shape, with the
threads the run will have), and multiplies by each run's steps. An epoch's evaluation is counted
as a quarter of the student's cross-entropy step per test image: a forward pass, with its
BatchNorms folded (``catkd.train.evaluate``), where the step has a forward and a backward (about
two forwards); a resnet8 on the AVX2 path took 1.08 ms per image in a step, 0.27 in evaluation.
With ``jobs`` worker processes the runs are spread over them as ``catkd.sweep.fit_all`` spreads
them (teachers first, each student once its teacher is finished). A chapter or a sweep prints
the plan before it trains anything, so that a reader knows whether to wait or to come back
later. Students that train in lockstep (``catkd.train.fit_lockstep``) share their teacher's
forward: their group is counted as their runs less all but one teacher forward per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from catkd import bench, config as configs, data
from catkd.runs import SUMMARY
from catkd import device as devices


@dataclass
class Plan:
    """The runs asked for, the run folders still to train (teachers first) and the estimate."""

    runs: int
    missing: list[Path]
    seconds: float | None  # None: not estimated (ImageNet runs read their images from disk)
    device: str
    jobs: int = 1

    def __str__(self) -> str:
        if not self.missing:
            return f"all {self.runs} runs are finished: nothing to train"
        to_train = f"{len(self.missing)} runs to train (of {self.runs} asked for, teachers included)"
        if self.seconds is None:
            return f"{to_train}: no time estimate for runs that read images from disk"
        workers = f" in {self.jobs} worker processes" if self.jobs > 1 else ""
        return (f"{to_train}: about {_duration(self.seconds)} on {self.device}{workers}, from a "
                f"few steps of each model measured here")


def estimate(run_configs: Iterable[dict], jobs: int = 1, calibration_steps: int = 2) -> Plan:
    """The plan for resolved configs ``run_configs`` (``catkd.config.resolve``), trained by
    ``jobs`` worker processes as ``catkd.sweep.fit_all`` does: the missing teachers first, then
    the students (with several workers, those that can in lockstep groups, the largest group
    first), each run or group going to the first worker that is free once its teacher is."""
    asked: dict[Path, dict] = {}
    teachers: set[Path] = set()
    for config in run_configs:
        if config["teacher"]["model"] and not config["teacher"]["checkpoint"]:
            teacher = configs.teacher_config(config)
            asked.setdefault(_folder(teacher), teacher)
            teachers.add(_folder(teacher))
        asked.setdefault(_folder(config), config)
    missing = {path: config for path, config in asked.items()
               if not (path / SUMMARY).is_file()}
    if any(config["data"]["dataset"] == "imagenet" for config in missing.values()):
        return Plan(len(asked), list(missing), None, "", jobs)
    calibration = _Calibration(calibration_steps)
    students = [config for path, config in missing.items() if path not in teachers]
    groups = (sorted(configs.lockstep_groups(students, jobs), key=len, reverse=True)
              if jobs > 1 else [[student] for student in students])
    missing_teachers = [path for path in missing if path in teachers]
    work = ([_Work(calibration.run_seconds(missing[path]), path, None)
             for path in missing_teachers]
            + [_Work(calibration.group_seconds(group), None, _waits_for(group[0], missing))
               for group in groups])
    return Plan(len(asked), missing_teachers + [path for path in missing if path not in teachers],
                _span(work, jobs), calibration.device_name, jobs)


@dataclass
class _Work:
    """A teacher's run or a group of students: its seconds, the teacher folder it makes (if a
    teacher) and the missing teacher it waits for (if any)."""

    seconds: float
    makes: Path | None
    waits_for: Path | None


def _waits_for(config: dict, missing: dict[Path, dict]) -> Path | None:
    if not config["teacher"]["model"] or config["teacher"]["checkpoint"]:
        return None
    teacher = _folder(configs.teacher_config(config))
    return teacher if teacher in missing else None


def _span(work: list[_Work], jobs: int) -> float:
    """The time ``jobs`` workers take for ``work`` as ``catkd.sweep`` hands it out: a worker
    that is free takes the first item whose teacher is finished (teachers come first and wait
    for nothing), or waits for the next teacher to finish."""
    free = [0.0] * jobs
    finished_at: dict[Path, float] = {}
    pending = list(work)
    while pending:
        worker = free.index(min(free))
        ready = [item for item in pending if item.waits_for is None
                 or finished_at.get(item.waits_for, math.inf) <= free[worker]]
        if not ready:  # teachers are handed out first: those waited for have their time
            free[worker] = min(finished_at[item.waits_for] for item in pending)
            continue
        item = ready[0]
        pending.remove(item)
        free[worker] += item.seconds
        if item.makes is not None:
            finished_at[item.makes] = free[worker]
    return max(free)


class _Calibration:
    """Seconds per training step of each distinct method, models, batch, data shape, device and
    thread count, measured once, with the settings of the first run of the method (a method's
    settings change what it computes more than what a step costs). The median of three short
    rounds: one round slowed by another process once made a method's estimate twice its peers'."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.step_seconds: dict[tuple, float] = {}
        self.sizes: dict[str, tuple[int, int, dict]] = {}
        self.device_name = "this machine"

    def run_seconds(self, config: dict) -> float:
        """The training and evaluation time left to the run of ``config``."""
        train_images, test_images, shape = self._sizes(config)
        batch_size = shape["batch_size"]
        epoch = (train_images // batch_size * self._step(config, config["method"],
                                                         config["loss"], shape)
                 + math.ceil(test_images / batch_size) * self._step(config, "ce", {},
                                                                    shape) / 4)
        return (config["optim"]["epochs"] - _epochs_done(_folder(config))) * epoch

    def group_seconds(self, group: list[dict]) -> float:
        """The time of runs trained in lockstep: theirs, less the teacher forwards they share
        (all but one per batch). A teacher forward counts as the least, over the group, of a
        run's step less its student's cross-entropy step."""
        seconds = sum(self.run_seconds(config) for config in group)
        if len(group) == 1:
            return seconds
        train_images, _, shape = self._sizes(group[0])
        teacher_forward = max(0.0, min(
            self._step(config, config["method"], config["loss"], shape)
            - self._step(config, "ce", {}, shape) for config in group))
        steps = (train_images // shape["batch_size"]
                 * min(config["optim"]["epochs"] - _epochs_done(_folder(config))
                       for config in group))
        return seconds - (len(group) - 1) * teacher_forward * steps

    def _sizes(self, config: dict) -> tuple[int, int, dict]:
        """(training images, test images, the shape of a batch) of ``config``'s data, read once
        for each distinct data section."""
        key = configs.dump(config["data"])
        if key not in self.sizes:
            train_set, test_set = data.datasets(config)
            self.sizes[key] = (len(train_set), len(test_set), dict(
                num_classes=test_set.num_classes, in_channels=test_set.in_channels,
                image_size=test_set.image_size, batch_size=config["data"]["batch_size"]))
        return self.sizes[key]

    def _step(self, config: dict, method: str, loss: dict, shape: dict) -> float:
        teacher = config["teacher"]["model"] if method != "ce" else None
        device = devices.resolve(config["runtime"]["device"])
        threads = config["runtime"]["threads"]
        key = (method, config["student"], teacher, *shape.values(), str(device), threads)
        if key not in self.step_seconds:
            with devices.threads(threads):  # the run's own thread count
                milliseconds = bench.step_ms([method], config["student"], teacher, device,
                                             steps=self.steps, warmup=1, rounds=3,
                                             settings={method: loss}, **shape)
            self.step_seconds[key] = milliseconds[method] / 1000
            self.device_name = devices.name(device)
        return self.step_seconds[key]


def _folder(config: dict) -> Path:
    return Path(config["out"]) / configs.run_name(config)


def _epochs_done(path: Path) -> int:
    """Epochs an interrupted run has behind it (its metrics lines), 0 for a new one."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

