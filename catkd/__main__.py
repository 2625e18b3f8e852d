"""The command line: python -m catkd {train, teacher, sweep, report, probe, bench, list} ..."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  # a CAT-KD student on CIFAR-100 with a published teacher, the paper's recipe
  python -m catkd train --config configs/cifar100/catkd/resnet32x4-resnet8x4.yaml \\
      teacher.checkpoint=data/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth

  # the quick profile on Fashion-MNIST, CPU; change anything with dotted key=value overrides
  python -m catkd train --config configs/quick/catkd.yaml seed=1 loss.beta=30

  # train (and cache) a teacher by name
  python -m catkd teacher resnet20 --config configs/quick/teacher.yaml

  # the runs of a table: list them, run one (a job array), or run what is missing
  python -m catkd sweep configs/cifar100/sweeps/table6.yaml --list
  python -m catkd sweep configs/cifar100/sweeps/table6.yaml --index $SLURM_ARRAY_TASK_ID
  python -m catkd sweep configs/quick/sweeps/methods.yaml --jobs 2   # two worker processes
  python -m catkd sweep configs/quick/sweeps/*.yaml --jobs 2    # one plan for several tables
  python -m catkd sweep configs/quick/sweeps/*.yaml --jobs 2 --plan   # how long, trained nothing
  python -m catkd sweep configs/quick/sweeps/*.yaml --teacher resnet56   # another teacher
  python -m catkd report configs/cifar100/sweeps/table6.yaml --out reports

  # linear probing of a trained student on another dataset (Table 9)
  python -m catkd probe runs/<run folder> --dataset digits

  # training throughput, the authors' way against catkd's fast path, side by side
  python -m catkd bench --student resnet8x4 --teacher resnet32x4

Overrides use the config's key names (python -m catkd list keys); a wrong key is an error.
Under torchrun, train runs as DDP: torchrun --nproc_per_node=4 -m catkd train --config ...
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m catkd", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Class Attention Transfer based Knowledge Distillation: train teachers and "
                    "students, probe them. Each command prints where its run folder is.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a student (or any model) from a config",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML config (default: the built-in defaults)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. optim.lr=0.1 loss.beta=15 seed=2")

    teacher = commands.add_parser("teacher", help="train a model with cross-entropy (method ce)")
    teacher.add_argument("model", help="model name (python -m catkd list models)")
    teacher.add_argument("--config", help="YAML config for the data and recipe")
    teacher.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    sweep = commands.add_parser("sweep", help="the runs of sweep files (tables or figures)")
    sweep.add_argument("files", nargs="+", metavar="FILE [KEY=VALUE]",
                       help="sweep YAML file(s) (configs/*/sweeps/), then overrides applied to "
                            "every run, e.g. out=/scratch/runs; several files train as one "
                            "plan, each run once")
    sweep.add_argument("--list", action="store_true", help="print one command per run and its "
                                                           "state; train nothing")
    sweep.add_argument("--plan", action="store_true", help="print the plan (the runs still "
                       "to train and their time here with --jobs workers); train nothing")
    sweep.add_argument("--jobs", default="1", metavar="N",
                       help="train the missing runs in N worker processes, each with its share "
                            "of the cores (on 2 cores: --jobs 2); auto: one per CPU core, one "
                            "on a GPU")
    sweep.add_argument("--index", type=int, help="run only the I-th run (0-based), e.g. "
                                                 "$SLURM_ARRAY_TASK_ID")
    sweep.add_argument("--teacher", metavar="NAME",
                       help="replace the teacher of every run that has one (a variant that names "
                            "its own keeps it), as a chapter's teacher parameter does, so that "
                            "make book TEACHER=NAME trains the runs its chapters read")
    sweep.add_argument("--teacher-checkpoint", metavar="PATH",
                       help="the weights of --teacher (default: trained on the run's data)")

    report = commands.add_parser("report", help="a sweep's table from its run folders")
    report.add_argument("files", nargs="+", metavar="FILE", help="sweep YAML file(s)")
    report.add_argument("--out", default="reports", help="folder for the CSV and Markdown files")
    report.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="the overrides the sweep ran with, e.g. "
                                                  "--set out=/scratch/runs")

    probe = commands.add_parser("probe", help="linear probing of a trained student (Table 9)")
    probe.add_argument("run", help="the student's run folder")
    probe.add_argument("--dataset", required=True, help="target dataset (python -m catkd list "
                                                        "datasets)")
    probe.add_argument("--root", help="dataset folder (default: $CATKD_DATA or data/)")
    probe.add_argument("--device", default="cpu")
    probe.add_argument("--epochs", type=int, help="override the recipe's 40 epochs")

    bench = commands.add_parser("bench", help="training throughput: the authors' way vs catkd's")
    bench.add_argument("--method", default="catkd", help="method timed side by side")
    bench.add_argument("--student", default="resnet8x4")
    bench.add_argument("--teacher", default="resnet32x4")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--steps", type=int, default=20, help="timed steps per round")
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    bench.add_argument("--workers", type=int, default=2,
                       help="DataLoader workers of the authors' way")
    bench.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                       help="torch.compile the fast path, in torch's default mode or MODE "
                            "(reduce-overhead: with CUDA graphs on a GPU)")
    bench.add_argument("--step-methods", nargs="+", metavar="METHOD",
                       help="the methods whose fast-path step is timed (default: all ten)")
    bench.add_argument("--epoch-images", type=int, default=0, metavar="N",
                       help="also time one epoch of N images (50000: CIFAR-100's) and project "
                            "the paper's 240 epochs")
    bench.add_argument("--out", default="runs/bench.json", help="JSON file for the results")

    listing = commands.add_parser("list", help="valid names: models, methods, datasets, keys")
    listing.add_argument("what", choices=["models", "methods", "datasets", "keys"])
    return parser


def _flatten(section: dict, prefix: str = "") -> list[str]:
    lines = []
    for key, value in section.items():
        if isinstance(value, dict) and value:
            lines += _flatten(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}={value!r}")
    return lines


def _message(error: Exception) -> str:
    """The error in words; an OSError of the file system ("[Errno 13] Permission denied: 'x'")
    as the file, then what is wrong with it."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _jobs(value: str, device: str) -> int:
    """--jobs: a number of worker processes, or auto (``catkd.sweep.default_jobs``)."""
    from catkd import sweep

    if value == "auto":
        return sweep.default_jobs(device)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--jobs takes a number of worker processes or auto, got {value!r}")


