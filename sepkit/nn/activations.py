"""Mask nonlinearities by name, for the ``mask_activation`` option of the maskers, and
activations applied in place at inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def make_activation(name: str, option: str = "activation") -> nn.Module:
    """A fresh ``"sigmoid"`` or ``"relu"`` module (elementwise, any shape); ``option`` is
    the config key named in the error for an unknown name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{option} must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def eager_inference() -> bool:
    """Whether a layer may use its lean inference form (an activation written over a
    fresh intermediate nobody needs again, a filterbank as one matrix product): only in
    eager inference, without autograd (which would need the inputs) and not while
    ``torch.export``, ONNX or TorchScript trace the model (their graphs keep the
    training form)."""
    return not (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def activate_(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, written over ``x`` where that gives the same numbers: sigmoid, ReLU,
    and a PReLU with one slope on a CPU tensor (a leaky ReLU with that slope, the same
    ``x if x > 0 else slope * x`` in the same precision; reading the slope would stall a
    GPU, where memory is not what this saves). Other modules are applied out of place.

    At inference on a CPU every activation-sized allocation avoided also means fewer
    pages for the process to fault in and keep: a paper Conv-TasNet holds tens of MiB
    less at the peak of each call. Only for ``x`` nobody needs again (see
    :func:`eager_inference`).
    """
    if isinstance(module, nn.Sigmoid):
        return x.sigmoid_()
    if isinstance(module, nn.ReLU):
        return x.relu_()
    if isinstance(module, nn.PReLU) and module.num_parameters == 1 and x.device.type == "cpu":
        return F.leaky_relu_(x, float(module.weight))
    return module(x)


def activate(module: nn.Module, x: Tensor, in_place: bool) -> Tensor:
    """:func:`activate_` when ``in_place`` (a caller in :func:`eager_inference` whose ``x``
    nobody needs again), else ``module(x)``."""
    return activate_(module, x) if in_place else module(x)
