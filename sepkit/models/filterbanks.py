"""Learned filterbanks: the encoder and decoder shared by every masking separator."""

from __future__ import annotations

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """Learned analysis filterbank: ``[batch, time] -> [batch, n_filters, frames]``.

    ``frames = (time - kernel_size) // stride + 1``; the pipeline pads ``time`` so that
    no sample is dropped.
    """

    def __init__(
        self,
        n_filters: int,
        kernel_size: int,
        stride: int,
        bias: bool = False,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(1, n_filters, kernel_size, stride=stride, bias=bias)
        if activation not in (None, "linear", "relu"):
            raise ValueError(f"encoder activation must be None, 'linear' or 'relu', got {activation!r}")
        self.activation = nn.ReLU() if activation == "relu" else nn.Identity()

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, n_filters, frames]``."""
        return self.activation(self.conv(wav.unsqueeze(1)))


class ConvDecoder(nn.Module):
    """Learned synthesis filterbank shared by all sources.

    ``[batch, n_src, n_filters, frames] -> [batch, n_src, (frames - 1) * stride + kernel_size]``.
    """

    def __init__(self, n_filters: int, kernel_size: int, stride: int, bias: bool = False) -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.deconv = nn.ConvTranspose1d(n_filters, 1, kernel_size, stride=stride, bias=bias)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        """``[batch, n_src, n_filters, frames]`` -> ``[batch, n_src, time]``."""
        batch, n_src, n_filters, frames = rep.shape
        wav = self.deconv(rep.reshape(batch * n_src, n_filters, frames))
        return wav.reshape(batch, n_src, -1)
