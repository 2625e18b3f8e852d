"""The device a run computes on, and the precision and memory format that are fast there.

``runtime.bf16`` and ``runtime.channels_last`` take ``auto`` (the default): on where the device
runs them natively and fast, off elsewhere. bf16 autocast is native on CUDA GPUs from Ampere on
and on CPUs with AVX512-BF16 or AMX; on any other CPU it is emulated and about 10x slower than
float32. channels_last was faster on every CPU path measured (float32 and bf16, AVX512 and
AVX2-only kernels; README, "Performance") and is the layout of cuDNN's fast convolutions.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from pathlib import Path
from typing import Iterator

import torch

AUTO = "auto"
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
# The CPU flags that decide the precision, as /proc/cpuinfo spells them.
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def resolve(name: str | torch.device) -> torch.device:
    """The device to compute on: ``"auto"`` -> cuda when torch sees a GPU, else cpu; any other
    name as torch reads it. A CUDA device that torch cannot see is a ValueError that says so."""
    device = _parse(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={name} but torch sees no CUDA GPU here; "
                         f"use runtime.device=auto or cpu")
    return device


def _parse(name: str | torch.device) -> torch.device:
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"runtime.device must be auto, cpu, cuda or cuda:<index>, "
                         f"got {name!r}") from error


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively, where bf16 autocast speeds training up."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def channels_last_fast(device: torch.device) -> bool:
    """Whether channels_last convolutions are the fast ones on ``device`` (CPUs and GPUs)."""
    return device.type in ("cpu", "cuda")


def settle(runtime: dict) -> dict:
    """``runtime`` with ``bf16`` and ``channels_last`` set to booleans, ``auto`` decided for
    its device. A value other than true, false or auto is a ValueError."""
    for key in ("bf16", "channels_last"):
        if runtime[key] not in (True, False, AUTO):
            raise ValueError(f"runtime.{key} must be true, false or auto, got {runtime[key]!r}")
    # Resolved without the hardware where the device's type decides, so that a GPU config can be
    # read (its run folders found) on a machine without a GPU; bf16 on a GPU asks the GPU.
    device = _parse(runtime["device"])
    settled = dict(runtime)
    if settled["channels_last"] == AUTO:
        settled["channels_last"] = channels_last_fast(device)
    if settled["bf16"] == AUTO:
        settled["bf16"] = bf16_native(resolve(device))
    return settled


def name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = _cpuinfo().get("model name")
    return model or platform.processor() or platform.machine()


def describe(device: torch.device) -> str:
    """One line on why the device gets the precision it gets, e.g. ``Intel Xeon (flags: avx2
    avx512f avx512_bf16 amx_bf16): native bf16``."""
    verdict = "native bf16" if bf16_native(device) else "no native bf16 (float32 is faster)"
    if device.type != "cpu":
        return f"{name(device)}: {verdict}"
    flags = set(_cpuinfo().get("flags", "").split())
    present = " ".join(flag for flag in _CPU_FLAGS if flag in flags) or "none of " + \
        " ".join(_CPU_FLAGS)
    return f"{name(device)} (flags: {present}; torch kernels: " \
           f"{torch.backends.cpu.get_cpu_capability()}): {verdict}"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    fields = {}
    for line in path.read_text().split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


@contextlib.contextmanager
def threads(count: int | str) -> Iterator[None]:
    """Run the block with ``count`` CPU threads (``runtime.threads``; "auto": as many as the
    process has), then give the process its own number back (a notebook kernel goes on with all
    its cores)."""
    before = torch.get_num_threads()
    if count != AUTO:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a CPU training step frees, for the next step.

    Each step frees its activations and allocates them again. With glibc's defaults, blocks of
    a few MiB go back to the kernel and come back as fresh pages, each zeroed on its first
    touch: a process timing 40 resnet20 -> resnet8 kd steps on the AVX2 path faulted in 440-530
    thousand pages against 140 thousand with the memory kept, and its steps were 1.08-1.10x
    slower (``scripts/keep_freed_memory_ab.py``; README, "Memory a step frees"). Blocks up to
    32 MiB (the most glibc allows) are then served from the heap, and the heap is not trimmed:
    the process keeps its peak memory, which every step reaches anyway. Process-wide; returns
    whether glibc took both settings (False, and nothing changed, elsewhere)."""
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not a Unix, or a libc that is not glibc
        glibc = None
    if not glibc:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
