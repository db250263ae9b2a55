"""DP-RCNet (Yang & Bao, "Embedding Recurrent Layers with Dual-Path Strategy in a Variant
of Convolutional Network for Speaker-Independent Speech Separation", arXiv:2203.13574, 2022):
ConvNeXt-style blocks whose depthwise conv is replaced by a BiLSTM, applied dual-path
(intra-chunk, then inter-chunk) in four stages of widths 16/32/64/128 without any
downsampling between stages.

The paper's figures are not in its text and no code is public; the layout here is the
reading of §2 that reproduces its 9.2 M parameters exactly (9,179,696) and its 76.6 G MACs
for 4 s at 8 kHz (matmuls 74.9 G; the paper counts with ptflops, which adds the LSTM gate
arithmetic, norms and activations).

Choices the paper leaves open (each pinned by a test in ``tests/test_models_dprcnet.py``):

1. Segmentation padding: ``chunk_padding="pad_segment"``, the segmentation of the
   dual-path code descending from DPRNN [21] (chunk I, hop H = I/2: ``I - (H + K % I) %
   I`` zeros at the end, then H at both ends; see :mod:`sepkit.nn.dual_path`). Reason:
   the paper takes its dual-path strategy from [21] (§2.2.1, §3.2), and only this rule
   gives J = 86 chunks for a 4 s input (K = 3999 frames), the count that reproduces the
   paper's 76.63 G MACs; the fewest-zeros rule (``"overlap"``, available) gives 85.
   Overlap-add is a plain sum.
2. Segmentation norm: gLN (``norm="gLN"``; "a normalization layer"): DPRNN's and
   Conv-TasNet's norm, same parameter count as cLN (available).
3. LayerNorms (stage entries and sub-blocks): ConvNeXt's LayerNorm over channels only, at
   every (intra, inter) position, eps 1e-6, affine: the paper copies them from [24].
4. Skip connection: one residual per sub-block (``residual="sub_block"``), as ConvNeXt
   and DPRNN place theirs; ``"block"`` puts one around the whole block. Parameter and MAC
   counts cannot tell the two apart.
5. LayerScale: one gamma of shape ``[D_r]`` per sub-block, on the branch before the
   residual, initialised to 1e-6 (§3.2's value; granularity as ConvNeXt).
6. Stochastic depth: rate unstated; ``drop_path_rate=0.1`` (ConvNeXt-T), rising linearly
   over the blocks (``linspace(0, 0.1, 18)``), both sub-blocks of a block at that block's
   rate, one draw per batch item.
7. Order inside a sub-block: BiLSTM (128 units per direction in every stage, as the
   parameter count requires) -> Linear(256 -> D_r) -> LayerNorm -> Linear(D_r -> 4 D_r) ->
   GELU -> Linear(4 D_r -> D_r) -> LayerScale, ConvNeXt's order with the depthwise conv
   replaced. No LSTM dropout, no final norm after stage 4 (neither is mentioned).
8. Activations: exact (erf) GELU, PyTorch's default, inside the blocks and after the
   backbone; sigmoid masks applied after overlap-add (§2.2.3 says the OLA outputs "are
   further passed through the sigmoid").
9. Stage 1 squeezes B = 64 to D_1 = 16, as §3.2 states both values.
10. Encoder and decoder: no encoder activation (§2.1 says so); no bias on either
    (unstated; Conv-TasNet's and DPRNN's code); one decoder shared by the sources.
    Waveform framing: zeros on the right onto the frame grid, cropped after decoding
    (``framing="end"`` of :class:`EncoderMaskerDecoder`; 4 s needs none).
11. Initialisation: ConvNeXt's truncated normal (std 0.02) and zero bias for the
    separator's Linear and Conv2d layers after the segmentation; PyTorch's defaults for
    the LSTMs, the bottleneck, the encoder and the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model
from sepkit.nn.drop_path import DropPath
from sepkit.nn.dual_path import CHUNK_PADDINGS, ChunkPadding, chunk, overlap_add
from sepkit.nn.norms import make_norm

AXES = ("intra", "inter")
RESIDUALS = ("sub_block", "block")


class RecurrentConvNeXtBranch(nn.Module):
    """The residual branch of one DP-RCNet sub-block: a ConvNeXt branch whose depthwise
    conv is a BiLSTM along one axis of the chunked tensor.

    BiLSTM(channels -> hidden per direction) -> Linear(2*hidden -> channels) -> LayerNorm
    -> Linear(channels -> 4*channels) -> GELU -> Linear(4*channels -> channels) -> LayerScale.
    Everything after the BiLSTM is position-wise, so it runs in the same folded
    ``[batch * other_axis, sequence, channels]`` layout as the LSTM.

    Input and output ``[batch, channels, chunk_size, n_chunks]``; ``axis="intra"`` runs
    the LSTM along ``chunk_size``, ``axis="inter"`` along ``n_chunks``. Returns the branch
    only (the caller adds the residual).
    """

    def __init__(self, channels: int, hidden: int, axis: str, layer_scale_init: float) -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"RecurrentConvNeXtBranch: axis must be one of {AXES}, got {axis!r}")
        self.axis = axis
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pw1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, chunk_size, n_chunks = x.shape
        if self.axis == "intra":  # sequences along chunk_size, one per (batch, chunk)
            seq = x.permute(0, 3, 2, 1).reshape(batch * n_chunks, chunk_size, channels)
        else:  # sequences along n_chunks, one per (batch, position in chunk)
            seq = x.permute(0, 2, 3, 1).reshape(batch * chunk_size, n_chunks, channels)
        y, _ = self.lstm(seq)
        y = self.pw2(self.act(self.pw1(self.norm(self.fc(y))))) * self.gamma
        if self.axis == "intra":
            return y.reshape(batch, n_chunks, chunk_size, channels).permute(0, 3, 2, 1)
        return y.reshape(batch, chunk_size, n_chunks, channels).permute(0, 3, 1, 2)


class DPRCNetBlock(nn.Module):
    """Intra-chunk then inter-chunk recurrent ConvNeXt sub-blocks.

    ``residual="sub_block"`` (default): ``x += DropPath(intra(x)); x += DropPath(inter(x))``,
    as in ConvNeXt and DPRNN. ``residual="block"``: one skip around the whole block,
    ``x + DropPath(inter(intra(x)))`` (the paper's Fig. 3b is not in the text, and the
    parameter and MAC counts cannot tell the two readings apart).

    Input and output ``[batch, channels, chunk_size, n_chunks]``.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        drop_path: float,
        layer_scale_init: float,
        residual: str = "sub_block",
    ) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"DPRCNetBlock: residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual = residual
        self.intra = RecurrentConvNeXtBranch(channels, hidden, "intra", layer_scale_init)
        self.inter = RecurrentConvNeXtBranch(channels, hidden, "inter", layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if self.residual == "block":
            return x + self.drop_path(self.inter(self.intra(x)))
        x = x + self.drop_path(self.intra(x))
        return x + self.drop_path(self.inter(x))


class StageEntry(nn.Module):
    """LayerNorm over channels at every position, then a 1x1 Conv2d changing the width.

    ``[batch, in_channels, chunk_size, n_chunks] -> [batch, out_channels, chunk_size, n_chunks]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class DPRCNetStage(nn.Module):
    """A stage: :class:`StageEntry` to ``channels``, then ``depth`` :class:`DPRCNetBlock`."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        hidden: int,
        drop_paths: Sequence[float],
        layer_scale_init: float,
        residual: str,
    ) -> None:
        super().__init__()
        self.entry = StageEntry(in_channels, channels)
        self.blocks = nn.Sequential(
            *(DPRCNetBlock(channels, hidden, p, layer_scale_init, residual) for p in drop_paths)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.entry(x))


