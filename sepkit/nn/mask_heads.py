"""The gated mask output of DPRNN and SepFormer (the FaSNet-style head of the widely used
implementations): ``masks_pre = W_m (tanh(W_t s) * sigmoid(W_g s))`` on every source
stream ``s``.

The three 1x1 convs stay attributes of the masker (``output_tanh``, ``output_gate``,
``mask_conv``) so that state-dict keys and SSC swap paths name them directly; this module
builds them and applies them, once for both models.
"""

from __future__ import annotations

from torch import Tensor, nn


def gated_head_convs(channels: int, n_filters: int) -> tuple[nn.Conv1d, nn.Conv1d, nn.Conv1d]:
    """``(W_t, W_g, W_m)``: tanh branch and gate ``channels -> channels`` with bias, mask
    projection ``channels -> n_filters`` without bias."""
    return (
        nn.Conv1d(channels, channels, 1),
        nn.Conv1d(channels, channels, 1),
        nn.Conv1d(channels, n_filters, 1, bias=False),
    )


def gated_masks(streams: Tensor, tanh_conv: nn.Module, gate_conv: nn.Module, mask_conv: nn.Module) -> Tensor:
    """``[batch * n_src, channels, frames] -> [batch * n_src, n_filters, frames]`` mask
    logits (the caller applies the mask nonlinearity)."""
    return mask_conv(tanh_conv(streams).tanh() * gate_conv(streams).sigmoid())
