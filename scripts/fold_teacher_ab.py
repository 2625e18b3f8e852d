"""The time a distillation step saves when the teacher's BatchNorms are folded into its
convolutions (``catkd.models.fold_batchnorm``), measured the way ``python -m catkd bench`` times
the fast path: both steps in one process, taking turns in rounds, on the precision and memory
format ``auto`` chooses here, one thread (as the quick profile's runs have).

    python scripts/fold_teacher_ab.py                        # the quick pair on 28x28 grey
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/fold_teacher_ab.py
                                                             # the path of a CPU without bf16
"""

import argparse

import torch

from catkd import bench, data, device as devices

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--student", default="resnet8")
parser.add_argument("--teacher", default="resnet20")
parser.add_argument("--methods", nargs="+", default=["kd", "catkd"])
parser.add_argument("--image-size", type=int, default=28)
parser.add_argument("--channels", type=int, default=1)
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

torch.set_num_threads(1)
device = torch.device("cpu")
path = devices.settle({"device": device, "bf16": "auto", "channels_last": "auto"})
images = bench.cifar_shaped(args.batch_size * 30, args.classes, in_channels=args.channels,
                            image_size=args.image_size)
loader = data.BatchLoader(images, args.batch_size, train=True, device=device,
                          channels_last=path["channels_last"])
timers = {}
for method in args.methods:
    for folded in (False, True):
        step = bench._method(method, args.student, args.teacher, device, path["channels_last"],
                             images, fast=folded)
        timers[method, folded] = bench._timer(step, loader, device, path["bf16"],
                                              path["channels_last"], False)
seconds = bench._interleaved(timers, 3, 15, 3)
print(f"{devices.describe(device)}; {args.teacher} -> {args.student}, batch {args.batch_size}, "
      f"{args.channels}x{args.image_size}x{args.image_size}, 1 thread, median of 3 rounds")
for method in args.methods:
    plain, folded = seconds[method, False], seconds[method, True]
    print(f"{method}: {1000 * plain:.1f} ms a step, {1000 * folded:.1f} ms with the teacher "
          f"folded ({plain / folded:.3f}x)")
