"""Sweeps (catkd.sweep), reports (catkd.report) and the run cache under concurrency.

Most tests fake finished runs (a config.yaml and a summary.json are all a report reads), so
they need no training; the end-to-end test trains a tiny sweep twice, once as two parallel
``--index`` processes and once sequentially, and compares the reports.
"""

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import torch

from conftest import QUICK, ROOT, fake_run, write_sweep

from catkd import bench, config, report, runs, sweep, train
from catkd.__main__ import main


@pytest.fixture
def table(tmp_path):
    path = write_sweep(tmp_path, """
title: a table
configs: [QUICK/ce.yaml, QUICK/kd.yaml, QUICK/catkd.yaml]
seeds: [0, 1, 2]
rows: method
columns: pair
paper: {kd: {resnet20-resnet8: 88.0}, catkd: {resnet20-resnet8: 90.0}}
""")
    return sweep.load(path, [f"out={tmp_path / 'runs'}"])


def test_load_expands_configs_then_grid_then_seeds(tmp_path):
    text = """
configs: [CONFIGS]
grid: {loss.beta: [5, 20], data.fraction: [0.5, 1.0]}
seeds: [3, 4]
overrides: [optim.epochs=1]
"""
    path = write_sweep(tmp_path, text.replace("CONFIGS", "QUICK/ce.yaml, QUICK/catkd.yaml"))
    with pytest.raises(ValueError, match="unknown setting loss.beta for method 'ce'"):
        sweep.load(path)
    path = write_sweep(tmp_path, text.replace("CONFIGS", "QUICK/catkd.yaml"))
    loaded = sweep.load(path, ["out=elsewhere"])
    assert len(loaded.experiments) == 2 * 2 * 2
    first, second, *_, last = loaded.experiments
    assert first.overrides == ("optim.epochs=1", "out=elsewhere", "loss.beta=5",
                               "data.fraction=0.5", "seed=3")
    # The grid wins over the caller's overrides: it is what the sweep varies.
    assert sweep.load(path, ["loss.beta=7"]).experiments[-1].config["loss"]["beta"] == 20
    assert second.config["seed"] == 4 and second.config["loss"]["beta"] == 5
    assert last.config["loss"]["beta"] == 20 and last.config["data"]["fraction"] == 1.0
    assert all(experiment.config["out"] == "elsewhere" for experiment in loaded.experiments)
    assert first.command().startswith("python -m catkd train --config ")
    assert sweep.load(path, seeds=[7]).experiments[0].config["seed"] == 7
    assert (loaded.rows, loaded.columns, loaded.paper) == ("method", "pair", {})


def test_globs_expand_sorted_and_duplicates_run_once(tmp_path):
    for name, lr in (("b", 0.1), ("a", 0.2), ("c", 0.3)):
        (tmp_path / f"{name}.yaml").write_text(f"base: {QUICK / 'ce.yaml'}\noptim: {{lr: {lr}}}\n")
    path = write_sweep(tmp_path, "configs: ['[ab].yaml', c.yaml, b.yaml]\n")
    loaded = sweep.load(path)
    assert [experiment.config_file.name for experiment in loaded.experiments] == \
        ["a.yaml", "b.yaml", "c.yaml"]
    assert [experiment.config["optim"]["lr"] for experiment in loaded.experiments] == [0.2, 0.1, 0.3]


