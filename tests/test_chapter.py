"""catkd.chapter, the notebooks' face: setup, claims and their count, tables shown."""

import os

import pytest
import torch
from IPython.display import Markdown
from matplotlib.figure import Figure

from conftest import ROOT, fake_run, write_sweep

from catkd import chapter, figures, sweep, train

TABLE = """
title: a table
configs: [QUICK/ce.yaml, QUICK/catkd.yaml]
seeds: [0, 1]
"""


@pytest.fixture
def shown(monkeypatch) -> list:
    """What the chapter displays, in order (instead of a notebook's output)."""
    displayed = []
    monkeypatch.setattr(chapter, "display", displayed.append)
    return displayed


def reading(tmp_path, check: bool = True, found_runs: bool = False) -> chapter.Chapter:
    """A chapter of the quick profile that reads runs in ``tmp_path/runs`` and trains nothing."""
    return chapter.Chapter(profile="quick", device="cpu", jobs=1, check=check,
                           overrides=[f"out={tmp_path / 'runs'}"], train_missing=False,
                           found_runs=found_runs)


def test_setup_resolves_the_device_jobs_and_switch_from_the_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # restored after the test: setup changes into the project
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        smoke = chapter.setup("smoke", "auto", "runs/smoke", ["data.dataset=digits"])
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:  # torch's own settings, not monkeypatch's to restore
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert os.getcwd() == str(ROOT)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert smoke.device == expected and smoke.jobs == sweep.default_jobs(expected)
    assert smoke.overrides == ["out=runs/smoke", f"runtime.device={expected}",
                               "data.dataset=digits"]
    assert smoke.check is False and smoke.train_missing and smoke.seeds is None
    quick = chapter.setup("quick", "cpu", "runs", [], jobs=3, seeds=(0,))
    assert (quick.device, quick.jobs, quick.check, quick.seeds) == ("cpu", 3, True, [0])
    assert chapter.setup("smoke", "cpu", "runs", [], check=True).check is True


def test_claims_are_counted_and_asserted_with_their_words(tmp_path, capsys):
    checked = reading(tmp_path)
    assert checked.claim(True, "catkd 80.00% is above ce 70.00%") is True
    with pytest.raises(AssertionError, match="does not hold at profile quick: ce 70.00% is above"):
        checked.claim(False, "ce 70.00% is above catkd 80.00%")
    assert checked.claims == 2
    assert "holds: catkd 80.00% is above ce 70.00%" in capsys.readouterr().out

    # With the switch off (smoke) a claim that does not hold is reported, then listed by done.
    reported = reading(tmp_path, check=False, found_runs=True)
    assert reported.claim(False, "ce is above catkd") is False
    reported.claim(True, "catkd is above chance")
    reported.done()
    printed = capsys.readouterr().out
    assert "does not hold (not asserted at profile quick): ce is above catkd" in printed
    assert "2 claims compared (not asserted at profile quick): 1 held" in printed
    assert "did not hold: ce is above catkd" in printed


def test_with_another_teacher_claims_are_reported_with_the_reason_not_asserted(tmp_path, capsys):
    other = chapter.setup("quick", "cpu", str(tmp_path / "runs"), [], teacher="resnet56")
    assert other.check is False
    other.found_runs = True
    other.claim(False, "the bottom 2 classes' student reaches 20%: 12.35%")
    other.done()
    printed = capsys.readouterr().out
    reason = ("not asserted with teacher resnet56: the text's thresholds are those of the "
              "chapter's own teachers")
    assert f"does not hold ({reason}): the bottom 2 classes'" in printed
    assert f"1 claims compared ({reason}): 0 held" in printed
    # Asked for, they are asserted, and the error names the teacher.
    asked = chapter.setup("quick", "cpu", str(tmp_path / "runs"), [], teacher="resnet56",
                          check=True)
    with pytest.raises(AssertionError, match="at profile quick with teacher resnet56: ce is"):
        asked.claim(False, "ce is above catkd")
    assert chapter.setup("smoke", "cpu", "runs", [], teacher="resnet56")._not_asserted() == \
        "not asserted at profile smoke"


def test_done_fails_when_runs_exist_but_no_claim_was_compared(tmp_path, capsys):
    with pytest.raises(AssertionError, match="compared none of its claims"):
        reading(tmp_path, found_runs=True).done()
    # No finished run (the paper profile before its jobs ran): said, not passed silently.
    reading(tmp_path).done()
    assert "No finished run yet at profile quick, so no claim was compared" in \
        capsys.readouterr().out


def test_table_shows_the_sweep_and_its_figure_and_returns_its_cells(tmp_path, shown):
    path = write_sweep(tmp_path, TABLE)
    reader = reading(tmp_path)
    loaded, cells = reader.table(path, figures.table_bars)
    assert not reader.found_runs and len(shown) == 1  # nothing finished: no figure
    assert "trained on fashion-mnist" in shown[0].data and "(2 missing)" in shown[0].data

    for experiment in loaded.experiments:
        fake_run(experiment, 80.0 + experiment.config["seed"], 79.0)
    shown.clear()
    loaded, cells = reader.table(path, figures.table_bars)
    markdown, figure = shown
    assert isinstance(markdown, Markdown) and isinstance(figure, Figure)
    assert markdown.data.startswith("**a table; trained on fashion-mnist**")
    assert figure.get_suptitle() == "a table; trained on fashion-mnist"
    assert set(cells) == {("ce", "resnet20-resnet8"), ("catkd", "resnet20-resnet8")}
    assert cells["catkd", "resnet20-resnet8"].mean_best == pytest.approx(80.5)
    assert reader.found_runs


