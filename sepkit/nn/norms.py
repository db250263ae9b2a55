"""Normalisations used by the TasNet family, for ``[batch, channels, time]`` tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