@pytest.mark.parametrize("text, error", [
    ("configs: [QUICK/ce.yaml]\nrow: method\n", "unknown sweep key.*row"),
    ("seeds: [0]\n", "lists its config files under 'configs'"),
    ("configs: [QUICK/nothing*.yaml]\n", "no config file matches"),
    ("configs: [QUICK/catkd.yaml]\ngrid: {loss.beta: 5}\n", "non-empty list"),
    ("configs: [QUICK/catkd.yaml]\noverrides: [loss.bta=5]\n", "did you mean 'beta'"),
])
def test_bad_sweep_files_are_clear_errors(tmp_path, text, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        sweep.load(write_sweep(tmp_path, text))


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/**/sweeps/*.yaml")),
                         ids=lambda path: f"{path.parent.parent.name}/{path.stem}")
def test_every_shipped_sweep_expands_and_its_paper_numbers_find_cells(path):
    """Every run config resolves, and every number of the paper lands in a cell of the table;
    one without runs only where the table has no run of that row at all (a method without
    configs there yet), so a mistyped column label cannot drop a number silently."""
    loaded = sweep.load(path)
    assert loaded.experiments, path
    cells = report.cells(loaded)
    rows_run = {cell.row for cell in cells if cell.runs}
    papers = sum(len(numbers) for numbers in loaded.paper.values())
    assert len([cell for cell in cells if cell.paper is not None]) == papers, path.name
    for cell in cells:
        assert cell.runs or cell.row not in rows_run, (path.name, cell.row, cell.column)



@pytest.mark.parametrize("name", ["table13", "table14"])
def test_a_setting_left_out_labels_its_row_none_and_finds_the_paper_s_numbers(name):
    loaded = sweep.load(ROOT / "configs" / "cifar100" / "sweeps" / f"{name}.yaml")
    cells = report.cells(loaded)
    assert {cell.row for cell in cells} == {"l2", "none"}
    assert all(cell.runs and cell.paper is not None for cell in cells)

def test_an_experiment_says_whether_its_run_is_finished_and_what_is_wrong(table):
    ce_seed0, ce_seed1, ce_seed2 = table.experiments[:3]
    assert ce_seed0.status() == (None, "missing")
    fake_run(ce_seed0, 80.0, 79.0)
    run, problem = ce_seed0.status()
    assert problem is None and run.path == ce_seed0.path and run.summary["best_acc"] == 80.0
    ce_seed1.path.mkdir(parents=True)  # started: its config is there, no summary yet
    (ce_seed1.path / "config.yaml").write_text(config.dump(ce_seed1.config))
    assert ce_seed1.status() == (None, "unfinished")
    ce_seed2.path.mkdir(parents=True)
    (ce_seed2.path / "config.yaml").write_text(
        config.dump(config.resolve(ce_seed2.config, ["optim.lr=0.3"])))
    run, problem = ce_seed2.status()
    assert run is None and "different config" in problem


def test_teacher_run_is_the_finished_run_of_the_teacher_trained_first(table):
    ce, kd = table.experiments[0], table.experiments[3]
    assert kd.config["method"] == "kd" and ce.teacher_run() is None  # ce has no teacher
    assert kd.teacher_run() is None  # not trained yet
    teacher_config = config.teacher_config(kd.config)
    folder = Path(teacher_config["out"]) / config.run_name(teacher_config)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.dump(teacher_config))
    (folder / runs.SUMMARY).write_text(json.dumps({"best_acc": 95.0, "last_acc": 94.0}))
    assert kd.teacher_run().path == folder and kd.teacher_run().summary["best_acc"] == 95.0
    # A published teacher is loaded, not trained: there is no run of it.
    published = sweep.Experiment.of(QUICK / "kd.yaml", [*kd.overrides, "teacher.checkpoint=t.pth"])
    assert published.teacher_run() is None


def test_index_out_of_range_says_how_many_runs(table):
    with pytest.raises(ValueError, match="has 9 runs"):
        sweep.run(table, index=9)


def test_report_means_stds_and_paper_differences(table, tmp_path):
    accuracies = {"ce": [80.0, 81.0, 82.5], "kd": [85.0, 86.0, 90.0], "catkd": [91.0, 89.0]}
    for experiment in table.experiments:
        values = accuracies[experiment.config["method"]]
        if experiment.config["seed"] < len(values):
            fake_run(experiment, values[experiment.config["seed"]],
                     values[experiment.config["seed"]] - 1)
    cells = {cell.row: cell for cell in report.cells(table)}
    # ce has no teacher: it fills the column of the pair that has its student.
    assert {cell.column for cell in cells.values()} == {"resnet20-resnet8"}
    kd = cells["kd"]
    assert kd.mean_std("best") == pytest.approx((87.0, statistics.stdev([85, 86, 90])))
    assert kd.mean_std("last") == pytest.approx((86.0, statistics.stdev([85, 86, 90])))
    assert kd.difference == pytest.approx(87.0 - 88.0)
    assert cells["ce"].paper is None and cells["ce"].difference is None
    assert (cells["catkd"].finished, cells["catkd"].runs, cells["catkd"].problems) == \
        (2, 3, ["missing"])

    assert kd.mean_best == pytest.approx(87.0) and report.Cell("x", "y").mean_best is None

    text, csv_path, markdown_path = report.report(table, tmp_path / "reports")
    # The title names the data the runs trained on, read from their configs.
    assert text.startswith("**a table; trained on fashion-mnist** (")
    assert "| kd | 87.00 ± 2.65 / 86.00 [88.00, -1.00] |" in text
    assert "| catkd | 90.00 ± 1.41 / 89.00 [90.00, +0.00] (2/3 seeds) |" in text
    assert markdown_path.read_text() == text
    rows = {row["row"]: row for row in csv.DictReader(csv_path.open())}
    assert float(rows["ce"]["best_mean"]) == pytest.approx(81.1666667)
    assert float(rows["ce"]["best_std"]) == pytest.approx(statistics.stdev([80, 81, 82.5]))
    assert rows["ce"]["runs"] == "3"
    assert rows["catkd"]["problems"] == "1 missing"


def test_a_probe_table_reads_each_runs_probe_summaries(tmp_path):
    path = write_sweep(tmp_path, """
configs: [QUICK/ce.yaml, QUICK/catkd.yaml]
seeds: [0, 1]
probe: [digits, stl10]
paper: {catkd: {resnet20-resnet8 stl10: 50.0}}
""")
    loaded = sweep.load(path, [f"out={tmp_path / 'runs'}"])
    for experiment in loaded.experiments:
        fake_run(experiment, 90.0, 89.0)
        if experiment.config["seed"] == 0:  # seed 1 is not probed yet
            for offset, dataset in enumerate(("digits", "stl10")):
                folder = experiment.path / f"probe-{dataset}"
                folder.mkdir()
                (folder / "summary.json").write_text(json.dumps(
                    {"best_acc": 40.0 + offset, "last_acc": 30.0 + offset}))
    cells = {(cell.row, cell.column): cell for cell in report.cells(loaded)}
    assert set(cells) == {(method, f"resnet20-resnet8 {dataset}") for method in ("ce", "catkd")
                          for dataset in ("digits", "stl10")}
    stl = cells["catkd", "resnet20-resnet8 stl10"]
    assert (stl.best, stl.last, stl.problems, stl.paper) == ([41.0], [31.0], ["not probed"], 50.0)
    assert "41.00 ± 0.00 / 31.00 [50.00, -9.00] (1/2 seeds)" in report.markdown(loaded)


def test_a_top5_table_reads_top5_at_the_best_top1_epoch(tmp_path):
    path = write_sweep(tmp_path, """
configs: [QUICK/kd.yaml]
seeds: [0]
top5: true
paper: {kd: {resnet20-resnet8 top-1: 70.0, resnet20-resnet8 top-5: 90.0}}
""")
    loaded = sweep.load(path, [f"out={tmp_path / 'runs'}"])
    (experiment,) = loaded.experiments
    fake_run(experiment, 80.0, 78.0)
    summary = experiment.path / runs.SUMMARY
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "best_epoch": 2,
                                   "last_top5": 93.0}))
    (experiment.path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "test_acc": top1, "test_top5": top5}) + "\n"
        for epoch, top1, top5 in ((1, 60.0, 95.0), (2, 80.0, 94.0), (3, 78.0, 93.0))))
    cells = {cell.column: cell for cell in report.cells(loaded)}
    assert (cells["resnet20-resnet8 top-1"].best, cells["resnet20-resnet8 top-1"].last) == \
        ([80.0], [78.0])
    # Top-5 of the best top-1 epoch (2), not the best top-5 over epochs (1).
    assert (cells["resnet20-resnet8 top-5"].best, cells["resnet20-resnet8 top-5"].last) == \
        ([94.0], [93.0])
    assert "94.00 ± 0.00 / 93.00 [90.00, +4.00]" in report.markdown(loaded)
    probed = write_sweep(tmp_path, "configs: [QUICK/kd.yaml]\ntop5: true\nprobe: [digits]\n")
    with pytest.raises(ValueError, match="a probe table shows top-1 only"):
        sweep.load(probed)


def test_report_skips_foreign_and_corrupt_folders_and_says_so(table):
    ce_seed0, ce_seed1, ce_seed2 = table.experiments[:3]
    fake_run(ce_seed0, 80.0, 79.0)
    fake_run(ce_seed1, 70.0, 69.0)
    (ce_seed1.path / runs.SUMMARY).write_text("{not json")
    foreign = config.resolve(ce_seed2.config, ["optim.lr=0.3"])
    ce_seed2.path.mkdir(parents=True)
    (ce_seed2.path / "config.yaml").write_text(config.dump(foreign))
    cell = next(cell for cell in report.cells(table) if cell.row == "ce")
    assert cell.best == [80.0]
    assert any("is corrupt" in problem for problem in cell.problems)
    assert any("different config" in problem for problem in cell.problems)
    text = report.markdown(table)
    assert "Skipped run folders:" in text and "is corrupt" in text
    # fit refuses both folders rather than using or overwriting them.
    for experiment in (ce_seed1, ce_seed2):
        with pytest.raises(ValueError, match="corrupt|different config"):
            experiment.fit(quiet=True)


def test_sweep_run_goes_on_after_a_failure_and_reports_it(table, monkeypatch):
    calls = []

    def fake_fit(experiment, quiet=False, title=None):
        calls.append(experiment.path)
        if len(calls) == 2:
            raise ValueError("broken folder")
        return experiment.path

    monkeypatch.setattr(sweep.Experiment, "fit", fake_fit)
    with pytest.raises(RuntimeError, match="1 of 9 runs failed:\n.*broken folder"):
        sweep.run(table, quiet=True)
    assert len(calls) == 9


def test_a_worker_reports_a_fault_in_a_run_and_lets_the_other_runs_go_on(tmp_path, monkeypatch):
    """Any exception in a worker's run comes back as that run's error, with its type and where
    it was raised: raised in the worker, it would stop the pool and every run in it."""
    (experiment,) = sweep.load(write_sweep(tmp_path, "configs: [QUICK/ce.yaml]\n"),
                               [f"out={tmp_path / 'runs'}"]).experiments

    def faulty_fit(config, quiet=False):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(train, "fit", faulty_fit)
    ((path, error),) = sweep._fit_quietly([experiment.config])
    assert path == experiment.path
    assert re.fullmatch(r"TypeError: unsupported operand \(at test_sweep\.py:\d+, in faulty_fit\)",
                        error), error


def cli(*arguments, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "catkd", *map(str, arguments)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


# Three runs on digits that share a teacher, in float32 (equal numbers across processes).
TINY_SWEEP = """
title: tiny
configs: [QUICK/ce.yaml, QUICK/kd.yaml, QUICK/catkd.yaml]
seeds: [0]
overrides: [data.dataset=digits, optim.epochs=1, teacher.epochs=1, runtime.bf16=false]
rows: method
columns: pair
"""


def tiny_table(path, out):
    """The sweep's cells as (row, column, best, last), read from run folder ``out``."""
    return [(cell.row, cell.column, cell.best, cell.last)
            for cell in report.cells(sweep.load(path, [f"out={out}"]))]


def test_parallel_index_jobs_and_a_sequential_sweep_give_the_same_report(tmp_path):
    """Two processes each run half of the indices (both need the same teacher: one trains it,
    the other waits for it), then one sequential sweep runs everything into another folder."""
    path = write_sweep(tmp_path, TINY_SWEEP)
    parallel, sequential = tmp_path / "parallel", tmp_path / "sequential"
    listing = finish(cli("sweep", path, "--list", f"out={parallel}")).splitlines()
    assert len(listing) == 3 and all("\tmissing\tpython -m catkd train" in line
                                     for line in listing)
    # Two workers, as a job array with two slots: indices 0, 2 and 1.
    workers = [subprocess.Popen(
        ["bash", "-c", " && ".join(f"{sys.executable} -m catkd sweep {path} --index {index} "
                                   f"out={parallel}" for index in range(first, 3, 2))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for first in (0, 1)]
    for worker in workers:
        finish(worker)
    teachers = list(parallel.glob("ce_resnet20_*"))
    assert len(teachers) == 1, "the teacher was trained once"
    finish(cli("sweep", path, f"out={sequential}"))
    assert all("\tfinished\t" in line for line in
               finish(cli("sweep", path, "--list", f"out={parallel}")).splitlines())

    assert tiny_table(path, parallel) == tiny_table(path, sequential)
    assert all(len(best) == 1 for _, _, best, _ in tiny_table(path, parallel))
    printed = finish(cli("report", path, "--set", f"out={parallel}", "--out", tmp_path / "rep"))
    assert "| catkd |" in printed and (tmp_path / "rep" / "table.csv").is_file()

    # The book after the sweep: chapter 3 on this table reads the runs and retrains nothing.
    before = {file: file.stat().st_mtime_ns for file in parallel.rglob("*") if file.is_file()}
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_catkd_results.ipynb"), str(tmp_path / "03.ipynb"),
        parameters={"profile": "smoke", "out": str(parallel), "device": "cpu",
                    "overrides": ["data.dataset=digits", "optim.epochs=1", "teacher.epochs=1",
                                  "runtime.bf16=false"],
                    "method_tables": [str(path)], "teacher_table": None, "beta_table": None,
                    "normalise_tables": []},
        progress_bar=False, cwd=str(ROOT))
    after = {file: file.stat().st_mtime_ns for file in parallel.rglob("*") if file.is_file()}
    assert after == before, "the notebook wrote into the run folders"


def test_worker_processes_train_a_sweep_as_one_process_does(tmp_path):
    """--jobs 2: the teacher first, then the students, in two one-thread workers; the same
    runs and numbers as a sequential one-thread sweep."""
    path = write_sweep(tmp_path, TINY_SWEEP)
    workers, sequential = tmp_path / "workers", tmp_path / "sequential"
    printed = finish(cli("sweep", path, "--jobs", "2", f"out={workers}"))
    assert printed.index("finished: " + str(workers / "ce_resnet20")) < printed.index(
        "finished: " + str(workers / "kd_")), "the teacher trains before its students"
    finish(cli("sweep", path, f"out={sequential}"))

    assert tiny_table(path, workers) == tiny_table(path, sequential)
    assert all(len(best) == 1 for _, _, best, _ in tiny_table(path, workers))
    assert len(list(workers.glob("ce_resnet20_*"))) == 1
    with pytest.raises(ValueError, match="jobs must be a positive number"):
        sweep.run(sweep.load(path, [f"out={workers}"]), jobs=0)


def test_variants_are_named_runs_that_win_over_the_caller_and_report_as_an_axis(tmp_path):
    path = write_sweep(tmp_path, """
configs: [QUICK/cat.yaml]
seeds: [0, 1]
variants:
  student: []
  "resolution: 2": [loss.resolution=2]
  "resolution: 4": [loss.resolution=4]
rows: variant
columns: pair
""")
    loaded = sweep.load(path, [f"out={tmp_path / 'runs'}", "loss.resolution=4"])
    assert [(experiment.variant, experiment.config["seed"]) for experiment in loaded.experiments] \
        == [("student", 0), ("student", 1), ("resolution: 2", 0), ("resolution: 2", 1),
            ("resolution: 4", 0), ("resolution: 4", 1)]
    assert [experiment.config["loss"]["resolution"] for experiment in loaded.experiments] == \
        [4, 4, 2, 2, 4, 4]
    # "student" with the caller's r 4 and "resolution: 4" are one run folder under two names.
    student, resolution_4 = loaded.experiments[0], loaded.experiments[4]
    assert student.path == resolution_4.path and student != resolution_4
    fake_run(student, 80.0, 79.0)
    by_cell = {(cell.row, cell.column): cell for cell in report.cells(loaded)}
    assert sorted(row for row, _ in by_cell) == ["resolution: 2", "resolution: 4", "student"]
    assert by_cell["student", "resnet20-resnet8"].finished == 1
    assert by_cell["resolution: 4", "resnet20-resnet8"].finished == 1
    assert by_cell["resolution: 2", "resnet20-resnet8"].finished == 0


@pytest.mark.parametrize("variants, error", [
    ("[[loss.resolution=2]]", "maps names to lists of overrides"),
    ("{r 2: loss.resolution=2}", "variant 'r 2' needs a list"),
])
def test_bad_variants_are_clear_errors(tmp_path, variants, error):
    with pytest.raises(ValueError, match=error):
        sweep.load(write_sweep(tmp_path, f"configs: [QUICK/cat.yaml]\nvariants: {variants}\n"))
    with pytest.raises(ValueError, match="needs a sweep with variants"):
        report.cells(sweep.load(write_sweep(tmp_path, "configs: [QUICK/ce.yaml]\nrows: variant\n")))


def test_several_sweep_files_train_as_one_plan_each_shared_run_once(tmp_path, monkeypatch):
    first = write_sweep(tmp_path, "configs: [QUICK/ce.yaml, QUICK/kd.yaml]\n")
    second = first.with_name("second.yaml")
    second.write_text(first.read_text().replace("QUICK/ce.yaml, ", "") .replace(
        "kd.yaml", "kd.yaml, " + os.path.relpath(QUICK / "dkd.yaml", tmp_path)))
    sweeps = [sweep.load(path, [f"out={tmp_path / 'runs'}"]) for path in (first, second)]
    trained = []
    monkeypatch.setattr(sweep, "fit_all", lambda experiments, jobs, quiet: trained.append(
        ([experiment.config["method"] for experiment in experiments], jobs)))
    sweep.run_all(sweeps, jobs=2, quiet=True)
    assert trained == [(["ce", "kd", "dkd"], 2)]


def test_default_jobs_is_a_worker_per_core_on_a_cpu(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert sweep.default_jobs("cpu") == 6
    assert sweep.default_jobs("auto") == (1 if torch.cuda.is_available() else 6)


def test_teacher_overrides_reach_the_distilling_runs_and_leave_a_variant_s_own_teacher(tmp_path):
    path = write_sweep(tmp_path, """
configs: [QUICK/cat.yaml]
variants:
  student: []
  "producer: resnet14": [teacher.model=resnet14]
""")
    loaded = sweep.load(path, teacher_overrides=["teacher.model=resnet32"])
    assert [(experiment.variant, experiment.config["teacher"]["model"])
            for experiment in loaded.experiments] == [("student", "resnet32"),
                                                      ("producer: resnet14", "resnet14")]
    plain = sweep.load(write_sweep(tmp_path, "configs: [QUICK/ce.yaml]\n"),
                       teacher_overrides=["teacher.model=resnet32"])
    assert plain.experiments[0].config["teacher"]["model"] is None


def test_worker_processes_show_how_far_they_are_while_no_run_finishes(tmp_path, monkeypatch,
                                                                       capsys):
    """The workers train quietly; this process says how many runs finished and for how long
    they have been training, so that a notebook shows a long run moving."""
    monkeypatch.setattr(sweep, "STATUS_SECONDS", 0.2)
    loaded = sweep.load(write_sweep(tmp_path, TINY_SWEEP), [f"out={tmp_path / 'runs'}"])
    failures = sweep._train_in_workers(loaded.experiments, jobs=2, quiet=False)
    printed = capsys.readouterr().out
    assert failures == {}
    # The teacher and the run without one at once; the students of the teacher after it.
    assert "0 of 4 runs finished, 2 training" in printed
    assert f"finished: {loaded.experiments[-1].path} (" in printed and "4 of 4, " in printed


def test_sweep_plan_prints_the_plan_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs:
                        {names[0]: 10.0})
    path = write_sweep(tmp_path, TINY_SWEEP)
    out = tmp_path / "runs"
    assert main(["sweep", str(path), "--plan", "--jobs", "2", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs to train (of 4 asked for, teachers included)" in printed
    assert "in 2 worker processes" in printed
    assert not out.exists()


def test_a_missing_teacher_checkpoint_is_one_error_before_anything_trains(tmp_path, monkeypatch):
    loaded = sweep.load(ROOT / "configs" / "quick" / "sweeps" / "methods.yaml",
                        [f"out={tmp_path}"],
                        teacher_overrides=["teacher.model=resnet56",
                                           f"teacher.checkpoint={tmp_path / 'absent.pt'}"])
    monkeypatch.setattr(sweep.Experiment, "fit", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint\(s\) not found: .*absent\.pt"):
        sweep.fit_all(loaded.experiments, quiet=True)
    assert not any(tmp_path.iterdir())  # nothing written


def test_sweep_with_a_teacher_that_some_methods_cannot_use_leaves_their_runs_out(
        tmp_path, monkeypatch, capsys):
    """As a chapter does (make book TEACHER=... runs this sweep first): AT pairs stages that a
    torchvision model does not declare, so its run is left out with the reason; kd stays."""
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs:
                        {names[0]: 10.0})
    path = write_sweep(tmp_path, TINY_SWEEP.replace("QUICK/catkd.yaml", "QUICK/at.yaml"))
    assert main(["sweep", str(path), "--plan", "--teacher", "torchvision.shufflenet_v2_x0_5",
                 f"out={tmp_path / 'runs'}"]) == 0
    printed = capsys.readouterr().out
    assert ("left out of table.yaml, with its claims: method at cannot use the teacher "
            "torchvision.shufflenet_v2_x0_5: ") in printed
    # ce, kd and kd's teacher: AT's run is not planned.
    assert "3 runs to train (of 3 asked for, teachers included)" in printed
