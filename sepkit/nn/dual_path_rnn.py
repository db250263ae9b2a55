"""The dual-path RNN block of DPRNN (Luo, Chen & Yoshioka, "Dual-path RNN: efficient long
sequence modeling for time-domain single-channel speech separation", ICASSP 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepkit.nn.norms import make_norm

RNN_TYPES: dict[str, type[nn.RNNBase]] = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


class DPRNNBlock(nn.Module):
    """One dual-path block: an intra-chunk RNN along ``chunk_size`` then an inter-chunk
    RNN along ``n_chunks``, each followed by a linear projection back to ``channels``, a
    norm, and a residual connection (Luo et al. 2020, Fig. 1).

    Input and output ``[batch, channels, chunk_size, n_chunks]`` (the output channels-last).

    Used by DPRNN and by GC3's GC-DPRNN backbone.

    Args:
        channels: feature size N of the chunked sequence.
        hidden_size: RNN hidden units per direction.
        norm: norm after each projection (``sepkit.nn.norms.make_norm``); "gLN" here
            normalises over channels, chunk positions and chunks, per utterance.
        bidirectional_inter: direction(s) of the inter-chunk RNN; a causal model uses a
            unidirectional one (with "cLN").
        rnn_type: "LSTM", "GRU" or "RNN".
        dropout: dropout on the RNN outputs, before each projection (0 in the paper).
        bidirectional_intra: direction(s) of the intra-chunk RNN (bidirectional in the
            paper). Unidirectional, together with a unidirectional inter RNN and "cLN",
            every output at chunk position ``k`` depends on positions ``<= k`` of the
            same and earlier chunks only, i.e. on past frames: the block is causal and
            streams frame by frame (``sepkit.streaming``).
    """

    def __init__(
        self,
        channels: int,
        hidden_size: int,
        norm: str = "gLN",
        bidirectional_inter: bool = True,
        rnn_type: str = "LSTM",
        dropout: float = 0.0,
        bidirectional_intra: bool = True,
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"DPRNNBlock: rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        rnn = RNN_TYPES[rnn_type]
        intra_directions = 2 if bidirectional_intra else 1
        # Time-major RNNs ([steps, sequences, C]): the CPU (oneDNN) kernels work time-major,
        # so a batch-first call adds a transpose copy each way, forward and backward.
        self.intra_rnn = rnn(channels, hidden_size, bidirectional=bidirectional_intra)
        self.intra_proj = nn.Linear(intra_directions * hidden_size, channels)
        self.intra_norm = make_norm(norm, channels)
        inter_directions = 2 if bidirectional_inter else 1
        self.inter_rnn = rnn(channels, hidden_size, bidirectional=bidirectional_inter)
        self.inter_proj = nn.Linear(inter_directions * hidden_size, channels)
        self.inter_norm = make_norm(norm, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, chunk_size, n_chunks = x.shape
        # The residual stream is kept channels-last (stored [batch, K, S, channels]): each
        # projection's output then reaches it by moving whole rows of channels, where the
        # default layout would transpose channels against positions (a strided copy about
        # ten times as slow), and the norms, the residual adds and their gradients all run
        # on one layout. gLN's statistics do not depend on the layout, and group_norm has a
        # channels-last kernel. The conversion costs nothing when x is already channels-last
        # (every DPRNN block after the first).
        # Intra: every chunk is one sequence of length chunk_size.
        intra = x.permute(2, 0, 3, 1).reshape(chunk_size, batch * n_chunks, channels)
        intra = self.intra_proj(self.dropout(self.intra_rnn(intra)[0]))
        intra = intra.view(chunk_size, batch, n_chunks, channels).permute(1, 3, 0, 2)
        x = x + self.intra_norm(intra.contiguous(memory_format=torch.channels_last))
        # Inter: every position inside a chunk is one sequence across chunks.
        inter = x.permute(3, 0, 2, 1).reshape(n_chunks, batch * chunk_size, channels)
        inter = self.inter_proj(self.dropout(self.inter_rnn(inter)[0]))
        inter = inter.view(n_chunks, batch, chunk_size, channels).permute(1, 3, 2, 0)
        return x + self.inter_norm(inter.contiguous(memory_format=torch.channels_last))
