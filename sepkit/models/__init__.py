"""Separation models: one shared encoder -> masker -> decoder pipeline, one file per family."""

from sepkit.models.asteroid_compat import from_asteroid
from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import build_model, list_models, register_model, small_config

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "EncoderMaskerDecoder",
    "build_model",
    "from_asteroid",
    "list_models",
    "register_model",
    "small_config",
]
