"""sepkit.nn.dual_path against a Python-loop reimplementation written from the rules.

The oracle places chunk ``j`` at start ``first + j * hop`` and keeps adding chunks by
the stated rule, reading and writing one frame at a time:

- "overlap": first start ``-(chunk_size - hop)``; add chunks until the zero padding
  after the last frame is at least ``chunk_size - hop`` (every frame then lies in as
  many chunks as the first one).
- "chunk": first start ``-chunk_size``; every start that still fits a chunk inside
  ``chunk_size`` zeros of padding on both sides (Asteroid's unfold).

The DPRNN block is checked the same way, against one sequence at a time.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.oracles import assert_forward_and_gradients_equal

from sepkit.nn.dual_path import chunk, overlap_add


def oracle_starts(frames: int, chunk_size: int, hop: int, padding: str) -> list[int]:
    starts = []
    if padding == "overlap":
        start = -(chunk_size - hop)
        while True:
            starts.append(start)
            if start + chunk_size - frames >= chunk_size - hop:
                return starts
            start += hop
    start = -chunk_size
    while start + chunk_size <= frames + chunk_size:
        starts.append(start)
        start += hop
    return starts


def oracle_chunk(x: torch.Tensor, chunk_size: int, hop: int, padding: str) -> torch.Tensor:
    frames = x.shape[-1]
    starts = oracle_starts(frames, chunk_size, hop, padding)
    out = torch.zeros(*x.shape[:-1], chunk_size, len(starts), dtype=x.dtype)
    for j, start in enumerate(starts):
        for i in range(chunk_size):
            if 0 <= start + i < frames:
                out[..., i, j] = x[..., start + i]
    return out


def oracle_overlap_add(chunks: torch.Tensor, hop: int, frames: int, padding: str) -> torch.Tensor:
    chunk_size = chunks.shape[-2]
    out = torch.zeros(*chunks.shape[:-2], frames, dtype=chunks.dtype)
    for j, start in enumerate(oracle_starts(frames, chunk_size, hop, padding)):
        for i in range(chunk_size):
            if 0 <= start + i < frames:
                out[..., start + i] += chunks[..., i, j]
    return out


GEOMETRIES = [
    # (frames, chunk_size, hop): shorter than a chunk, exact fits, off-grid, hop not
    # dividing the chunk, hop == chunk (no overlap), one frame.
    (1, 4, 2),
    (3, 8, 4),
    (8, 8, 4),
    (9, 8, 4),
    (23, 8, 4),
    (24, 8, 4),
    (17, 6, 4),
    (20, 5, 5),
    (31, 7, 3),
]


@pytest.mark.parametrize("padding", ["overlap", "chunk"])
@pytest.mark.parametrize("frames, chunk_size, hop", GEOMETRIES)
def test_chunk_and_overlap_add_match_loop_oracle(frames: int, chunk_size: int, hop: int, padding: str) -> None:
    torch.manual_seed(frames * 100 + chunk_size * 10 + hop)
    x = torch.randn(2, 3, frames, dtype=torch.float64)
    chunks = chunk(x, chunk_size, hop, padding)
    expected = oracle_chunk(x, chunk_size, hop, padding)
    assert chunks.shape == expected.shape
    torch.testing.assert_close(chunks, expected, rtol=0, atol=0)

    y = torch.randn_like(chunks)
    torch.testing.assert_close(overlap_add(y, hop, frames, padding), oracle_overlap_add(y, hop, frames, padding))


@pytest.mark.parametrize("padding", ["overlap", "pad_segment", "chunk"])
def test_overlap_add_is_the_adjoint_of_chunk(padding: str) -> None:
    # <chunk(x), y> == <x, overlap_add(y)>: what gradients through the pair rely on.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 157, dtype=torch.float64)
    chunks = chunk(x, 20, 10, padding)
    y = torch.randn_like(chunks)
    lhs = (chunks * y).sum()
    rhs = (x * overlap_add(y, 10, 157, padding)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("padding", ["overlap", "pad_segment"])
def test_overlap_padding_covers_every_frame_equally_when_hop_divides_chunk(padding: str) -> None:
    # Both edge-padded rules: with 50 % overlap every frame sits in exactly 2 chunks.
    ones = torch.ones(1, 1, 1001)
    counts = overlap_add(torch.ones_like(chunk(ones, 250, 125, padding)), 125, 1001, padding)
    assert torch.equal(counts, torch.full_like(counts, 2.0))


def test_bad_arguments_are_rejected_with_a_clear_error() -> None:
    x = torch.randn(1, 2, 10)
    with pytest.raises(ValueError, match="hop <= chunk_size"):
        chunk(x, 4, 5)
    with pytest.raises(ValueError, match="unknown padding"):
        chunk(x, 4, 2, "reflect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not match"):
        overlap_add(chunk(x, 4, 2), 2, 30)


def oracle_dprnn_block(block, x: torch.Tensor, kind: str) -> torch.Tensor:
    """DPRNN's block (Luo et al. 2020, Fig. 1) one sequence at a time: the intra RNN over
    each chunk, the inter RNN over each chunk position, each followed by its projection,
    the norm written out (gLN: mean and biased variance over channels, positions and
    chunks per utterance; cLN: over channels per position) and the residual sum."""

    def norm(module, y: torch.Tensor) -> torch.Tensor:  # y [channels, K, S]
        affine = module if kind == "gLN" else module.norm  # cLN wraps an nn.LayerNorm
        dims = (0, 1, 2) if kind == "gLN" else (0,)
        mean = y.mean(dims, keepdim=True)
        var = ((y - mean) ** 2).mean(dims, keepdim=True)
        return (y - mean) / torch.sqrt(var + affine.eps) * affine.weight[:, None, None] + affine.bias[:, None, None]

    out = []
    for u in x:  # u [channels, K, S], one utterance
        intra = [block.intra_proj(block.intra_rnn(u[:, :, s].T[:, None])[0][:, 0]).T for s in range(u.shape[2])]
        u = u + norm(block.intra_norm, torch.stack(intra, -1))
        inter = [block.inter_proj(block.inter_rnn(u[:, k, :].T[:, None])[0][:, 0]).T for k in range(u.shape[1])]
        out.append(u + norm(block.inter_norm, torch.stack(inter, 1)))
    return torch.stack(out)


@pytest.mark.parametrize("norm", ["gLN", "cLN"])
def test_dprnn_block_equals_the_per_sequence_oracle_in_every_input_layout(norm: str) -> None:
    """The block keeps its residual stream channels-last for speed: for an input that is
    contiguous, channels-last, or the overlapping view ``chunk`` returns, its values and
    its gradients (input and parameters) equal the loop oracle's, float64."""
    from sepkit.nn.dual_path_rnn import DPRNNBlock

    torch.manual_seed(0)
    block = DPRNNBlock(6, 5, norm=norm).double()
    with torch.no_grad():
        for param in block.parameters():
            param.add_(0.1 * torch.randn_like(param))
    sequence = torch.randn(2, 6, 23, dtype=torch.float64)
    view = chunk(sequence, 8, 4, "overlap")
    for given in (view.contiguous(), view.contiguous(memory_format=torch.channels_last), view):
        leaf = given.detach().requires_grad_()
        reference = view.detach().contiguous().requires_grad_()
        params = list(block.parameters())
        assert_forward_and_gradients_equal(
            block(leaf), oracle_dprnn_block(block, reference, norm), [leaf, *params], [reference, *params], atol=1e-10
        )
