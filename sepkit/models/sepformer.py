"""SepFormer (Subakan et al., ICASSP 2021): dual-path transformers on chunked frames."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model
from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.norms import make_norm


def sinusoidal_positions(length: int, d_model: int, like: Tensor) -> Tensor:
    """Sinusoidal position table ``[length, d_model]`` (Vaswani et al.): sine on even,
    cosine on odd features. Computed per call, so sequence length is unbounded."""
    position = torch.arange(length, dtype=like.dtype, device=like.device).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=like.dtype, device=like.device) * (-math.log(10000.0) / d_model)
    )
    angles = position * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(length, d_model)


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``[batch, length, d_model]`` in and out."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"SepFormer: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, d_model))


class FeedForward(nn.Module):
    """Position-wise feed-forward: linear up to ``d_ffn`` -> ReLU -> dropout -> linear."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.linear_in = nn.Linear(d_model, d_ffn)
        self.linear_out = nn.Linear(d_ffn, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_out(self.dropout(torch.relu(self.linear_in(x))))


class TransformerLayer(nn.Module):
    """Transformer encoder layer, ``[batch, length, d_model]``; pre-norm (``norm_first``,
    the SepFormer setting) or post-norm."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.attention = SelfAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x)))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class TransformerStack(nn.Module):
    """Sinusoidal positions added at the input, ``n_layers`` transformer layers, a final
    LayerNorm. ``[batch, length, d_model]`` in and out."""

    def __init__(
        self, n_layers: int, d_model: int, n_heads: int, d_ffn: int, dropout: float, norm_first: bool, positional: bool
    ) -> None:
        super().__init__()
        self.positional = positional
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, d_ffn, dropout, norm_first) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)


class SepFormerBlock(nn.Module):
    """One SepFormer block on ``[batch, d_model, chunk_size, n_chunks]`` (same out):
    intra-chunk transformer -> norm (+ skip around it), inter-chunk transformer -> norm
    + residual."""

    def __init__(self, intra: TransformerStack, inter: TransformerStack, d_model: int, norm: str, skip_around_intra: bool) -> None:
        super().__init__()
        self.intra = intra
        self.intra_norm = make_norm(norm, d_model)
        self.inter = inter
        self.inter_norm = make_norm(norm, d_model)
        self.skip_around_intra = skip_around_intra

    def forward(self, x: Tensor) -> Tensor:
        batch, d_model, chunk_size, n_chunks = x.shape
        intra = x.permute(0, 3, 2, 1).reshape(batch * n_chunks, chunk_size, d_model)
        intra = self.intra(intra).reshape(batch, n_chunks, chunk_size, d_model).permute(0, 3, 2, 1)
        intra = self.intra_norm(intra)
        if self.skip_around_intra:
            intra = intra + x
        inter = intra.permute(0, 2, 3, 1).reshape(batch * chunk_size, n_chunks, d_model)
        inter = self.inter(inter).reshape(batch, chunk_size, n_chunks, d_model).permute(0, 3, 1, 2)
        return self.inter_norm(inter) + intra


class SepFormerMasker(nn.Module):
    """gLN -> 1x1 (no bias) -> chunk -> ``n_repeats`` SepFormer blocks -> PReLU -> 1x1
    Conv2d to ``n_src`` streams -> overlap-add -> tanh/sigmoid gated 1x1 convs -> 1x1
    (no bias) back to ``n_filters`` -> ReLU masks.

    Input ``[batch, n_filters, frames]``; output masks ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        d_model: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        n_repeats: int = 2,
        n_intra_layers: int = 8,
        n_inter_layers: int = 8,
        chunk_size: int = 250,
        hop: int = 125,
        dropout: float = 0.0,
        norm: str = "gLN",
        norm_first: bool = True,
        positional: bool = True,
        skip_around_intra: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < hop <= chunk_size:
            raise ValueError(f"SepFormer: need 0 < hop <= chunk_size, got hop={hop}, chunk_size={chunk_size}")
        self.n_src = n_src
        self.n_filters = n_filters
        self.d_model = d_model
        self.chunk_size = chunk_size
        self.hop = hop
        self.input_norm = make_norm(norm, n_filters)
        self.input_conv = nn.Conv1d(n_filters, d_model, 1, bias=False)

        def stack(n_layers: int) -> TransformerStack:
            return TransformerStack(n_layers, d_model, n_heads, d_ffn, dropout, norm_first, positional)

        self.blocks = nn.ModuleList(
            SepFormerBlock(stack(n_intra_layers), stack(n_inter_layers), d_model, norm, skip_around_intra)
            for _ in range(n_repeats)
        )
        self.output_act = nn.PReLU()
        self.output_conv = nn.Conv2d(d_model, n_src * d_model, 1)
        self.output_tanh = nn.Conv1d(d_model, d_model, 1)
        self.output_gate = nn.Conv1d(d_model, d_model, 1)
        self.mask_conv = nn.Conv1d(d_model, n_filters, 1, bias=False)

    def forward(self, rep: Tensor) -> Tensor:
        batch, _, frames = rep.shape
        x = chunk(self.input_conv(self.input_norm(rep)), self.chunk_size, self.hop)
        for block in self.blocks:
            x = block(x)
        x = self.output_conv(self.output_act(x))
        _, _, chunk_size, n_chunks = x.shape
        x = overlap_add(x.reshape(batch * self.n_src, self.d_model, chunk_size, n_chunks), self.hop, frames)
        x = self.output_tanh(x).tanh() * self.output_gate(x).sigmoid()
        masks = torch.relu(self.mask_conv(x))
        return masks.reshape(batch, self.n_src, self.n_filters, frames)


@register_model("sepformer")
class SepFormer(EncoderMaskerDecoder):
    """SepFormer. Defaults are the paper's model (SpeechBrain's WSJ0-2mix recipe): encoder
    256 filters, kernel 16, stride 8, ReLU; chunk 250, hop 125; 2 repeats of 8 intra + 8
    inter pre-norm transformer layers (d_model 256, 8 heads, feed-forward 1024, ReLU,
    sinusoidal positions); ReLU masks; shared linear decoder: 25,679,361 parameters.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters, kernel_size, stride: encoder/decoder.
        d_model, n_heads, d_ffn: transformer sizes.
        n_repeats: SepFormer blocks. n_intra_layers, n_inter_layers: layers per stack.
        chunk_size, hop: dual-path segmentation (frames).
        dropout: transformer dropout (0 in the paper).
        norm: norm after each stack ("gLN").
        norm_first: pre-norm transformer layers (paper) or post-norm.
        positional: add sinusoidal positions at the input of every stack.
        skip_around_intra: residual connection around the intra stack.
        sample_rate: sample rate the model is trained at.
    """

    ssc_presets = {
        "ffn": {
            "include": [
                "masker.blocks.*.intra.layers.*.ffn.linear_in",
                "masker.blocks.*.intra.layers.*.ffn.linear_out",
                "masker.blocks.*.inter.layers.*.ffn.linear_in",
                "masker.blocks.*.inter.layers.*.ffn.linear_out",
            ]
        }
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 256,
        kernel_size: int = 16,
        stride: int = 8,
        d_model: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        n_repeats: int = 2,
        n_intra_layers: int = 8,
        n_inter_layers: int = 8,
        chunk_size: int = 250,
        hop: int = 125,
        dropout: float = 0.0,
        norm: str = "gLN",
        norm_first: bool = True,
        positional: bool = True,
        skip_around_intra: bool = True,
        sample_rate: int = 8000,
    ) -> None:
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride, activation="relu"),
            masker=SepFormerMasker(
                n_filters,
                n_src,
                d_model=d_model,
                n_heads=n_heads,
                d_ffn=d_ffn,
                n_repeats=n_repeats,
                n_intra_layers=n_intra_layers,
                n_inter_layers=n_inter_layers,
                chunk_size=chunk_size,
                hop=hop,
                dropout=dropout,
                norm=norm,
                norm_first=norm_first,
                positional=positional,
                skip_around_intra=skip_around_intra,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
        )
