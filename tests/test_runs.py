"""catkd.runs: the run folder is read without the training loop."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["catkd.runs", "catkd.report", "catkd.probe", "catkd.sweep",
                                    "catkd.chapter"])
def test_reading_runs_imports_no_training_code(module):
    # A fresh interpreter: this one may have imported catkd.train already.
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True).stdout
    assert "'catkd.train'" not in loaded
    assert "'catkd.plan'" not in loaded  # the plan times training steps
