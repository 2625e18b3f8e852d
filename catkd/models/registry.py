"""Model names -> constructors. Modules of ``catkd.models`` register their models here."""

from __future__ import annotations

from typing import Callable

from torch import nn

from catkd.models.adapt import SMALL_IMAGE_SIZE, reduce_stride

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
    """Every model name of the zoo, sorted case-insensitively. ``create`` also builds models from
    outside it: "torchvision.<name>" (a torchvision classifier) and "timm.<name>"."""
    return sorted(_FACTORIES, key=str.lower)


def check(name: str, key: str = "model ") -> None:
    """Refuse a name ``create`` cannot build, with the valid ones (``key`` leads the message,
    e.g. "model student=")."""
    if not isinstance(name, str):
        raise ValueError(f"unknown {key}{name!r}: a model is named by text, e.g. 'resnet20'")
    source, _, architecture = name.partition(".")
    if name in _FACTORIES or (architecture and source in _OUTSIDE
                              and architecture in _OUTSIDE[source][1]()):
        return
    hint = {"torchvision": "torchvision classifiers: " + ", ".join(_torchvision_names()),
            "timm": "timm's model names (timm.list_models())"}.get(source)
    raise ValueError(f"unknown {key}{name!r}; valid names: " + (hint or (
        ", ".join(names()) + ", or torchvision.<name> (a torchvision classifier, e.g. "
        "torchvision.resnet18) or timm.<name> (a timm model)")))


def has_forward_features(name: str) -> bool:
    """Whether model ``name`` splits its forward into ``forward_features`` and ``forward_head``
    (the zoo's and timm's models do; a torchvision classifier does not)."""
    return name in _FACTORIES or name.partition(".")[0] == "timm"


def revision(name: str) -> int:
    """How ``create`` builds model ``name``, raised when that changes for the same name: 2 for
    the models from outside the zoo, which are reduced to a total stride of 4 for small images
    (a run made before with their ImageNet strides is another model with the same weights)."""
    return 1 if name in _FACTORIES else 2


def create(name: str, num_classes: int = 100, in_channels: int = 3,
           image_size: int | None = None) -> nn.Module:
    """Build a freshly initialised model by name, e.g. ``create("resnet8x4", num_classes=10)``;
    a torchvision or timm model by "torchvision.<name>" or "timm.<name>", with its classifier
    sized to ``num_classes`` and its first convolution to ``in_channels``, never downloaded.

    ``image_size``, the side of the images the model will see: an outside model given images
    below 64 pixels has its earliest downsamplings set to stride 1, a total stride of 4 as the
    zoo's CIFAR ResNets (``catkd.models.adapt``); None leaves it as built, for ImageNet's
    sizes. The zoo's models are built for their data already and ignore it."""
    check(name)
    if num_classes < 1 or in_channels < 1 or (image_size is not None and image_size < 1):
        raise ValueError(
            f"num_classes, in_channels and image_size (or None) must be >= 1, got "
            f"num_classes={num_classes}, in_channels={in_channels}, image_size={image_size}"
        )
    if name in _FACTORIES:
        return _FACTORIES[name](num_classes, in_channels)
    source, _, architecture = name.partition(".")
    model = _OUTSIDE[source][0](architecture, num_classes, in_channels)
    if image_size is None or image_size >= SMALL_IMAGE_SIZE:
        return model
    try:
        return reduce_stride(model, in_channels, image_size)
    except ValueError as error:
        raise ValueError(f"model {name!r} cannot be adapted to {image_size}x{image_size} "
                         f"images: {error}") from None


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision(architecture: str, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision classifier without weights, its stem taking ``in_channels`` channels."""
    import torchvision

    model = torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    if in_channels != 3:
        # The stem is the first convolution in registration order: rebuilt for the channels.
        name, stem = next((name, module) for name, module in model.named_modules()
                          if isinstance(module, nn.Conv2d))
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
            stem.dilation, stem.groups, stem.bias is not None))
    return model


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return timm.list_models()


def _timm(architecture: str, num_classes: int, in_channels: int) -> nn.Module:
    """A timm model without pretrained weights (timm sizes its own head and stem)."""
    import timm

    return timm.create_model(architecture, pretrained=False, num_classes=num_classes,
                             in_chans=in_channels)


# Model sources outside the zoo: prefix -> (build, the names it knows).
_OUTSIDE: dict[str, tuple[Callable[[str, int, int], nn.Module], Callable[[], list[str]]]] = {
    "torchvision": (_torchvision, _torchvision_names),
    "timm": (_timm, _timm_names),
}
