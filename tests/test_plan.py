"""The plan printed before training: which runs are missing and how long they will take here."""

import math
from pathlib import Path

import pytest
import torch

from catkd import bench, config, plan, runs, train
from catkd import device as devices
from conftest import tiny


def configs(tmp_path, *overrides):
    return [config.resolve(None, tiny(tmp_path, *overrides)),
            config.resolve(None, tiny(tmp_path, "method=kd", "teacher.model=resnet8",
                                      "teacher.epochs=1", *overrides))]


def test_the_estimate_is_each_missing_run_s_steps_times_its_measured_step(tmp_path, monkeypatch):
    measured = {"ce": 0.010, "kd": 0.025}  # seconds per step, as if timed here
    calls = []

    def step_ms(names, student, teacher, device, **kwargs):
        calls.append((names[0], student, teacher))
        return {names[0]: 1000 * measured[names[0]]}

    monkeypatch.setattr(bench, "step_ms", step_ms)
    ce_run, kd_run = configs(tmp_path)
    estimate = plan.estimate([ce_run, kd_run])
    # digits: 1437 training images (44 steps of 32), 360 test images (12 batches of 32).
    epoch_of = {method: 1437 // 32 * measured[method] + math.ceil(360 / 32) * measured["ce"] / 4
                for method in measured}
    # The ce student (2 epochs), the kd student (2 epochs) and its resnet8 teacher (1 epoch).
    assert estimate.seconds == pytest.approx(2 * epoch_of["ce"] + 2 * epoch_of["kd"]
                                             + epoch_of["ce"])
    assert (estimate.runs, len(estimate.missing)) == (3, 3)
    teacher_folder = plan._folder(config.teacher_config(kd_run))
    assert estimate.missing.index(teacher_folder) < estimate.missing.index(plan._folder(kd_run))
    # Each distinct step was measured once: ce resnet8 (the ce run, the teacher, every
    # evaluation) and kd resnet8 <- resnet8.
    assert sorted(calls) == [("ce", "resnet8", None), ("kd", "resnet8", "resnet8")]
    assert "3 runs to train (of 3 asked for" in str(estimate)


def test_finished_runs_leave_the_plan_and_interrupted_ones_count_what_is_left(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs:
                        {names[0]: 10.0})
    ce_run, kd_run = configs(tmp_path)
    full = plan.estimate([ce_run]).seconds
    train.fit(ce_run, quiet=True)
    assert str(plan.estimate([ce_run])) == "all 1 runs are finished: nothing to train"
    # An interrupted run: one of its two epochs is behind it.
    path = plan._folder(ce_run)
    lines = (path / "metrics.jsonl").read_text().splitlines()
    (path / "metrics.jsonl").write_text(lines[0] + "\n")
    (path / runs.SUMMARY).unlink()
    assert plan.estimate([ce_run]).seconds == pytest.approx(full / 2)


def test_a_real_calibration_names_this_machine(tmp_path):
    estimate = plan.estimate(configs(tmp_path)[:1], calibration_steps=1)
    assert estimate.seconds > 0
    assert devices.name(devices.resolve("cpu")) in str(estimate)


def test_worker_processes_take_the_teachers_first_then_each_student_once_its_teacher_is_done():
    work = plan._Work
    assert plan._span([], 2) == 0
    alone = [work(5.0, None, None), work(3.0, None, None), work(3.0, None, None)]
    assert plan._span(alone, 2) == 6.0  # 5 | 3 + 3
    assert plan._span(alone, 1) == 11.0
    assert plan._span([work(1.0, None, None)] * 2, 4) == 1.0
    teacher = Path("runs/teacher")
    # The teacher (4) beside the run without one (4); its student (3) after it: 7, where
    # waiting for every teacher before any student would take 4 + 4.
    assert plan._span([work(4.0, teacher, None), work(4.0, None, None),
                       work(3.0, None, teacher)], 2) == 7.0
    # A worker with nothing ready waits for the teacher: 2 | (wait to 4) + 3.
    assert plan._span([work(4.0, teacher, None), work(3.0, None, teacher),
                       work(2.0, None, None)], 2) == 7.0


def test_an_estimate_for_two_workers_trains_each_student_after_its_teacher(tmp_path,
                                                                           monkeypatch):
    measured = {"ce": 0.010, "kd": 0.025}
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs:
                        {names[0]: 1000 * measured[names[0]]})
    ce_run, kd_run = configs(tmp_path)
    alone = {name: plan.estimate([run]).seconds for name, run in (("ce", ce_run), ("kd", kd_run))}
    both = plan.estimate([ce_run, kd_run], jobs=2)
    # The kd student's teacher (1 epoch) beside the ce student (2 epochs), then the kd student
    # in the worker its teacher freed: the kd run with its teacher is the longer line.
    assert alone["kd"] > alone["ce"]
    assert both.seconds == pytest.approx(alone["kd"])
    assert "in 2 worker processes" in str(both)


def test_the_calibration_times_a_step_with_the_run_s_own_threads(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs: seen.append(
        torch.get_num_threads()) or {names[0]: 1.0})
    before = torch.get_num_threads()
    plan.estimate([config.resolve(None, tiny(tmp_path, "runtime.threads=1"))])
    assert seen and set(seen) == {1} and torch.get_num_threads() == before


def test_runs_in_lockstep_share_one_teacher_forward_per_batch_in_the_estimate(tmp_path,
                                                                              monkeypatch):
    measured = {"ce": 0.010, "kd": 0.025, "catkd": 0.030}  # teacher forward: 0.015 (kd - ce)
    monkeypatch.setattr(bench, "step_ms", lambda names, *args, **kwargs:
                        {names[0]: 1000 * measured[names[0]]})
    kd_run = configs(tmp_path)[1]
    catkd_run = config.resolve(kd_run, ["method=catkd", "loss={}"])
    apart = plan.estimate([kd_run, catkd_run], jobs=1).seconds
    # Two workers: the two students train in lockstep in one of them (the teacher first).
    together = plan.estimate([kd_run, catkd_run], jobs=2).seconds
    assert together == pytest.approx(apart - 2 * (1437 // 32) * 0.015)  # 2 epochs of 44 steps
