"""DPRNN-TasNet (Luo, Chen & Yoshioka, ICASSP 2020): dual-path BiLSTMs on chunked frames."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder, Framing
from sepkit.models.registry import register_model
from sepkit.nn.activations import make_activation
from sepkit.nn.dual_path import CHUNK_PADDINGS, ChunkPadding, chunk, overlap_add
from sepkit.nn.dual_path_rnn import DPRNNBlock
from sepkit.nn.mask_heads import gated_head_convs, gated_masks
from sepkit.nn.norms import make_norm

OUTPUT_HEADS = ("gated", "direct")


class DPRNNMasker(nn.Module):
    """DPRNN separator: norm -> 1x1 bottleneck -> chunk -> ``n_blocks`` DPRNNBlocks ->
    PReLU -> 1x1 Conv2d to ``n_src`` streams -> overlap-add -> tanh/sigmoid gated 1x1
    convs -> 1x1 conv to ``n_filters`` -> mask nonlinearity.

    The gated output head is the FaSNet-style head of the widely used implementation
    (Asteroid); with it the paper configuration has the paper's 2.6M parameters.
    ``output_head="direct"`` is the head of the TAC/GC3 authors' DPRNN-TasNet: the
    Conv2d maps straight to ``n_src * n_filters`` masks after the PReLU (no gating).

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
        output_head: str = "gated",
        bottleneck_bias: bool = True,
        bidirectional_intra: bool = True,
    ) -> None:
        super().__init__()
        if output_head not in OUTPUT_HEADS:
            raise ValueError(f"DPRNN: output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
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
        self.output_head = output_head
        self.input_norm = make_norm(norm, n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1, bias=bottleneck_bias)
        self.blocks = nn.ModuleList(
            DPRNNBlock(bottleneck, hidden_size, norm, bidirectional, rnn_type, dropout, bidirectional_intra)
            for _ in range(n_blocks)
        )
        self.output_act = nn.PReLU()
        if output_head == "direct":
            self.output_conv = nn.Conv2d(bottleneck, n_src * n_filters, 1)
        else:
            self.output_conv = nn.Conv2d(bottleneck, n_src * bottleneck, 1)
            self.output_tanh, self.output_gate, self.mask_conv = gated_head_convs(bottleneck, n_filters)
        self.mask_act = make_activation(mask_activation, "mask_activation")

    def forward(self, rep: Tensor) -> Tensor:
        batch, _, frames = rep.shape
        x = chunk(self.bottleneck(self.input_norm(rep)), self.chunk_size, self.hop, self.chunk_padding)
        for block in self.blocks:
            x = block(x)
        x = self._output_streams(self.output_act(x), frames)
        if self.output_head == "direct":
            return self.mask_act(x).reshape(batch, self.n_src, self.n_filters, frames)
        x = x.reshape(batch * self.n_src, self.bottleneck_channels, frames)
        masks = self.mask_act(gated_masks(x, self.output_tanh, self.output_gate, self.mask_conv))
        return masks.reshape(batch, self.n_src, self.n_filters, frames)

    def _output_streams(self, x: Tensor, frames: int) -> Tensor:
        """``output_conv`` then overlap-add: ``[batch, bottleneck, K, S]`` ->
        ``[batch, output_conv channels, frames]``."""
        conv = self.output_conv
        if type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1):  # e.g. an SSC layer: mixes positions
            return overlap_add(conv(x), self.hop, frames, self.chunk_padding)
        # A 1x1 conv and the overlap-add commute (both are linear and act on each chunk
        # position alone), so the chunks are summed first and the conv runs on the frames:
        # about half as many positions (hop = K / 2), half its MACs in training and
        # inference. Its bias, which every chunk covering a frame would add once, is added
        # as many times as chunks cover that frame.
        out = F.conv1d(overlap_add(x, self.hop, frames, self.chunk_padding), conv.weight.squeeze(-1))
        if conv.bias is None:
            return out
        coverage = overlap_add(x.new_ones(1, 1, *x.shape[2:]), self.hop, frames, self.chunk_padding)
        return out + conv.bias[:, None] * coverage


