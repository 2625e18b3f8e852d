"""The papermill commands that the README, the book's intro and the chapters print, as written.

A profile is a documented pair: ``notebooks/profiles/<profile>.yaml`` (the parameters every
notebook shares) and, where there is one, ``notebooks/profiles/<profile>/<notebook>.yaml`` (the
notebook's own). Every command shown to a reader names existing files, gives both files of the
pair, and sets only parameters of its notebook. Then every chapter is executed as a reader runs
it with another teacher, ``-f <profile>.yaml [-f <profile>/<chapter>.yaml] -p teacher NAME``,
at the smoke profile (the paper and quick profiles need a GPU or the better part of an hour),
and must pass: its claims hold or are skipped with a stated reason. The teachers are one of the
zoo and one from outside it. The zoo's is resnet14: in the smoke recipe (10 epochs of 1,797 8x8
digits) resnet56 reached only 37.9% (resnet14 93.0%), and the chapters' claims about students
rightly fail under a teacher that weak. The outside one is torchvision's ShuffleNetV2 x0.5, its
downsampling reduced to a total stride of 4 (2x2 CAMs on digits), in chapters 1-4 and 7 (5-6
pass with it too; chapter 7 takes its gradient maps where its global pooling reads, conv5);
resnet14 serves chapters 5-6 (the others pass with it too). The ShuffleNet smoke
teacher trained in 17 s (83.0%); torchvision.resnet18's took 136 s (97.5%), and chapter 6's
(one epoch of 10,000 32x32 images) would take about 15 minutes at 5.8 s a step on one thread.
Where a method cannot use that teacher (the feature-based ones need the stages a zoo model
declares), the chapter leaves its runs and claims out and says why.
"""

import re
import shlex
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
PROFILE_DIR = Path("notebooks") / "profiles"
COMMAND = re.compile(r"papermill\s+notebooks/[^`\n]*")


def _texts() -> dict[str, str]:
    """{where: text} of the README, the intro and each chapter's Markdown cells."""
    texts = {name: (ROOT / name).read_text() for name in ("README.md", "book/intro.md")}
    for notebook in NOTEBOOKS:
        cells = nbformat.read(notebook, as_version=4).cells
        texts[notebook.name] = "\n".join(cell.source for cell in cells
                                         if cell.cell_type == "markdown")
    return texts


def _commands() -> list[tuple[str, list[str]]]:
    """(where, the command's words) of every literal papermill command (line continuations
    joined; a shell loop's templated command, with $variables, is left out)."""
    found = []
    for where, text in _texts().items():
        for match in COMMAND.finditer(text.replace("\\\n", " ")):
            if "$" not in match.group(0):
                found.append((where, shlex.split(match.group(0))))
    return found


COMMANDS = _commands()


def test_the_texts_show_papermill_commands():
    assert {where for where, _ in COMMANDS} >= {"README.md", "book/intro.md",
                                                 "01_structure_revisit.ipynb"}


@pytest.mark.parametrize("where, words", COMMANDS,
                         ids=[f"{where}:{' '.join(words[1:2])}" for where, words in COMMANDS])
def test_a_shown_command_names_files_that_exist_the_whole_profile_and_real_parameters(where,
                                                                                      words):
    notebook = Path(words[1])
    assert (ROOT / notebook).is_file(), f"{where}: no notebook {notebook}"
    files = [Path(words[i + 1]) for i, word in enumerate(words) if word == "-f"]
    for path in files:
        assert (ROOT / path).is_file(), f"{where}: {' '.join(words)} names no file {path}"
        if path.parent == PROFILE_DIR:  # <profile>.yaml: its notebook's own file must follow
            own = PROFILE_DIR / path.stem / f"{notebook.stem}.yaml"
            assert not (ROOT / own).is_file() or own in files, \
                f"{where}: {' '.join(words)} leaves out {own}, the other half of the profile"
    parameters = papermill.inspect_notebook(str(ROOT / notebook))
    given = [words[i + 1] for i, word in enumerate(words) if word == "-p"]
    assert set(given) <= set(parameters), \
        f"{where}: {' '.join(words)} sets {set(given) - set(parameters)}, not parameters"


# Each chapter once, chapters 1-4 and 7 with the torchvision teacher and 5-6 with resnet14:
# every chapter with both took 12 minutes here (all passed), beyond what make test can spend.
TEACHER_CHAPTERS = [
    ("resnet14" if notebook.stem[:2] in ("05", "06") else "torchvision.shufflenet_v2_x0_5",
     notebook) for notebook in NOTEBOOKS]


@pytest.mark.slow  # trains a smoke teacher and the chapter's runs: one to four minutes each
@pytest.mark.parametrize("teacher, notebook", TEACHER_CHAPTERS, ids=[
    f"{teacher}-{notebook.stem}" for teacher, notebook in TEACHER_CHAPTERS])
def test_every_chapter_runs_with_another_teacher_from_one_parameter(teacher, notebook, tmp_path):
    """-f smoke.yaml [-f smoke/<chapter>.yaml] -p teacher NAME: the chapter passes, and every
    run it trained that distils learnt from that teacher."""
    parameters = yaml.safe_load((ROOT / PROFILE_DIR / "smoke.yaml").read_text())
    own = ROOT / PROFILE_DIR / "smoke" / f"{notebook.stem}.yaml"
    if own.is_file():
        parameters.update(yaml.safe_load(own.read_text()))
    parameters.update(teacher=teacher, out=str(tmp_path / "runs"))
    papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name),
                               parameters=parameters, cwd=str(ROOT), progress_bar=False)
    teachers = {yaml.safe_load(path.read_text())["teacher"]["model"]
                for path in (tmp_path / "runs").glob("*/config.yaml")}
    assert teachers - {None} == {teacher}, f"{notebook.name}'s runs had teachers {teachers}"
