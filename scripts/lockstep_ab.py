"""The time that training students in lockstep saves (``catkd.train.fit_lockstep``: one teacher
forward per batch for all of them), measured on real runs: the quick profile's kd, dkd and
catkd students of one seed, trained one after the other and then in lockstep, each way in a
fresh run folder, one thread, as a sweep's worker trains them, from the quick teacher's
checkpoint in runs/ (`make book` trains it). Both ways give the same runs (the script checks
their accuracies).

    python scripts/lockstep_ab.py                           # 10% of each class
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/lockstep_ab.py
                                                            # the path of a CPU without bf16
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from catkd import config, device as devices, train

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--fraction", type=float, default=0.1, help="of each class's images")
parser.add_argument("--methods", nargs="+", default=["kd", "dkd", "catkd"])
args = parser.parse_args()

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quick"
# The book's quick teacher (trained with bf16 where the CPU has it: its precision does not
# change the time of a student's step, which runs in the precision auto chooses here).
teacher_run = config.teacher_config(config.resolve(QUICK / "kd.yaml", [
    f"out={ROOT / 'runs'}", "runtime.bf16=true"]))
checkpoint = Path(teacher_run["out"]) / config.run_name(teacher_run) / "last.pt"
if not checkpoint.is_file():
    raise SystemExit(f"{checkpoint} is missing: make book (or python -m catkd sweep "
                     f"configs/quick/sweeps/methods.yaml) trains the quick teacher first")


def group(out: Path) -> list[dict]:
    return [config.resolve(QUICK / f"{method}.yaml", [
        f"out={out}", f"data.fraction={args.fraction}", f"teacher.checkpoint={checkpoint}"])
        for method in args.methods]


with tempfile.TemporaryDirectory() as folder:
    seconds, accuracies = {}, {}
    for way in ("one after the other", "in lockstep"):
        out = Path(folder) / way.replace(" ", "-")
        started = time.perf_counter()
        if way == "in lockstep":
            finished = train.fit_lockstep(group(out), quiet=True)
        else:
            finished = [train.fit(run_config, quiet=True) for run_config in group(out)]
        seconds[way] = time.perf_counter() - started
        accuracies[way] = [run.summary["best_acc"] for run in finished]
cpu = devices.describe(torch.device("cpu"))
print(f"{cpu}; {', '.join(args.methods)} students of the quick teacher on {args.fraction:g} of "
      f"each class, one epoch, 1 thread")
for way, taken in seconds.items():
    print(f"{way}: {taken:.1f} s, best accuracies {accuracies[way]}")
print(f"lockstep: {seconds['one after the other'] / seconds['in lockstep']:.2f}x; "
      f"the same runs: {accuracies['one after the other'] == accuracies['in lockstep']}")
