"""Training throughput, side by side in one process: ``python -m catkd bench``.

Two ways of feeding and running the same distillation step (``catkd.train``'s own):

* ``authors``: the way the reference code trains: PIL images through per-sample torchvision
  transforms (random crop with padding 4, flip, to-tensor, normalise) in a DataLoader with
  workers; float32, eager, the default memory format.
* ``fast``: catkd's path: uint8 images held on the device with crop, flip and normalisation done
  per batch there (``catkd.data.BatchLoader``), the precision and memory format that
  ``runtime.bf16=auto`` and ``runtime.channels_last=auto`` choose for the device
  (``catkd.device``), and optionally torch.compile (``compile``: true, or a torch.compile mode
  such as "reduce-overhead", which adds CUDA graphs on a GPU).

Each contestant runs ``warmup`` steps, then ``rounds`` rounds of ``steps`` steps of batch 64 on
32x32 CIFAR-shaped data (random pixels: throughput does not depend on what they show), the
contestants taking turns round by round; the median round counts. Then the step of every
method of the paper's comparison (``STEP_METHODS``: ce, kd, dkd, at, catkd and the
feature-based fitnet, rkd, ofd, crd, reviewkd, each with its default settings; or those of
``step_methods``) is timed the same way on the
fast path, so that the cost of the CAT term can be read off beside the others', and each
method's extra trainable parameters (connectors, embeddings) are counted. Everything runs in
one process: compare the ratios, which a shared machine disturbs much less than the absolute
numbers. On a CPU that process keeps the memory its steps free, as a training run does
(``catkd.device.keep_freed_memory``), for every contestant alike.

Each step's floating-point operations (forward and backward, counted once with torch's
``FlopCounterMode``) give its achieved GFLOP/s, printed beside the peak measured on the same
device in the same interleaved rounds (so a busy spell lowers both alike): large square matrix
products in the fast path's precision. Their quotient is how close the step comes to what the
device can do.

With ``epoch_images`` the fast path also trains one whole epoch of that many images (50000 is
CIFAR-100's training set) and evaluates on a fifth as many, as ``catkd.train.fit`` does each
epoch, and projects the paper's 240 epochs from that time.
"""

from __future__ import annotations

import itertools
import json
import statistics
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms

from torch.utils.flop_counter import FlopCounterMode

from catkd import data, methods, models
from catkd import device as devices
from catkd.train import StepState, compiled, evaluate, train_epoch

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
PAPER_EPOCHS = 240
STEP_METHODS = ("ce", "kd", "dkd", "at", "catkd", "fitnet", "rkd", "ofd", "crd", "reviewkd")
PEAK = "peak matrix product"  # a contestant of the step timing that is not a method


