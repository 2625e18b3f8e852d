"""What every chapter of the book does, written once: the notebooks' face on the library.

A chapter's first code cell after its parameters calls ``setup``, which returns a ``Chapter``:
the runs' shared overrides, the device, the worker processes and the assertion switch
``check``. Through it a chapter trains or reads its runs (``fit``), loads and shows a sweep's
table (``table``), compares the claims its text makes (``claim``) and ends with ``done``,
which says how many claims it compared. ``show_table`` displays a small table of values a
chapter computed itself.

This is the top layer: it may import sweep, report, figures and device; nothing in catkd
imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from catkd import device as devices
from catkd import report, sweep
from catkd.report import Cell
from catkd.runs import Run
from catkd.sweep import Experiment, Sweep

# The project's root: config paths and run folders are relative to it.
ROOT = Path(__file__).resolve().parent.parent

Cells = dict[tuple[str, str], Cell]
Plot = Callable[..., Figure]  # called as plot(cells, title=...), e.g. figures.table_bars


@dataclass
class Chapter:
    """One chapter's execution settings, and its count of the claims it compared."""

    profile: str
    device: str  # resolved: "cpu", "cuda", ...
    jobs: int  # worker processes that train missing runs
    check: bool  # assert the claims (off at the smoke size and with another teacher)
    overrides: list[str]  # for every run: out, runtime.device, then the profile's overrides
    teacher: str | None = None  # the chapter's teacher parameter (None: the configs' own)
    # For every run that distils: the teacher parameter's overrides (empty: the configs' own)
    teacher_overrides: list[str] = field(default_factory=list)
    train_missing: bool = True  # train missing runs; False: stop or report what exists
    seeds: list[int] | None = None  # replaces the sweep files' seeds
    claims: int = 0  # claims compared so far
    failed: list[str] = field(default_factory=list)  # claims that did not hold, check off
    found_runs: bool = False  # whether any finished run was read or trained

    def fit(self, experiments: Sequence[Experiment]) -> list[Run]:
        """The finished runs of ``experiments``, in their order. With ``train_missing`` the
        plan is printed and the missing runs train in ``jobs`` worker processes; without it a
        missing run stops the chapter with the command of each (one per run folder: two
        variants may name the same run), to be run as jobs."""
        missing = list({experiment.path: experiment for experiment in experiments
                        if experiment.status()[0] is None}.values())
        if missing and not self.train_missing:
            raise RuntimeError(f"missing: {len(missing)} run(s) of this chapter; train them, "
                               "then run the chapter again:\n"
                               + "\n".join(experiment.command() for experiment in missing))
        runs = sweep.fit_all(experiments, self.jobs)
        self.found_runs = self.found_runs or bool(runs)
        return runs

    def load(self, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Sweep:
        """The sweep file ``path`` with this chapter's overrides (then ``overrides``), seeds and
        teacher; with the chapter's teacher, less the runs it cannot serve (``usable``)."""
        return self.usable(sweep.load(path, [*self.overrides, *overrides], self.seeds,
                                      self.teacher_overrides))

    def usable(self, loaded: Sweep) -> Sweep:
        """``loaded`` less the runs whose method cannot use the chapter's teacher, their rows
        and claims left out of the chapter (``catkd.sweep.without_refused``). The configs' own
        teachers serve every run of the book, so without a teacher parameter nothing is."""
        return sweep.without_refused(loaded) if self.teacher_overrides else loaded

    def experiment(self, config_file: str | os.PathLike, overrides: Sequence[str] = ()) -> Experiment:
        """The run of ``config_file`` with this chapter's overrides (then ``overrides``), its
        teacher the chapter's if it distils."""
        return Experiment.of(config_file, sweep.with_teacher(
            config_file, [*self.overrides, *overrides], self.teacher_overrides))

    def table(self, path: str | os.PathLike, plot: Plot | None = None) -> tuple[Sweep, Cells]:
        """The sweep file ``path`` with this chapter's overrides and seeds, its missing runs
        trained if ``train_missing``, its table shown (Markdown, then ``plot`` of its cells
        where a run has finished); returns the sweep and its cells by (row, column)."""
        loaded = self.load(path)
        if self.train_missing:
            sweep.run(loaded, jobs=self.jobs)
        cells = report.cells(loaded)
        display(Markdown(report.markdown(loaded, cells)))
        finished = any(cell.finished for cell in cells)
        if plot is not None and finished:
            display(plot(cells, title=report.title(loaded)))
        self.found_runs = self.found_runs or finished
        return loaded, {(cell.row, cell.column): cell for cell in cells}

    def claim(self, holds: bool, message: str) -> bool:
        """Compare one claim of the chapter's text; ``message`` states it in words with the
        values measured. With ``check`` on, a claim that does not hold stops the chapter;
        with it off, it is reported here and listed by ``done``. Returns whether it held."""
        self.claims += 1
        if holds:
            print(f"holds: {message}")
        elif self.check:
            teacher = f" with teacher {self.teacher}" if self.teacher else ""
            raise AssertionError(f"claim does not hold at profile {self.profile}{teacher}: "
                                 f"{message}")
        else:
            print(f"does not hold ({self._not_asserted()}): {message}")
            self.failed.append(message)
        return holds

    def _not_asserted(self) -> str:
        """Why claims are compared and not asserted: the smoke profile's seconds of training,
        or another teacher, for which the thresholds of the text were not set."""
        if self.teacher and self.profile != "smoke":
            return (f"not asserted with teacher {self.teacher}: the text's thresholds are "
                    f"those of the chapter's own teachers")
        return f"not asserted at profile {self.profile}"

    def done(self) -> None:
        """Say how many claims the chapter compared. A chapter whose runs exist but that
        compared none fails (the cells its claims compare are missing, or misnamed); one
        without any finished run (e.g. the paper profile before its jobs ran) says so."""
        if not self.found_runs:
            print(f"No finished run yet at profile {self.profile}, so no claim was compared: "
                  "train this chapter's runs (e.g. as jobs), then run it again.")
            return
        if not self.claims:
            raise AssertionError(f"this chapter's runs exist at profile {self.profile}, but it "
                                 "compared none of its claims: the cells they compare are "
                                 "missing or named otherwise")
        verdict = "asserted" if self.check else self._not_asserted()
        held = self.claims - len(self.failed)
        print(f"{self.claims} claims compared ({verdict}): {held} held"
              + "".join(f"\n  did not hold: {message}" for message in self.failed))


def setup(profile: str, device: str, out: str, overrides: Sequence[str],
          jobs: int | None = None, check: bool | None = None, train_missing: bool = True,
          seeds: Sequence[int] | None = None, teacher: str | None = None,
          teacher_checkpoint: str | None = None) -> Chapter:
    """The first code cell of every chapter, from its parameters.

    Changes into the project root (config paths and run folders are relative to it, wherever
    the notebook runs); resolves ``device`` "auto"; turns TF32 off, so that float32 means
    float32 on a GPU too; ``jobs`` None: ``sweep.default_jobs`` for the device; ``check`` None:
    on for every profile but smoke, whose runs are seconds of training. ``teacher`` (a model
    name) replaces the teacher of every run that has one, trained on the chapter's data with
    the run's recipe unless ``teacher_checkpoint`` gives its weights; None: the configs' own.
    With another teacher the claims are compared and reported, not asserted (``check`` None):
    the thresholds in the text were set with the configs' teachers, and whether a claim holds
    under another one is what the reader wants to see, not a reason to stop the chapter.
    """
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"parameter jobs must be a positive number of worker processes, or "
                         f"None (one per CPU core, one on a GPU); got {jobs!r}")
    if teacher_checkpoint is not None and teacher is None:
        raise ValueError("teacher_checkpoint needs teacher, the name of the model it holds "
                         "(e.g. -p teacher resnet56 -p teacher_checkpoint PATH)")
    os.chdir(ROOT)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    resolved = str(devices.resolve(device))
    return Chapter(
        profile=profile, device=resolved,
        jobs=sweep.default_jobs(resolved) if jobs is None else jobs,
        check=profile != "smoke" and teacher is None if check is None else check,
        overrides=[f"out={out}", f"runtime.device={resolved}", *listed(overrides, "overrides")],
        train_missing=train_missing,
        seeds=None if seeds is None else listed(seeds, "seeds", int),
        teacher=teacher,
        teacher_overrides=[] if teacher is None else [
            f"teacher.model={teacher}",
            f"teacher.checkpoint={'null' if teacher_checkpoint is None else teacher_checkpoint}"])


def listed(value: Sequence[Any] | str, name: str, item_type: type = str) -> list:
    """A list parameter as papermill may pass it: a list, or text read as YAML, which is what
    ``papermill -p overrides "[teacher.model=resnet56, loss.resolution=2]"`` gives (one item
    without brackets is a list of one). Anything else is a ValueError naming the parameter."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else []
        except yaml.YAMLError as error:
            raise ValueError(f"parameter {name}: {value!r} is not a YAML list ({error})") from None
        if isinstance(value, item_type):
            value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, item_type) and not isinstance(item, bool) for item in value):
        raise ValueError(f"parameter {name} must be a list of {item_type.__name__} values, e.g. "
                         + ("[teacher.model=resnet56, loss.resolution=2]" if item_type is str
                            else "[0, 1, 2]") + f"; got {value!r}")
    return list(value)


def show_table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """Display a small table, rendered from Markdown: ``header`` and one sequence of values
    per row (each shown as ``str`` shows it), under ``title`` in bold if one is given."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    display(Markdown("\n".join(lines)))