def _teacher_overrides(teacher: str | None, checkpoint: str | None) -> list[str]:
    """sweep's --teacher and --teacher-checkpoint as ``sweep.load``'s teacher overrides, the
    same ones a chapter's teacher parameters give (``catkd.chapter.setup``): the runs they name
    are the runs the chapters of ``make book TEACHER=...`` look for."""
    if checkpoint is not None and teacher is None:
        raise ValueError("--teacher-checkpoint needs --teacher, the name of the model it holds "
                         "(e.g. --teacher resnet56 --teacher-checkpoint PATH)")
    if teacher is None:
        return []
    return [f"teacher.model={teacher}",
            f"teacher.checkpoint={'null' if checkpoint is None else checkpoint}"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after --config: argparse leaves those after it unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command not in ("train", "teacher", "sweep")
                  or not all("=" in argument for argument in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "sweep":  # its positionals are files, then key=value overrides
        args.overrides = [item for item in args.files if "=" in item]
        args.files = [item for item in args.files if "=" not in item]
    if extra:
        args.overrides = [*args.overrides, *extra]
    # Imported here so that --help answers at once; the training loop (train, and bench and
    # plan, which time it) only where a command trains or times.
    from catkd import config, data, methods, models, probe, report, sweep

    try:
        if args.command == "list":
            names = {"models": models.names, "methods": methods.names, "datasets": data.names,
                     "keys": lambda: _flatten(config.DEFAULTS)}[args.what]()
            print("\n".join(names))
            return 0
        if args.command == "bench":
            from catkd import bench

            bench.bench(args.method, args.student, args.teacher, args.device, args.steps,
                        args.warmup, args.rounds, workers=args.workers,
                        compile_step=args.compile,
                        step_methods=args.step_methods or bench.STEP_METHODS,
                        epoch_images=args.epoch_images,
                        out=args.out)
            return 0
        if args.command == "sweep":
            teacher = _teacher_overrides(args.teacher, args.teacher_checkpoint)
            loaded = [sweep.load(file, args.overrides, teacher_overrides=teacher)
                      for file in args.files]
            if teacher:  # the runs whose method cannot use it are left out, as chapters do
                loaded = [sweep.without_refused(each) for each in loaded]
            jobs = _jobs(args.jobs, loaded[0].experiments[0].config["runtime"]["device"])
            if len(loaded) > 1 and (args.list or args.index is not None):
                raise ValueError("--list and --index take one sweep file")
            if args.plan:
                from catkd import plan

                print(plan.estimate((experiment.config for each in loaded
                                     for experiment in each.experiments), jobs))
            elif args.list:
                for number, experiment in enumerate(loaded[0].experiments):
                    _, problem = experiment.status()
                    print(f"{number}\t{problem or 'finished'}\t{experiment.command()}")
            elif len(loaded) == 1:
                sweep.run(loaded[0], args.index, jobs=jobs)
            else:
                sweep.run_all(loaded, jobs=jobs)
            return 0
        if args.command == "report":
            for file in args.files:
                text, csv_path, markdown_path = report.report(sweep.load(file, args.overrides),
                                                              args.out)
                print(text)
                print(f"written: {csv_path}, {markdown_path}\n")
            return 0
        from catkd import train

        if args.command == "train":  # fit prints the result and the run folder
            train.fit(args.config, args.overrides)
        elif args.command == "teacher":
            train.fit(args.config, [*args.overrides, "method=ce", "teacher.model=null",
                                    f"student={args.model}"])
        else:
            recipe = {"epochs": args.epochs} if args.epochs else None
            summary = probe.probe(args.run, args.dataset, args.root, device=args.device,
                                  recipe=recipe)
            print(f"linear probe on {args.dataset}: best {summary['best_acc']:.2f}%, "
                  f"last {summary['last_acc']:.2f}%")
            print(f"run folder: {summary['path']}")
            return 0
    # A user's mistake, a damaged file, a folder that cannot be written: one line, not a
    # traceback (FileNotFoundError and PermissionError are OSErrors).
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
