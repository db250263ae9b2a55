"""Reusable layers: normalisations, depthwise conv, dual-path chunking, the blocks several
models share (TCN, TAC group communication, dual-path RNN, U-ConvBlock, transformer,
stochastic depth, gated mask head, mask activations), SSC layers and the SSC swap."""

from sepkit.nn.activations import make_activation
from sepkit.nn.depthwise import DepthwiseConv1d
from sepkit.nn.drop_path import DropPath
from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.dual_path_rnn import DPRNNBlock
from sepkit.nn.mask_heads import gated_head_convs, gated_masks
from sepkit.nn.norms import ChannelwiseLayerNorm, GlobalLayerNorm, make_norm
from sepkit.nn.ssc import SSCConv1d, SSCConv2d, SSCLinear, from_module
from sepkit.nn.swap import SSCSwapReport, swap_to_ssc
from sepkit.nn.tac import TAC
from sepkit.nn.tcn import TemporalBlock
from sepkit.nn.transformer import FeedForward, SelfAttention, TransformerLayer, TransformerStack, sinusoidal_positions
from sepkit.nn.uconv import UConvBlock, global_norm

__all__ = [
    "ChannelwiseLayerNorm",
    "DPRNNBlock",
    "DepthwiseConv1d",
    "DropPath",
    "FeedForward",
    "GlobalLayerNorm",
    "SSCConv1d",
    "SSCConv2d",
    "SSCLinear",
    "SSCSwapReport",
    "SelfAttention",
    "TAC",
    "TemporalBlock",
    "TransformerLayer",
    "TransformerStack",
    "UConvBlock",
    "chunk",
    "from_module",
    "gated_head_convs",
    "gated_masks",
    "global_norm",
    "make_activation",
    "make_norm",
    "overlap_add",
    "sinusoidal_positions",
    "swap_to_ssc",
]
