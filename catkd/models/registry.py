"""Model names -> constructors. Modules of ``catkd.models`` register their models here."""

from __future__ import annotations

from typing import Callable

from torch import nn

Factory = Callable[[int, int], nn.Module]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("resnet20")`` on a function ``(num_classes, in_channels) -> model``."""

    def add(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"model name {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return add


def names() -> list[str]:
    """Every model name ``create`` accepts, sorted case-insensitively."""
    return sorted(_FACTORIES, key=str.lower)


def create(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model by name, e.g. ``create("resnet8x4", num_classes=10)``."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got num_classes={num_classes}, "
            f"in_channels={in_channels}"
        )
    return _FACTORIES[name](num_classes, in_channels)
