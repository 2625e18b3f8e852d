"""Sweeps: the runs of one table or figure of the paper, expanded from a YAML file.

A sweep file names configs, seeds and an optional grid; every combination is one run::

    title: "Table 6: CIFAR-100, teacher and student of the same style"
    configs:                 # relative to this file; globs allowed (expanded in sorted order)
      - ../ce/resnet20.yaml
      - ../*/resnet56-resnet20.yaml
    seeds: [0, 1, 2, 3, 4]
    grid: {loss.beta: [1, 5, 10]}   # optional: every combination of these overrides
    variants:                       # optional: named runs, each with its own overrides (times
      student: []                   # the grid and the seeds); "variant" is then a report axis
      top 2 classes: ["loss.classes=[top, 2]"]
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
finished, resumes what was interrupted, and waits for a run another process is training. In
worker processes (``fit_all(..., jobs > 1)``) the students that see the same batches from the
same teacher train in lockstep (``catkd.train.fit_lockstep``): the same runs, one teacher forward
per batch for all of them. A
sweep with ``probe`` also trains each run's linear probes, cached in its folder. Reading a
sweep (its runs, their status, its table) loads no training code: ``catkd.train`` is imported
where a run trains.
``--index I`` on the command line runs the I-th run only (one job of a cluster job array).
"""

from __future__ import annotations

import glob
import itertools
import json
import multiprocessing
import os
import queue
import shlex
import time
import traceback
import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import torch

from catkd import config as configs
from catkd import device as devices
from catkd import probe
from catkd.progress import RunProgress, minutes
from catkd.runs import SUMMARY, Run, finished_run

STATUS_SECONDS = 30  # how often workers' progress is shown while no run finishes

SWEEP_KEYS = ("title", "configs", "seeds", "grid", "variants", "overrides", "rows", "columns",
              "paper", "probe", "top5")


@dataclass(frozen=True)
class Experiment:
    """One run of a sweep: a config file and the overrides that complete it."""

    config_file: Path
    overrides: tuple[str, ...]
    config: dict = field(compare=False, hash=False, repr=False)  # resolved
    variant: str | None = None  # its name among the sweep's variants, if the sweep has them

    @classmethod
    def of(cls, config_file: str | os.PathLike, overrides: Iterable[str] = (),
           variant: str | None = None) -> Experiment:
        """The run of ``config_file`` with ``overrides``; a bad key or value fails here."""
        overrides = tuple(overrides)
        return cls(Path(config_file), overrides, configs.resolve(config_file, overrides), variant)

    @property
    def path(self) -> Path:
        """The run folder ``catkd.train.fit`` uses for it."""
        return Path(self.config["out"]) / configs.run_name(self.config)

    def command(self) -> str:
        """The shell command that trains this run alone."""
        return shlex.join(["python", "-m", "catkd", "train", "--config", str(self.config_file),
                           *self.overrides])

    def fit(self, quiet: bool = False, title: str | None = None) -> Run:
        from catkd import train  # the training loop loads only where something trains

        return train.fit(self.config_file, self.overrides, quiet=quiet, title=title)

    def status(self) -> tuple[Run | None, str | None]:
        """(the finished run, None), or (None, what is wrong): "missing", "unfinished", or why
        its folder cannot be used (made by another config, corrupt)."""
        if not self.path.exists():
            return None, "missing"
        try:
            run = finished_run(self.path, self.config)
        except ValueError as error:
            return None, str(error)
        return (run, None) if run is not None else (None, "unfinished")

    def teacher_run(self) -> Run | None:
        """The finished run of the teacher this run trains first; None where it has no teacher,
        loads a published one (``teacher.checkpoint``) or its teacher has not finished. A
        teacher's folder made by another config is a ValueError, as in ``finished_run``."""
        folder = _teacher_folder(self.config)
        return None if folder is None else finished_run(folder, configs.teacher_config(self.config))


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


