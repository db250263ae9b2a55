"""Reusable layers: normalisations, dual-path chunking, SSC layers and the SSC swap."""

from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.norms import ChannelwiseLayerNorm, GlobalLayerNorm, make_norm

__all__ = ["ChannelwiseLayerNorm", "GlobalLayerNorm", "chunk", "make_norm", "overlap_add"]