class DPRCNetMasker(nn.Module):
    """Segmentation (norm -> 1x1 bottleneck -> 50%-overlap chunks), stages of
    DP-RCNet blocks, GELU -> 1x1 Conv2d to ``n_src * n_filters`` -> overlap-add -> sigmoid.

    Input ``[batch, n_filters, frames]``; output ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        bottleneck: int = 64,
        chunk_size: int = 96,
        hop: int = 48,
        dims: Sequence[int] = (16, 32, 64, 128),
        depths: Sequence[int] = (3, 3, 9, 3),
        hidden: int = 128,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 1e-6,
        norm: str = "gLN",
        residual: str = "sub_block",
        chunk_padding: ChunkPadding = "pad_segment",
    ) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise ValueError(
                f"DPRCNetMasker: dims {list(dims)} and depths {list(depths)} must be non-empty and of equal length"
            )
        if chunk_padding not in CHUNK_PADDINGS:
            raise ValueError(f"DPRCNetMasker: chunk_padding must be one of {CHUNK_PADDINGS}, got {chunk_padding!r}")
        if chunk_padding == "pad_segment" and chunk_size != 2 * hop:
            raise ValueError(
                f"DPRCNetMasker: chunk_padding 'pad_segment' needs chunk_size == 2 * hop, got {chunk_size} and {hop}"
            )
        self.n_src = n_src
        self.n_filters = n_filters
        self.chunk_size = chunk_size
        self.hop = hop
        self.chunk_padding = chunk_padding
        self.input_norm = make_norm(norm, n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        # Stochastic depth grows linearly over all blocks (ConvNeXt's schedule).
        # Computed on the CPU whatever the default device, so that the model can also be
        # built on the meta device (counting parameters without allocating them).
        rates = torch.linspace(0.0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        in_channels = bottleneck
        for width, depth in zip(dims, depths):
            stages.append(DPRCNetStage(in_channels, width, hidden, rates[:depth], layer_scale_init, residual))
            rates = rates[depth:]
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.output_act = nn.GELU()
        self.mask_conv = nn.Conv2d(dims[-1], n_src * n_filters, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # ConvNeXt initialisation for the separator's Linear/Conv2d layers; the LSTMs keep
        # PyTorch's default (LayerScale makes the branches start near zero anyway).
        for module in [*self.stages.modules(), self.mask_conv]:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, rep: Tensor) -> Tensor:
        x = self.bottleneck(self.input_norm(rep))
        frames = x.shape[-1]
        x = chunk(x, self.chunk_size, self.hop, self.chunk_padding)
        for stage in self.stages:
            x = stage(x)
        x = overlap_add(self.mask_conv(self.output_act(x)), self.hop, frames, self.chunk_padding)
        masks = torch.sigmoid(x)
        return masks.view(x.shape[0], self.n_src, self.n_filters, frames)


@register_model(
    "dprcnet",
    small_config=dict(n_filters=16, bottleneck=8, chunk_size=10, hop=5, dims=(8, 12), depths=(1, 1), hidden=8),
)
class DPRCNet(EncoderMaskerDecoder):
    """DP-RCNet. Defaults are the paper's model (§3.2): N=256, L=16, stride 8, B=64,
    chunk 96 / hop 48, stage widths 16/32/64/128 with 3/3/9/3 blocks, BiLSTM hidden 128
    per direction, LayerScale 1e-6, stochastic depth 0.1 (linear over the 18 blocks), 8 kHz:
    9,179,696 parameters, about 76.6 G MACs for 4 s.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: N. kernel_size: L. stride: encoder/decoder hop.
        bottleneck: B, width after the segmentation 1x1 conv.
        chunk_size, hop: I and H of the dual-path segmentation.
        dims: D_r per stage. depths: blocks per stage. hidden: BiLSTM units per direction.
        drop_path_rate: maximum stochastic-depth rate (unstated in the paper; ConvNeXt-T's 0.1).
        layer_scale_init: LayerScale initial value.
        norm: segmentation norm, "gLN" (default) or "cLN" (unstated in the paper).
        residual: skip placement, "sub_block" (default: one residual per intra/inter
            sub-block) or "block" (one residual around each intra+inter block).
        chunk_padding: "pad_segment" (default, DPRNN's code), "overlap" or "chunk"; see
            :mod:`sepkit.nn.dual_path`.
        sample_rate: the sample rate the model is trained at.

    Export (``sepkit export``, :mod:`sepkit.export`): at declared lengths only
    (``--lengths``). The inter-chunk recurrent sub-block runs an ``nn.LSTM`` over the chunk axis, whose
    size follows the input length, and ``torch.export`` (torch 2.13) specialises an
    LSTM's sequence length to the example's, so no graph with a dynamic length exists.
    """

    ssc_presets = {
        # The ConvNeXt feed-forward Linears of every sub-block.
        "ffn": {"include": ["masker.stages.*.pw1", "masker.stages.*.pw2"]},
        # Every Linear inside the blocks (the post-LSTM projection as well).
        "linear": {"include": ["masker.stages.*.fc", "masker.stages.*.pw1", "masker.stages.*.pw2"]},
        # All channel-mixing pointwise layers of the separator.
        "pointwise": {
            "include": [
                "masker.bottleneck",
                "masker.stages.*.entry.conv",
                "masker.stages.*.fc",
                "masker.stages.*.pw1",
                "masker.stages.*.pw2",
                "masker.mask_conv",
            ]
        },
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 256,
        kernel_size: int = 16,
        stride: int = 8,
        bottleneck: int = 64,
        chunk_size: int = 96,
        hop: int = 48,
        dims: Sequence[int] = (16, 32, 64, 128),
        depths: Sequence[int] = (3, 3, 9, 3),
        hidden: int = 128,
        drop_path_rate: float = 0.1,
        layer_scale_init: float = 1e-6,
        norm: str = "gLN",
        residual: str = "sub_block",
        chunk_padding: ChunkPadding = "pad_segment",
        sample_rate: int = 8000,
    ) -> None:
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride),
            masker=DPRCNetMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                chunk_size=chunk_size,
                hop=hop,
                dims=dims,
                depths=depths,
                hidden=hidden,
                drop_path_rate=drop_path_rate,
                layer_scale_init=layer_scale_init,
                norm=norm,
                residual=residual,
                chunk_padding=chunk_padding,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
        )
