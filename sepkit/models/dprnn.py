"""DPRNN-TasNet (Luo, Chen & Yoshioka, ICASSP 2020): dual-path BiLSTMs on chunked frames."""

from __future__ import annotations

from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model
from sepkit.nn.dual_path import CHUNK_PADDINGS, ChunkPadding, chunk, overlap_add
from sepkit.nn.norms import make_norm

MASK_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
RNN_TYPES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


class DPRNNBlock(nn.Module):
    """One dual-path block: an intra-chunk RNN along ``chunk_size`` then an inter-chunk
    RNN along ``n_chunks``, each followed by a linear projection back to ``channels``, a
    norm, and a residual connection (Luo et al. 2020, Fig. 1).

    Input and output ``[batch, channels, chunk_size, n_chunks]``.

    Stable signature (reused by GC3 / DP-RCNet):
    ``DPRNNBlock(channels, hidden_size, norm="gLN", bidirectional_inter=True,
    rnn_type="LSTM", dropout=0.0)``.

    Args:
        channels: feature size N of the chunked sequence.
        hidden_size: RNN hidden units per direction.
        norm: norm after each projection (``sepkit.nn.norms.make_norm``); "gLN" here
            normalises over channels, chunk positions and chunks, per utterance.
        bidirectional_inter: the intra RNN is always bidirectional; a causal model
            uses a unidirectional inter RNN (with "cLN").
        rnn_type: "LSTM", "GRU" or "RNN".
        dropout: dropout on the RNN outputs, before each projection (0 in the paper).
    """

    def __init__(
        self,
        channels: int,
        hidden_size: int,
        norm: str = "gLN",
        bidirectional_inter: bool = True,
        rnn_type: str = "LSTM",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"DPRNNBlock: rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        rnn = RNN_TYPES[rnn_type]
        self.intra_rnn = rnn(channels, hidden_size, batch_first=True, bidirectional=True)
        self.intra_proj = nn.Linear(2 * hidden_size, channels)
        self.intra_norm = make_norm(norm, channels)
        inter_directions = 2 if bidirectional_inter else 1
        self.inter_rnn = rnn(channels, hidden_size, batch_first=True, bidirectional=bidirectional_inter)
        self.inter_proj = nn.Linear(inter_directions * hidden_size, channels)
        self.inter_norm = make_norm(norm, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, chunk_size, n_chunks = x.shape
        # Intra: every chunk is one sequence of length chunk_size.
        intra = x.permute(0, 3, 2, 1).reshape(batch * n_chunks, chunk_size, channels)
        intra = self.intra_proj(self.dropout(self.intra_rnn(intra)[0]))
        intra = intra.reshape(batch, n_chunks, chunk_size, channels).permute(0, 3, 2, 1)
        x = x + self.intra_norm(intra)
        # Inter: every position inside a chunk is one sequence across chunks.
        inter = x.permute(0, 2, 3, 1).reshape(batch * chunk_size, n_chunks, channels)
        inter = self.inter_proj(self.dropout(self.inter_rnn(inter)[0]))
        inter = inter.reshape(batch, chunk_size, n_chunks, channels).permute(0, 3, 1, 2)
        return x + self.inter_norm(inter)


class DPRNNMasker(nn.Module):
    """DPRNN separator: norm -> 1x1 bottleneck -> chunk -> ``n_blocks`` DPRNNBlocks ->
    PReLU -> 1x1 Conv2d to ``n_src`` streams -> overlap-add -> tanh/sigmoid gated 1x1
    convs -> 1x1 conv to ``n_filters`` -> mask nonlinearity.

    The gated output head is the FaSNet-style head of the widely used implementation
    (Asteroid); with it the paper configuration has the paper's 2.6M parameters.

    Input ``[batch, n_filters, frames]``; output masks ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        bottleneck: int = 64,
        hidden_size: int = 128,
        n_blocks: int = 6,
        chunk_size: int = 250,
        hop: int = 125,
        norm: str = "gLN",
        bidirectional: bool = True,
        rnn_type: str = "LSTM",
        dropout: float = 0.0,
        mask_activation: str = "sigmoid",
        chunk_padding: ChunkPadding = "overlap",
    ) -> None:
        super().__init__()
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(f"DPRNN: mask_activation must be one of {sorted(MASK_ACTIVATIONS)}")
        if chunk_padding not in CHUNK_PADDINGS:
            raise ValueError(f"DPRNN: chunk_padding must be one of {CHUNK_PADDINGS}, got {chunk_padding!r}")
        if not 0 < hop <= chunk_size:
            raise ValueError(f"DPRNN: need 0 < hop <= chunk_size, got hop={hop}, chunk_size={chunk_size}")
        self.n_src = n_src
        self.n_filters = n_filters
        self.bottleneck_channels = bottleneck
        self.chunk_size = chunk_size
        self.hop = hop
        self.chunk_padding = chunk_padding
        self.input_norm = make_norm(norm, n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        self.blocks = nn.ModuleList(
            DPRNNBlock(bottleneck, hidden_size, norm, bidirectional, rnn_type, dropout) for _ in range(n_blocks)
        )
        self.output_act = nn.PReLU()
        self.output_conv = nn.Conv2d(bottleneck, n_src * bottleneck, 1)
        self.output_tanh = nn.Conv1d(bottleneck, bottleneck, 1)
        self.output_gate = nn.Conv1d(bottleneck, bottleneck, 1)
        self.mask_conv = nn.Conv1d(bottleneck, n_filters, 1, bias=False)
        self.mask_act = MASK_ACTIVATIONS[mask_activation]()

    def forward(self, rep: Tensor) -> Tensor:
        batch, _, frames = rep.shape
        x = chunk(self.bottleneck(self.input_norm(rep)), self.chunk_size, self.hop, self.chunk_padding)
        for block in self.blocks:
            x = block(x)
        x = self.output_conv(self.output_act(x))
        _, _, chunk_size, n_chunks = x.shape
        x = x.reshape(batch * self.n_src, self.bottleneck_channels, chunk_size, n_chunks)
        x = overlap_add(x, self.hop, frames, self.chunk_padding)
        x = self.output_tanh(x).tanh() * self.output_gate(x).sigmoid()
        masks = self.mask_act(self.mask_conv(x))
        return masks.reshape(batch, self.n_src, self.n_filters, frames)


@register_model("dprnn")
class DPRNN(EncoderMaskerDecoder):
    """DPRNN-TasNet. Defaults are the paper's best model: N=64 filters, L=2 (stride 1),
    bottleneck 64, 6 blocks, BiLSTM 128 per direction, chunk K=250, hop 125, gLN,
    sigmoid masks: 2,608,065 parameters. The widely used variant (Asteroid's recipe) is
    ``bottleneck=128`` (with ``kernel_size=16, stride=8, chunk_size=100, hop=50`` for the
    faster ks16 model): about 3.65M.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: encoder/decoder bases N.
        kernel_size, stride: encoder window and hop in samples.
        bottleneck: feature size inside the dual-path blocks.
        hidden_size: LSTM units per direction.
        n_blocks: number of dual-path blocks.
        chunk_size, hop: dual-path segmentation (frames).
        norm: "gLN" (default) or "cLN" (causal, with ``bidirectional=False``).
        bidirectional: inter-chunk RNN direction(s).
        rnn_type: "LSTM", "GRU" or "RNN".
        dropout: dropout on the RNN outputs.
        mask_activation: "sigmoid" or "relu".
        chunk_padding: "overlap" (paper) or "chunk" (Asteroid); see ``sepkit.nn.dual_path``.
        sample_rate: sample rate the model is trained at.
    """

    ssc_presets = {
        "projection": {
            "include": [
                "masker.blocks.*.intra_proj",
                "masker.blocks.*.inter_proj",
            ]
        }
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 64,
        kernel_size: int = 2,
        stride: int = 1,
        bottleneck: int = 64,
        hidden_size: int = 128,
        n_blocks: int = 6,
        chunk_size: int = 250,
        hop: int = 125,
        norm: str = "gLN",
        bidirectional: bool = True,
        rnn_type: str = "LSTM",
        dropout: float = 0.0,
        mask_activation: str = "sigmoid",
        chunk_padding: ChunkPadding = "overlap",
        sample_rate: int = 8000,
    ) -> None:
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride),
            masker=DPRNNMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                hidden_size=hidden_size,
                n_blocks=n_blocks,
                chunk_size=chunk_size,
                hop=hop,
                norm=norm,
                bidirectional=bidirectional,
                rnn_type=rnn_type,
                dropout=dropout,
                mask_activation=mask_activation,
                chunk_padding=chunk_padding,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
        )
