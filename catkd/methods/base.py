"""The interface every distillation method implements, and what the methods share.

A method owns the student (trained) and the teacher (frozen) as submodules, so moving the method
to a device or wrapping it in DistributedDataParallel moves or wraps both. Its forward turns one
batch into the student's logits and the named loss terms whose sum the trainer optimises. Any
other submodule (a connector, an embedding, a memory bank) is trained and saved with it.

Feature-based methods read intermediate maps with forward hooks (the recorders below), so the
models' own forward stays untouched.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_MODEL_PREFIXES = ("student.", "teacher.")

# What a setting may be beyond its type: (test, the valid values in words).
Range = tuple[Callable[[Any], bool], str]
NON_NEGATIVE: Range = (lambda value: value >= 0, "a non-negative number")
POSITIVE: Range = (lambda value: value > 0, "a positive number")
AT_LEAST_ONE: Range = (lambda value: value >= 1, "at least 1")


class Method(nn.Module):
    """Base class: ``forward(images, labels, epoch) -> (student logits, {name: weighted loss})``.

    The teacher is frozen once here (no gradients, eval mode) and stays in eval mode when the
    method is put in training mode: its BatchNorm statistics are those it was trained with.
    A method whose step normalises the teacher with the batch's statistics (OFD) sets
    ``teacher_batchnorm_trains``.
    """

    needs_teacher: bool = True
    # A method that keeps per-sample state over the training set (CRD's memory bank) sets this:
    # it is built with the (N,) labels of the whole training set as its third argument, and its
    # forward takes a fourth, the (B,) training-set indices of the batch's samples
    # (``catkd.data.BatchLoader(..., sample_indices=True)`` yields them).
    needs_sample_indices: bool = False
    # Raised when what a method computes changes, so that runs made before are not returned for
    # its configs: a revision above 1 is part of the run's hash (``catkd.config.identity``).
    revision: int = 1
    # The valid values of the settings (the keyword arguments of __init__) where their type
    # allows nonsense: a weight below 0 would push the student away from its teacher, a
    # temperature of 0 divides by zero. Checked before any work (``catkd.methods.check_settings``).
    ranges: ClassVar[dict[str, Range]] = {}
    # True where the step puts the teacher in training mode, so that its BatchNorms use the
    # batch's statistics (and can therefore not be folded into its convolutions).
    teacher_batchnorm_trains: ClassVar[bool] = False
    # True where the step reads the frozen teacher only by calling it on the batch (its logits,
    # its CAMs by ``catkd.cam.convert``, or the maps the recorders below keep during the call),
    # without gradients: students that see the same batch can then share one teacher forward
    # (``share_forward``, ``catkd.train.fit_lockstep``).
    reads_teacher_forward: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{name} distils from a teacher; pass one")
        if not self.needs_teacher and teacher is not None:
            raise ValueError(f"{name} trains without a teacher; got one")
        if teacher is student:
            raise ValueError("the teacher must be a separate model: freezing it would freeze "
                             "the student")
        self.student = student
        self.register_module("teacher", teacher)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def shares_teacher_forward(cls, settings: dict[str, Any]) -> bool:
        """Whether this method, with ``settings``, reads the frozen teacher only by calling it."""
        return cls.reads_teacher_forward

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_batchnorm_trains)
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, C, H, W) images, (N,) labels, 0-based epoch -> (N, K) logits, scalar loss terms."""
        raise NotImplementedError

    def both_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) images -> (N, K) logits of the student and, without autograd, of the
        teacher."""
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return logits, teacher_logits

    def extra_parameter_count(self) -> int:
        """How many trainable numbers the method adds to the student (connectors, embeddings)."""
        return sum(parameter.numel() for name, parameter in self.named_parameters()
                   if not name.startswith(_MODEL_PREFIXES))

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """The state that belongs to neither model (e.g. trainable connectors); saved apart."""
        return {key: value for key, value in self.state_dict().items()
                if not key.startswith(_MODEL_PREFIXES)}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what ``extra_state_dict`` returned; the keys must match exactly."""
        expected = set(self.extra_state_dict())
        if set(state) != expected:
            raise ValueError(f"{type(self).__name__} expects extra state keys {sorted(expected)}, "
                             f"got {sorted(state)}")
        self.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------- feature taps

# The recorder of each kind that taps a model: a newer one replaces it, so that a model given
# to a second method does not go on feeding the first method's hooks (and holding its tensors).
# A teacher that several methods read at once (``share_forward``) keeps all their recorders.
_TAPS: weakref.WeakKeyDictionary[nn.Module, dict[type, _Recorder]] = weakref.WeakKeyDictionary()
_SHARED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def share_forward(teacher: nn.Module) -> None:
    """Let several methods read the frozen ``teacher`` with one forward of its features per
    batch: a second call of its ``forward_features`` with the very tensor of the call before
    returns that call's result, and the recorders of every method on it stay (each method's
    recorders keep what the batch's one real forward recorded, until that method pops them).

    For students that train in lockstep on the same batch tensor (``catkd.train``), by methods
    that ``reads_teacher_forward``: their logits (``forward_head(forward_features)``), CAMs
    (``catkd.cam.convert`` calls ``forward_features``) and recorded maps come from the first
    student's call. Set before the methods are built, so that a converted teacher calls it too.
    """
    compute = teacher.forward_features
    latest: dict[str, torch.Tensor] = {}

    def forward_features(images: torch.Tensor) -> torch.Tensor:
        if latest.get("images") is not images:
            latest.update(images=images, features=compute(images))
        return latest["features"]

    teacher.forward_features = forward_features
    _SHARED.add(teacher)