def test_fit_without_train_missing_lists_each_missing_runs_command_once(tmp_path):
    path = write_sweep(tmp_path, TABLE)
    loaded = sweep.load(path, [f"out={tmp_path / 'runs'}"])
    fake_run(loaded.experiments[0], 80.0, 79.0)
    with pytest.raises(RuntimeError, match="missing: 3 run") as stopped:
        reading(tmp_path).fit([*loaded.experiments, loaded.experiments[1]])
    commands = [line for line in str(stopped.value).splitlines()
                if line.startswith("python -m catkd train")]
    assert commands == [experiment.command() for experiment in loaded.experiments[1:]]


def test_show_table_renders_markdown_under_its_title(shown):
    chapter.show_table(["method", "accuracy (%)"], [("ce", "70.00"), ("catkd", 80.0)],
                       "digits, seed 0")
    (table,) = shown
    assert isinstance(table, Markdown)
    assert table.data.splitlines() == ["**digits, seed 0**", "", "| method | accuracy (%) |",
                                       "|---|---|", "| ce | 70.00 |", "| catkd | 80.0 |"]


@pytest.mark.parametrize("given, expected", [
    (["loss.beta=5"], ["loss.beta=5"]),
    ("[teacher.model=resnet56, loss.resolution=2]", ["teacher.model=resnet56", "loss.resolution=2"]),
    ("loss.beta=5", ["loss.beta=5"]),
    ("", []),
])
def test_list_parameters_arrive_as_lists_or_as_papermill_s_text(given, expected):
    assert chapter.listed(given, "overrides") == expected


def test_a_parameter_that_is_no_list_names_itself():
    assert chapter.listed("[0, 1]", "seeds", int) == [0, 1]
    with pytest.raises(ValueError, match=r"parameter seeds must be a list of int values"):
        chapter.listed("[zero]", "seeds", int)
    with pytest.raises(ValueError, match=r"parameter overrides must be a list of str values"):
        chapter.listed("{a: 1}", "overrides")
    with pytest.raises(ValueError, match=r"parameter overrides: .* is not a YAML list"):
        chapter.listed("[a, b", "overrides")


def test_the_teacher_parameter_replaces_the_teacher_of_the_runs_that_distil(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    with_resnet56 = chapter.setup("quick", "cpu", str(tmp_path / "runs"), [],
                                  teacher="resnet56", teacher_checkpoint="teachers/r56.pt")
    assert with_resnet56.teacher_overrides == ["teacher.model=resnet56",
                                               "teacher.checkpoint=teachers/r56.pt"]
    loaded = with_resnet56.load(write_sweep(tmp_path, TABLE))
    assert [(experiment.config["method"], experiment.config["teacher"]["model"],
             experiment.config["teacher"]["checkpoint"]) for experiment in loaded.experiments] == \
        [("ce", None, None)] * 2 + [("catkd", "resnet56", "teachers/r56.pt")] * 2
    cat = with_resnet56.experiment(ROOT / "configs/quick/cat.yaml", ["seed=4"])
    assert (cat.config["teacher"]["model"], cat.config["seed"]) == ("resnet56", 4)
    plain = chapter.setup("quick", "cpu", str(tmp_path / "runs"), [], teacher="resnet32")
    assert plain.teacher_overrides == ["teacher.model=resnet32", "teacher.checkpoint=null"]
    assert chapter.setup("quick", "cpu", "runs", []).teacher_overrides == []
    with pytest.raises(ValueError, match="teacher_checkpoint needs teacher"):
        chapter.setup("quick", "cpu", "runs", [], teacher_checkpoint="r56.pt")


def test_runs_whose_method_cannot_use_the_chapter_s_teacher_are_left_out_with_the_reason(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torchvision_teacher = chapter.setup("quick", "cpu", str(tmp_path / "runs"),
                                        ["data.dataset=digits"],
                                        teacher="torchvision.shufflenet_v2_x0_5")
    table = write_sweep(tmp_path, TABLE.replace("QUICK/catkd", "QUICK/at.yaml, QUICK/catkd"))
    loaded = torchvision_teacher.load(table)
    assert [experiment.config["method"] for experiment in loaded.experiments] == \
        ["ce", "ce", "catkd", "catkd"]
    assert capsys.readouterr().out == (
        "left out of table.yaml, with its claims: method at cannot use the teacher "
        "torchvision.shufflenet_v2_x0_5: AT pairs stages one to one: student CifarResNet has "
        "stages ('layer1', 'layer2', 'layer3'), teacher ShuffleNetV2 has ()\n")
    (tmp_path / "at").mkdir()
    only_at = write_sweep(tmp_path / "at", "configs: [QUICK/ce.yaml, QUICK/at.yaml]")
    with pytest.raises(ValueError, match="no run can use its teacher; method at cannot use"):
        torchvision_teacher.load(only_at)
    # The configs' own teachers serve every run: they are not checked.
    monkeypatch.setattr(train, "refusals", lambda run_configs: pytest.fail("checked"))
    configs_teachers = chapter.setup("quick", "cpu", str(tmp_path / "runs"), [])
    assert len(configs_teachers.load(table).experiments) == 6


@pytest.mark.parametrize("jobs", [0, "two", True])
def test_a_jobs_parameter_that_is_no_count_of_workers_names_itself(jobs):
    with pytest.raises(ValueError, match="parameter jobs must be a positive number"):
        chapter.setup("quick", "cpu", "runs", [], jobs=jobs)
