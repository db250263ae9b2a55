"""Self-contained model files: name, config, sample rate and weights, loadable with
``torch.load(path, weights_only=True)``.

Two layouts are accepted by :func:`load_model`:

- a Lightning checkpoint written by ``sepkit train`` (a ``"sepkit"`` entry plus the
  ``state_dict`` of :class:`~sepkit.training.SeparationModule`, keys prefixed ``model.``),
- a lean model file from :func:`save_model` (``"sepkit"`` entry + ``state_dict``).

Published models of other toolkits are recognised by structure and converted first
(:mod:`sepkit.models.published`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sepkit import __version__
from sepkit.fileio import atomic_output
from sepkit.models import build_model
from sepkit.models.published import load_published_model

_PREFIX = "model."


def model_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """The ``"sepkit"`` entry of a model file."""
    return {
        "version": __version__,
        "model_name": model.model_name,
        "model_config": dict(model.model_config),
        "sample_rate": int(model.sample_rate),
        "n_src": int(model.n_src),
    }


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Write a lean model file atomically (temp file + rename)."""
    payload = {"sepkit": model_metadata(model), "state_dict": model.state_dict()}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model from a sepkit checkpoint or model file (weights_only load)."""
    path = Path(path)
    published = load_published_model(path)  # SpeechBrain folder, SuDoRM-RF release, Asteroid file
    if published is not None:
        return published.to(map_location).eval()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{path}: not a loadable checkpoint ({err})") from err
    meta = payload.get("sepkit") if isinstance(payload, dict) else None
    if meta is None:
        raise ValueError(f"{path}: not a sepkit checkpoint (no 'sepkit' entry with model name and config)")
    model = build_model(meta["model_name"], **meta["model_config"])
    state = payload["state_dict"]
    if any(key.startswith(_PREFIX) for key in state):
        state = {key[len(_PREFIX) :]: value for key, value in state.items() if key.startswith(_PREFIX)}
    model.load_state_dict(state)
    model.eval()
    return model
