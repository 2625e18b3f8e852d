"""The paper's tables from run folders: mean and std over seeds, beside the paper's numbers.

``cells(sweep)`` reads the run folder of every experiment of a sweep (``catkd.sweep``) and
groups them by the sweep's ``rows`` and ``columns``; ``markdown`` and ``write_csv`` lay them
out. Nothing trains here: a run that is missing, unfinished, or whose folder is foreign or
corrupt (a summary without finite accuracies included) is counted as such and left out of the
means.
"""

from __future__ import annotations

import collections
import csv
import os
import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from catkd import probe
from catkd.runs import Run

if TYPE_CHECKING:  # a report reads runs; it never trains, so it needs no sweep machinery
    from catkd.sweep import Experiment, Sweep

CSV_FIELDS = ("row", "column", "runs", "finished", "best_mean", "best_std", "last_mean",
              "last_std", "paper", "difference", "problems")


@dataclass
class Cell:
    """The runs of one (row, column) of a table: every seed of one setting."""

    row: str
    column: str
    runs: int = 0  # expected
    # Best-epoch and last-epoch top-1 (%) of the finished runs (or of their linear probes).
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # per run: "missing", "unfinished", ...
    paper: float | None = None

    @property
    def finished(self) -> int:
        return len(self.best)

    def mean_std(self, which: str = "best") -> tuple[float, float] | None:
        """Mean and (sample) std over the finished seeds; std 0 for one seed; None for none."""
        values = self.best if which == "best" else self.last
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def mean_best(self) -> float | None:
        """The mean best accuracy over the finished seeds (what the chapters compare); None
        for none."""
        measured = self.mean_std("best")
        return None if measured is None else measured[0]

    @property
    def difference(self) -> float | None:
        """Measured mean best accuracy minus the paper's number."""
        return None if self.mean_best is None or self.paper is None else \
            self.mean_best - self.paper


def title(sweep: Sweep) -> str:
    """The sweep's title and the datasets its runs trained on, read from their configs: a
    profile may train a sweep file's runs on other data (the smoke profile's digits)."""
    datasets = dict.fromkeys(experiment.config["data"]["dataset"]
                             for experiment in sweep.experiments)
    return f"{sweep.title}; trained on {', '.join(datasets)}"


def label(config: dict, key: str) -> str:
    """A run's label along one axis: ``"pair"`` (teacher-student, or the student alone) or the
    value of a dotted config key, e.g. ``"loss.beta"`` -> ``"15"``, ``"loss.normalize"`` ->
    ``"l2"`` or ``"none"``."""
    if key == "pair":
        teacher = config["teacher"]["model"]
        return f"{teacher}-{config['student']}" if teacher else config["student"]
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"report axis {key!r} is not a config key (e.g. method, loss.beta, "
                             f"data.fraction, pair)")
        value = value[part]
    return _text(value)


def _text(value) -> str:
    """A label's text: ``None`` (no normalisation, no classes subset, ...) reads "none"."""
    return "none" if value is None else str(value)


def _axis(experiment: Experiment, key: str) -> str:
    """The experiment's label along a report axis: its variant's name, or ``label``'s."""
    if key == "variant":
        if experiment.variant is None:
            raise ValueError("report axis 'variant' needs a sweep with variants")
        return experiment.variant
    return label(experiment.config, key)


def _columns_of(experiment: Experiment, sweep: Sweep, pair_columns: list[str]) -> list[str]:
    column = _axis(experiment, sweep.columns)
    if sweep.columns == "pair" and experiment.config["teacher"]["model"] is None:
        # A teacher-free run is the baseline of every pair that has its student.
        matching = [pair for pair in pair_columns if pair.split("-", 1)[1] == column]
        return matching or [column]
    return [column]


Measure = Callable[[Run], tuple[float, float] | None]


def final_accuracy(run: Run) -> tuple[float, float]:
    """The run's (best-epoch, last-epoch) top-1 test accuracy, %."""
    return run.summary["best_acc"], run.summary["last_acc"]


def top5_accuracy(run: Run) -> tuple[float, float]:
    """The run's top-5 test accuracy (%) at its best (top-1) epoch and at its last epoch."""
    best_epoch = run.summary["best_epoch"]
    at_best = next(row for row in run.metrics() if row["epoch"] == best_epoch)
    return at_best["test_top5"], run.summary["last_top5"]


def _probe_accuracy(run: Run, dataset: str) -> tuple[float, float] | None:
    summary = probe.probed(run, dataset)
    return None if summary is None else (summary["best_acc"], summary["last_acc"])


