"""Published models by name: ``hf://owner/name[@revision]`` Hugging Face model ids and
local snapshot folders, resolved to the one model file (or SpeechBrain card folder)
:func:`sepkit.checkpoint.load_model` reads.

An id goes through ``huggingface_hub.snapshot_download`` (the optional ``hub`` extra),
with ``local_files_only`` when ``HF_HUB_OFFLINE`` is set, so an offline run only uses
the local cache (``HF_HUB_CACHE``). A snapshot folder is searched by structure, not by
file name: a SpeechBrain separation card (the folder itself), or exactly one file that
is a sepkit model file or checkpoint, an Asteroid model file (e.g. ``pytorch_model.bin``)
or a SuDoRM-RF release.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sepkit.models.speechbrain_compat import is_speechbrain_folder
from sepkit.models.sudormrf_compat import SUDORMRF_CLASSES
from sepkit.restricted_pickle import pickle_strings

# "hf://owner/name" or "hf://owner/name@revision"; a Path turns the "//" into "/".
_HUB_ID = re.compile(r"^hf:/{1,2}(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_ASTEROID_KEYS = {"model_name", "model_args", "state_dict"}
_OFFLINE_VALUES = {"1", "on", "yes", "true"}


class HubError(ValueError):
    """A model id or snapshot folder that cannot be resolved; the message is one line."""


def is_hub_id(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is spelled as a Hugging Face model id (``hf://...``)."""
    return str(source).startswith("hf:/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def snapshot_folder(model_id: str) -> Path:
    """The local snapshot folder of ``hf://owner/name[@revision]``; downloads only when
    ``HF_HUB_OFFLINE`` is unset.

    Raises:
        HubError: malformed id, ``huggingface_hub`` missing, or the model not in the
            local cache while offline (or not found online).
    """
    match = _HUB_ID.match(str(model_id))
    if match is None:
        raise HubError(
            f"{model_id}: not a Hugging Face model id (expected hf://owner/name or hf://owner/name@revision)"
        )
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(f"{model_id}: huggingface_hub is not installed (pip install 'sepkit[hub]')") from None
    offline = _offline()
    try:
        # HF_HUB_CACHE is read here, not when huggingface_hub was first imported.
        folder = huggingface_hub.snapshot_download(
            match["repo"],
            revision=match["revision"],
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=offline,
        )
    except Exception as err:  # huggingface_hub raises many types (offline, missing, network, auth)
        where = os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache"
        if offline:
            raise HubError(f"{model_id}: not found in {where} and HF_HUB_OFFLINE is set") from None
        raise HubError(f"{model_id}: cannot be fetched ({type(err).__name__})") from None
    return Path(folder)


def _is_model_file(path: Path) -> bool:
    strings = pickle_strings(path)
    return "sepkit" in strings or _ASTEROID_KEYS <= strings or bool(strings & set(SUDORMRF_CLASSES))


def model_in_snapshot(folder: Path, source: str | os.PathLike[str] | None = None) -> Path:
    """The model a snapshot folder holds: the folder itself for a SpeechBrain card, else
    its one recognisable model file (searched recursively, symlinks of the HF cache
    followed).

    Raises:
        HubError: no recognisable model, or several (names them).
    """
    name = source if source is not None else folder
    if is_speechbrain_folder(folder):
        return folder
    candidates = sorted(path for path in folder.rglob("*") if path.is_file() and _is_model_file(path))
    if not candidates:
        raise HubError(
            f"{name}: no recognisable model in the snapshot (a sepkit model file, an Asteroid model file, "
            "a SuDoRM-RF release or a SpeechBrain separation card)"
        )
    if len(candidates) > 1:
        listed = ", ".join(str(path.relative_to(folder)) for path in candidates)
        raise HubError(f"{name}: several model files in the snapshot ({listed}); pass one of them")
    return candidates[0]


def resolve_model_source(source: str | os.PathLike[str]) -> Path:
    """The file or card folder to load for ``source``: an ``hf://`` id or a folder is
    resolved through its snapshot; any other path is returned as it is."""
    if is_hub_id(source):
        return model_in_snapshot(snapshot_folder(str(source)), source)
    path = Path(source)
    if path.is_dir():
        return model_in_snapshot(path)
    return path
