"""The notebooks under nbval, with the smoke profile (seconds each on a CPU).

Each numbered notebook is copied with the smoke parameters injected (papermill, prepare_only),
then run by ``pytest --nbval-lax`` in a subprocess: every cell must run without error, so
every assert cell (the notebook's stated claims) must hold at the smoke size. The profiles are
checked too: each is a shared file (the parameters every notebook has) plus, per notebook, a
file of its own values; they set only parameters the notebooks have, batch runs are never
interactive, and the files they name exist (no data or GPU needed for that).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from catkd import config

pytestmark = pytest.mark.slow  # executes notebooks: minutes

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
PROFILE_DIR = ROOT / "notebooks" / "profiles"
PROFILES = sorted(PROFILE_DIR.glob("*.yaml"))
# Every notebook declares these; a profile's <name>.yaml sets exactly them.
SHARED = {"profile", "overrides", "out", "device"}


def profile(name: str, notebook: Path) -> dict:
    """The parameters papermill gets for ``notebook`` under profile ``name``: the shared file,
    then the notebook's own file if there is one (as `make book` passes them: -f, -f)."""
    values = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
    own = PROFILE_DIR / name / f"{notebook.stem}.yaml"
    if own.is_file():
        values.update(yaml.safe_load(own.read_text()) or {})
    return values


def test_the_profiles_and_notebooks_exist():
    assert [path.stem for path in PROFILES] == ["paper", "quick", "smoke"]
    assert NOTEBOOKS, "no numbered notebook in notebooks/"
    stems = {notebook.stem for notebook in NOTEBOOKS}
    for path in PROFILE_DIR.glob("*/*.yaml"):
        assert path.stem in stems, f"{path} names no notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_profiles_set_only_parameters_of_the_notebook(notebook):
    parameters = papermill.inspect_notebook(str(notebook))
    assert parameters, f"{notebook.name} has no cell tagged 'parameters'"
    assert SHARED <= set(parameters), f"{notebook.name} lacks {SHARED - set(parameters)}"
    for path in PROFILES:
        assert set(yaml.safe_load(path.read_text())) == SHARED, path.name
        unknown = set(profile(path.stem, notebook)) - set(parameters)
        assert not unknown, f"{path.stem} sets {unknown}, not parameters of {notebook.name}"
        if "interactive" in parameters:
            assert profile(path.stem, notebook)["interactive"] is False, "batch runs are static"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_quick_profile_is_the_parameters_cell_default(notebook):
    parameters = papermill.inspect_notebook(str(notebook))
    for name, value in profile("quick", notebook).items():
        if name != "interactive":
            default = ast.literal_eval(parameters[name]["default"])
            assert default == value, f"{notebook.name}: {name} is {default!r}, quick {value!r}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda path: path.stem)
def test_profiles_name_themselves_and_their_overrides_resolve(path):
    values = yaml.safe_load(path.read_text())
    assert values["profile"] == path.stem
    resolved = config.resolve(ROOT / "configs/quick/catkd.yaml",
                              [f"out={values['out']}", f"runtime.device={values['device']}",
                               *values["overrides"]])
    assert resolved["out"] == values["out"]


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*/*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_files_that_profiles_name_exist(path):
    values = yaml.safe_load(path.read_text()) or {}
    named = [value for value in values.values() for value in
             (value if isinstance(value, list) else [value])
             if isinstance(value, str) and value.endswith(".yaml")]
    for file in named:
        assert (ROOT / file).is_file(), f"{path} names {file}, which does not exist"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_under_nbval_with_the_smoke_profile(notebook, tmp_path):
    copy = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(copy), parameters=profile("smoke", notebook),
                               prepare_only=True, progress_bar=False)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
         "-p", "no:cacheprovider", "-q", str(copy)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        # One thread: the tiny runs gain nothing from more, and a busy machine slows them a lot.
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_the_teacher_parameter_and_lists_given_as_text_reach_every_run_that_distils(tmp_path):
    """papermill -p teacher resnet32 -p student_overrides "[loss.resolution=2]" on chapter 2:
    its runs, listed before any trains, all distil from resnet32 (the producers too: they only
    shorten the teacher's training) with the overrides read from the text."""
    notebook = ROOT / "notebooks" / "02_cat_properties.ipynb"
    parameters = {**profile("smoke", notebook), "train_missing": False,
                  "out": str(tmp_path / "runs"), "teacher": "resnet32",
                  "student_overrides": "[loss.resolution=2]"}
    with pytest.raises(papermill.PapermillExecutionError) as stopped:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                                   parameters=parameters, cwd=str(ROOT), progress_bar=False)
    commands = [line for line in str(stopped.value).splitlines()
                if line.startswith("python -m catkd train --config configs/quick/cat.yaml")]
    assert len(commands) == 10
    assert all("teacher.model=resnet32" in command and "loss.resolution=2" in command
               for command in commands), commands
    assert not (tmp_path / "runs").exists()  # nothing trained


@pytest.mark.parametrize("stem,runs", [("01_structure_revisit", 1), ("02_cat_properties", 10)])
def test_without_train_missing_a_chapter_lists_the_commands_of_its_missing_runs(tmp_path, stem,
                                                                                 runs):
    """The paper profile makes chapters 1-2's runs as jobs: executed before they exist, a
    chapter stops at once and names every missing run's command, one per distinct run."""
    notebook = ROOT / "notebooks" / f"{stem}.ipynb"
    parameters = {**profile("smoke", notebook), "train_missing": False,
                  "out": str(tmp_path / "runs")}
    with pytest.raises(papermill.PapermillExecutionError) as stopped:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                                   parameters=parameters, cwd=str(ROOT), progress_bar=False)
    message = str(stopped.value)
    assert "of this chapter" in message and "missing" in message
    commands = [line for line in message.splitlines()
                if line.startswith("python -m catkd train --config configs/quick/cat.yaml")]
    assert len(commands) == len(set(commands)) == runs
    assert all(f"out={tmp_path / 'runs'}" in command for command in commands)
    assert not (tmp_path / "runs").exists()  # nothing trained
