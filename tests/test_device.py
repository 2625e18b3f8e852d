"""Precision and memory format chosen for the device: ``auto`` resolves, the run identity holds
the resolved precision, a forced bf16 without native support warns."""

import json
import os
import subprocess
import sys

import pytest
import torch

from catkd import config, device, train
from conftest import tiny


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch):
    """Pretend the CPU has (or lacks) native bf16."""
    monkeypatch.setattr(device, "bf16_native", lambda _: request.param)
    return request.param


def test_auto_is_the_default_and_follows_the_device(native):
    runtime = config.resolve(None, ["runtime.device=cpu"])["runtime"]
    assert config.DEFAULTS["runtime"]["bf16"] == config.DEFAULTS["runtime"]["channels_last"] == "auto"
    assert runtime["bf16"] is native
    assert runtime["channels_last"] is True  # faster on every CPU path measured
    forced = config.resolve(None, ["runtime.bf16=true", "runtime.channels_last=false"])["runtime"]
    assert (forced["bf16"], forced["channels_last"]) == (True, False)


def test_a_run_made_with_native_bf16_is_not_an_fp32_run(monkeypatch):
    names = {}
    for native in (True, False):
        monkeypatch.setattr(device, "bf16_native", lambda _, native=native: native)
        names[native] = config.run_name(config.resolve("configs/quick/catkd.yaml"))
    assert names[True] != names[False]
    # The folder's config records the resolved value, so it resolves to the same identity.
    assert names[True] == config.run_name(config.resolve("configs/quick/catkd.yaml",
                                                         ["runtime.bf16=true"]))


def test_bad_runtime_values_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="runtime.bf16 must be true, false or auto, got 'maybe'"):
        config.resolve(None, ["runtime.bf16=maybe"])
    for wrong in ("fast", "1"):
        with pytest.raises(ValueError, match="runtime.compile must be one of false, true, "
                                             "reduce-overhead"):
            config.resolve(None, [f"runtime.compile={wrong}"])
    with pytest.raises(ValueError, match="runtime.device must be auto, cpu, cuda"):
        device.resolve("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU here; use runtime.device=auto"):
        config.resolve(None, ["runtime.device=cuda"])


def test_the_resolved_precision_is_recorded_and_a_forced_emulation_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "bf16_native", lambda _: False)
    with pytest.warns(UserWarning, match="no native bf16: emulated, about 10x slower"):
        run = train.fit(None, tiny(tmp_path, "optim.epochs=1", "runtime.bf16=true"), quiet=True)
    environment = json.loads((run.path / "environment.json").read_text())
    assert environment["bf16"] is True and environment["channels_last"] is True
    assert "no native bf16" in environment["device_precision"]
    assert run.summary["bf16"] is True and run.summary["channels_last"] is True


def test_describe_names_the_cpu_and_its_flags():
    line = device.describe(torch.device("cpu"))
    assert device.name(torch.device("cpu")) in line
    assert "flags:" in line and line.endswith(("native bf16", "(float32 is faster)"))


# In a process of its own (the setting is process-wide): page faults of allocating and freeing
# eight 4 MiB tensors twenty times, after two rounds that set the heap up.
_FAULTS = """
import resource, sys, torch
from catkd import device
kept = device.keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    [torch.ones(2**20) for _ in range(8)]
before = faults()
for _ in range(20):
    tensors = [torch.ones(2**20) for _ in range(8)]
    del tensors
print(kept, faults() - before)
"""


def test_training_on_the_cpu_keeps_freed_memory_instead_of_faulting_it_back_in():
    """With glibc's initial thresholds (128 KiB) each 4 MiB block freed goes back to the kernel
    and its 1024 pages fault in again on the next use; once ``keep_freed_memory`` has run they
    are reused. Both processes start with those thresholds pinned: glibc raises them as a
    process frees large blocks, so what its defaults do later depends on what the process
    allocated before (in one checkout the default process faulted 163,200 pages, in another
    1,024)."""
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        glibc = None
    if not glibc:
        pytest.skip("keep_freed_memory sets glibc's malloc; this libc is not glibc")
    outputs = {}
    for mode in ("default", "keep"):
        result = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                                text=True, timeout=120, check=True,
                                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072",
                                     "MALLOC_TRIM_THRESHOLD_": "131072"})
        kept, faults = result.stdout.split()
        outputs[mode] = (kept, int(faults))
    assert outputs["keep"][0] == "True"
    assert outputs["default"][1] > 20 * 8 * 1024 / 2, outputs  # most blocks faulted back in
    assert outputs["keep"][1] < outputs["default"][1] / 20, outputs


def test_a_cpu_run_and_the_timed_steps_keep_freed_memory(tmp_path, monkeypatch):
    """The training loop and the benchmark's (and so the plan's) timed steps run with the same
    memory behaviour, so that the plan's estimate is of the runs as they train."""
    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: calls.append("kept") or True)
    train.fit(None, tiny(tmp_path), quiet=True)
    assert calls
    calls.clear()
    from catkd import bench
    bench.step_ms(["ce"], "resnet8", "resnet20", "cpu", steps=1, warmup=1, rounds=1,
                  batch_size=4, num_classes=10, in_channels=1, image_size=28)
    assert calls