def cells(sweep: Sweep, measures: dict[str, Measure] | None = None) -> list[Cell]:
    """Every (row, column) cell of ``sweep``'s table, in the order the experiments first
    reach them.

    ``measures`` maps a column suffix to what is measured on each finished run, (best, last) or
    None when it was not measured; by default the run's own top-1 test accuracy, for a sweep
    with ``top5`` also its top-5 (columns "<pair> top-1", "<pair> top-5"), or for a sweep with
    ``probe`` the accuracy of its linear probe on each dataset (Table 9), columns "<pair>
    <dataset>".
    """
    if measures is None:
        if sweep.probe:
            measures = {dataset: partial(_probe_accuracy, dataset=dataset)
                        for dataset in sweep.probe}
        elif sweep.top5:
            measures = {"top-1": final_accuracy, "top-5": top5_accuracy}
        else:
            measures = {"": final_accuracy}
    pair_columns = list(dict.fromkeys(label(experiment.config, "pair")
                                      for experiment in sweep.experiments
                                      if experiment.config["teacher"]["model"]))
    table: dict[tuple[str, str], Cell] = {}
    for experiment in sweep.experiments:
        row = _axis(experiment, sweep.rows)
        run, problem = experiment.status()
        for column in _columns_of(experiment, sweep, pair_columns):
            for suffix, measure in measures.items():
                key = (row, f"{column} {suffix}".strip())
                cell = table.setdefault(key, Cell(*key))
                cell.runs += 1
                if run is None:
                    cell.problems.append(problem)
                    continue
                measured = measure(run)
                if measured is None:
                    cell.problems.append("not probed")
                    continue
                cell.best.append(measured[0])
                cell.last.append(measured[1])
    # The paper's numbers; one for a cell without runs (a method not configured here) gets a
    # cell of its own, so that the table shows it rather than dropping it.
    for row, numbers in sweep.paper.items():
        for column, number in numbers.items():
            # YAML reads keys such as 15 as numbers; labels are strings.
            key = (_text(row), _text(column))
            table.setdefault(key, Cell(*key, problems=["no run configured"])).paper = number
    return list(table.values())


def _summarise(problems: list[str]) -> str:
    """``["missing", "missing", "unfinished"]`` -> ``"2 missing; 1 unfinished"``; other problems
    (foreign or corrupt folders) are kept as they are."""
    counts = collections.Counter(problems)
    return "; ".join(f"{count} {problem}" if problem in ("missing", "unfinished", "not probed")
                     else problem
                     for problem, count in counts.items())


# What a table marks in its cells; anything else (a foreign or corrupt folder) is listed below it.
ROUTINE = ("missing", "unfinished", "not probed", "no run configured")


def _format(cell: Cell) -> str:
    best, last = cell.mean_std("best"), cell.mean_std("last")
    if best is None:
        paper = "" if cell.paper is None else f"[{cell.paper:.2f}] "
        return f"{paper}({_summarise(cell.problems)})"
    text = f"{best[0]:.2f} ± {best[1]:.2f} / {last[0]:.2f}"
    if cell.paper is not None:
        text += f" [{cell.paper:.2f}, {cell.difference:+.2f}]"
    if cell.finished < cell.runs:
        text += f" ({cell.finished}/{cell.runs} seeds)"
    return text


def markdown(sweep: Sweep, table: list[Cell] | None = None) -> str:
    """The sweep's table in Markdown under its ``title`` (the data included): each cell "best
    mean ± std / last mean", then "[paper, difference]" where the paper reports the setting, and
    the share of seeds finished when some are missing."""
    table = cells(sweep) if table is None else table
    rows = list(dict.fromkeys(cell.row for cell in table))
    columns = list(dict.fromkeys(cell.column for cell in table))
    by_key = {(cell.row, cell.column): cell for cell in table}
    lines = [f"**{title(sweep)}** (best ± std / last, %" + ("" if sweep.top5 else " top-1")
             + (", [paper, difference]" if sweep.paper else "") + ")", "",
             "| " + " | ".join([f"{sweep.rows} \\ {sweep.columns}", *columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        entries = [_format(by_key[row, column]) if (row, column) in by_key else ""
                   for column in columns]
        lines.append("| " + " | ".join([row, *entries]) + " |")
    problems = [f"- {cell.row} / {cell.column}: {problem}" for cell in table
                for problem in cell.problems if problem not in ROUTINE]
    if problems:
        lines += ["", "Skipped run folders:", *problems]
    return "\n".join(lines) + "\n"


def write_csv(table: list[Cell], path: str | os.PathLike) -> Path:
    """One line per cell (the fields of ``CSV_FIELDS``); empty where nothing finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS)
        writer.writeheader()
        for cell in table:
            best, last = cell.mean_std("best") or ("", ""), cell.mean_std("last") or ("", "")
            writer.writerow({
                "row": cell.row, "column": cell.column, "runs": cell.runs,
                "finished": cell.finished, "best_mean": best[0], "best_std": best[1],
                "last_mean": last[0], "last_std": last[1],
                "paper": "" if cell.paper is None else cell.paper,
                "difference": "" if cell.difference is None else cell.difference,
                "problems": _summarise(cell.problems)})
    return path


def report(sweep: Sweep, folder: str | os.PathLike) -> tuple[str, Path, Path]:
    """The Markdown table, and its CSV and Markdown files written to ``folder`` (named after
    the sweep file)."""
    table = cells(sweep)
    text = markdown(sweep, table)
    folder = Path(folder)
    markdown_path = folder / f"{sweep.path.stem}.md"
    try:
        csv_path = write_csv(table, folder / f"{sweep.path.stem}.csv")
        markdown_path.write_text(text)
    except OSError as error:
        raise OSError(f"cannot write the report into {folder} ({error.strerror}): choose a "
                      f"folder you can write to (report --out)") from error
    return text, csv_path, markdown_path
