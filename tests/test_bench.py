"""The benchmark runs end to end and reports every figure (no timing is asserted)."""

import json

import pytest

import torch

from catkd import bench, data, device, models


def test_bench_reports_both_paths_and_the_step_times(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.bench("catkd", "resnet8", "resnet14", device="cpu", steps=1, warmup=1,
                          rounds=2, workers=0, out=str(out))
    assert json.loads(out.read_text()) == results
    assert set(results["images_per_second"]) == {"authors", "fast"}
    assert all(rate > 0 for rate in results["images_per_second"].values())
    assert tuple(results["step_ms"]) == bench.STEP_METHODS
    assert {"fitnet", "rkd", "ofd", "crd", "reviewkd"} < set(bench.STEP_METHODS)
    assert set(results["extra_parameters"]) == set(bench.STEP_METHODS)
    assert results["extra_parameters"]["ce"] == results["extra_parameters"]["rkd"] == 0
    assert results["extra_parameters"]["fitnet"] > 0
    assert results["catkd_over_kd"] == results["step_ms"]["catkd"] / results["step_ms"]["kd"]
    assert results["peak_memory_mb"] > 0
    # Arithmetic: every step did some, below the device's measured peak.
    assert results["peak_gflops"] > 0
    assert set(results["step_gflops"]) == set(results["fraction_of_peak"]) == set(bench.STEP_METHODS)
    assert all(0 < fraction < 1 for fraction in results["fraction_of_peak"].values())
    assert results["bf16"] is device.bf16_native(torch.device("cpu"))
    printed = capsys.readouterr().out
    assert f"because {device.describe(torch.device('cpu'))}" in printed
    assert "GFLOP/s" in printed and "peak:" in printed
    assert "authors' way" in printed and "catkd step / kd step" in printed
    assert "epoch" not in results and "240 epochs" not in printed


def test_one_epoch_is_timed_and_projected_to_the_paper_s_240(capsys):
    epoch = bench.epoch_time("catkd", "resnet8", "resnet14", "cpu", train_images=3 * 64 + 5,
                             warmup=1)
    assert (epoch["train_images"], epoch["test_images"]) == (3 * 64 + 5, 39)
    assert epoch["seconds"] == epoch["train_seconds"] + epoch["test_seconds"]
    assert epoch["train_seconds"] > 0 and epoch["test_seconds"] > 0
    assert epoch["projected_minutes"] == 240 * epoch["seconds"] / 60


def test_the_command_line_prints_the_projection(tmp_path, capsys):
    from catkd.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--student", "resnet8", "--teacher", "resnet14", "--device", "cpu",
                 "--steps", "1", "--warmup", "1", "--rounds", "1", "--workers", "0",
                 "--step-methods", "ce", "catkd", "--epoch-images", "130",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["epoch"]["train_images"] == 130
    assert list(results["step_ms"]) == ["ce", "catkd"] and "catkd_over_kd" not in results
    printed = capsys.readouterr().out
    assert "240 epochs in" in printed and "catkd step / kd step" not in printed


def test_the_authors_pipeline_transforms_like_torchvision():
    dataset = bench.cifar_shaped(4, num_classes=10)
    image, label = bench._PILDataset(dataset)[0]
    assert image.shape == (3, 32, 32) and image.dtype.is_floating_point
    assert label == int(dataset.labels[0])


def test_bad_arguments_are_refused_before_any_timing():
    with pytest.raises(ValueError, match="unknown step methods \\['nope'\\]; valid names: at, cat"):
        bench.bench(step_methods=["kd", "nope"], device="cpu")
    with pytest.raises(ValueError, match="at least one batch \\(64\\), got 10"):
        bench.bench(epoch_images=10, device="cpu")


@pytest.mark.parametrize("bf16", [False, True])
def test_a_transformer_teacher_s_arithmetic_is_counted_in_float32_and_bf16(bf16):
    """A frozen vit_micro teacher runs nn.TransformerEncoderLayer's fused fast path, which the
    flop counter does not know (and which failed under it with bf16 autocast): its forward is
    counted through the layer's plain ops, and the fast path is on again afterwards."""
    dataset = bench.cifar_shaped(8, num_classes=10, in_channels=1, image_size=28)
    loader = data.BatchLoader(dataset, 8, train=True, device=torch.device("cpu"))
    flops = {name: bench._step_flops(bench._method(name, "resnet8", "vit_micro",
                                                   torch.device("cpu"), False, dataset),
                                     loader, torch.device("cpu"), bf16)
             for name in ("ce", "kd")}
    teacher = models.create("vit_micro", num_classes=10, in_channels=1).eval()
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            teacher(torch.zeros(8, 1, 28, 28))
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    # kd's step is ce's plus the teacher's forward (and a few element-wise ops, not counted).
    assert flops["kd"] - flops["ce"] == counter.get_total_flops() > 0
    assert torch.backends.mha.get_fastpath_enabled()


def test_the_plan_s_step_times_time_the_steps_alone(monkeypatch):
    """``step_ms`` (the plan's calibration) times each method's step on random images of the
    asked shape, and neither counts the arithmetic nor measures the peak (the large matrix
    products took a third of the quick book's calibration)."""
    def refused(*args, **kwargs):
        raise AssertionError("step_ms counted flops or timed the peak")

    monkeypatch.setattr(bench, "_step_flops", refused)
    monkeypatch.setattr(bench, "_matmul_timer", refused)
    shapes = []
    monkeypatch.setattr(bench, "_timer", lambda method, loader, *args: (
        shapes.append(next(iter(loader))[0].shape) or (lambda num_steps: 0.002 * num_steps)))
    milliseconds = bench.step_ms(["ce", "kd"], "resnet8", "resnet20", "cpu", steps=2, warmup=1,
                                 rounds=1, batch_size=4, num_classes=10, in_channels=1,
                                 image_size=28)
    assert milliseconds == pytest.approx({"ce": 2.0, "kd": 2.0})
    assert shapes == [(4, 1, 28, 28)] * 2
