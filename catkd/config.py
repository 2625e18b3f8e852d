"""Experiment configs: defaults, YAML files, dotted overrides, validation.

A config is a nested dict. ``DEFAULTS`` lists every key with its default (the paper's CIFAR-100
recipe); a YAML file and ``key=value`` overrides change some of them, and anything not in
``DEFAULTS`` is an error, not silently ignored. The ``loss`` section holds the method's own
settings (``catkd.methods.settings(method)`` lists them) and is checked against those.

A config file may start from another with ``base: relative/path.yaml``.

``resolve`` checks the type and range of every key before anything runs: a mistake is a
ValueError that names the key, what it got and what would be right.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Sequence

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
        # CPU threads of the run; auto: torch's default (the cores). A CPU run's numbers depend
        # on its thread count (the order of its sums), so a recipe pins it to make them repeat.
        "threads": "auto",
    },
}

# Keys that change where and how fast a run executes, not what it computes: left out of the
# run's identity. runtime.bf16 stays in, as the precision it resolves to on this machine: bf16
# arithmetic gives different numbers, so an fp32 run is never taken for a bf16 one.
EXECUTION_KEYS = ("name", "out", "runtime.device", "runtime.channels_last", "runtime.compile",
                  "runtime.deterministic", "runtime.workers", "runtime.threads")
SCHEDULES = ("step", "onecycle")
# runtime.compile: false, true (torch's default mode) or one of these torch.compile modes.
COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int in Python


def _is_number(value: Any) -> bool:
    return _is_integer(value) or isinstance(value, float) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_milestones(value: Any) -> bool:
    return (isinstance(value, list) and all(_is_integer(step) and step >= 1 for step in value)
            and all(a < b for a, b in zip(value, value[1:])))


# What each key of DEFAULTS takes: (test, what a valid value is). The keys not here are checked
# in _check against the valid names (models, methods, datasets, schedules, compile modes) and
# the method's settings, or by catkd.device (runtime.device, bf16 and channels_last).
VALID: dict[str, tuple[Any, str]] = {
    "name": (lambda v: v is None or _is_text(v) and "/" not in v and v not in (".", ".."),
             "a folder name without '/', or null"),
    "out": (_is_text, "a folder path"),
    "teacher.checkpoint": (lambda v: v is None or _is_text(v), "a file path, or null"),
    "teacher.epochs": (lambda v: v is None or _is_integer(v) and v >= 1,
                       "a positive integer, or null (optim.epochs)"),
    "data.root": (lambda v: v is None or _is_text(v),
                  "a folder path, or null ($CATKD_DATA or data/)"),
    "data.classes": (lambda v: v is None or _is_integer(v) and v >= 1,
                     "a positive integer, or null (all classes)"),
    "data.fraction": (lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]"),
    "data.batch_size": (lambda v: _is_integer(v) and v >= 1, "a positive integer"),
    "data.crop_padding": (lambda v: _is_integer(v) and v >= 0, "a non-negative integer"),
    "data.flip": (lambda v: isinstance(v, bool), "true or false"),
    "optim.epochs": (lambda v: _is_integer(v) and v >= 1, "a positive integer"),
    "optim.lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "optim.momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "optim.milestones": (_is_milestones, "a list of increasing positive integers, e.g. [150, 180]"),
    "optim.gamma": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "seed": (lambda v: _is_integer(v) and 0 <= v < 2**32, "an integer in 0..2**32-1"),
    "runtime.deterministic": (lambda v: isinstance(v, bool), "true or false"),
    "runtime.workers": (lambda v: _is_integer(v) and v >= 0, "a non-negative integer"),
    "runtime.threads": (lambda v: v == "auto" or _is_integer(v) and v >= 1,
                        "auto or a positive integer"),
}


def _closest(key: Any, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    guess = difflib.get_close_matches(str(key), valid, n=1)  # a YAML key may be a number
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
    if isinstance(overrides, str):
        raise ValueError(f"overrides are a list of key=value strings, e.g. "
                         f"[{overrides!r}]; got the string {overrides!r}")
    nested: dict = {}
    for override in overrides:
        key, sep, text = str(override).partition("=")
        if not isinstance(override, str) or not sep or not key:
            raise ValueError(f"an override is key=value (e.g. optim.lr=0.1), got {override!r}")
        *sections, leaf = key.strip().split(".")
        target = nested
        for depth, section in enumerate(sections):
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                set_before = ".".join(sections[:depth + 1])
                raise ValueError(f"override {override!r} sets a key inside {set_before}, which "
                                 f"an earlier override set to {target!r}; set only its keys")
        try:
            target[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"override {override!r}: the value is not valid YAML "
                             f"({_yaml_problem(error)}); quote text: {key}='...'") from None
    return nested


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What the YAML parser stopped at, in one line (its own message spans several)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return (f"{error.problem or error.context} at line {mark.line + 1}, "
                f"column {mark.column + 1}")
    return str(error).splitlines()[0]


def read_mapping(path: Path, what: str) -> dict:
    """The mapping of keys in YAML file ``path``, a ``what`` ("config file", "sweep file"); an
    empty file is an empty mapping. A file that is not YAML, or not a mapping, is a ValueError
    that names it and where it breaks."""
    try:
        content = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not a text file ({error.reason} at byte "
                         f"{error.start}); a {what} is YAML") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{what} {path} must hold a mapping of keys (key: value lines), "
                         f"got {content!r}")
    return content


def load_file(path: str | PathLike, _following: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, following ``base:`` links (relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.resolve() in _following:
        raise ValueError(f"config file {path} is its own base (through base: links); "
                         f"a base is another config")
    content = read_mapping(path, "config file")
    base = content.pop("base", None)
    if base is None:
        return content
    if not _is_text(base):
        raise ValueError(f"config file {path}: base must be the path of another config file, "
                         f"got {base!r}")
    return _deep_update(load_file(path.parent / base, (*_following, path.resolve())), content)


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
        if name is not None:
            models.check(name, f"model {key}=")
    if config["data"]["dataset"] not in data.names():
        raise ValueError(f"unknown dataset data.dataset={config['data']['dataset']!r}; valid "
                         f"names: {', '.join(data.names())}")
    method = config["method"]
    if method not in methods.names():
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(methods.names())}")
    _check_settings(method, config["loss"])
    needs_teacher = methods.needs_teacher(method)
    if needs_teacher and not config["teacher"]["model"]:
        raise ValueError(f"method {method!r} distils from a teacher: set teacher.model")
    if not needs_teacher and config["teacher"]["model"]:
        raise ValueError(f"method {method!r} trains without a teacher: leave teacher.model unset")
    if config["optim"]["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {config['optim']['schedule']!r}; valid: "
                         f"{', '.join(SCHEDULES)}")
    _check_values(config)
    compile_mode = config["runtime"]["compile"]
    # isinstance, not ==: 1 == True in Python, and runtime.compile=1 is a mistake.
    if not (isinstance(compile_mode, bool) or compile_mode in COMPILE_MODES):
        raise ValueError(f"runtime.compile must be one of false, true, "
                         f"{', '.join(COMPILE_MODES)}, got {compile_mode!r}")


def _check_values(config: dict) -> None:
    """The types and ranges of ``VALID``, then the keys that bound one another."""
    for key, (valid, what) in VALID.items():
        section, _, leaf = key.rpartition(".")
        value = config[section][leaf] if section else config[leaf]
        if not valid(value):
            raise ValueError(f"{key} must be {what}, {_got(value)}")
    classes, dataset = config["data"]["classes"], config["data"]["dataset"]
    if classes is not None and classes > data.num_classes(dataset):
        raise ValueError(f"data.classes must be within 1..{data.num_classes(dataset)} (the "
                         f"classes of {dataset}), got {classes}")
    optim, teacher = config["optim"], config["teacher"]
    if optim["schedule"] != "step":  # onecycle has no milestones
        return
    if any(step > optim["epochs"] for step in optim["milestones"]):
        raise ValueError(f"optim.milestones {optim['milestones']} lie beyond optim.epochs="
                         f"{optim['epochs']}, where the learning rate never drops: give "
                         f"milestones within 1..{optim['epochs']} ([] for a constant rate)")
    # A teacher trained here follows the student's recipe for teacher.epochs.
    trains_teacher = teacher["model"] and not teacher["checkpoint"] and teacher["epochs"]
    if trains_teacher and any(step > teacher["epochs"] for step in optim["milestones"]):
        raise ValueError(f"teacher.epochs={teacher['epochs']} ends before optim.milestones "
                         f"{optim['milestones']}, which the teacher trained here follows: set "
                         f"teacher.epochs to {optim['milestones'][-1]} or more")


# YAML 1.1 reads 1e-3 and 1.0e3 as text: its floats need a dot and a signed exponent.
_EXPONENT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _got(value: Any) -> str:
    hint = (" (YAML reads this as text: write 0.001, not 1e-3)"
            if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value) else "")
    return f"got {value!r}{hint}"


def _check_settings(method: str, settings: dict) -> None:
    """The method's settings: known keys, a number, an integer or a boolean where the default
    is one, then each setting's range as the method declares it (``Method.ranges``); a setting
    whose default is a name is checked by the settings check before the teacher trains."""
    defaults = methods.settings(method)
    for key, value in settings.items():
        if key not in defaults:
            raise ValueError(f"unknown setting loss.{key} for method {method!r}"
                             f"{_closest(key, defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            valid, what = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            valid, what = _is_integer(value), "an integer"
        elif isinstance(default, float):
            valid, what = _is_number(value), "a number"
        else:
            continue
        if not valid:
            raise ValueError(f"loss.{key} of method {method!r} must be {what} (default "
                             f"{default!r}), {_got(value)}")
    methods.check_settings(method, settings, prefix="loss.")


def teacher_config(config: dict) -> dict:
    """The config that trains the teacher a distillation config asks for.

    The teacher sees the whole training set (reductions apply to the student only), seed 0 and
    the student's recipe with ``teacher.epochs``. Its run folder sits beside the student's, so
    ``python -m catkd teacher`` with the same data and recipe makes the same run.
    """
    return resolve({
        "out": config["out"],
        "method": "ce",
        "student": config["teacher"]["model"],
        "data": {**config["data"], "classes": None, "fraction": 1.0},
        "optim": {**config["optim"],
                  "epochs": config["teacher"]["epochs"] or config["optim"]["epochs"]},
        "seed": 0,
        "runtime": config["runtime"],
    })


def lockstep_key(config: dict) -> str | None:
    """What runs must share to train in lockstep, one teacher forward per batch serving them all
    (``catkd.train.fit_lockstep``): everything but their name, method, student and loss
    settings, so that they see the same batches from the same teacher with the same recipe.
    None for a run that cannot: one without a teacher, or with a teacher whose features cannot
    be shared (a torchvision model has no ``forward_features``), or whose method reads the
    teacher otherwise than by its forward (``catkd.methods.shares_teacher_forward``)."""
    teacher = config["teacher"]["model"]
    if not (teacher and models.has_forward_features(teacher)
            and methods.shares_teacher_forward(config["method"], config["loss"])):
        return None
    return json.dumps({key: value for key, value in config.items()
                       if key not in ("name", "method", "student", "loss")},
                      sort_keys=True, default=str)


def lockstep_groups(run_configs: Sequence[dict], jobs: int = 1) -> list[list[dict]]:
    """``run_configs`` gathered into the groups that train in lockstep (equal ``lockstep_key``),
    in the order of their first run; a run that cannot is a group of its own. A group is cut
    into parts of at most ceil(runs / ``jobs``) runs, so that ``jobs`` workers all get work."""
    largest = max(2, math.ceil(len(run_configs) / jobs))
    groups: dict[object, list[dict]] = {}
    for number, config in enumerate(run_configs):
        groups.setdefault(lockstep_key(config) or number, []).append(config)
    return [group[start:start + largest] for group in groups.values()
            for start in range(0, len(group), largest)]


def identity(config: dict) -> str:
    """A stable hash of what a run computes: everything but the execution keys, and the
    method's and the models' revisions once what they compute has changed
    (``catkd.methods.revision``, ``catkd.models.revision``)."""
    essential = copy.deepcopy(config)
    if methods.revision(config["method"]) > 1:
        essential["method_revision"] = methods.revision(config["method"])
    for role, name in (("student", config["student"]), ("teacher", config["teacher"]["model"])):
        if name and models.revision(name) > 1:
            essential[f"{role}_revision"] = models.revision(name)
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
