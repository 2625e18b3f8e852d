"""Training methods: each turns a batch into the student's logits and named loss terms.

>>> method = create("catkd", student, teacher, beta=15.0)
>>> logits, losses = method(images, labels, epoch)
>>> sum(losses.values()).backward()

Each method takes its settings as keyword arguments with the reference defaults (``settings``);
a per-pair config overrides them.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from catkd.methods.at import AT
from catkd.methods.base import Method
from catkd.methods.cat import CAT, CATKD
from catkd.methods.ce import CE
from catkd.methods.dkd import DKD
from catkd.methods.kd import KD

__all__ = ["AT", "CAT", "CATKD", "CE", "DKD", "KD", "Method", "create", "names", "needs_teacher",
           "settings"]

_METHODS: dict[str, type[Method]] = {
    "ce": CE, "kd": KD, "dkd": DKD, "at": AT, "cat": CAT, "catkd": CATKD,
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


def needs_teacher(name: str) -> bool:
    """Whether method ``name`` distils from a teacher (every method but ``ce``)."""
    return _method_class(name).needs_teacher


def create(name: str, student: nn.Module, teacher: nn.Module | None = None,
           **overrides: Any) -> Method:
    """Build method ``name`` on ``student`` (and ``teacher``), overriding default settings."""
    method_class = _method_class(name)
    valid = settings(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for method {name!r}; valid "
                         f"settings: {', '.join(valid) or 'none'}")
    return method_class(student, teacher, **overrides)