class _Recorder:
    """Keeps the tensor each hooked submodule saw or made in the latest forward, by name.

    A model has at most one recorder of each kind: making one removes the hooks of the one
    before it on the same model. ``remove()`` takes the hooks off."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        self.names = names
        self._values: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        if model in _SHARED:
            return
        taps = _TAPS.setdefault(model, {})
        if type(self) in taps:
            taps[type(self)].remove()
        taps[type(self)] = self

    def _hook(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        """Take this recorder's hooks off its model and forget what it recorded."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._values.clear()

    def _keep_output(self, name: str, module: nn.Module, inputs: tuple,
                     output: torch.Tensor) -> None:
        self._values[name] = output

    def _keep_input(self, name: str, module: nn.Module, inputs: tuple) -> None:
        # An in-place ReLU overwrites its input right after this hook: keep a copy.
        value = inputs[0]
        self._values[name] = value.clone() if getattr(module, "inplace", False) else value

    def pop(self) -> list[torch.Tensor]:
        """The recorded tensors of the last forward, in the order of ``names``; then forgets
        them, so that no batch's tensors (and autograd graph) outlive their use."""
        missing = [name for name in self.names if name not in self._values]
        if missing:
            raise RuntimeError(f"no forward recorded {missing} since the last pop")
        return [self._values.pop(name) for name in self.names]


def _named_taps(model: nn.Module, attribute: str, deepest: int | None) -> tuple[str, ...]:
    names = tuple(getattr(model, attribute, ()))
    if not names:
        raise ValueError(f"{type(model).__name__} declares no {attribute}; the feature-based "
                         f"methods need a zoo model (catkd.models) that names them")
    if deepest is None:
        return names
    if not 1 <= deepest <= len(names):
        raise ValueError(f"{type(model).__name__} has {len(names)} {attribute} {names}: the "
                         f"number of deepest stages kept must be 1 to {len(names)}, got {deepest}")
    return names[-deepest:]


class StageRecorder(_Recorder):
    """Forward hooks on ``model.stages`` that keep each stage's latest (N, C_i, H_i, W_i) output,
    shallow to deep."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, _named_taps(model, "stages", None))
        for name in self.names:
            self._hook(model.get_submodule(name).register_forward_hook(
                partial(self._keep_output, name)))

    @property
    def stages(self) -> tuple[str, ...]:
        return self.names


class PreReLURecorder(_Recorder):
    """Hooks at ``model.preact_stages`` (the ``deepest`` last ones, or all) that keep each
    stage's latest pre-ReLU map (N, C_i, H_i, W_i), shallow to deep: the input of a named
    ``nn.ReLU`` (its last call in a forward wins, the one that ends the stage), else the named
    module's output."""

    def __init__(self, model: nn.Module, deepest: int | None = None) -> None:
        super().__init__(model, _named_taps(model, "preact_stages", deepest))
        for name in self.names:
            module = model.get_submodule(name)
            if isinstance(module, nn.ReLU):
                self._hook(module.register_forward_pre_hook(partial(self._keep_input, name)))
            else:
                self._hook(module.register_forward_hook(partial(self._keep_output, name)))


class PooledRecorder(_Recorder):
    """A hook on the classifier that keeps its input: the (N, C) globally pooled features."""

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, "get_classifier"):
            raise ValueError(f"{type(model).__name__} declares no get_classifier(); the "
                             f"feature-based methods need a zoo model (catkd.models) that names it")
        super().__init__(model, ("pooled",))
        self._hook(model.get_classifier().register_forward_pre_hook(
            partial(self._keep_input, "pooled")))

    def pop(self) -> torch.Tensor:  # type: ignore[override]
        """The (N, C) pooled features of the last forward."""
        return super().pop()[0]


PROBE_SIZE = 32  # the CIFAR side: connectors are sized on it, as mdistiller sizes them


@torch.no_grad()
def probe_shapes(model: nn.Module, recorders: list[_Recorder],
                 image_size: int = PROBE_SIZE) -> list[list[torch.Size]]:
    """The shapes each recorder records on a (2, C, size, size) input, model in eval mode.

    C is the input channels of the model's first convolution. The model's mode and BatchNorm
    statistics are left as they were.
    """
    first_conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    model(torch.zeros(2, first_conv.in_channels, image_size, image_size,
                      device=parameter.device, dtype=parameter.dtype))
    model.train(was_training)
    shapes = []
    for recorder in recorders:
        values = recorder.pop()
        values = values if isinstance(values, list) else [values]
        shapes.append([value.shape for value in values])
    return shapes