@register_model(
    "dprnn",
    small_config=dict(
        n_filters=16, kernel_size=8, stride=4, bottleneck=8, hidden_size=8, n_blocks=1, chunk_size=10, hop=5
    ),
)
class DPRNN(EncoderMaskerDecoder):
    """DPRNN-TasNet. Defaults are the paper's best model: N=64 filters, L=2 (stride 1),
    bottleneck 64, 6 blocks, BiLSTM 128 per direction, chunk K=250, hop 125, gLN,
    sigmoid masks: 2,608,065 parameters. The widely used variant (Asteroid's recipe) is
    ``bottleneck=128`` (with ``kernel_size=16, stride=8, chunk_size=100, hop=50`` for the
    faster ks16 model): about 3.65M.

    Framing follows the DPRNN authors' code by default:

    - chunks: ``chunk_padding="pad_segment"``, ``DPRNN_base.pad_segment`` /
      ``split_feature`` / ``merge_feature`` of ``yluo42/TAC`` (``utility/models.py``), the
      dual-path code of DPRNN's first author (``K - (P + frames % K) % K`` zeros at the
      end, then P at both ends; needs ``chunk_size == 2 * hop``, other geometries default
      to ``"overlap"``, sepkit's own rule, kept as an option). Asteroid's rule is
      ``"chunk"``, used by :func:`~sepkit.models.from_asteroid`;
    - waveform: ``framing="hop_padded"``, the authors' TasNet front end
      (``TasNet.pad_signal`` in ``naplab/Conv-TasNet``, ``TasNet.pad_input`` in
      ``yluo42/GC3``): needs ``kernel_size == 2 * stride`` (the paper's L=2, stride 1),
      otherwise ``"end"``. Asteroid's is ``"truncate"``.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: encoder/decoder bases N.
        kernel_size, stride: encoder window and hop in samples.
        bottleneck: feature size inside the dual-path blocks.
        hidden_size: LSTM units per direction.
        n_blocks: number of dual-path blocks.
        chunk_size, hop: dual-path segmentation (frames).
        norm: "gLN" (default) or "cLN" (per frame; the causal configuration, see ``bidirectional_intra``).
        bidirectional: inter-chunk RNN direction(s).
        rnn_type: "LSTM", "GRU" or "RNN".
        dropout: dropout on the RNN outputs.
        mask_activation: "sigmoid" or "relu".
        chunk_padding: "pad_segment" (the authors' code), "overlap" (sepkit) or "chunk"
            (Asteroid); see ``sepkit.nn.dual_path``. ``None``: the authors' where it applies.
        framing: see above; ``None``: the authors' rule where it applies.
        output_head: "gated" (default, FaSNet/Asteroid head) or "direct" (PReLU -> Conv2d
            to the masks, the TAC/GC3 authors' head; their 16 kHz baseline, N=128, L=32,
            stride 16, chunk 100, relu masks, ``bottleneck_bias=False``, has 2,616,065
            parameters).
        bottleneck_bias: bias on the 1x1 bottleneck conv (absent in the TAC/GC3 code).
        bidirectional_intra: intra-chunk RNN direction(s); bidirectional in the paper.
            The streamable (causal) configuration is ``bidirectional_intra=False,
            bidirectional=False, norm="cLN"``: then the mask of a frame depends on past
            frames only, so :class:`sepkit.streaming.StreamingSeparator` runs it frame by
            frame with no latency beyond the encoder window (a bidirectional intra RNN
            would add up to one chunk of latency, ``chunk_size * stride`` samples).
        sample_rate: sample rate the model is trained at.

    Export (``sepkit export``, :mod:`sepkit.export`): at declared lengths only
    (``--lengths``). The inter-chunk RNN runs an ``nn.LSTM`` over the chunk axis, whose
    size follows the input length, and ``torch.export`` (torch 2.13) specialises an
    LSTM's sequence length to the example's, so no graph with a dynamic length exists.
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
        chunk_padding: ChunkPadding | None = None,
        output_head: str = "gated",
        bottleneck_bias: bool = True,
        bidirectional_intra: bool = True,
        framing: Framing | None = None,
        sample_rate: int = 8000,
    ) -> None:
        if chunk_padding is None:
            chunk_padding = "pad_segment" if chunk_size == 2 * hop else "overlap"
        if framing is None:
            framing = "hop_padded" if kernel_size == 2 * stride else "end"
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
                output_head=output_head,
                bottleneck_bias=bottleneck_bias,
                bidirectional_intra=bidirectional_intra,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
            framing=framing,
        )
