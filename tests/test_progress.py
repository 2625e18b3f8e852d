"""Progress where the reader looks: lines on a terminal, one live status line per run in a
notebook kernel, nothing when quiet; the command line prints a run's result once."""

import nbformat
from nbclient import NotebookClient

from catkd import progress, train
from conftest import tiny


def test_a_terminal_gets_a_line_per_epoch_and_the_result_once(tmp_path, capsys):
    from catkd.__main__ import main

    overrides = tiny(tmp_path, "method=kd", "teacher.model=resnet8", "teacher.epochs=1")
    assert main(["train", *overrides]) == 0
    printed = capsys.readouterr().out.splitlines()
    teacher_line = next(line for line in printed if line.startswith("training the teacher"))
    assert "training the teacher resnet8 first: run folder" in teacher_line
    student_epochs = [line for line in printed if line.startswith("epoch ") and "/2 " in line]
    assert len(student_epochs) == 2 and "test" in student_epochs[0]
    results = [line for line in printed if line.startswith("best ") and "kd_resnet8" in line]
    assert len(results) == 1  # once, not twice
    # A finished run prints its result too, and no teacher line.
    assert main(["train", *overrides]) == 0
    again = capsys.readouterr().out.splitlines()
    assert len(again) == 1 and again[0] == results[0]


def test_quiet_prints_nothing(tmp_path, capsys):
    train.fit(None, tiny(tmp_path, "optim.epochs=1"), quiet=True)
    assert capsys.readouterr().out == ""


def test_a_notebook_run_replaces_one_status_line(tmp_path, monkeypatch):
    """In a kernel: one display, then updates (steps with the time left, epochs, the result)."""
    shown = []

    class Handle:
        def update(self, content, raw):
            shown.append(content["text/plain"])

    def display(content, raw, display_id):
        shown.append(content["text/plain"])
        return Handle()

    import IPython.display

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress, "UPDATE_SECONDS", 0.0)
    monkeypatch.setattr(IPython.display, "display", display)
    run = train.fit(None, tiny(tmp_path), title="run 1 of 1")
    assert all(line.startswith("run 1 of 1: ") for line in shown)
    steps = [line for line in shown if " step " in line]
    assert steps and "epoch 1/2 step 1/44" in steps[0] and "left" in steps[1]
    assert any("epoch 2/2 done  loss" in line and "test" in line for line in shown)
    assert shown[-1] == (f"run 1 of 1: best {run.summary['best_acc']:.2f}% "
                         f"(epoch {run.summary['best_epoch']}), "
                         f"last {run.summary['last_acc']:.2f}%: {run.path}")


def test_an_executed_notebook_keeps_one_line_per_run(tmp_path):
    """A real kernel (as papermill and nbval run one): a run's cell ends with one output, and a
    student whose teacher was trained before shows its own line only."""
    student = tiny(tmp_path, "optim.epochs=1", "method=kd", "teacher.model=resnet14",
                   "teacher.epochs=1")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"from catkd import train\nrun = train.fit(None, {overrides!r})")
        for overrides in (tiny(tmp_path, "optim.epochs=1"), student, [*student, "seed=1"])])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    plain, first_student, second_student = (cell.outputs for cell in notebook.cells)
    assert len(plain) == 1 and plain[0]["data"]["text/plain"].startswith("best "), plain
    # The first student trains its teacher: that says so, then the teacher's and its own line.
    assert first_student[0]["text"].startswith("training the teacher resnet14 first")
    assert len(first_student) == 3, first_student
    assert len(second_student) == 1 and "kd_resnet14-resnet8" in \
        second_student[0]["data"]["text/plain"], second_student


def test_not_in_a_notebook_here():
    assert not progress.in_notebook()
