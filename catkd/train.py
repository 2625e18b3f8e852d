"""The training engine: ``fit(config)`` trains a teacher or a student and returns its run.

One loop serves every method (``catkd.methods``): the method turns a batch into named loss
terms, the loop sums and optimises them, evaluates the student every epoch and writes the run
folder (its files: ``catkd.runs``).

A run folder is identified by its config: ``fit`` on a config whose folder holds a finished
run returns it without training; an unfinished one is resumed from ``last.pt``; a folder made
by a different config is an error, and so is one that cannot be read, or a ``last.pt`` that is
damaged or from another run (moving it away restarts the run from scratch). A finished run is
read without writing anything, so run folders shared read-only serve their finished runs. Two
processes that reach the same run (a sweep's parallel jobs, two notebooks) train it once: a
lock file beside the folder makes the second wait. A loss that becomes NaN or infinite stops
the run, unfinished, at the end of that epoch. Under ``torchrun`` the loop runs as DDP (NCCL
on GPUs, gloo on CPUs): each rank trains on its shard, metrics are summed over ranks, rank 0
writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from catkd import __version__, config as configs, data, methods, models
from catkd import device as devices
from catkd.models.checkpoint import read_checkpoint
from catkd.progress import RunProgress
from catkd.runs import (BEST, CONFIG, ENVIRONMENT, LAST, METRICS, SUMMARY, Run, atomic_save,
                        build_student, claim, finished_run, read_metrics)


# The resume state in last.pt.
RESUME_KEYS = ("model", "extras", "optimizer", "schedule", "epoch", "best_acc", "best_epoch",
               "seconds", "evaluation", "rng")
# The entries of a learning-rate schedule's state that the recipe fixes (the others are its
# progress): a resume state whose entries differ comes from another run.
SCHEDULE_RECIPE = ("milestones", "gamma", "total_steps", "base_lrs")


# --------------------------------------------------------------------------- set-up helpers

def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size


def _device(name: str) -> torch.device:
    """The device of this process: under DDP its rank's GPU; "cuda" alone is the current one
    (torch.cuda.set_device refuses a CUDA device without an index)."""
    device = devices.resolve(name)
    if device.type == "cuda" and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # cuDNN's benchmark mode times the convolution algorithms once per shape and keeps the
    # fastest: the batches of a run have one shape, so it pays, but its choice may vary.
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _rng_state() -> dict:
    # numpy's key array is stored as a tensor so that torch.load(weights_only=True) can read it.
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys), position, has_gauss, cached_gaussian)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _environment(device: torch.device, world_size: int, runtime: dict) -> dict:
    return {
        "catkd": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "platform": platform.platform(),
        "device": str(device), "device_name": devices.name(device),
        "device_precision": devices.describe(device),
        "bf16": runtime["bf16"], "channels_last": runtime["channels_last"],
        "world_size": world_size, "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- teachers

def load_teacher(config: dict, shape: tuple[int, int, int], quiet: bool = False) -> nn.Module:
    """The teacher of a distillation config for ``shape`` = (classes, input channels, image
    side): from ``teacher.checkpoint``, or trained here."""
    spec = config["teacher"]
    if spec["checkpoint"]:
        teacher = models.create(spec["model"], *shape)
        return models.load_checkpoint(teacher, spec["checkpoint"])
    teacher_run = configs.teacher_config(config)
    path = Path(teacher_run["out"]) / configs.run_name(teacher_run)
    trained = (path / SUMMARY).is_file()
    if not quiet and not trained:
        print(f"training the teacher {spec['model']} first: run folder {path}", flush=True)
    # A teacher trained before is only read: no line of its own beside its student's.
    return fit(teacher_run, quiet=quiet or trained).model()


# --------------------------------------------------------------------------- the loop

def _optimizer_and_schedule(parameters, spec: dict, steps_per_epoch: int):
    optimizer = torch.optim.SGD(parameters, lr=spec["lr"], momentum=spec["momentum"],
                                weight_decay=spec["weight_decay"])
    if spec["schedule"] == "onecycle":
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=spec["lr"], epochs=spec["epochs"], steps_per_epoch=steps_per_epoch)
    else:
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, spec["milestones"],
                                                        spec["gamma"])
    return optimizer, schedule


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _share_rank_0_buffers(module: nn.Module) -> None:
    """Under DDP, give every rank rank 0's buffers (BatchNorm statistics): DDP broadcasts them
    at the start of each forward, so after an epoch's last step the ranks' differ by that step,
    and each rank's evaluation would use another student than the one rank 0 saves."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def compiled(step: nn.Module, mode: bool | str) -> nn.Module:
    """``step`` through torch.compile: ``mode`` false (not compiled), true (torch's default
    mode) or a torch.compile mode, e.g. "reduce-overhead" (CUDA graphs on a GPU, which take the
    per-kernel launch cost off small batches)."""
    if mode is False:
        return step
    return torch.compile(step, mode=None if mode is True else mode)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    if device.type != "cpu":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    # On a CPU, attention (vision transformers: the zoo's ViTs, timm's) runs by its math kernel
    # under bf16: the fused flash kernel's backward in bf16 made a vit_micro step (batch 64, one
    # thread) 3.4x slower (292 ms against 86 ms by the math kernel; 99 ms in float32). The CNNs
    # have no attention, so their steps are unchanged.
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device,
             bf16: bool = False) -> dict:
    """Top-1 and top-5 accuracy (%) and per-class top-1 accuracy of ``model`` on ``loader``.

    The forwards run on a copy of ``model`` in eval mode with its BatchNorms folded into their
    convolutions (``catkd.models.fold_batchnorm``: the same function to float rounding, one
    pass less per layer; a resnet8's evaluation of Fashion-MNIST's test set took 3.3-3.8 s on
    the AVX2 path, folded 2.5-2.7 s); ``model`` is left as it was. Under DDP each rank evaluates
    its shard and the counts are summed over ranks.
    """
    model = _folded_copy(model)
    correct = torch.zeros(num_classes, device=device)
    seen = torch.zeros(num_classes, device=device)
    correct_top5 = torch.zeros((), device=device)
    top_k = min(5, num_classes)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, bf16):
            logits = model(images)
        ranked = logits.float().topk(top_k, dim=1).indices  # (N, top_k)
        hits = ranked[:, 0] == labels
        correct.index_add_(0, labels, hits.float())
        seen.index_add_(0, labels, torch.ones_like(hits, dtype=torch.float))
        correct_top5 += (ranked == labels[:, None]).any(dim=1).sum()
    counts = _all_reduce(torch.cat([correct, seen, correct_top5[None]])).cpu()
    correct, seen, correct_top5 = counts[:num_classes], counts[num_classes:-1], counts[-1]
    per_class = torch.where(seen > 0, 100 * correct / seen.clamp_min(1), torch.nan)
    return {"top1": 100 * correct.sum().item() / seen.sum().item(),
            "top5": 100 * correct_top5.item() / seen.sum().item(),
            "per_class": per_class.tolist()}


