"""Recognise published model formats by their structure and convert them.

:func:`load_published_model` is the hook :func:`sepkit.checkpoint.load_model` calls
before reading a sepkit checkpoint, so ``sepkit separate``/``evaluate`` accept:

- a SpeechBrain SepFormer model card folder (``hyperparams.yaml`` + ``encoder.ckpt``,
  ``masknet.ckpt``, ``decoder.ckpt``): :func:`~sepkit.models.speechbrain_compat.from_speechbrain`;
- a SuDoRM-RF release (a torch archive whose pickle names the authors' model class):
  :func:`~sepkit.models.sudormrf_compat.from_sudormrf`, read without executing it;
- an Asteroid model file (``torch.save(model.serialize(), path)``: a dict with
  ``model_name``, ``model_args`` and ``state_dict``, no ``sepkit`` entry):
  :func:`~sepkit.models.asteroid_compat.from_asteroid`.

Files are recognised from the string constants of their pickle (read with
:mod:`pickletools`, nothing is loaded), so a sepkit checkpoint costs one scan of its
small ``data.pkl`` record.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from sepkit.models.asteroid_compat import from_asteroid
from sepkit.models.speechbrain_compat import from_speechbrain, is_speechbrain_folder
from sepkit.models.sudormrf_compat import SUDORMRF_CLASSES, from_sudormrf
from sepkit.restricted_pickle import pickle_strings

# Top-level keys of Asteroid's serialize() dict.
_ASTEROID_KEYS = {"model_name", "model_args", "state_dict"}


def load_published_model(path: str | os.PathLike[str]) -> nn.Module | None:
    """The converted model (eval mode, on the CPU) if ``path`` is a published format
    sepkit converts, else ``None``.

    Raises:
        ValueError: the path is such a format but cannot be converted; names the file.
    """
    path = Path(path)
    if is_speechbrain_folder(path):
        return from_speechbrain(path)
    if not path.is_file():
        return None
    strings = pickle_strings(path)
    if strings & set(SUDORMRF_CLASSES):
        return from_sudormrf(path)
    if _ASTEROID_KEYS <= strings and "sepkit" not in strings:
        return from_asteroid(path)
    return None
