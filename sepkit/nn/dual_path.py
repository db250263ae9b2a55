"""Dual-path segmentation shared by DPRNN, SepFormer, DP-RCNet and GC3.

``chunk`` cuts a ``[batch, channels, frames]`` sequence into overlapping chunks
``[batch, channels, chunk_size, n_chunks]``; ``overlap_add`` is its adjoint and returns
the original frame count. The sequence is zero-padded by ``chunk_size - hop`` on both
sides (so every frame is covered by the same number of chunks, as in the DPRNN
paper) and at the end up to the next whole hop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _padding(frames: int, chunk_size: int, hop: int) -> tuple[int, int]:
    edge = chunk_size - hop
    body = frames + 2 * edge
    tail = (-(body - chunk_size)) % hop if body > chunk_size else chunk_size - body
    return edge, edge + tail


def chunk(x: torch.Tensor, chunk_size: int, hop: int) -> torch.Tensor:
    """``[batch, channels, frames]`` -> ``[batch, channels, chunk_size, n_chunks]``."""
    if not 0 < hop <= chunk_size:
        raise ValueError(f"need 0 < hop <= chunk_size, got hop={hop}, chunk_size={chunk_size}")
    left, right = _padding(x.shape[-1], chunk_size, hop)
    padded = F.pad(x, (left, right))
    # unfold gives [batch, channels, n_chunks, chunk_size]
    return padded.unfold(-1, chunk_size, hop).transpose(-1, -2)


def overlap_add(chunks: torch.Tensor, hop: int, frames: int) -> torch.Tensor:
    """``[batch, channels, chunk_size, n_chunks]`` -> ``[batch, channels, frames]``.

    Sums overlapping chunks (no window), then removes the padding ``chunk`` added.
    """
    batch, channels, chunk_size, n_chunks = chunks.shape
    left, right = _padding(frames, chunk_size, hop)
    total = left + frames + right
    folded = F.fold(
        chunks.reshape(batch, channels * chunk_size, n_chunks),
        output_size=(1, total),
        kernel_size=(1, chunk_size),
        stride=(1, hop),
    )
    return folded.reshape(batch, channels, total)[..., left : left + frames]
