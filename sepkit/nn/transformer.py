"""Transformer encoder layers (Vaswani et al., "Attention Is All You Need", NeurIPS 2017)
as SepFormer uses them (Subakan et al., "Attention is All You Need in Speech
Separation", ICASSP 2021): sinusoidal positions, multi-head self-attention, a ReLU
feed-forward, pre- or post-norm, on ``[batch, length, d_model]``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(length: int, d_model: int, like: Tensor) -> Tensor:
    """Sinusoidal position table ``[length, d_model]`` (Vaswani et al.): sine on even,
    cosine on odd features. Computed per call, so sequence length is unbounded.

    Always computed in float32 and then cast to ``like``'s dtype: SpeechBrain's
    ``PositionalEncoding`` (``speechbrain/lobes/models/transformer/Transformer.py``)
    builds its table in float32, and a float64 table differs from it by up to ~1e-4 at
    long positions, which a float64 comparison with converted weights would see."""
    position = torch.arange(length, dtype=torch.float32, device=like.device).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=like.device) * (-math.log(10000.0) / d_model)
    )
    angles = position * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(length, d_model).to(like.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``[batch, length, d_model]`` in and out."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"SelfAttention: d_model {d_model} is not divisible by n_heads {n_heads}")
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
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, d_ffn, dropout, norm_first) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)
