"""Training throughput, side by side in one process: ``python -m catkd bench``.

Two ways of feeding and running the same distillation step (``catkd.train``'s own):

* ``authors``: the way the reference code trains: PIL images through per-sample torchvision
  transforms (random crop with padding 4, flip, to-tensor, normalise) in a DataLoader with
  workers; float32, eager, the default memory format.
* ``fast``: catkd's path: uint8 images held on the device with crop, flip and normalisation done
  per batch there (``catkd.data.BatchLoader``), channels_last, bf16 autocast where the device
  supports it natively, and optionally torch.compile.

Both run ``warmup`` steps, then time ``steps`` steps of batch 64 on 32x32 CIFAR-shaped data
(random pixels: throughput does not depend on what the pixels show). Then one ce, one kd and
one catkd step are timed on the fast path, so that the cost of the CAT term can be read off
beside KD's. Everything is measured in one process, one after the other: compare the ratios,
which shared machines disturb much less than the absolute numbers.
"""

from __future__ import annotations

import itertools
import json
import resource
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from catkd import data, methods, models
from catkd.train import bf16_supported, device_name, train_epoch

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


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


def cifar_shaped(num_images: int, num_classes: int = 100, seed: int = 0) -> data.ImageDataset:
    """Random uint8 images (N, 3, 32, 32) with random labels and CIFAR-100's statistics."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8,
                           generator=generator)
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)
    return data.ImageDataset(images, labels, [str(k) for k in range(num_classes)], CIFAR_MEAN,
                             CIFAR_STD, "cifar-shaped")


def _method(name: str, student: str, teacher: str, device: torch.device,
            channels_last: bool) -> methods.Method:
    torch.manual_seed(0)
    student_model = models.create(student, num_classes=100)
    teacher_model = models.create(teacher, num_classes=100) if methods.needs_teacher(name) else None
    method = methods.create(name, student_model, teacher_model).to(device)
    return method.to(memory_format=torch.channels_last) if channels_last else method


def _throughput(method: methods.Method, loader, device: torch.device, bf16: bool,
                channels_last: bool, compile_step: bool, warmup: int, steps: int,
                batch_size: int) -> float:
    """Images per second of the engine's training epoch over ``steps`` batches."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10**9])
    step = torch.compile(method) if compile_step else method
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    def run(num_steps: int) -> float:
        batches = itertools.islice(iter(loader), num_steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_epoch(step, method, batches, optimizer, schedule, 0, device, bf16, memory_format,
                     "step", desc="bench")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    run(warmup)
    return steps * batch_size / run(steps)


def bench(method: str = "catkd", student: str = "resnet8x4", teacher: str = "resnet32x4",
          device: str = "auto", steps: int = 30, warmup: int = 5, batch_size: int = 64,
          workers: int = 2, compile_step: bool = False, out: str | None = None) -> dict:
    """Measure and print the side-by-side table; write it as JSON to ``out`` if given."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    bf16 = bf16_supported(device)
    dataset = cifar_shaped(batch_size * (warmup + steps + 1))
    authors_loader = torch.utils.data.DataLoader(
        _PILDataset(dataset), batch_size=batch_size, shuffle=True, num_workers=workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    fast_loader = data.BatchLoader(dataset, batch_size, train=True, device=device,
                                   channels_last=True)
    results = {
        "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "bf16": bf16,
        "compile": compile_step, "method": method, "student": student, "teacher": teacher,
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "workers": workers,
    }
    authors = _throughput(_method(method, student, teacher, device, False), authors_loader,
                          device, False, False, False, warmup, steps, batch_size)
    fast = _throughput(_method(method, student, teacher, device, True), fast_loader, device,
                       bf16, True, compile_step, warmup, steps, batch_size)
    results["images_per_second"] = {"authors": authors, "fast": fast}
    results["speedup"] = fast / authors
    step_ms = {}
    for name in ("ce", "kd", "catkd"):
        throughput = _throughput(_method(name, student, teacher, device, True), fast_loader,
                                 device, bf16, True, compile_step, warmup, steps, batch_size)
        step_ms[name] = 1000 * batch_size / throughput
    results["step_ms"] = step_ms
    results["catkd_over_kd"] = step_ms["catkd"] / step_ms["kd"]
    results["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20
                                 if device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(_table(results))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
        print(f"written: {out}")
    return results


def _table(results: dict) -> str:
    rate = results["images_per_second"]
    lines = [
        f"{results['method']} {results['teacher']} -> {results['student']}, batch "
        f"{results['batch_size']}, {results['steps']} steps after {results['warmup']}, on "
        f"{results['device']} ({results['device_name']}, {results['threads']} threads)",
        f"  authors' way (PIL + DataLoader, {results['workers']} workers, float32): "
        f"{rate['authors']:8.1f} images/s",
        f"  catkd fast path (tensors on device, channels_last, bf16={results['bf16']}, "
        f"compile={results['compile']}): {rate['fast']:8.1f} images/s",
        f"  speed-up: {results['speedup']:.2f}x",
        "  fast-path step time: " + ", ".join(f"{name} {ms:.1f} ms"
                                              for name, ms in results["step_ms"].items()),
        f"  catkd step / kd step: {results['catkd_over_kd']:.3f}",
        f"  peak memory: {results['peak_memory_mb']:.0f} MB "
        f"({'CUDA allocated' if results['device'].startswith('cuda') else 'process RSS'})",
    ]
    return "\n".join(lines)
