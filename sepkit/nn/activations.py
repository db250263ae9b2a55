"""Mask nonlinearities by name, for the ``mask_activation`` option of the maskers."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def make_activation(name: str, option: str = "activation") -> nn.Module:
    """A fresh ``"sigmoid"`` or ``"relu"`` module (elementwise, any shape); ``option`` is
    the config key named in the error for an unknown name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{option} must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()