def _variants(path: Path, variants: dict | None) -> list[tuple[str | None, list[str]]]:
    """``{"r 2": ["loss.resolution=2"]}`` -> ``[("r 2", ["loss.resolution=2"])]``; no
    variants: one unnamed run per config."""
    if variants is None:
        return [(None, [])]
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path}: 'variants' maps names to lists of overrides, e.g. "
                         f"{{student: [], r 2: [loss.resolution=2]}}; got {variants!r}")
    for name, overrides in variants.items():
        if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
            raise ValueError(f"{path}: variant {name!r} needs a list of key=value overrides, "
                             f"got {overrides!r}")
    return [(str(name), overrides) for name, overrides in variants.items()]


def with_teacher(config_file: str | os.PathLike, overrides: Sequence[str],
                 teacher_overrides: Sequence[str]) -> tuple[str, ...]:
    """``overrides``, then ``teacher_overrides`` if the run of ``config_file`` with
    ``overrides`` distils from a teacher (a run without one is left alone)."""
    if teacher_overrides and configs.resolve(config_file, overrides)["teacher"]["model"]:
        return (*overrides, *teacher_overrides)
    return tuple(overrides)


def load(path: str | os.PathLike, overrides: Iterable[str] = (),
         seeds: Sequence[int] | None = None, teacher_overrides: Sequence[str] = ()) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (e.g. ``out=...``) apply to every run after
    the file's own and before the variants' and the grid's, ``teacher_overrides`` (e.g.
    ``teacher.model=resnet56``) after them to the runs that distil from a teacher only, and
    ``seeds`` replaces the file's seeds. Every run's config is resolved here, so a bad key fails
    before anything trains."""
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
        shared = with_teacher(config_file, (*spec.get("overrides", []), *overrides),
                              teacher_overrides)
        for variant, variant_overrides in _variants(path, spec.get("variants")):
            for combination in _grid(spec.get("grid") or {}):
                for seed in seeds:
                    # The variants and the grid are the sweep's subject: they win over the
                    # caller's overrides (a variant that names its own teacher keeps it).
                    run_overrides = (*shared, *variant_overrides, *combination, f"seed={seed}")
                    experiment = Experiment.of(config_file, run_overrides, variant)
                    # A run twice in one sweep is one run; under two variant names it is both.
                    if (experiment.path, variant) not in {(known.path, known.variant)
                                                          for known in experiments}:
                        experiments.append(experiment)
    if spec.get("probe") and spec.get("top5"):
        raise ValueError(f"{path}: a probe table shows top-1 only; drop 'top5' or 'probe'")
    return Sweep(path, spec.get("title", path.stem), experiments, spec.get("rows", "method"),
                 spec.get("columns", "pair"), spec.get("paper") or {}, spec.get("probe") or [],
                 bool(spec.get("top5", False)))


def without_refused(loaded: Sweep) -> Sweep:
    """``loaded`` less the runs whose method cannot use their teacher (e.g. AT pairs stages
    that a torchvision model does not declare), as the dry step before their training would
    refuse them, each method said once with its reason (nothing trains). For a teacher given
    to a whole sweep, where some of its methods cannot use it; a teacher that serves none of
    the sweep's runs is a ValueError."""
    from catkd import train  # the dry step's home: loaded only where a teacher is replaced

    distilling = [experiment for experiment in loaded.experiments
                  if experiment.config["teacher"]["model"]]
    reasons = train.refusals([experiment.config for experiment in distilling])
    refused = {experiment.path: reason for experiment, reason in zip(distilling, reasons)
               if reason}
    said = {f"method {experiment.config['method']} cannot use the teacher "
            f"{experiment.config['teacher']['model']}: {refused[experiment.path]}"
            for experiment in distilling if experiment.path in refused}
    if refused and len(refused) == len(distilling):
        raise ValueError(f"{loaded.path}: no run can use its teacher; {min(said)}")
    for line in sorted(said):
        print(f"left out of {loaded.path.name}, with its claims: {line}")
    return dataclasses.replace(loaded, experiments=[
        experiment for experiment in loaded.experiments if experiment.path not in refused])


def run(sweep: Sweep, index: int | None = None, quiet: bool = False,
        jobs: int = 1) -> list[Run]:
    """Train the sweep's runs (``fit_all``), then each run's linear probes if the sweep asks for
    them; or only run ``index`` (one job of a job array)."""
    if index is not None:
        if not 0 <= index < len(sweep.experiments):
            raise ValueError(f"--index {index} is out of range: {sweep.path} has "
                             f"{len(sweep.experiments)} runs (0..{len(sweep.experiments) - 1})")
        return [_probed(sweep, sweep.experiments[index].fit(quiet))]
    return [_probed(sweep, finished) for finished in fit_all(sweep.experiments, jobs, quiet)]


