"""Dual-path segmentation shared by DPRNN, SepFormer, DP-RCNet and GC3.

``chunk`` cuts a ``[batch, channels, frames]`` sequence into overlapping chunks
``[batch, channels, chunk_size, n_chunks]``; ``overlap_add`` is its adjoint and returns
the original frame count. Padding changes the result (the extra all-zero frames enter
the norm statistics and the inter-chunk context), so each model uses the rule of the
code it reproduces:

- ``"overlap"`` (the functions' default; sepkit's own rule, a DPRNN option): zero-pad
  ``chunk_size - hop`` on both sides, so every frame is covered by the same number of chunks, plus at
  the end the fewest zeros that put the last chunk on the hop grid.
- ``"pad_segment"`` (DPRNN, SepFormer, GC3, DP-RCNet): the segmentation of the
  dual-path code that descends from DPRNN's first author, as SpeechBrain
  (``speechbrain/lobes/models/dual_path.py``, ``Dual_Path_Model._padding``), his TAC
  code (``yluo42/TAC``, ``utility/models.py``, ``DPRNN_base.split_feature``), GC3
  (``yluo42/GC3``, ``utility/basics.py``, ``pad_segment``) and ESPnet
  (``espnet2/enh/layers/dprnn.py``) ship it. With chunk size K and hop P = K/2, first
  ``K - (P + frames % K) % K`` zeros (1 to K, never 0) at the end, then P zeros at both
  ends. It agrees with ``"overlap"`` only when ``0 < frames % K < K/2``; otherwise it
  has one more chunk (two when ``frames % K == K/2``). Needs ``chunk_size == 2 * hop``
  (the reference interleaves two half-shifted tilings).
- ``"chunk"`` (Asteroid's ``unfold``/``fold`` with ``padding=chunk_size``): zero-pad
  ``chunk_size`` on both sides and drop the trailing part shorter than a hop, which only
  ever holds padding. Needed to reproduce models trained with Asteroid exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ChunkPadding = Literal["overlap", "pad_segment", "chunk"]
CHUNK_PADDINGS = ("overlap", "pad_segment", "chunk")


def chunk_padding(frames: int, chunk_size: int, hop: int, padding: str) -> tuple[int, int]:
    """Zeros to add ``(left, right)`` so that ``left + frames + right - chunk_size`` is a
    whole number of hops and every real frame lies inside some chunk."""
    if not 0 < hop <= chunk_size:
        raise ValueError(f"dual_path: need 0 < hop <= chunk_size, got hop={hop}, chunk_size={chunk_size}")
    if padding == "overlap":
        edge = chunk_size - hop
        body = frames + 2 * edge
        tail = (-(body - chunk_size)) % hop if body > chunk_size else chunk_size - body
        return edge, edge + tail
    if padding == "pad_segment":
        if chunk_size != 2 * hop:
            raise ValueError(
                f"dual_path: padding 'pad_segment' needs chunk_size == 2 * hop, got chunk_size={chunk_size}, hop={hop}"
            )
        end = chunk_size - (hop + frames % chunk_size) % chunk_size
        return hop, end + hop
    if padding == "chunk":
        # Unfold with padding=chunk_size keeps floor((frames + chunk_size) / hop) + 1
        # chunks; the dropped remainder (< hop <= chunk_size) is all right-padding.
        return chunk_size, chunk_size - (frames + chunk_size) % hop
    raise ValueError(f"dual_path: unknown padding {padding!r}; expected one of {CHUNK_PADDINGS}")


def chunk(x: torch.Tensor, chunk_size: int, hop: int, padding: ChunkPadding = "overlap") -> torch.Tensor:
    """``[batch, channels, frames]`` -> ``[batch, channels, chunk_size, n_chunks]``."""
    left, right = chunk_padding(x.shape[-1], chunk_size, hop, padding)
    padded = F.pad(x, (left, right))
    # unfold gives [batch, channels, n_chunks, chunk_size]
    return padded.unfold(-1, chunk_size, hop).transpose(-1, -2)


def overlap_add(chunks: torch.Tensor, hop: int, frames: int, padding: ChunkPadding = "overlap") -> torch.Tensor:
    """``[batch, channels, chunk_size, n_chunks]`` -> ``[batch, channels, frames]``.

    Sums overlapping chunks (no window), then removes the padding ``chunk`` added;
    ``padding`` must be the convention the chunks were cut with.
    """
    batch, channels, chunk_size, count = chunks.shape
    left, right = chunk_padding(frames, chunk_size, hop, padding)
    total = left + frames + right
    expected = (total - chunk_size) // hop + 1
    if count != expected:
        raise ValueError(
            f"dual_path.overlap_add: {count} chunks do not match {frames} frames "
            f"(chunk_size={chunk_size}, hop={hop}, padding={padding!r} gives {expected})"
        )
    folded = F.fold(
        chunks.reshape(batch, channels * chunk_size, count),
        output_size=(1, total),
        kernel_size=(1, chunk_size),
        stride=(1, hop),
    )
    return folded.reshape(batch, channels, total)[..., left : left + frames]
