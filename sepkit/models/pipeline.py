"""The encoder -> masker -> decoder pipeline every masking separator shares."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Framing = Literal["end", "centered", "hop_padded", "truncate"]
FRAMINGS = ("end", "centered", "hop_padded", "truncate")


class EncoderMaskerDecoder(nn.Module):
    """Waveform separator: learned encoder, a masker producing ``n_src`` masks, decoder.

    Subclasses only build their masker (and, where the paper says so, a different
    encoder or decoder); padding, masking and cropping live here once.

    Args:
        encoder: ``[batch, time] -> [batch, n_filters, frames]``, with ``kernel_size`` and
            ``stride`` attributes.
        masker: ``[batch, n_filters, frames] -> [batch, n_src, n_filters, frames]`` masks.
        decoder: ``[batch, n_src, n_filters, frames] -> [batch, n_src, time']``.
        n_src: number of sources.
        sample_rate: sample rate the model was designed/trained for, in Hz.
        length_multiple: the padded input length must also be a multiple of this (e.g.
            A-FRCNN's 160 samples, SuDoRM-RF's ``stride * 2**(depth - 1)``); 1 means no
            extra constraint.
        framing: how the waveform ``[batch, time]`` is laid on the encoder's frame grid
            (each model picks the rule of the code it reproduces):

            - ``"end"``: zeros on the right only, to the next length the encoder covers
              with no sample left over (:meth:`padded_length`); the decoder output is
              cropped to the input length.
            - ``"centered"`` (SuDoRM-RF's and A-FRCNN's reference code): the input padded
              on the right to a multiple of ``length_multiple`` (which must then be a
              multiple of ``stride``) gets ``e = kernel_size // 2`` zeros on both sides, so
              frame ``t`` is centred on sample ``t * stride`` and ``frames = time /
              stride`` (``+ 1`` for an even kernel); the decoder's output is cropped to
              samples ``e .. e + time``.
            - ``"hop_padded"`` (GC3, ``yluo42/GC3`` ``GC3_network.py``, ``TasNet.pad_input``
              and the crop at the end of ``TasNet.forward``): needs ``kernel_size == 2 *
              stride``; ``kernel_size - (stride + time % kernel_size) % kernel_size`` zeros
              (1 to ``kernel_size``) on the right, then ``stride`` zeros on both sides;
              the decoder's output is cropped to samples ``stride .. stride + time``.
            - ``"truncate"`` (SepFormer, SpeechBrain's WSJ0-Mix recipe,
              ``recipes/WSJ0Mix/separation/train.py``, ``compute_forward``): no padding;
              the encoder drops the last ``(time - kernel_size) % stride`` samples and
              that tail of every estimate is filled with zeros. An input shorter than one
              window (which the reference cannot take) is padded to ``kernel_size``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        masker: nn.Module,
        decoder: nn.Module,
        n_src: int,
        sample_rate: int = 8000,
        length_multiple: int = 1,
        framing: Framing = "end",
    ) -> None:
        super().__init__()
        if n_src < 1:
            raise ValueError(f"n_src must be >= 1, got {n_src}")
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        kernel, stride = encoder.kernel_size, encoder.stride
        if framing == "hop_padded" and kernel != 2 * stride:
            raise ValueError(f"framing 'hop_padded' needs kernel_size == 2 * stride, got {kernel} and {stride}")
        if framing == "centered":
            if length_multiple % stride:
                raise ValueError(
                    f"centred encoder: length_multiple {length_multiple} is not a multiple of stride {stride}"
                )
            # An odd kernel gives time / stride frames, so the decoder rebuilds only
            # time - stride + kernel samples, which must reach e + time (an even kernel
            # gives one more frame and always reaches).
            if kernel % 2 and stride > kernel - kernel // 2:
                raise ValueError(
                    f"centred encoder: stride {stride} > kernel_size - kernel_size // 2 = {kernel - kernel // 2} "
                    "leaves the decoded signal shorter than the input"
                )
        self.encoder = encoder
        self.masker = masker
        self.decoder = decoder
        self.n_src = n_src
        self.sample_rate = sample_rate
        self.length_multiple = length_multiple
        self.framing = framing

    def padded_length(self, length: int) -> int:
        """Length ``L >= length`` the input is zero-padded to on the right, before the
        framing's symmetric edges (for ``"truncate"``: the grid length padding would use).

        ``"centered"``: the next multiple of ``length_multiple`` (at least one).
        ``"hop_padded"``: ``length + kernel - (stride + length % kernel) % kernel``.
        Otherwise the smallest ``L`` the encoder covers with no sample left over: it
        frames ``(L - kernel) // stride + 1`` and the decoder rebuilds ``(frames - 1) *
        stride + kernel`` samples, which equals ``L`` exactly when ``(L - kernel) % stride
        == 0``.
        """
        kernel, stride = self.encoder.kernel_size, self.encoder.stride
        if self.framing == "centered":
            return self.length_multiple * max(1, math.ceil(length / self.length_multiple))
        if self.framing == "hop_padded":
            return length + kernel - (stride + length % kernel) % kernel
        padded = max(length, kernel)
        padded = kernel + math.ceil((padded - kernel) / stride) * stride
        # Step along the frame grid until the extra multiple also holds; if none of
        # the next lcm/stride grid points works, the two constraints are incompatible.
        for _ in range(self.length_multiple):
            if padded % self.length_multiple == 0:
                return padded
            padded += stride
        raise ValueError(f"no input length fits kernel {kernel}, stride {stride} and multiple {self.length_multiple}")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Separate ``[batch, time]`` (or ``[batch, 1, time]`` / ``[time]``) into
        ``[batch, n_src, time]`` of exactly the input length."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.dim() == 3:
            if wav.shape[1] != 1:
                raise ValueError(f"expected mono input [batch, 1, time], got {tuple(wav.shape)}")
            wav = wav.squeeze(1)
        if wav.dim() != 2:
            raise ValueError(f"expected [batch, time] input, got {tuple(wav.shape)}")
        length = wav.shape[-1]
        kernel, stride = self.encoder.kernel_size, self.encoder.stride
        if self.framing == "truncate" and length >= kernel:
            framed = length - (length - kernel) % stride
            est = self.separate_padded(wav[..., :framed])
            return F.pad(est, (0, length - framed))
        padded = F.pad(wav, (0, self.padded_length(length) - length))
        est = self.separate_padded(padded)
        return est[..., :length]

    def separate_padded(self, wav: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` already padded on the right (``time == padded_length(time)``
        for every framing but ``"hop_padded"``, whose right padding is not idempotent)
        -> ``[batch, n_src, time]``, adding and removing the framing's symmetric edges."""
        edge = {"centered": self.encoder.kernel_size // 2, "hop_padded": self.encoder.stride}.get(self.framing, 0)
        rep = self.encoder(F.pad(wav, (edge, edge)))
        masks = self.masker(rep)
        if torch.is_grad_enabled():
            masked = masks * rep.unsqueeze(1)
        else:
            # Inference: the masks ([batch, n_src, N, frames], the largest activation) are
            # not needed after this product, so it is written over them: one such tensor
            # less at the peak of every call.
            masked = masks.mul_(rep.unsqueeze(1))
        est = self.decoder(masked)
        return est[..., edge : edge + wav.shape[-1]]
