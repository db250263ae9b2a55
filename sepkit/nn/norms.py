"""Normalisations used by the TasNet family, for ``[batch, channels, time]`` tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Elements per slice of the sum of squares in GlobalLayerNorm.normalize_channels_last_.
NORM_SLICE_ELEMENTS = 1 << 18


class GlobalLayerNorm(nn.Module):
    """gLN (Conv-TasNet eq. 13): statistics over channels *and* time, per utterance.

    Input and output ``[batch, channels, *time]``; one gain and bias per channel.
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gLN is group norm with a single group (same biased variance, eps inside the
        # square root); the fused kernel is ~2.5x faster than composing it from
        # mean/var/div on CPU, forward and backward.
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def normalize_channels_last_(self, x: torch.Tensor) -> torch.Tensor:
        """gLN written over ``x``, a contiguous ``[batch, frames, channels]`` tensor (the
        channels-last layout of :meth:`sepkit.nn.tcn.TemporalBlock.infer_channels_last_`),
        for inference. Two passes as accurate as ``group_norm``'s moments: the mean, then
        the centred values' mean square; then one scale and shift per channel."""
        flat = x.view(x.shape[0], -1)
        flat.sub_(flat.mean(dim=1, keepdim=True))
        # vecdot sums pairwise (a float32 vector_norm loses three digits on a 4 s chunk)
        # but multiplies into a temporary as large as its input: one 1 MiB slice at a time
        slices = flat.split(NORM_SLICE_ELEMENTS, dim=1)
        variance = torch.stack([torch.linalg.vecdot(part, part) for part in slices]).sum(0) / flat.shape[1]
        return x.mul_(self.weight * (variance + self.eps).rsqrt()[:, None, None]).add_(self.bias)


class ChannelwiseLayerNorm(nn.Module):
    """cLN (Conv-TasNet eq. 14 as used for the causal model): statistics over channels
    only, at each time step, so no future frame leaks into the present.

    Input and output ``[batch, channels, time]``.
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, -1)).transpose(1, -1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"gLN"`` (global), ``"cLN"`` (channel-wise), ``"BN"`` (batch norm) or ``"id"``."""
    if kind == "gLN":
        return GlobalLayerNorm(channels)
    if kind == "cLN":
        return ChannelwiseLayerNorm(channels)
    if kind == "BN":
        return nn.BatchNorm1d(channels)
    if kind == "id":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'gLN', 'cLN', 'BN' or 'id'")
