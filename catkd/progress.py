"""Progress of a training run, where its reader looks.

On a terminal (or in a log) a run prints one line per epoch, and a tqdm bar runs through each
epoch's steps when the output is a terminal. In a notebook kernel (JupyterLab, or papermill
executing a notebook) a run has one status line that is replaced in place every few seconds:
the run, its epoch and step, the last epoch's loss and accuracy, and the time left. A reader
sees a slow run move, and the executed notebook keeps one line per run.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

from tqdm import tqdm

UPDATE_SECONDS = 2.0  # how often a notebook's status line is replaced within an epoch


def bar(iterable: Iterable, desc: str) -> Iterable:
    """A tqdm bar over ``iterable`` on a terminal; elsewhere (logs, notebooks) none."""
    return tqdm(iterable, disable=None, leave=False, dynamic_ncols=True, desc=desc)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (ipykernel), where output goes to a notebook."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class RunProgress:
    """The progress of one run: ``steps`` wraps each epoch's batches, ``epoch_done`` and
    ``say`` report; nothing at all when ``enabled`` is false (a quiet run, a rank other than
    0). ``title`` (e.g. "run 3 of 12") leads each line."""

    def __init__(self, name: str, epochs: int, enabled: bool = True,
                 title: str | None = None) -> None:
        self.name, self.epochs, self.enabled, self.title = name, epochs, enabled, title
        self.notebook = enabled and in_notebook()
        self._display = None
        self._last_epoch = ""
        self._started = time.perf_counter()
        self._first_epoch: int | None = None

    def say(self, message: str) -> None:
        """A message: printed as a line on a terminal, the status line in a notebook."""
        if not self.enabled:
            return
        if self.notebook:
            self._replace(message)
        else:
            print(f"{self.title}: {message}" if self.title else message, flush=True)

    def steps(self, batches: Iterable, epoch: int) -> Iterator:
        """``batches`` of 0-based ``epoch``, reporting progress through them."""
        if self._first_epoch is None:
            self._first_epoch, self._started = epoch, time.perf_counter()
        if not self.notebook:
            yield from bar(batches, f"epoch {epoch + 1}/{self.epochs}") if self.enabled \
                else batches
            return
        total = len(batches) if hasattr(batches, "__len__") else None
        shown = time.perf_counter()
        for number, batch in enumerate(batches, 1):
            yield batch
            if time.perf_counter() - shown >= UPDATE_SECONDS:
                shown = time.perf_counter()
                fraction = number / total if total else 0.0
                self._show(epoch, f"step {number}/{total or '?'}", epoch + fraction)

    def epoch_done(self, epoch: int, summary: str) -> None:
        """After 0-based ``epoch``: its one-line ``summary`` (loss, accuracy, seconds)."""
        if not self.enabled:
            return
        self._last_epoch = summary
        if self.notebook:
            self._show(epoch, "done", epoch + 1)
        else:
            print(f"epoch {epoch + 1}/{self.epochs}  {summary}", flush=True)

    def _show(self, epoch: int, where: str, epochs_done: float) -> None:
        elapsed = time.perf_counter() - self._started
        done = epochs_done - (self._first_epoch or 0)
        left = elapsed / done * (self.epochs - epochs_done) if done > 0 else None
        self._replace(f"{self.name}: epoch {epoch + 1}/{self.epochs} {where}"
                      f"{'  ' + self._last_epoch if self._last_epoch else ''}"
                      f"  {minutes(elapsed)} elapsed"
                      f"{', about ' + minutes(left) + ' left' if left is not None else ''}")

    def _replace(self, line: str) -> None:
        """Show ``line`` as this run's one line in the notebook, in place of the last."""
        from IPython.display import display  # a notebook kernel has IPython

        content = {"text/plain": f"{self.title}: {line}" if self.title else line}
        if self._display is None:
            self._display = display(content, raw=True, display_id=True)
        else:
            self._display.update(content, raw=True)


def minutes(seconds: float) -> str:
    """``seconds`` for a reader: "42 s" below a minute and a half, else "3.5 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
