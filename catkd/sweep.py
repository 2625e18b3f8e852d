"""Sweeps: the runs of one table or figure of the paper, expanded from a YAML file.

A sweep file names configs, seeds and an optional grid; every combination is one run::

    title: "Table 6: CIFAR-100, teacher and student of the same style"
    configs:                 # relative to this file; globs allowed (expanded in sorted order)
      - ../ce/resnet20.yaml
      - ../*/resnet56-resnet20.yaml
    seeds: [0, 1, 2, 3, 4]
    grid: {loss.beta: [1, 5, 10]}   # optional: every combination of these overrides
    overrides: [optim.epochs=120]   # optional: for every run
    rows: method                    # the report's layout: a dotted config key, or "pair"
    columns: pair                   # ("teacher-student"; a run without teacher fills every
                                    #  column of its student, as the paper's "Acc" rows do)
    paper:                          # optional: the paper's numbers, paper[row][column]
      kd: {resnet56-resnet20: 70.66}
    probe: [stl10, tiny-imagenet]   # optional: the table is the linear probes (catkd.probe) of
                                    # the trained students on these datasets (Table 9); columns
                                    # become "<column> <dataset>"
    top5: true                      # optional: top-5 beside top-1 (Tables 7-8); columns become
                                    # "<column> top-1" and "<column> top-5"

Runs go through ``catkd.train.fit``, so each is cached by its config: ``run`` skips what is
finished, resumes what was interrupted, and waits for a run another process is training. A
sweep with ``probe`` also trains each run's linear probes, cached in its folder.
``--index I`` on the command line runs the I-th run only (one job of a cluster job array).
"""

from __future__ import annotations

import glob
import itertools
import json
import multiprocessing
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from catkd import config as configs
from catkd import plan, probe, train

SWEEP_KEYS = ("title", "configs", "seeds", "grid", "overrides", "rows", "columns", "paper",
              "probe", "top5")


@dataclass(frozen=True)
class Experiment:
    """One run of a sweep: a config file and the overrides that complete it."""

    config_file: Path
    overrides: tuple[str, ...]
    config: dict = field(compare=False, hash=False, repr=False)  # resolved

    @classmethod
    def of(cls, config_file: str | os.PathLike, overrides: Iterable[str] = ()) -> Experiment:
        """The run of ``config_file`` with ``overrides``; a bad key or value fails here."""
        overrides = tuple(overrides)
        return cls(Path(config_file), overrides, configs.resolve(config_file, overrides))

    @property
    def path(self) -> Path:
        """The run folder ``catkd.train.fit`` uses for it."""
        return Path(self.config["out"]) / configs.run_name(self.config)

    def command(self) -> str:
        """The shell command that trains this run alone."""
        return shlex.join(["python", "-m", "catkd", "train", "--config", str(self.config_file),
                           *self.overrides])

    def fit(self, quiet: bool = False, title: str | None = None) -> train.Run:
        return train.fit(self.config_file, self.overrides, quiet=quiet, title=title)


@dataclass
class Sweep:
    """The expanded sweep: its experiments in a fixed order, and the report's layout."""

    path: Path
    title: str
    experiments: list[Experiment]
    rows: str
    columns: str
    paper: dict
    probe: list[str]
    top5: bool = False


def _config_files(sweep_file: Path, patterns: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(sweep_file.parent / pattern)))
        if not matches:
            raise FileNotFoundError(f"{sweep_file}: no config file matches {pattern!r} "
                                    f"(patterns are relative to the sweep file)")
        files += [Path(os.path.relpath(match)) for match in matches]
    return files


