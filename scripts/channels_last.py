"""channels_last against the default memory format, one training step at a time on the CPU.

    python scripts/channels_last.py THREADS [fp32]

For ce (the student alone) and catkd on the quick profile's pair (resnet20 -> resnet8, 28x28
grey) and the paper's (resnet32x4 -> resnet8x4, 32x32 colour), batch 64, in float32 and bf16
autocast ("fp32": float32 only): the median step time of 3 interleaved rounds of each layout.
Run it under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 for the kernels of a CPU without
AVX512 (and without native bf16). It chose runtime.channels_last=auto's rule (catkd.device).
"""

import statistics
import sys
import time

import torch

from catkd import methods, models


def timer(student_name, teacher_name, shape, channels_last, bf16, method_name):
    torch.manual_seed(0)
    num_classes = 10 if shape[0] == 1 else 100
    student = models.create(student_name, num_classes=num_classes, in_channels=shape[0])
    teacher = (models.create(teacher_name, num_classes=num_classes, in_channels=shape[0])
               if method_name != "ce" else None)
    settings = {"resolution": 2} if method_name == "catkd" else {}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    method = methods.create(method_name, student, teacher, **settings).to(
        memory_format=memory_format)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01,
                                momentum=0.9)
    images = torch.randn(64, *shape).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (64,))

    def run(steps):
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, losses = method(images, labels, 0)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    return run


torch.set_num_threads(int(sys.argv[1]))
precisions = (False,) if sys.argv[2:] == ["fp32"] else (False, True)
for student_name, teacher_name, shape, steps in [("resnet8", "resnet20", (1, 28, 28), 20),
                                                 ("resnet8x4", "resnet32x4", (3, 32, 32), 4)]:
    for method_name in ("ce", "catkd"):
        for bf16 in precisions:
            timers = {layout: timer(student_name, teacher_name, shape, layout, bf16, method_name)
                      for layout in (False, True)}
            for run in timers.values():
                run(3)
            seconds = {layout: [] for layout in timers}
            for _ in range(3):
                for layout, run in timers.items():
                    seconds[layout].append(run(steps))
            ms = {layout: 1000 * statistics.median(values) for layout, values in seconds.items()}
            print(f"{method_name} {teacher_name}->{student_name} bf16={bf16} threads="
                  f"{sys.argv[1]}: contiguous {ms[False]:.1f} ms, channels_last {ms[True]:.1f} "
                  f"ms, ratio {ms[True] / ms[False]:.2f}", flush=True)