def _folded_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` without forward hooks (a method's recorders, which must
    not see the evaluation) and with its BatchNorms folded into their convolutions."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    models.fold_batchnorm(folded)
    return folded


@dataclass
class StepState:
    """What a training step needs besides its batch.

    step: the method as it is called, possibly wrapped (DDP, torch.compile): (images, labels,
        epoch[, indices]) -> (logits, {term: loss}).
    method: the method itself (the wrappers are not modules of their own state).
    schedule_every_batch: the schedule steps after every batch (one-cycle), not every epoch.
    bf16: autocast to bfloat16; memory_format: that of the images moved to ``device``.
    """

    step: nn.Module
    method: methods.Method
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    schedule_every_batch: bool = False
    bf16: bool = False
    memory_format: torch.memory_format = torch.preserve_format


@torch.enable_grad()  # fit may be called under no_grad (a notebook cell, an evaluation helper)
def train_epoch(states: Sequence[StepState], batches: Iterable, epoch: int) -> list[dict]:
    """One pass over ``batches`` (a loader's, or any iterable of them) for each of ``states``,
    in lockstep: every state takes its step on a batch before the next batch. Returns, for each
    state, each loss term's mean ("loss_<term>"), their sum ("loss") and the training accuracy,
    averaged over every rank's samples, and "seconds": the time of its steps, plus its share of
    the time spent between them (reading the batches).

    A batch is ``(images, labels)``: float32 (B, C, H, W) and int64 (B,); or ``(images, labels,
    indices)``, int64 (B,) indices, from a loader made with ``sample_indices=True`` for a method
    that ``needs_sample_indices``: the indices are passed on to the method as its fourth
    argument. The states share a device and memory format, and each batch is moved there once:
    the same tensor reaches every state's step."""
    device, memory_format = states[0].device, states[0].memory_format
    for state in states:
        state.method.train()
    totals: list[dict[str, torch.Tensor]] = [{} for _ in states]
    correct = [torch.zeros((), device=device) for _ in states]
    # The first step (0-based) whose loss was not finite, -1 while none was.
    nonfinite_step = [torch.full((), -1.0, device=device) for _ in states]
    step_seconds = [0.0] * len(states)
    seen = 0
    started = time.perf_counter()
    for step, (images, labels, *indices) in enumerate(batches):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        indices = [index.to(device, non_blocking=True) for index in indices]
        for number, state in enumerate(states):
            step_started = time.perf_counter()
            with _autocast(device, state.bf16):
                logits, losses = state.step(images, labels, epoch, *indices)
            state.optimizer.zero_grad(set_to_none=True)
            loss = sum(losses.values())
            loss.backward()
            state.optimizer.step()
            if state.schedule_every_batch:
                state.schedule.step()
            # Summed and checked on the device: no synchronisation per batch.
            for term, value in losses.items():
                totals[number][term] = (totals[number].get(term, 0.0)
                                        + value.detach().float() * len(labels))
            correct[number] += (logits.detach().argmax(dim=1) == labels).sum()
            nonfinite_step[number] = torch.where(
                (nonfinite_step[number] < 0) & ~torch.isfinite(loss.detach()),
                float(step), nonfinite_step[number])
            step_seconds[number] += time.perf_counter() - step_started
        seen += len(labels)
    between_steps = (time.perf_counter() - started - sum(step_seconds)) / len(states)
    results = []
    for number, state in enumerate(states):
        if not state.schedule_every_batch:
            state.schedule.step()
        sums = _all_reduce(torch.stack([*totals[number].values(), correct[number],
                                        torch.tensor(float(seen), device=device)])).tolist()
        *term_sums, correct_sum, seen_sum = sums
        averages = {f"loss_{term}": total / seen_sum
                    for term, total in zip(totals[number], term_sums)}
        result = {**averages, "loss": sum(term_sums) / seen_sum,
                  "train_acc": 100 * correct_sum / seen_sum,
                  "seconds": step_seconds[number] + between_steps}
        if nonfinite_step[number].item() >= 0:  # this rank's first step with a non-finite loss
            result["nonfinite_step"] = int(nonfinite_step[number].item()) + 1
        results.append(result)
    return results


def fit(config: dict | str | os.PathLike | None = None, overrides=(),
        quiet: bool = False, title: str | None = None) -> Run:
    """Train what ``config`` describes (a dict or YAML path, plus ``key=value`` overrides).

    Returns the finished ``Run``. A finished run with the same config is returned as it is; an
    unfinished one resumes from its last epoch. Processes that reach the same run together train
    it once: the others wait for it.

    Progress (``catkd.progress``): a line per epoch on a terminal, one status line replaced in
    place in a notebook, led by ``title`` (e.g. "run 3 of 12"); nothing if ``quiet``.
    """
    config = configs.resolve(config, overrides)
    rank, world_size = _distributed()
    path = Path(config["out"]) / configs.run_name(config)

    progress = RunProgress(path.name, config["optim"]["epochs"], not quiet and rank == 0, title)
    # A finished run is read without the claim, which writes a lock file: run folders shared
    # read-only serve their finished runs. Under DDP the ranks look inside the claim only, so
    # that a run finished meanwhile by another job cannot split them.
    run = finished_run(path, config) if world_size == 1 else None
    if run is None:
        # Under DDP rank 0 claims the folder for the job; the barrier keeps the other ranks
        # from looking at it before rank 0 holds the claim.
        with claim(path, rank == 0, progress.say):
            if dist.is_initialized():
                dist.barrier()
            with devices.threads(config["runtime"]["threads"]):
                run = finished_run(path, config)
                if run is None:  # alone, a run whose loss diverges raises (none is returned)
                    (run,), _ = _train([(config, path)], rank, world_size, quiet, progress)
    progress.say(_result_line(run))
    return run


def fit_lockstep(run_configs: Sequence[dict], quiet: bool = False) -> list[Run]:
    """Train several runs that see the same batches in one process, in lockstep, so that one
    forward of their teacher per batch serves them all.

    ``run_configs`` (resolved) must agree on everything but their name, method, student and
    loss settings, with methods that read the frozen teacher only by calling it (kd, dkd, at,
    fitnet, rkd, reviewkd, cat and catkd with CAMs: ``catkd.config.lockstep_key``). Each run is
    the one ``fit`` makes of its config, in its own folder: the same initialisation, batches and
    steps. Finished runs are read; the
    others are claimed (in folder order, so that two processes cannot wait on each other). A
    run whose loss diverges stops there; the others go on, and a RuntimeError names it at the
    end. One process only: under torchrun, ``fit`` each run. Returns the runs in their order.
    """
    keys = {configs.lockstep_key(config) for config in run_configs}
    if None in keys or len(keys) > 1:
        raise ValueError("runs train in lockstep when they distil from the same teacher (a zoo "
                         "or timm model) with the same data, seed, recipe and runtime, by "
                         "methods that read the frozen teacher only by calling it (kd, dkd, "
                         "at, fitnet, rkd, reviewkd, cat and catkd with CAMs)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("fit_lockstep trains in one process; under torchrun, fit each run")
    paths = [Path(config["out"]) / configs.run_name(config) for config in run_configs]
    progress = RunProgress(f"{paths[0].name} and {len(paths) - 1} more in lockstep",
                           run_configs[0]["optim"]["epochs"], not quiet)
    runs = {path: finished_run(path, config) for path, config in zip(paths, run_configs)}
    failures: list[Exception] = []
    with contextlib.ExitStack() as claims:
        for path in sorted(set(paths) - {path for path, run in runs.items() if run}):
            claims.enter_context(claim(path, True, progress.say))
        with devices.threads(run_configs[0]["runtime"]["threads"]):
            # Runs another process finished while this one waited for the claims are read.
            runs.update({path: finished_run(path, config)
                         for path, config in zip(paths, run_configs) if runs[path] is None})
            missing = list({path: config for path, config in zip(paths, run_configs)
                            if runs[path] is None}.items())
            if missing:
                trained, failures = _train([(config, path) for path, config in missing],
                                           0, 1, quiet, progress)
                runs.update({run.path: run for run in trained})
    for run in runs.values():
        if run is not None:
            progress.say(_result_line(run))
    if failures:
        raise RuntimeError("; ".join(map(str, failures)))
    return [runs[path] for path in paths]


def _result_line(run: Run) -> str:
    return (f"best {run.summary['best_acc']:.2f}% (epoch {run.summary['best_epoch']}), "
            f"last {run.summary['last_acc']:.2f}%: {run.path}")


@dataclass
class _Trainee:
    """One run being trained: its config, folder, student, step and bookkeeping."""

    config: dict
    path: Path
    student: nn.Module
    method: methods.Method
    state: StepState
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = -1
    seconds: float = 0.0
    evaluation: dict | None = None


def _train(members: list[tuple[dict, Path]], rank: int, world_size: int, quiet: bool,
           progress: RunProgress) -> tuple[list[Run], list[Exception]]:
    """The training loop of ``fit`` (one member) and ``fit_lockstep`` (several, agreeing on
    data, seed, recipe, runtime and teacher), for run folders that hold no finished run.
    Returns the finished runs and the errors of the members that stopped."""
    config = members[0][0]  # what decides the batches and the teacher: the same for all
    runtime = config["runtime"]
    device = _device(runtime["device"])
    if device.type == "cpu":
        devices.keep_freed_memory()
    if runtime["bf16"] and not devices.bf16_native(device):
        warnings.warn(f"runtime.bf16=true on {devices.name(device)}, which has no native bf16: "
                      f"emulated, about 10x slower than float32 (runtime.bf16=auto chooses)",
                      stacklevel=3)

    loaders = data.loaders(config, device, rank, world_size,
                           methods.needs_sample_indices(config["method"]))
    shape = (loaders.num_classes, loaders.in_channels, loaders.image_size)
    for member_config, _ in members:
        _dry_step(member_config, shape, loaders.train_labels)
    teacher = load_teacher(config, shape, quiet) if config["teacher"]["model"] else None
    lockstep = len(members) > 1
    if lockstep:  # folded first: folding traces the forward that sharing replaces
        models.fold_batchnorm(teacher)
        methods.share_forward(teacher)
    trainees = [_start(member_config, path, teacher, loaders, shape, device, rank, world_size,
                       fold_teacher=not lockstep, progress=progress)
                for member_config, path in members]

    runs, failures = [], []
    epochs = config["optim"]["epochs"]
    for epoch in range(min(trainee.start_epoch for trainee in trainees), epochs):
        loaders.train.set_epoch(epoch)
        training = [trainee for trainee in trainees if trainee.start_epoch <= epoch]
        rates = [trainee.state.optimizer.param_groups[0]["lr"] for trainee in training]
        results = train_epoch([trainee.state for trainee in training],
                              progress.steps(loaders.train, epoch), epoch)
        for trainee, lr, averages in zip(training, rates, results):
            try:
                _end_epoch(trainee, {"lr": lr, **averages}, epoch, loaders.test, shape[0], rank,
                           progress)
            except RuntimeError as error:  # its loss diverged: it stops, the others go on
                if not lockstep:
                    raise
                failures.append(error)
                trainees.remove(trainee)
                progress.say(str(error))
    for trainee in trainees:
        runs.append(_finish(trainee, shape, rank))
    if dist.is_initialized():
        dist.barrier()
    return runs, failures


def _start(config: dict, path: Path, teacher: nn.Module | None, loaders,
           shape: tuple[int, int, int], device: torch.device, rank: int, world_size: int,
           fold_teacher: bool, progress: RunProgress) -> _Trainee:
    """Build the student and its step for ``config`` and ``shape`` (classes, input channels,
    image side), resume it from ``path`` if it has a last.pt, and write the run folder's
    config, environment and kept metrics."""
    runtime = config["runtime"]
    # Seeded after the teacher so that the student's initialisation does not depend on whether
    # the teacher was trained in this process or loaded, nor on the runs beside it in lockstep.
    _seed_everything(config["seed"], runtime["deterministic"])
    student = build_student(config, shape)
    method = methods.create(config["method"], student, teacher, train_labels=loaders.train_labels,
                            fold_teacher=fold_teacher, **config["loss"]).to(device)
    memory_format = torch.channels_last if runtime["channels_last"] else torch.preserve_format
    if runtime["channels_last"]:
        method = method.to(memory_format=torch.channels_last)
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer, schedule = _optimizer_and_schedule(trainable, config["optim"], len(loaders.train))
    step = method
    if world_size > 1:
        # static_graph: the same parameters are used every step.
        step = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            static_graph=True)
    trainee = _Trainee(config, path, student, method, StepState(
        compiled(step, runtime["compile"]), method, optimizer, schedule, device,
        config["optim"]["schedule"] == "onecycle", runtime["bf16"], memory_format))

    if (path / LAST).is_file():
        state = _resume_state(path / LAST, config, schedule, device)
        try:
            student.load_state_dict(state["model"])
            method.load_extra_state_dict(state["extras"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            _set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:  # what they raise
            raise ValueError(f"{path / LAST} is not this run's resume state (its model, "
                             f"optimizer or random state does not fit this run's); "
                             f"{_restart(path / LAST)}") from error
        trainee.start_epoch, trainee.best_acc = state["epoch"], state["best_acc"]
        trainee.best_epoch, trainee.seconds = state["best_epoch"], state["seconds"]
        trainee.evaluation = state["evaluation"]
        progress.say(f"resuming {path} after epoch {trainee.start_epoch}")
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG).write_text(configs.dump(config))
        (path / ENVIRONMENT).write_text(json.dumps(
            _environment(device, world_size, runtime), indent=1))
        # Epochs after the last checkpoint were lost with the process that ran them.
        kept = [row for row in read_metrics(path / METRICS) if row["epoch"] <= trainee.start_epoch]
        (path / METRICS).write_text("".join(json.dumps(row) + "\n" for row in kept))
    progress.say(f"run folder: {path}")
    return trainee


def _end_epoch(trainee: _Trainee, averages: dict, epoch: int, test_loader, num_classes: int,
               rank: int, progress: RunProgress) -> None:
    """After ``trainee``'s 0-based ``epoch`` (``averages``: its learning rate and what
    ``train_epoch`` returned): check its loss, evaluate its student, write the epoch's metrics
    and checkpoints. A loss that became NaN or infinite is a RuntimeError, and
    nothing of that epoch is kept."""
    path, state = trainee.path, trainee.state
    # Checked once per epoch, on the sums train_epoch already brought to the CPU, so that no
    # step waits for the device; the epoch is neither saved nor written to the metrics.
    diverged = {term: value for term, value in averages.items()
                if term.startswith("loss_") and not math.isfinite(value)}
    if diverged:
        term, value = next(iter(diverged.items()))
        first = averages.get("nonfinite_step")
        where = f" (first at step {first} of the epoch)" if first else ""
        raise RuntimeError(f"{path}: the loss term {term} became {value} in epoch "
                           f"{epoch + 1}{where}; the run stopped, unfinished, and kept "
                           f"nothing of that epoch: lower optim.lr or check the loss settings")
    started = time.perf_counter()
    _share_rank_0_buffers(trainee.student)
    evaluation = evaluate(trainee.student, test_loader, num_classes, state.device, state.bf16)
    seconds = averages.pop("seconds") + time.perf_counter() - started
    trainee.seconds += seconds
    trainee.evaluation = evaluation
    row = {"epoch": epoch + 1, "lr": averages.pop("lr"), **averages,
           "test_acc": evaluation["top1"], "test_top5": evaluation["top5"], "seconds": seconds}
    if evaluation["top1"] > trainee.best_acc:
        trainee.best_acc, trainee.best_epoch = evaluation["top1"], epoch + 1
        if rank == 0:
            atomic_save({"model": trainee.student.state_dict(), "epoch": epoch + 1},
                        path / BEST)
    if rank == 0:
        with open(path / METRICS, "a") as metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
        atomic_save({"model": trainee.student.state_dict(),
                     "extras": trainee.method.extra_state_dict(),
                     "optimizer": state.optimizer.state_dict(),
                     "schedule": state.schedule.state_dict(), "epoch": epoch + 1,
                     "best_acc": trainee.best_acc, "best_epoch": trainee.best_epoch,
                     "seconds": trainee.seconds, "evaluation": evaluation, "rng": _rng_state()},
                    path / LAST)
    progress.epoch_done(epoch, f"loss {row['loss']:.4f}  train {row['train_acc']:.2f}%  "
                               f"test {row['test_acc']:.2f}%  ({row['seconds']:.1f}s)")


def _finish(trainee: _Trainee, shape: tuple[int, int, int], rank: int) -> Run:
    """Write ``trainee``'s summary once its last epoch is done; its finished run."""
    config, runtime, evaluation = trainee.config, trainee.config["runtime"], trainee.evaluation
    summary = {"best_acc": trainee.best_acc, "best_epoch": trainee.best_epoch,
               "last_acc": evaluation["top1"], "last_top5": evaluation["top5"],
               "epochs": config["optim"]["epochs"], "seconds": trainee.seconds,
               "per_class_acc": evaluation["per_class"],
               "num_classes": shape[0], "in_channels": shape[1], "image_size": shape[2],
               "bf16": runtime["bf16"], "channels_last": runtime["channels_last"],
               "student_parameters": sum(p.numel() for p in trainee.student.parameters()),
               "extra_parameters": trainee.method.extra_parameter_count()}
    if rank == 0:
        (trainee.path / SUMMARY).write_text(json.dumps(summary, indent=1))
    return Run(trainee.path, config, summary)


def _dry_step(config: dict, shape: tuple[int, int, int], train_labels: torch.Tensor) -> None:
    """One forward of the method on two blank images, with an untrained teacher of the same
    architecture: a setting that does not fit the models and the data (a CAM resolution larger
    than the maps, a stage that does not exist) fails here, before a teacher trains for hours."""
    _, in_channels, image_size = shape
    teacher_name = config["teacher"]["model"]
    teacher = models.create(teacher_name, *shape) if teacher_name else None
    try:
        method = methods.create(config["method"], build_student(config, shape), teacher,
                                train_labels=train_labels, **config["loss"])
    except TypeError as error:  # cam.convert's: a model whose head is not GAP + one Linear
        raise ValueError(f"method {config['method']!r} cannot use student {config['student']} "
                         f"and teacher {teacher_name}: {error}") from error
    images = torch.zeros(2, in_channels, image_size, image_size)
    indices = [torch.arange(2)] if method.needs_sample_indices else []
    with torch.no_grad():
        method(images, torch.zeros(2, dtype=torch.long), 0, *indices)


def refusals(run_configs: Sequence[dict]) -> list[str | None]:
    """For each config, why its run cannot train, as the dry step before its training would
    refuse it (its method does not fit its student, its teacher or its data), or None. Nothing
    trains; each data section is read once, and runs that differ only in what the dry step
    does not see (seed, recipe) are checked once."""
    shapes: dict[str, tuple[tuple[int, int, int], torch.Tensor]] = {}
    by_setting: dict[str, str | None] = {}
    verdicts = []
    for config in run_configs:
        data_key = configs.dump(config["data"])
        if data_key not in shapes:
            train_set, _ = data.datasets(config)
            shapes[data_key] = ((train_set.num_classes, train_set.in_channels,
                                 train_set.image_size), train_set.labels)
        setting = configs.dump({"data": config["data"], "method": config["method"],
                                "loss": config["loss"], "student": config["student"],
                                "teacher": config["teacher"]["model"]})
        if setting not in by_setting:
            try:
                _dry_step(config, *shapes[data_key])
                by_setting[setting] = None
            except ValueError as error:
                by_setting[setting] = str(error)
        verdicts.append(by_setting[setting])
    return verdicts


def _restart(file: Path) -> str:
    return f"move it away (e.g. mv {file} {file}.old) and the run restarts from scratch"


def _resume_state(file: Path, config: dict, schedule, device: torch.device) -> dict:
    """The resume state in ``file`` (a run's last.pt), checked against the run: a damaged file,
    or one from another run, is a ValueError that names it and how to restart the run."""
    try:
        state = read_checkpoint(file, device)
    except ValueError as error:
        raise ValueError(f"{file} is damaged: it cannot be read; {_restart(file)}") from error
    epochs, recipe = config["optim"]["epochs"], schedule.state_dict()
    if not isinstance(state, dict) or not set(RESUME_KEYS) <= set(state):
        problem = f"it lacks the entries {', '.join(RESUME_KEYS)}"
    elif not (isinstance(state["epoch"], int) and 1 <= state["epoch"] <= epochs):
        problem = f"its epoch {state['epoch']!r} is not within this run's 1..{epochs}"
    elif not isinstance(state["schedule"], dict) or any(
            state["schedule"].get(entry) != recipe.get(entry)
            for entry in SCHEDULE_RECIPE):
        problem = "its learning-rate schedule is another recipe's"
    else:
        return state
    raise ValueError(f"{file} is not this run's resume state ({problem}); {_restart(file)}")