class _PILDataset(torch.utils.data.Dataset):
    """CIFAR-style dataset of PIL images, transformed one sample at a time."""

    def __init__(self, dataset: data.ImageDataset):
        self.images = dataset.images.permute(0, 2, 3, 1).numpy()  # N H W C, uint8
        self.labels = dataset.labels.tolist()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def cifar_shaped(num_images: int, num_classes: int = 100, seed: int = 0, in_channels: int = 3,
                 image_size: int = 32) -> data.ImageDataset:
    """Random uint8 images (N, C, S, S) with random labels and CIFAR-100's statistics
    (per channel, cycled when C is not 3)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, in_channels, image_size, image_size),
                           dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    return data.ImageDataset(images, labels, [str(k) for k in range(num_classes)],
                             tuple(CIFAR_MEAN[c % 3] for c in range(in_channels)),
                             tuple(CIFAR_STD[c % 3] for c in range(in_channels)), "cifar-shaped")


def _method(name: str, student: str, teacher: str, device: torch.device,
            channels_last: bool, dataset: data.ImageDataset,
            settings: dict | None = None, fast: bool = True) -> methods.Method:
    """The method as the engine trains it (``fast``: its teacher's BatchNorms folded), or as
    the authors' code does (not folded)."""
    torch.manual_seed(0)
    shape = {"num_classes": dataset.num_classes, "in_channels": dataset.in_channels,
             "image_size": dataset.image_size}
    student_model = models.create(student, **shape)
    teacher_model = models.create(teacher, **shape) if methods.needs_teacher(name) else None
    method = methods.create(name, student_model, teacher_model, train_labels=dataset.labels,
                            fold_teacher=fast, **(settings or {})).to(device)
    return method.to(memory_format=torch.channels_last) if channels_last else method


def _timer(method: methods.Method, loader, device: torch.device, bf16: bool,
           channels_last: bool, compile_step: bool | str) -> Callable[[int], float]:
    """A function that trains ``method`` for n batches of ``loader`` and returns the seconds."""
    if device.type == "cpu":  # as catkd.train trains (for every contestant: it is process-wide)
        devices.keep_freed_memory()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10**9])
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    state = StepState(compiled(method, compile_step), method, optimizer, schedule, device,
                      bf16=bf16, memory_format=memory_format)
    # For every contestant, as the engine (catkd.train) and the authors' code set it.
    torch.backends.cudnn.benchmark = True

    def run(num_steps: int) -> float:
        batches = itertools.islice(iter(loader), num_steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_epoch([state], batches, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return run


def _interleaved(timers: dict[str, Callable[[int], float]], warmup: int, steps: int,
                 rounds: int) -> dict[str, float]:
    """Median seconds per step of each timer, measured in alternating rounds, so that a slow
    spell of a shared machine hits every contestant alike."""
    for run in timers.values():
        run(warmup)
    seconds = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            seconds[name].append(run(steps) / steps)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _step_flops(method: methods.Method, loader, device: torch.device, bf16: bool) -> int:
    """Floating-point operations of one training step (forward and backward) of ``method``."""
    images, labels, *indices = next(iter(loader))
    indices = [index.to(device) for index in indices]
    method.train()
    # A frozen transformer teacher (eval, no grad) takes nn.TransformerEncoderLayer's fused
    # fast path, one op the counter does not know (its flops would be left out: 0.4 of 51.8
    # MFLOP for vit_micro's forward) and that fails under it with bf16 autocast; counted
    # through the layer's plain ops instead, which compute the same.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                _, losses = method(images.to(device), labels.to(device), 0, *indices)
            sum(losses.values()).backward()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _matmul_timer(device: torch.device, bf16: bool) -> tuple[Callable[[int], float], int]:
    """A function that runs n large square matrix products (bf16 or float32) on ``device`` and
    returns the seconds, and the floating-point operations of one product: the arithmetic the
    device can reach, for comparison with a step's."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    left, right = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def run(num_products: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(num_products):
            left @ right
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return run, 2 * size**3


def bench(method: str = "catkd", student: str = "resnet8x4", teacher: str = "resnet32x4",
          device: str = "auto", steps: int = 20, warmup: int = 5, rounds: int = 3,
          batch_size: int = 64, workers: int = 2, compile_step: bool | str = False,
          step_methods: Sequence[str] = STEP_METHODS, epoch_images: int = 0,
          out: str | None = None) -> dict:
    """Measure and print the side-by-side table; write it as JSON to ``out`` if given."""
    # Checked before minutes of timing, not after.
    unknown = sorted(set(step_methods) - set(methods.names()))
    if unknown:
        raise ValueError(f"unknown step methods {unknown}; valid names: "
                         f"{', '.join(methods.names())}")
    if epoch_images and epoch_images < batch_size:
        raise ValueError(f"epoch_images must be 0 (no epoch timed) or at least one batch "
                         f"({batch_size}), got {epoch_images}")
    device = devices.resolve(device)
    path = devices.settle({"device": device, "bf16": "auto", "channels_last": "auto"})
    bf16, channels_last = path["bf16"], path["channels_last"]
    print(f"fast path on {device}: bf16={bf16}, channels_last={channels_last}, because "
          f"{devices.describe(device)}", flush=True)
    dataset = cifar_shaped(batch_size * (warmup + steps + 1))  # every call draws fresh batches
    authors_loader = torch.utils.data.DataLoader(
        _PILDataset(dataset), batch_size=batch_size, shuffle=True, num_workers=workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    fast_loader = data.BatchLoader(dataset, batch_size, train=True, device=device,
                                   channels_last=channels_last)
    results = {
        "device": str(device), "device_name": devices.name(device),
        "path": devices.describe(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "bf16": bf16, "channels_last": channels_last,
        "compile": compile_step, "method": method, "student": student, "teacher": teacher,
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "rounds": rounds,
        "workers": workers,
    }
    per_step = _interleaved({
        "authors": _timer(_method(method, student, teacher, device, False, dataset,
                                  fast=False),
                          authors_loader, device, False, False, False),
        "fast": _timer(_method(method, student, teacher, device, channels_last, dataset),
                       fast_loader, device, bf16, channels_last, compile_step),
    }, warmup, steps, rounds)
    results["images_per_second"] = {way: batch_size / seconds for way, seconds in per_step.items()}
    results["speedup"] = per_step["authors"] / per_step["fast"]
    results.update(step_times(step_methods, student, teacher, device, steps, warmup, rounds,
                              batch_size, compile_step=compile_step, dataset=dataset))
    results["fraction_of_peak"] = {name: gflops / results["peak_gflops"]
                                   for name, gflops in results["step_gflops"].items()}
    if {"catkd", "kd"} <= set(step_methods):
        results["catkd_over_kd"] = results["step_ms"]["catkd"] / results["step_ms"]["kd"]
    if epoch_images:
        results["epoch"] = epoch_time(method, student, teacher, device, epoch_images,
                                      batch_size, warmup, compile_step)
    results["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                                 if device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(_table(results))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
        print(f"written: {out}")
    return results


def step_times(names: Sequence[str], student: str, teacher: str, device: str | torch.device,
               steps: int = 20, warmup: int = 5, rounds: int = 3, batch_size: int = 64,
               num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
               compile_step: bool | str = False, dataset: data.ImageDataset | None = None,
               settings: dict[str, dict] | None = None) -> dict:
    """The fast path's median step time ("step_ms", {method: ms}), its achieved arithmetic
    ("step_gflops", {method: GFLOP/s}) and extra trainable parameters ("extra_parameters",
    {method: count}) of each method in ``names``, timed in interleaved rounds on random images
    of the given shape (or ``dataset``'s), with the device's peak ("peak_gflops") measured in
    the same rounds. ``settings`` gives a method other settings than its defaults, e.g. a run's
    ``config["loss"]``."""
    step_methods, loaders, timers, bf16 = _contestants(
        names, student, teacher, device, steps + warmup, batch_size, num_classes, in_channels,
        image_size, compile_step, dataset, settings)
    device = devices.resolve(device)
    flops = {name: _step_flops(step_method, loaders[step_method.needs_sample_indices], device,
                               bf16)
             for name, step_method in step_methods.items()}
    matmuls, matmul_flops = _matmul_timer(device, bf16)
    step_seconds = _interleaved({**timers, PEAK: matmuls}, warmup, steps, rounds)
    peak_seconds = step_seconds.pop(PEAK)
    return {"peak_gflops": matmul_flops / peak_seconds / 1e9,
            "step_ms": {name: 1000 * seconds for name, seconds in step_seconds.items()},
            "step_gflops": {name: flops[name] / seconds / 1e9
                            for name, seconds in step_seconds.items()},
            "extra_parameters": {name: step_method.extra_parameter_count()
                                 for name, step_method in step_methods.items()}}


def step_ms(names: Sequence[str], student: str, teacher: str, device: str | torch.device,
            steps: int = 20, warmup: int = 5, rounds: int = 3, batch_size: int = 64,
            num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
            settings: dict[str, dict] | None = None) -> dict[str, float]:
    """{method: median milliseconds per step} of ``step_times`` alone, without the arithmetic
    count and the peak, which cost more than the steps of a small model (``catkd.plan``'s
    calibration times a few steps of many)."""
    _, _, timers, _ = _contestants(names, student, teacher, device, steps + warmup, batch_size,
                                   num_classes, in_channels, image_size, False, None, settings)
    return {name: 1000 * seconds
            for name, seconds in _interleaved(timers, warmup, steps, rounds).items()}


def _contestants(names: Sequence[str], student: str, teacher: str, device: str | torch.device,
                 steps: int, batch_size: int, num_classes: int, in_channels: int,
                 image_size: int, compile_step: bool | str, dataset: data.ImageDataset | None,
                 settings: dict[str, dict] | None) -> tuple[dict, dict, dict, bool]:
    """The methods of ``names`` on the fast path, the loaders they read (by whether they take
    sample indices), their timers (``_timer``) and whether the path is bf16; random images of
    the given shape for ``steps`` and one more batch unless ``dataset`` is given."""
    device = devices.resolve(device)
    path = devices.settle({"device": device, "bf16": "auto", "channels_last": "auto"})
    bf16, channels_last = path["bf16"], path["channels_last"]
    if dataset is None:
        dataset = cifar_shaped(batch_size * (steps + 1), num_classes, in_channels=in_channels,
                               image_size=image_size)
    loaders = {indices: data.BatchLoader(dataset, batch_size, train=True, device=device,
                                         channels_last=channels_last, sample_indices=indices)
               for indices in (False, True)}
    step_methods = {name: _method(name, student, teacher, device, channels_last, dataset,
                                  (settings or {}).get(name, {}))
                    for name in names}
    timers = {name: _timer(step_method, loaders[step_method.needs_sample_indices], device, bf16,
                           channels_last, compile_step)
              for name, step_method in step_methods.items()}
    return step_methods, loaders, timers, bf16


def epoch_time(method: str, student: str, teacher: str, device: str | torch.device,
               train_images: int = 50000, batch_size: int = 64, warmup: int = 5,
               compile_step: bool | str = False) -> dict:
    """Seconds of one training epoch of ``train_images`` random CIFAR-shaped images plus an
    evaluation of ``train_images // 5``, on the fast path with ``catkd.train``'s own epoch and
    evaluation functions (after ``warmup`` untimed steps, which also hold any compilation), and
    the paper's 240-epoch run projected from them."""
    device = devices.resolve(device)
    path = devices.settle({"device": device, "bf16": "auto", "channels_last": "auto"})
    bf16, channels_last = path["bf16"], path["channels_last"]
    train_set = cifar_shaped(train_images, seed=1)
    test_set = cifar_shaped(train_images // 5, seed=2)
    epoch_method = _method(method, student, teacher, device, channels_last, train_set)
    train_loader = data.BatchLoader(train_set, batch_size, train=True, device=device,
                                    channels_last=channels_last,
                                    sample_indices=epoch_method.needs_sample_indices)
    run = _timer(epoch_method, train_loader, device, bf16, channels_last, compile_step)
    run(warmup)
    train_seconds = run(len(train_loader))
    test_loader = data.BatchLoader(test_set, batch_size, train=False, device=device,
                                   channels_last=channels_last)
    started = time.perf_counter()
    evaluate(epoch_method.student, test_loader, test_set.num_classes, device, bf16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    test_seconds = time.perf_counter() - started
    seconds = train_seconds + test_seconds
    return {"train_images": len(train_set), "test_images": len(test_set),
            "train_seconds": train_seconds, "test_seconds": test_seconds, "seconds": seconds,
            "projected_minutes": PAPER_EPOCHS * seconds / 60}


def _table(results: dict) -> str:
    rate = results["images_per_second"]
    lines = [
        f"{results['method']} {results['teacher']} -> {results['student']}, batch "
        f"{results['batch_size']}, median of {results['rounds']} interleaved rounds of "
        f"{results['steps']} steps (after {results['warmup']}), on "
        f"{results['device']} ({results['device_name']}, {results['threads']} threads)",
        f"  authors' way (PIL + DataLoader, {results['workers']} workers, float32): "
        f"{rate['authors']:8.1f} images/s",
        f"  catkd fast path (tensors on device, channels_last={results['channels_last']}, "
        f"bf16={results['bf16']}, compile={results['compile']}): {rate['fast']:8.1f} images/s",
        f"  speed-up: {results['speedup']:.2f}x",
        f"  peak: {results['peak_gflops']:.0f} GFLOP/s (a large matrix product in "
        f"{'bf16' if results['bf16'] else 'float32'})",
        "  fast-path step time, achieved GFLOP/s (fraction of peak), extra trainable parameters:",
        *(f"    {name:<9} {ms:8.1f} ms  {results['step_gflops'][name]:8.1f} GFLOP/s "
          f"({results['fraction_of_peak'][name]:6.1%})  {results['extra_parameters'][name]:,}"
          for name, ms in results["step_ms"].items()),
        *([f"  catkd step / kd step: {results['catkd_over_kd']:.3f}"]
          if "catkd_over_kd" in results else []),
        *([f"  one epoch of {epoch['train_images']} images + evaluation of "
           f"{epoch['test_images']}: {epoch['train_seconds']:.1f} + {epoch['test_seconds']:.1f} s"
           f" -> {PAPER_EPOCHS} epochs in {epoch['projected_minutes']:.1f} min"]
          if (epoch := results.get("epoch")) else []),
        f"  peak memory: {results['peak_memory_mb']:.0f} MB "
        f"({'CUDA allocated' if results['device'].startswith('cuda') else 'process RSS'})",
    ]
    return "\n".join(lines)
