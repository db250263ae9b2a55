"""Recognise published model formats by their structure and convert them.

:func:`load_published_model` is the hook :func:`sepkit.checkpoint.load_model` calls
before reading a sepkit checkpoint, so ``sepkit separate``/``evaluate`` accept:

- a SpeechBrain SepFormer model card folder (``hyperparams.yaml`` + ``encoder.ckpt``,
  ``masknet.ckpt``, ``decoder.ckpt``): :func:`~sepkit.models.speechbrain_compat.from_speechbrain`;
- a SuDoRM-RF release (a torch archive whose pickle names the authors' model class):
  :func:`~sepkit.models.sudormrf_compat.from_sudormrf`, read without executing it.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from sepkit.models.speechbrain_compat import from_speechbrain, is_speechbrain_folder
from sepkit.models.sudormrf_compat import from_sudormrf, is_sudormrf_file


def load_published_model(path: str | os.PathLike[str]) -> nn.Module | None:
    """The converted model (eval mode, on the CPU) if ``path`` is a published format
    sepkit converts, else ``None``.

    Raises:
        ValueError: the path is such a format but cannot be converted; names the file.
    """
    path = Path(path)
    if is_speechbrain_folder(path):
        return from_speechbrain(path)
    if path.is_file() and is_sudormrf_file(path):
        return from_sudormrf(path)
    return None