def _grid(grid: dict) -> list[list[str]]:
    """``{"loss.beta": [1, 5]}`` -> ``[["loss.beta=1"], ["loss.beta=5"]]`` (every combination)."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid key {key!r} needs a non-empty list of values, got {values!r}")
    # JSON is YAML, so each value reads back as itself (null, 0.5, "l2", [1, 2]).
    choices = [[f"{key}={json.dumps(value)}" for value in values] for key, values in grid.items()]
    return [list(combination) for combination in itertools.product(*choices)]


def load(path: str | os.PathLike, overrides: Iterable[str] = (),
         seeds: Sequence[int] | None = None) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (e.g. ``out=...``) apply to every run after
    the file's own and before the grid's, and ``seeds`` replaces the file's seeds. Every run's config is resolved here,
    so a bad key fails before anything trains."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    spec = configs.read_mapping(path, "sweep file")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown sweep key(s) {', '.join(unknown)}; valid keys: "
                         f"{', '.join(SWEEP_KEYS)}")
    if not spec.get("configs"):
        raise ValueError(f"{path}: a sweep lists its config files under 'configs'")
    seeds = list(spec.get("seeds", [0]) if seeds is None else seeds)
    experiments: list[Experiment] = []
    for config_file in _config_files(path, spec["configs"]):
        for combination in _grid(spec.get("grid") or {}):
            for seed in seeds:
                # The grid is the sweep's subject: it wins over the caller's overrides.
                run_overrides = (*spec.get("overrides", []), *overrides, *combination,
                                 f"seed={seed}")
                experiment = Experiment.of(config_file, run_overrides)
                if experiment.path not in {known.path for known in experiments}:
                    experiments.append(experiment)
    if spec.get("probe") and spec.get("top5"):
        raise ValueError(f"{path}: a probe table shows top-1 only; drop 'top5' or 'probe'")
    return Sweep(path, spec.get("title", path.stem), experiments, spec.get("rows", "method"),
                 spec.get("columns", "pair"), spec.get("paper") or {}, spec.get("probe") or [],
                 bool(spec.get("top5", False)))


def run(sweep: Sweep, index: int | None = None, quiet: bool = False,
        jobs: int = 1) -> list[train.Run]:
    """Train the sweep's runs one after another (finished ones are returned from the cache), or
    only run ``index``. Unless ``quiet``, the plan (``catkd.plan``: the runs to train and the
    time they will take here) is printed first. A run that fails is reported and the others
    still run; the error is raised at the end.

    ``jobs`` > 1 trains the missing runs in that many worker processes, each with its share of
    the cores as threads (on 2 cores, two one-thread processes trained two quick runs 1.3x
    faster than one two-thread process: README, "Performance"); missing teachers train first,
    so that no worker waits for another's teacher."""
    if index is not None:
        if not 0 <= index < len(sweep.experiments):
            raise ValueError(f"--index {index} is out of range: {sweep.path} has "
                             f"{len(sweep.experiments)} runs (0..{len(sweep.experiments) - 1})")
        return [_fit_and_probe(sweep, sweep.experiments[index], quiet)]
    if jobs < 1:
        raise ValueError(f"jobs must be a positive number of worker processes, got {jobs}")
    if not quiet:
        print(plan.estimate(experiment.config for experiment in sweep.experiments), flush=True)
    failures = _train_in_workers(sweep, jobs, quiet) if jobs > 1 else {}
    runs = []
    for number, experiment in enumerate(sweep.experiments):
        if experiment.path in failures:
            continue
        try:
            runs.append(_fit_and_probe(sweep, experiment, quiet,
                                       f"run {number + 1} of {len(sweep.experiments)}"))
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            failures[experiment.path] = str(error)
            if not quiet:
                print(f"  failed: {error}", flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(sweep.experiments)} runs failed:\n"
                           + "\n".join(f"{path}: {error}" for path, error in failures.items()))
    return runs


def _teacher_folder(config: dict) -> Path | None:
    """The run folder of the teacher that ``config`` trains first, or None (none, or loaded)."""
    if not config["teacher"]["model"] or config["teacher"]["checkpoint"]:
        return None
    teacher = train.teacher_config(config)
    return Path(teacher["out"]) / configs.run_name(teacher)


def _train_in_workers(sweep: Sweep, jobs: int, quiet: bool) -> dict[Path, str]:
    """Train the sweep's unfinished runs in ``jobs`` processes, their missing teachers first;
    returns {run folder: error} of the runs that failed (a failed teacher fails its students)."""
    students = [experiment for experiment in sweep.experiments
                if not (experiment.path / train.SUMMARY).is_file()]
    teachers = {_teacher_folder(experiment.config): train.teacher_config(experiment.config)
                for experiment in students if _teacher_folder(experiment.config) is not None}
    stages = [[config for path, config in teachers.items()
               if not (path / train.SUMMARY).is_file()],
              [experiment.config for experiment in students]]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures: dict[Path, str] = {}
    # spawn, not fork: a forked copy of a process that has run torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        for stage in stages:
            stage = [config for config in stage if _teacher_folder(config) not in failures]
            for path, error in pool.imap_unordered(_fit_quietly, stage):
                if error is not None:
                    failures[path] = error
                if not quiet:
                    print(f"{'failed' if error else 'finished'}: {path}"
                          f"{': ' + error if error else ''}", flush=True)
    for experiment in students:
        teacher_path = _teacher_folder(experiment.config)
        if teacher_path in failures:
            failures[experiment.path] = f"its teacher failed: {failures[teacher_path]}"
    return failures


def _fit_quietly(config: dict) -> tuple[Path, str | None]:
    """A worker's job: (run folder, None) once the run of ``config`` is finished, or (run
    folder, the error) if it failed."""
    path = Path(config["out"]) / configs.run_name(config)
    try:
        train.fit(config, quiet=True)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        return path, str(error)
    return path, None


def _fit_and_probe(sweep: Sweep, experiment: Experiment, quiet: bool,
                   title: str | None = None) -> train.Run:
    """Train (or find) the run, then its linear probes if the sweep asks for them (cached in
    the run folder like the run itself)."""
    run = experiment.fit(quiet, title)
    for dataset in sweep.probe:
        probe.probe(run, dataset, device=run.config["runtime"]["device"])
    return run
