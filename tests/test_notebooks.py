"""The notebooks under nbval, with the smoke profile (seconds each on a CPU).

Each numbered notebook is copied with the smoke parameters injected (papermill, prepare_only),
then run by ``pytest --nbval-lax`` in a subprocess: every cell must run without error, so
every assert cell (the notebook's stated claims) must hold at the smoke size. The profiles are
checked too: they set only parameters the notebooks have, batch runs are never interactive,
and the configs they name resolve (no data or GPU needed for that).
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

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
PROFILES = sorted((ROOT / "notebooks" / "profiles").glob("*.yaml"))


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "notebooks" / "profiles" / f"{name}.yaml").read_text())


def test_the_profiles_and_notebooks_exist():
    assert [path.stem for path in PROFILES] == ["paper", "quick", "smoke"]
    assert NOTEBOOKS, "no numbered notebook in notebooks/"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_profiles_set_only_parameters_of_the_notebook(notebook):
    parameters = papermill.inspect_notebook(str(notebook))
    assert parameters, f"{notebook.name} has no cell tagged 'parameters'"
    assert "interactive" in parameters
    for path in PROFILES:
        unknown = set(yaml.safe_load(path.read_text())) - set(parameters)
        assert not unknown, f"{path.name} sets {unknown}, not parameters of {notebook.name}"


def test_quick_profile_is_the_parameters_cell_default():
    for notebook in NOTEBOOKS:
        parameters = papermill.inspect_notebook(str(notebook))
        for name, value in profile("quick").items():
            if name in parameters and name != "interactive":
                default = ast.literal_eval(parameters[name]["default"])
                assert default == value, f"{notebook.name}: {name} is {default!r}, quick {value!r}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda path: path.stem)
def test_profiles_are_batch_runs_and_their_configs_resolve(path):
    values = yaml.safe_load(path.read_text())
    assert values["interactive"] is False
    assert values["profile"] == path.stem
    common = [f"out={values['out']}", f"runtime.device={values['device']}",
              *values["overrides"]]
    resolved = config.resolve(ROOT / values["student_config"],
                              [*common, *values["student_overrides"]])
    assert resolved["out"] == values["out"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_under_nbval_with_the_smoke_profile(notebook, tmp_path):
    copy = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(copy), parameters=profile("smoke"),
                               prepare_only=True, progress_bar=False)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
         "-p", "no:cacheprovider", "-q", str(copy)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        # One thread: the tiny runs gain nothing from more, and a busy machine slows them a lot.
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
