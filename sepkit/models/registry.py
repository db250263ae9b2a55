"""Model registry: every separator is built by name from plain (YAML-friendly) config.

A model file registers its builder with :func:`register_model`. ``build_model`` then
constructs it, optionally swaps layers for SSC (``ssc:`` block in the config), and
records the name and config on the instance so checkpoints are self-contained.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import torch

ModelBuilder = Callable[..., torch.nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}
_SMALL_CONFIGS: dict[str, dict[str, Any]] = {}
_DISCOVERED = False


def register_model(name: str, *, small_config: Mapping[str, Any]) -> Callable[[ModelBuilder], ModelBuilder]:
    """Class/function decorator that makes ``build_model(name, **config)`` work.

    Args:
        name: the registered name.
        small_config: constructor arguments of a tiny instance of the model (a few
            thousand parameters, any input length, every code path of the default
            configuration), on which tests/test_model_contract.py checks the shared
            contract of every model in seconds on a CPU. Required, so a new model cannot
            be registered without one.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = builder
        _SMALL_CONFIGS[name] = copy.deepcopy(dict(small_config))
        return builder

    return decorator


def _discover() -> None:
    # Import every module of sepkit.models once, so each model file registers itself
    # without a hand-maintained import list.
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module("sepkit.models")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"sepkit.models.{info.name}")
    _DISCOVERED = True


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    _discover()
    return sorted(_REGISTRY)


def small_config(name: str) -> dict[str, Any]:
    """A copy of the tiny test configuration model ``name`` registered with."""
    _discover()
    if name not in _SMALL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return copy.deepcopy(_SMALL_CONFIGS[name])


def model_builder(name: str) -> ModelBuilder:
    """The class or function registered as ``name``; its signature is the model's config
    with its defaults."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, ssc: dict[str, Any] | None = None, **config: Any) -> torch.nn.Module:
    """Build a registered separator from plain config.

    Args:
        name: registered model name (see :func:`list_models`).
        ssc: optional SSC swap block, e.g. ``{"preset": "ffn", "kernel_size": 3}`` or
            ``{"include": ["masker.*.ffn.*"], "kernel_size": 3}``. A ``preset`` names one
            of the model's ``ssc_presets`` (glob groups); other keys go to
            :func:`sepkit.nn.swap_to_ssc`.
        **config: the model's constructor arguments.

    Returns:
        The model, with ``model_name`` and ``model_config`` attributes recorded.
    """
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](**copy.deepcopy(config))
    recorded = copy.deepcopy(config)
    if ssc:
        from sepkit.nn.swap import swap_to_ssc

        swap_args = dict(ssc)
        preset = swap_args.pop("preset", None)
        if preset is not None:
            presets: dict[str, dict[str, list[str]]] = getattr(model, "ssc_presets", {})
            if preset not in presets:
                raise KeyError(f"model {name!r} has no SSC preset {preset!r}; presets: {sorted(presets)}")
            for key, patterns in presets[preset].items():
                swap_args[key] = list(patterns) + list(swap_args.get(key, []))
        model.ssc_report = swap_to_ssc(model, **swap_args)
        recorded["ssc"] = copy.deepcopy(ssc)
    model.model_name = name
    model.model_config = recorded
    return model
