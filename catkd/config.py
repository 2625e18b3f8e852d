"""Experiment configs: defaults, YAML files, dotted overrides, validation.

A config is a nested dict. ``DEFAULTS`` lists every key with its default (the paper's CIFAR-100
recipe); a YAML file and ``key=value`` overrides change some of them, and anything not in
``DEFAULTS`` is an error, not silently ignored. The ``loss`` section holds the method's own
settings (``catkd.methods.settings(method)`` lists them) and is checked against those.

A config file may start from another with ``base: relative/path.yaml``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from os import PathLike
from pathlib import Path
from typing import Any, Iterable

import yaml

from catkd import data, device, methods, models

DEFAULTS: dict[str, Any] = {
    "name": None,  # run folder name under `out`; None: made from the method, models and a hash
    "out": "runs",  # where run folders go
    "method": "ce",  # ce, kd, dkd, at, cat, catkd (catkd.methods.names())
    "student": "resnet8x4",  # the trained model (catkd.models.names())
    "teacher": {
        "model": None,  # the teacher's model name; None for ce
        "checkpoint": None,  # trained weights; None: train one on `data` with `optim` (cached)
        "epochs": None,  # epochs for a teacher trained here; None: optim.epochs
    },
    "loss": {},  # the method's settings, e.g. {beta: 15, resolution: 2, normalize: null}
    "data": {
        "dataset": "cifar100",  # catkd.data.names()
        "root": None,  # dataset folder; None: $CATKD_DATA or data/
        "classes": None,  # train on classes 0..n-1 only (Figure 4 right); None: all
        "fraction": 1.0,  # train on this fraction of each class (Figure 7 left)
        "batch_size": 64,  # per step over all processes; torchrun's N processes get 1/N each
        "crop_padding": 4,  # random crop with this zero padding; 0: no crop
        "flip": True,  # random horizontal flips
    },
    "optim": {
        "epochs": 240,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",  # step: x gamma at each milestone epoch; onecycle: per batch
        "milestones": [150, 180, 210],
        "gamma": 0.1,
    },
    "seed": 0,
    "runtime": {
        "device": "auto",  # auto (cuda when available), cpu, cuda, cuda:1, ...
        # auto: on where the device runs it natively and fast (catkd.device); true forces it
        "bf16": "auto",  # bf16 autocast: native on GPUs from Ampere on, CPUs with AMX/AVX512-BF16
        "channels_last": "auto",
        "compile": False,  # torch.compile the step: false, true or a mode (reduce-overhead: +CUDA graphs)
        "deterministic": False,  # deterministic algorithms (slower on GPU)
        "workers": 8,  # DataLoader workers for folder datasets (ImageNet)
    },
}

# Keys that change where and how fast a run executes, not what it computes: left out of the
# run's identity. runtime.bf16 stays in, as the precision it resolves to on this machine: bf16
# arithmetic gives different numbers, so an fp32 run is never taken for a bf16 one.
EXECUTION_KEYS = ("name", "out", "runtime.device", "runtime.channels_last", "runtime.compile",
                  "runtime.deterministic", "runtime.workers")
SCHEDULES = ("step", "onecycle")
COMPILE_MODES = (False, True, "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")


def _closest(key: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    guess = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{hint}; valid keys here: {', '.join(valid)}"


def _merge(base: dict, changes: dict, where: str = "") -> dict:
    """``base`` updated by ``changes``; a key of ``changes`` not in ``base`` is an error."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        path = f"{where}{key}"
        if key not in merged:
            raise ValueError(f"unknown config key {path!r}{_closest(key, merged)}")
        if isinstance(merged[key], dict) and merged[key] and key != "loss":
            if not isinstance(value, dict):
                raise ValueError(f"config key {path!r} is a section; set its keys, e.g. "
                                 f"{path}.{next(iter(merged[key]))}=...")
            merged[key] = _merge(merged[key], value, f"{path}.")
        elif key == "loss":
            if not isinstance(value or {}, dict):
                raise ValueError(f"config key 'loss' holds the method's settings, e.g. "
                                 f"loss.beta=15; got {value!r}")
            merged[key] = {**merged[key], **(value or {})}
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: Iterable[str]) -> dict:
    """``["optim.lr=0.1", "loss.beta=15"]`` -> ``{"optim": {"lr": 0.1}, "loss": {"beta": 15}}``.

    Values are read as YAML, so ``0.1`` is a float, ``null`` is None and ``[1, 2]`` a list.
    """
    nested: dict = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ValueError(f"an override is key=value (e.g. optim.lr=0.1), got {override!r}")
        *sections, leaf = key.strip().split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = yaml.safe_load(text)
    return nested