def run_all(sweeps: Sequence[Sweep], jobs: int = 1, quiet: bool = False) -> None:
    """Train the runs of several sweeps as one plan (a run that two sweeps share trains
    once), then the linear probes of those that ask for them."""
    every = list({experiment.path: experiment for loaded in sweeps
                  for experiment in loaded.experiments}.values())
    fit_all(every, jobs, quiet)
    for loaded in sweeps:
        if loaded.probe:
            run(loaded, quiet=quiet)


def fit_all(experiments: Sequence[Experiment], jobs: int = 1,
            quiet: bool = False) -> list[Run]:
    """The finished runs of ``experiments``, in their order: finished ones are read from their
    folders, missing ones trained. Unless ``quiet``, the plan (``catkd.plan``: the runs to
    train and the time they will take here) is printed first. A run that fails is reported and
    the others still run; the error is raised at the end.

    ``jobs`` > 1 trains the missing runs in that many worker processes, each with its share of
    the cores as threads (on 2 cores, two one-thread processes trained two quick runs 1.3x
    faster than one two-thread process: README, "Performance"); missing teachers train first,
    and each student as soon as its teacher is finished, those that can in lockstep groups
    (one teacher forward per batch for the group)."""
    if jobs < 1:
        raise ValueError(f"jobs must be a positive number of worker processes, got {jobs}")
    _check_teacher_checkpoints(experiments)
    from catkd import plan  # calibrates by timing training steps: loads the training loop

    if not quiet:
        print(plan.estimate((experiment.config for experiment in experiments), jobs), flush=True)
    failures = _train_in_workers(experiments, jobs, quiet) if jobs > 1 else {}
    runs = []
    for number, experiment in enumerate(experiments):
        if experiment.path in failures:
            continue
        try:
            runs.append(experiment.fit(quiet, f"run {number + 1} of {len(experiments)}"))
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            failures[experiment.path] = str(error)
            if not quiet:
                print(f"  failed: {error}", flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(experiments)} runs failed:\n"
                           + "\n".join(f"{path}: {error}" for path, error in failures.items()))
    return runs


def _check_teacher_checkpoints(experiments: Sequence[Experiment]) -> None:
    """One FileNotFoundError, before anything trains, naming the teacher checkpoints that the
    unfinished runs load and that are not files (else the runs before them would train first)."""
    absent = sorted({str(experiment.config["teacher"]["checkpoint"])
                     for experiment in experiments
                     if experiment.config["teacher"]["checkpoint"]
                     and not (experiment.path / SUMMARY).is_file()
                     and not Path(experiment.config["teacher"]["checkpoint"]).is_file()})
    if absent:
        raise FileNotFoundError(
            f"teacher checkpoint(s) not found: {', '.join(absent)}; teacher.checkpoint (a "
            f"chapter's teacher_checkpoint, sweep's --teacher-checkpoint) names a file with the "
            f"teacher's weights, or null to train the teacher on the run's data")


def default_jobs(device: str) -> int:
    """Worker processes that suit ``device`` ("auto", "cpu", "cuda", ...): one per core on a
    CPU (each trains with one thread), one on a GPU."""
    if devices.resolve(device).type == "cpu":
        return os.cpu_count() or 1
    return 1


def _teacher_folder(config: dict) -> Path | None:
    """The run folder of the teacher that ``config`` trains first, or None (none, or loaded)."""
    if not config["teacher"]["model"] or config["teacher"]["checkpoint"]:
        return None
    teacher = configs.teacher_config(config)
    return Path(teacher["out"]) / configs.run_name(teacher)


