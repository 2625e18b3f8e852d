"""Training methods: each turns a batch into the student's logits and named loss terms.

>>> method = create("catkd", student, teacher, beta=15.0)
>>> logits, losses = method(images, labels, epoch)
>>> sum(losses.values()).backward()

Each method takes its settings as keyword arguments with the reference defaults (``settings``);
a per-pair config overrides them. A method that indexes the training set (``crd``:
``needs_sample_indices``) is also built with the training set's labels and takes each batch's
sample indices as a fourth forward argument.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from catkd import models
from catkd.methods.at import AT
from catkd.methods.base import Method, share_forward
from catkd.methods.cat import CAT, CATKD
from catkd.methods.ce import CE
from catkd.methods.crd import CRD
from catkd.methods.dkd import DKD
from catkd.methods.fitnet import FitNet
from catkd.methods.kd import KD
from catkd.methods.ofd import OFD
from catkd.methods.reviewkd import ReviewKD
from catkd.methods.rkd import RKD

__all__ = ["AT", "CAT", "CATKD", "CE", "CRD", "DKD", "FitNet", "KD", "Method", "OFD", "RKD",
           "ReviewKD", "check_settings", "create", "names", "needs_sample_indices",
           "needs_teacher", "revision", "settings", "share_forward", "shares_teacher_forward"]

_METHODS: dict[str, type[Method]] = {
    "ce": CE, "kd": KD, "dkd": DKD, "at": AT, "cat": CAT, "catkd": CATKD,
    "fitnet": FitNet, "rkd": RKD, "ofd": OFD, "crd": CRD, "reviewkd": ReviewKD,
}


def names() -> list[str]:
    """Every method name ``create`` accepts."""
    return sorted(_METHODS)


def _method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(names())}")
    return _METHODS[name]


def settings(name: str) -> dict[str, Any]:
    """The default settings of a method, e.g. ``settings("kd")["temperature"] == 4.0``."""
    parameters = inspect.signature(_method_class(name).__init__).parameters.values()
    return {parameter.name: parameter.default for parameter in parameters
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


def check_settings(name: str, given: dict[str, Any], prefix: str = "") -> None:
    """Refuse settings that method ``name`` does not have, and values outside a setting's
    valid range (``Method.ranges``): a ValueError naming the setting (``prefix`` + its name,
    e.g. "loss.beta"), what it got and what would be right."""
    valid = settings(name)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(prefix + key for key in unknown)} for "
                         f"method {name!r}; valid settings: {', '.join(valid) or 'none'}")
    for key, (test, what) in _method_class(name).ranges.items():
        if key not in given:
            continue
        try:
            fits = test(given[key])
        except TypeError:  # a value of another type, e.g. text where a number belongs
            fits = False
        if not fits:
            raise ValueError(f"{prefix}{key} of method {name!r} must be {what} (default "
                             f"{valid[key]!r}), got {given[key]!r}")


def needs_teacher(name: str) -> bool:
    """Whether method ``name`` distils from a teacher (every method but ``ce``)."""
    return _method_class(name).needs_teacher


def needs_sample_indices(name: str) -> bool:
    """Whether method ``name`` indexes the training set (``crd``): it is built with the training
    labels and its forward takes each batch's sample indices."""
    return _method_class(name).needs_sample_indices


def shares_teacher_forward(name: str, settings: dict[str, Any]) -> bool:
    """Whether method ``name`` with ``settings`` reads the frozen teacher only by calling it on
    the batch (kd, dkd, at, fitnet, rkd, reviewkd, and cat and catkd with CAMs), so that
    students of one batch can share its forward (``share_forward``)."""
    return _method_class(name).shares_teacher_forward(settings)


def revision(name: str) -> int:
    """The revision of method ``name``'s computation (1, or higher after a change)."""
    return _method_class(name).revision


def create(name: str, student: nn.Module, teacher: nn.Module | None = None,
           train_labels: torch.Tensor | None = None, fold_teacher: bool = False,
           **overrides: Any) -> Method:
    """Build method ``name`` on ``student`` (and ``teacher``), overriding default settings.

    ``train_labels``, the (N,) labels of the whole training set, is required by the methods that
    index the training set (``needs_sample_indices``) and ignored by the others.
    ``fold_teacher`` folds the teacher's BatchNorms into its convolutions, in place, before the
    method hooks it (``catkd.models.fold_batchnorm``: the same teacher, less work per step; the
    engine's fast path does it), except where the step trains them (``teacher_batchnorm_trains``).
    """
    method_class = _method_class(name)
    check_settings(name, overrides)
    if fold_teacher and teacher is not None and not method_class.teacher_batchnorm_trains:
        models.fold_batchnorm(teacher)
    if not method_class.needs_sample_indices:
        return method_class(student, teacher, **overrides)
    if train_labels is None:
        raise ValueError(f"method {name!r} keeps state per training sample: pass train_labels, "
                         f"the (N,) labels of the training set (an in-memory dataset's .labels)")
    return method_class(student, teacher, train_labels, **overrides)
