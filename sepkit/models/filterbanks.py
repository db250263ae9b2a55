"""Learned filterbanks: the encoder and decoder shared by every masking separator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sepkit.nn.activations import activate_, eager_inference

FILTERBANK_INITS = ("random", "stft")


def stft_filterbank(n_filters: int, kernel_size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed Fourier analysis filters and their least-squares synthesis filters.

    Returns ``(analysis, synthesis)``, each ``[n_filters, kernel_size]``. The analysis
    rows are a square-root Hann window times cosines and sines at ``n_filters // 2``
    frequencies ``(j + 1/2) / n_filters`` cycles per sample (the odd-stacked DFT: no
    all-zero sine at DC or Nyquist, so every filter carries signal). The synthesis rows
    are the pseudo-inverse of the un-windowed basis, windowed again and divided by the
    mean overlap-added squared window, so that encoder followed by decoder reconstructs
    the input exactly wherever the window overlap-adds to a constant (``n_filters >=
    kernel_size`` and ``stride`` dividing ``kernel_size // 2``, e.g. 256/256/64).

    Used as an initialisation only: training is free to move away from it. It starts a
    long-window encoder frequency-selective instead of random, which on CPU budgets is
    the difference between learning the masks and first learning a filterbank.
    """
    if n_filters % 2:
        raise ValueError(f"an STFT filterbank needs an even number of filters, got {n_filters}")
    n = torch.arange(kernel_size, dtype=torch.float64)
    freqs = (torch.arange(n_filters // 2, dtype=torch.float64) + 0.5) / n_filters
    phase = 2 * torch.pi * freqs[:, None] * n[None, :]
    basis = torch.cat([torch.cos(phase), torch.sin(phase)])  # [n_filters, kernel]
    window = torch.sqrt(0.5 - 0.5 * torch.cos(2 * torch.pi * n / kernel_size))  # periodic sqrt-Hann
    overlap = torch.zeros(stride, dtype=torch.float64)
    for start in range(0, kernel_size, stride):
        chunk = window[start : start + stride] ** 2
        overlap[: chunk.numel()] += chunk
    synthesis = torch.linalg.pinv(basis).T * window / overlap.mean()
    return (basis * window).float(), synthesis.float()


class ConvEncoder(nn.Module):
    """Learned analysis filterbank: ``[batch, time] -> [batch, n_filters, frames]``.

    ``frames = (time - kernel_size) // stride + 1``; the pipeline pads ``time`` so that
    no sample is dropped. ``init="stft"`` starts the filters as a windowed Fourier
    basis (:func:`stft_filterbank`) instead of PyTorch's random initialisation.
    """

    def __init__(
        self,
        n_filters: int,
        kernel_size: int,
        stride: int,
        bias: bool = False,
        activation: str | None = None,
        init: str = "random",
    ) -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(1, n_filters, kernel_size, stride=stride, bias=bias)
        if _check_init(init) == "stft":
            with torch.no_grad():
                self.conv.weight.copy_(stft_filterbank(n_filters, kernel_size, stride)[0].unsqueeze(1))
        if activation not in (None, "linear", "relu"):
            raise ValueError(f"encoder activation must be None, 'linear' or 'relu', got {activation!r}")
        self.activation = nn.ReLU() if activation == "relu" else nn.Identity()

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, n_filters, frames]``."""
        if wav.device.type == "cpu" and eager_inference():
            # oneDNN's strided convolution writes a blocked-layout output and reorders it,
            # a second [n_filters, frames] tensor at every call.
            return self.encode_frames(wav)
        return self.activation(self.conv(wav.unsqueeze(1)))

    def encode_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """The convolution's sums (up to rounding) for inference: the frames as a strided
        view of ``wav`` ``[batch, time]`` times the filters, one matrix product, the
        activation written over it. ``[batch, n_filters, frames]``; what ``forward`` runs at
        CPU inference, and the streaming separator on every block (where oneDNN's fixed
        per-call cost would dominate a call of a few frames)."""
        frames = wav.unfold(-1, self.kernel_size, self.stride)  # [batch, frames, kernel]
        rep = torch.matmul(self.conv.weight.squeeze(1), frames.transpose(1, 2))
        if self.conv.bias is not None:
            rep += self.conv.bias[:, None]
        return activate_(self.activation, rep)


class ConvDecoder(nn.Module):
    """Learned synthesis filterbank shared by all sources.

    ``[batch, n_src, n_filters, frames] -> [batch, n_src, (frames - 1) * stride + kernel_size]``.
    ``init="stft"`` starts it as the synthesis side of :func:`stft_filterbank`, the
    inverse of an STFT-initialised :class:`ConvEncoder`.
    """

    def __init__(self, n_filters: int, kernel_size: int, stride: int, bias: bool = False, init: str = "random") -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.deconv = nn.ConvTranspose1d(n_filters, 1, kernel_size, stride=stride, bias=bias)
        if _check_init(init) == "stft":
            with torch.no_grad():
                self.deconv.weight.copy_(stft_filterbank(n_filters, kernel_size, stride)[1].unsqueeze(1))

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        """``[batch, n_src, n_filters, frames]`` -> ``[batch, n_src, time]``."""
        batch, n_src, n_filters, frames = rep.shape
        if rep.device.type == "cpu" and eager_inference():
            # oneDNN's transposed convolution first reorders its whole
            # [batch * n_src, n_filters, frames] input, the largest tensor of the call.
            wav = self.overlap_add_frames(rep)
            if self.deconv.bias is not None:
                wav += self.deconv.bias
            return wav
        wav = self.deconv(rep.reshape(batch * n_src, n_filters, frames))
        return wav.reshape(batch, n_src, -1)

    def overlap_add_frames(self, rep: torch.Tensor) -> torch.Tensor:
        """The transposed convolution's sums (up to rounding) without its bias: each frame's
        samples by one matrix product, then their overlap-add (fold).
        ``[batch, n_src, n_filters, frames]`` -> ``[batch, n_src, (frames - 1) * stride +
        kernel_size]``; what ``forward`` runs at CPU inference, and the streaming separator
        on every block (which adds the bias once per finished sample)."""
        batch, n_src, n_filters, frames = rep.shape
        rep = rep.reshape(batch * n_src, n_filters, frames)
        # bmm, not matmul: with a weight that requires grad (even under inference_mode)
        # matmul folds the batch into one product and copies the whole input to do so
        pieces = torch.bmm(self.deconv.weight.squeeze(1).T.expand(len(rep), -1, -1), rep)
        length = (frames - 1) * self.stride + self.kernel_size
        wav = F.fold(pieces, (1, length), (1, self.kernel_size), stride=(1, self.stride))
        return wav.reshape(batch, n_src, length)


def _check_init(init: str) -> str:
    if init not in FILTERBANK_INITS:
        raise ValueError(f"filterbank init must be one of {FILTERBANK_INITS}, got {init!r}")
    return init
