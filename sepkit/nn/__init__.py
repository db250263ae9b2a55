"""Reusable layers: normalisations, depthwise conv, dual-path chunking, SSC layers and the SSC swap."""

from sepkit.nn.depthwise import DepthwiseConv1d
from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.norms import ChannelwiseLayerNorm, GlobalLayerNorm, make_norm
from sepkit.nn.ssc import SSCConv1d, SSCConv2d, SSCLinear, from_module
from sepkit.nn.swap import SSCSwapReport, swap_to_ssc

__all__ = [
    "ChannelwiseLayerNorm",
    "DepthwiseConv1d",
    "GlobalLayerNorm",
    "SSCConv1d",
    "SSCConv2d",
    "SSCLinear",
    "SSCSwapReport",
    "chunk",
    "from_module",
    "make_norm",
    "overlap_add",
    "swap_to_ssc",
]