def _train_in_workers(experiments: Sequence[Experiment], jobs: int,
                      quiet: bool) -> dict[Path, str]:
    """Train the unfinished runs of ``experiments`` in ``jobs`` processes; returns {run folder:
    error} of the runs that failed (a failed teacher fails its students). A worker that is free
    takes the missing teachers first, then the runs whose teacher is finished (or that have
    none), the largest lockstep group first: students of one teacher that see the same batches
    train together, one teacher forward per batch for all of them
    (``catkd.config.lockstep_groups``). No worker waits for a teacher while another run could
    train."""
    students = list({experiment.path: experiment.config for experiment in experiments
                     if not (experiment.path / SUMMARY).is_file()}.items())
    training_teachers = {_teacher_folder(config): configs.teacher_config(config)
                         for _, config in students if _teacher_folder(config) is not None
                         and not (_teacher_folder(config) / SUMMARY).is_file()}
    waiting = ([[config] for config in training_teachers.values()]
               + sorted(configs.lockstep_groups([config for _, config in students], jobs),
                        key=len, reverse=True))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures: dict[Path, str] = {}
    total = sum(len(group) for group in waiting)
    done, training, started = 0, 0, time.perf_counter()
    outcomes: queue.SimpleQueue = queue.SimpleQueue()
    # The workers train quietly (their output would not reach a notebook): this process shows
    # a status line, replaced in place in a notebook, so that a long run is not taken for a hang.
    status = RunProgress("worker processes", 1, not quiet)
    # spawn, not fork: a forked copy of a process that has run torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        while waiting or training:
            # Students of a failed teacher are reported below, with the teacher's error.
            waiting = [group for group in waiting if _teacher_folder(group[0]) not in failures]
            ready = [group for group in waiting
                     if _teacher_folder(group[0]) not in training_teachers]
            for group in ready[:jobs - training]:
                waiting.remove(group)
                pool.apply_async(_fit_quietly, (group,), callback=outcomes.put,
                                 error_callback=partial(_lost, group, outcomes))
                training += 1
            try:
                finished = outcomes.get(timeout=STATUS_SECONDS)
            except queue.Empty:
                status.say(f"{done} of {total} runs finished, {training} training, "
                           f"{minutes(time.perf_counter() - started)} elapsed")
                continue
            training -= 1
            for path, error in finished:
                done += 1
                training_teachers.pop(path, None)
                if error is not None:
                    failures[path] = error
                if not quiet:
                    print(f"{'failed' if error else 'finished'}: {path} ({done} of {total}, "
                          f"{minutes(time.perf_counter() - started)} elapsed)"
                          f"{': ' + error if error else ''}", flush=True)
    for path, config in students:
        teacher_path = _teacher_folder(config)
        if teacher_path in failures:
            failures[path] = f"its teacher failed: {failures[teacher_path]}"
    return failures


def _lost(group: list[dict], outcomes: queue.SimpleQueue, error: BaseException) -> None:
    """Report each run of ``group`` failed with ``error``, which the pool raised instead of
    running it (e.g. a config it could not send to the worker)."""
    outcomes.put([(Path(config["out"]) / configs.run_name(config), f"{type(error).__name__}: "
                   f"{error}") for config in group])


def _fit_quietly(group: list[dict]) -> list[tuple[Path, str | None]]:
    """A worker's job: train the runs of ``group`` (one run, or runs in lockstep); for each,
    (run folder, None) once it is finished, or (run folder, the error) if it failed."""
    from catkd import train

    paths = [Path(config["out"]) / configs.run_name(config) for config in group]
    error = None
    try:
        if len(group) == 1:
            train.fit(group[0], quiet=True)
        else:
            train.fit_lockstep(group, quiet=True)
    except (ValueError, FileNotFoundError, RuntimeError) as raised:
        error = str(raised)
    except Exception as raised:  # noqa: BLE001 - a fault, not bad input: say where, go on
        # Raised here, it would end the pool and the other workers' runs with it.
        frame = traceback.extract_tb(raised.__traceback__)[-1]
        error = (f"{type(raised).__name__}: {raised} (at {Path(frame.filename).name}:"
                 f"{frame.lineno}, in {frame.name})")
    return [(path, None if (path / SUMMARY).is_file() else error or "unfinished")
            for path in paths]


def _probed(sweep: Sweep, run: Run) -> Run:
    """``run``, after its linear probes on the sweep's probe datasets (cached in the run folder
    like the run itself)."""
    for dataset in sweep.probe:
        probe.probe(run, dataset, device=run.config["runtime"]["device"])
    return run