def load_file(path: str | PathLike) -> dict:
    """Read a YAML config, following ``base:`` links (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys, got {content!r}")
    base = content.pop("base", None)
    if base is None:
        return content
    return _deep_update(load_file(path.parent / base), content)


def _deep_update(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve(config: dict | str | PathLike | None = None,
            overrides: Iterable[str] | dict = ()) -> dict:
    """The full, checked config: ``DEFAULTS`` <- ``config`` (a dict or a YAML path) <- overrides,
    with ``runtime.bf16`` and ``runtime.channels_last`` decided for this machine's device."""
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        config = load_file(config)
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    resolved = _merge(_merge(DEFAULTS, config), overrides)
    _check(resolved)
    resolved["runtime"] = device.settle(resolved["runtime"])
    return resolved


def _check(config: dict) -> None:
    for key, name in (("student", config["student"]), ("teacher.model", config["teacher"]["model"])):
        if name is not None and name not in models.names():
            raise ValueError(f"unknown model {key}={name!r}; valid names: "
                             f"{', '.join(models.names())}")
    if config["data"]["dataset"] not in data.names():
        raise ValueError(f"unknown dataset data.dataset={config['data']['dataset']!r}; valid "
                         f"names: {', '.join(data.names())}")
    method = config["method"]
    if method not in methods.names():
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(methods.names())}")
    valid_settings = methods.settings(method)
    for key in config["loss"]:
        if key not in valid_settings:
            raise ValueError(f"unknown setting loss.{key} for method {method!r}"
                             f"{_closest(key, valid_settings)}")
    needs_teacher = methods.needs_teacher(method)
    if needs_teacher and not config["teacher"]["model"]:
        raise ValueError(f"method {method!r} distils from a teacher: set teacher.model")
    if not needs_teacher and config["teacher"]["model"]:
        raise ValueError(f"method {method!r} trains without a teacher: leave teacher.model unset")
    if config["optim"]["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {config['optim']['schedule']!r}; valid: "
                         f"{', '.join(SCHEDULES)}")
    if config["runtime"]["compile"] not in COMPILE_MODES:
        raise ValueError(f"runtime.compile must be one of "
                         f"{', '.join(str(mode).lower() for mode in COMPILE_MODES)}, "
                         f"got {config['runtime']['compile']!r}")
    fraction = config["data"]["fraction"]
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"data.fraction must be in (0, 1], got {fraction!r}")
    for key in ("epochs", "batch_size"):
        section = "optim" if key == "epochs" else "data"
        value = config[section][key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{section}.{key} must be a positive integer, got {value!r}")


def identity(config: dict) -> str:
    """A stable hash of what a run computes (everything but the execution keys)."""
    essential = copy.deepcopy(config)
    for key in EXECUTION_KEYS:
        *sections, leaf = key.split(".")
        section = essential
        for name in sections:
            section = section[name]
        section.pop(leaf)
    text = json.dumps(essential, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_name(config: dict) -> str:
    """The run folder's name: ``config["name"]``, else method, models, data, seed and hash."""
    if config["name"]:
        return config["name"]
    teacher = config["teacher"]["model"]
    models = f"{teacher}-{config['student']}" if teacher else config["student"]
    return (f"{config['method']}_{models}_{config['data']['dataset']}_seed{config['seed']}_"
            f"{identity(config)}")


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
