"""Training steps on the CPU with and without ``catkd.device.keep_freed_memory`` (glibc's malloc
keeping the memory a step frees for the next step, as ``catkd.train`` runs on a CPU).

The setting is process-wide, so each measurement is a fresh process: the two ways take turns,
``--rounds`` times, each timing ``--steps`` steps of the quick pair (resnet20 -> resnet8,
28x28 grey, batch 64, one thread) with ``catkd.bench.step_ms``. With ``--parallel`` two
processes of the same way run at once, as ``make book``'s two workers do. Prints each
process's ms per step and page faults (the whole process's, set-up included), and the medians.

    python scripts/keep_freed_memory_ab.py [--methods ce kd] [--rounds 3] [--parallel]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

WAYS = ("default", "keep")


def child(way: str, method: str, steps: int) -> None:
    import torch

    from catkd import bench, device

    torch.set_num_threads(1)
    if way == "default":  # glibc's own settings: step_ms would otherwise set them
        device.keep_freed_memory = lambda: False
    milliseconds = bench.step_ms([method], "resnet8", "resnet20", "cpu", steps=steps, warmup=2,
                                 rounds=1, batch_size=64, num_classes=10, in_channels=1,
                                 image_size=28)[method]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"ms": milliseconds, "faults": faults}))


def measure(way: str, method: str, steps: int, processes: int) -> list[dict]:
    started = [subprocess.Popen([sys.executable, __file__, "--child", way, method, str(steps)],
                                stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    results = []
    for process in started:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"the {way} {method} process failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ce", "kd"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--parallel", action="store_true", help="two processes at once")
    parser.add_argument("--child", nargs=3, metavar=("WAY", "METHOD", "STEPS"),
                        help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        way, method, steps = arguments.child
        child(way, method, int(steps))
        return
    processes = 2 if arguments.parallel else 1
    for method in arguments.methods:
        times = {way: [] for way in WAYS}
        for round_number in range(arguments.rounds):
            for way in WAYS:
                for result in measure(way, method, arguments.steps, processes):
                    times[way].append(result["ms"])
                    print(f"{method} round {round_number + 1} {way}: {result['ms']:.1f} ms per "
                          f"step, {result['faults']} page faults", flush=True)
        default, keep = (statistics.median(times[way]) for way in WAYS)
        print(f"{method}: median {default:.1f} -> {keep:.1f} ms per step ({default / keep:.2f}x)"
              f"{' in two processes at once' if processes > 1 else ''}", flush=True)


if __name__ == "__main__":
    main()
