"""Loading checkpoints in the layouts the CIFAR-100 teachers and catkd runs are shipped in."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Containers a state_dict is found in: {"model": ...} (CRD / mdistiller teachers, catkd runs)
# and {"state_dict": ...} (Lightning and many training scripts).
_CONTAINER_KEYS = ("model", "state_dict")
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel and
# torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# What torch.load raises on bytes that are not a checkpoint of weights: its weights-only
# unpickler refuses pickled objects (a whole nn.Module) with UnpicklingError, and on damaged or
# foreign bytes each of these came up (random bytes, checkpoints truncated or overwritten).
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, IndexError,
               TypeError, AttributeError, AssertionError, struct.error, OSError)


def read_checkpoint(path: str | PathLike, map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.load`` reads at ``path``: tensors in plain containers only, never pickled
    code. A file that is not such a checkpoint is a ValueError that names it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # Read here, so that an OSError of torch.load is about the bytes (a truncated zip), and one
    # of the file system (no permission to read) names the file.
    content = io.BytesIO(Path(path).read_bytes())
    with warnings.catch_warnings():
        # torch warns about what it reads in a damaged file (a pickle protocol, a method it
        # finds); the error below says what is wrong, in one line.
        warnings.simplefilter("ignore")
        try:
            return torch.load(content, map_location=map_location, weights_only=True)
        except _UNREADABLE as error:
            raise ValueError(
                f"checkpoint {path} cannot be read as weights: it is damaged, or not a "
                f"state_dict (a whole pickled nn.Module is refused: save model.state_dict())"
            ) from error


def _extract_state_dict(checkpoint: Any, path: str | PathLike) -> dict[str, torch.Tensor]:
    for key in _CONTAINER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in checkpoint.items()
    ):
        raise ValueError(
            f"{path} holds no state_dict: expected a dict of tensors, or one under "
            f"{' or '.join(repr(k) for k in _CONTAINER_KEYS)}"
        )
    for prefix in _WRAPPER_PREFIXES:
        if checkpoint and all(key.startswith(prefix) for key in checkpoint):
            checkpoint = {key[len(prefix):]: value for key, value in checkpoint.items()}
    return checkpoint


def load_checkpoint(model: nn.Module, path: str | PathLike) -> nn.Module:
    """Load the weights at ``path`` into ``model`` strictly and return the model.

    Accepts a plain state_dict, ``{"model": state_dict}``, ``{"state_dict": state_dict}`` and
    keys prefixed by ``module.`` (DDP) or ``_orig_mod.`` (torch.compile). A checkpoint that does
    not fit raises ``ValueError`` naming the first missing, unexpected and mis-shaped keys; one
    that cannot be read (damaged, or a pickled model) raises ``ValueError`` too.
    """
    state_dict = _extract_state_dict(read_checkpoint(path), path)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshaped = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    if missing or unexpected or misshaped:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape (checkpoint vs model)", misshaped)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)
    return model
