"""Self-contained model files: name, config, sample rate and weights, loadable with
``torch.load(path, weights_only=True)``.

Two layouts are accepted by :func:`load_model`:

- a Lightning checkpoint written by ``sepkit train`` (a ``"sepkit"`` entry plus the
  ``state_dict`` of :class:`~sepkit.training.SeparationModule`, keys prefixed ``model.``),
- a lean model file from :func:`save_model` (``"sepkit"`` entry + ``state_dict``).

Published models of other toolkits are recognised by structure and converted first
(:mod:`sepkit.models.published`); ``hf://owner/name`` ids and snapshot folders are
resolved to their model file by :mod:`sepkit.hub`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from sepkit import __version__
from sepkit.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from sepkit.fileio import atomic_output
from sepkit.hub import HubError, resolve_model_source
from sepkit.models import build_model
from sepkit.models.published import load_published_model

_PREFIX = "model."


def model_metadata(model: torch.nn.Module, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``"sepkit"`` entry of a model file and of a training checkpoint (the only
    place it is built): what rebuilds ``model`` by name without the training code, the
    software versions that wrote it and, for a training checkpoint, ``training``: how the
    run was set up (``SeparationModule.training_record``: seed, data configuration,
    source commit, best validation score). Plain values only (``weights_only`` loads)."""
    try:
        lightning_version: str | None = importlib.metadata.version("lightning")
    except importlib.metadata.PackageNotFoundError:  # a lean model file needs no Lightning
        lightning_version = None
    metadata = {
        "version": __version__,
        "model_name": model.model_name,
        "model_config": dict(model.model_config),
        "sample_rate": int(model.sample_rate),
        "n_src": int(model.n_src),
        "software": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "lightning": lightning_version,
        },
    }
    if training is not None:
        metadata["training"] = training
    return metadata


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Write a lean model file atomically (temp file + rename)."""
    payload = {"sepkit": model_metadata(model), "state_dict": model.state_dict()}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


class CheckpointError(ValueError):
    """A checkpoint or model file cannot be used; the one-line message names the file."""


def _checked_rate(value: Any, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise CheckpointError(
            f"{path}: {where} sample rate {value!r} is not an integer in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return value


def _read_payload(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` onto the CPU, with torch's errors turned into
    one-line :class:`CheckpointError` messages (never its advice to disable
    ``weights_only``)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types; none of its text (or advice) reaches the user
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            problem = f"refused, the file holds a Python object ({unsafe.group(1)}) beyond plain weights and settings"
        elif zipfile.is_zipfile(path):
            problem = f"corrupt checkpoint ({type(err).__name__})"
        elif path.read_bytes()[:4] == b"PK\x03\x04":
            problem = "truncated or corrupt checkpoint (an incomplete zip archive)"
        else:
            problem = "not a torch checkpoint"
        raise CheckpointError(f"{path}: {problem}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a sepkit checkpoint (holds a {type(payload).__name__}, not a dict)")
    return payload


def _model_state(payload: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no 'state_dict' with the model weights")
    if any(key.startswith(_PREFIX) for key in state):
        state = {key[len(_PREFIX) :]: value for key, value in state.items() if key.startswith(_PREFIX)}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: weight {key!r} is not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: weight {key!r} holds NaN or infinity")
    return state


def _check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    stored = {key: tuple(value.shape) for key, value in state.items()}
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the stored model config "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    wrong = [key for key in expected if expected[key] != stored[key]]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} weight shape(s) do not match the stored model config, "
            f"e.g. {key!r} is {list(stored[key])}, the config builds {list(expected[key])}"
        )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model from a sepkit checkpoint or model file (weights_only load) and
    move it to ``map_location``.

    The stored config is first built on the meta device (no memory) and its weight
    names and shapes are compared with the file's, so a small file with a huge config
    is refused before anything big is allocated. Weights with NaN or infinity and
    sample rates outside the supported range are refused too.

    ``path`` may also be a Hugging Face model id ``hf://owner/name[@revision]`` or a
    local snapshot folder (:mod:`sepkit.hub`), loaded by the model file it holds.

    Raises:
        CheckpointError: any problem with the file, in one line naming it.
    """
    try:
        path = resolve_model_source(path)
    except HubError as err:
        raise CheckpointError(str(err)) from None
    try:
        published = load_published_model(path)  # SpeechBrain folder, SuDoRM-RF release, Asteroid file
    except ValueError as err:
        raise CheckpointError(str(err).splitlines()[0]) from None
    if published is not None:
        return published.to(map_location).eval()
    payload = _read_payload(path)
    meta = payload.get("sepkit")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a sepkit checkpoint (no 'sepkit' entry with model name and config)")
    name, config = meta.get("model_name"), meta.get("model_config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: the 'sepkit' entry lacks a model name and config")
    if "sample_rate" in meta:
        _checked_rate(meta["sample_rate"], path, "stored")
    state = _model_state(payload, path)
    try:
        # Every registered model builds on the meta device (the model contract test
        # checks it): a config that disagrees with the weights is refused at no cost,
        # and every size the constructor allocates follows from the checked weights.
        with torch.device("meta"):
            _check_shapes(build_model(name, **config), state, path)
        model = build_model(name, **config)
    except CheckpointError:
        raise
    except Exception as err:  # an unknown name or a config the constructor rejects
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: cannot build model {name!r} from the stored config ({message})") from None
    _checked_rate(getattr(model, "sample_rate", None), path, "model")
    model.load_state_dict(state)
    return model.to(map_location).eval()
