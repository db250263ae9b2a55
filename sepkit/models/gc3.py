"""GC3 (Luo, Han & Mesgarani, "Group Communication with Context Codec for Ultra-Lightweight
Source Separation", arXiv:2012.07291, 2020; IEEE/ACM TASLP 2021 as "... for Lightweight
Source Separation"): group communication with a context codec, a wrapper that turns a
separator backbone into an ultra-lightweight one.

Group communication splits the N encoder channels into K groups of M = N/K channels; one
small module, shared by all groups, processes each group, and a group-communication
module (TAC by default, BiLSTM as option) mixes the groups before every layer. The
context codec summarises each 50%-overlapping context of C frames into one vector (so
the backbone sees a sequence C/2 times shorter) and expands the backbone's output back.

The layout follows the authors' released code (yluo42/GC3 on GitHub), the only reading
that reproduces the paper's counts exactly: GC3-DPRNN 123,772 (TAC, K=16, L_s=8),
56,298 (TAC, K=32, L_s=14), 124,120 (BiLSTM group communication, K=16), GC3-TCN 191,168.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model
from sepkit.nn.dual_path import chunk, overlap_add
from sepkit.nn.dual_path_rnn import DPRNNBlock
from sepkit.nn.tac import TAC, groups_to_channels_last
from sepkit.nn.tcn import TemporalBlock
from sepkit.nn.uconv import UConvBlock

GROUP_COMMS = ("tac", "blstm")
BACKBONES = ("dprnn", "tcn", "sudormrf")
# Backbone depth L_s and width (per model, divided by K per group) used in the paper.
DEFAULT_LAYERS = {"dprnn": 8, "tcn": 12, "sudormrf": 8}
DEFAULT_HIDDEN = {"dprnn": 256, "tcn": 512, "sudormrf": 512}


class GroupBLSTM(nn.Module):
    """The original group communication [Luo et al. 2020]: at every position, a residual
    BiLSTM running across the groups, ``out = g + GroupNorm(Linear(BLSTM(g)))``.

    Input and output ``[batch, groups, group_size, *positions]``.
    """

    def __init__(self, group_size: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(group_size, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, group_size)
        self.norm = nn.GroupNorm(1, group_size)

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size = x.shape[:3]
        h = groups_to_channels_last(x)  # [batch, groups, *positions, M]
        positions = h.shape[2:-1]
        seq = h.reshape(batch, groups, -1, group_size).transpose(1, 2).reshape(-1, groups, group_size)
        y = self.proj(self.rnn(seq)[0])  # [batch * n_positions, groups, M]
        y = y.reshape(batch, -1, groups, group_size).transpose(1, 2).movedim(-1, 2)
        y = self.norm(y.reshape(batch * groups, group_size, -1))
        return x + y.reshape(batch, groups, group_size, *positions)


def make_group_comm(kind: str, group_size: int, width: int) -> nn.Module:
    """TAC with hidden ``3 * width`` (paper §IV-B) or a BiLSTM with ``width`` units per
    direction; the two have about the same size."""
    if kind == "tac":
        return TAC(group_size, 3 * width)
    if kind == "blstm":
        return GroupBLSTM(group_size, width)
    raise ValueError(f"GC3: group_comm must be one of {GROUP_COMMS}, got {kind!r}")


class ResidualBLSTM(nn.Module):
    """``x + GroupNorm(Linear(BLSTM(x)))`` along the time axis of ``[batch, channels, time]``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, channels)
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(self.rnn(x.transpose(1, 2))[0]).transpose(1, 2)
        return x + self.norm(y)


class GroupCommBLSTMLayer(nn.Module):
    """One context-codec layer: group communication, then a group-shared
    :class:`ResidualBLSTM` over the frames of a context.

    Input and output ``[batch, groups, group_size, frames]``.
    """

    def __init__(self, group_comm: str, group_size: int, hidden: int) -> None:
        super().__init__()
        self.group_comm = make_group_comm(group_comm, group_size, hidden)
        self.rnn = ResidualBLSTM(group_size, hidden)

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size, frames = x.shape
        x = self.group_comm(x)
        return self.rnn(x.reshape(batch * groups, group_size, frames)).reshape(x.shape)


class GroupDPRNN(nn.Module):
    """GC-DPRNN backbone: chunk the (short) sequence, then ``n_layers`` x [group
    communication -> group-shared :class:`DPRNNBlock`], a group-shared 1x1 Conv2d and
    overlap-add.

    Input and output ``[batch, groups, group_size, frames]``.
    """

    def __init__(self, group_comm: str, group_size: int, hidden: int, n_layers: int, chunk_size: int) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.hop = chunk_size // 2
        self.group_comms = nn.ModuleList(make_group_comm(group_comm, group_size, hidden) for _ in range(n_layers))
        self.blocks = nn.ModuleList(DPRNNBlock(group_size, hidden, norm="gLN") for _ in range(n_layers))
        self.output_conv = nn.Conv2d(group_size, group_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size, frames = x.shape
        y = chunk(x.reshape(batch * groups, group_size, frames), self.chunk_size, self.hop, "pad_segment")
        grid = y.shape[-2:]
        for group_comm, block in zip(self.group_comms, self.blocks):
            y = group_comm(y.reshape(batch, groups, group_size, *grid)).reshape(y.shape)
            y = block(y)
        y = overlap_add(self.output_conv(y), self.hop, frames, "pad_segment")
        return y.reshape(x.shape)


class GroupTCN(nn.Module):
    """GC-TCN backbone: ``n_layers`` x [group communication -> group-shared
    :class:`TemporalBlock` (1x1 up to ``hidden``, depthwise dilated conv, residual and skip
    1x1s back to the group size)], dilations cycling ``1 .. 2**(blocks_per_repeat - 1)``;
    a group-shared 1x1 conv on the summed skips.

    Input and output ``[batch, groups, group_size, frames]``.
    """

    def __init__(
        self,
        group_comm: str,
        group_size: int,
        hidden: int,
        n_layers: int,
        blocks_per_repeat: int,
        kernel_size: int,
    ) -> None:
        super().__init__()
        self.group_comms = nn.ModuleList(make_group_comm(group_comm, group_size, hidden) for _ in range(n_layers))
        self.blocks = nn.ModuleList(
            TemporalBlock(group_size, hidden, group_size, kernel_size, 2 ** (i % blocks_per_repeat), "gLN", False)
            for i in range(n_layers)
        )
        self.output_conv = nn.Conv1d(group_size, group_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size, frames = x.shape
        skip_sum: Tensor | float = 0.0
        for group_comm, block in zip(self.group_comms, self.blocks):
            x = group_comm(x)
            residual, skip = block(x.reshape(batch * groups, group_size, frames))
            x = x + residual.reshape(x.shape)
            skip_sum = skip_sum + skip
        return self.output_conv(skip_sum).reshape(x.shape)


class GroupUConv(nn.Module):
    """GC-SuDoRM-RF backbone: ``n_layers`` x [group communication -> group-shared
    improved :class:`UConvBlock` (``hidden`` channels inside, ``depth`` resolutions)].

    Input and output ``[batch, groups, group_size, frames]``.
    """

    def __init__(self, group_comm: str, group_size: int, hidden: int, n_layers: int, depth: int) -> None:
        super().__init__()
        # TAC width 3 * group_size, as in the authors' GC_UConvBlock.
        self.group_comms = nn.ModuleList(make_group_comm(group_comm, group_size, group_size) for _ in range(n_layers))
        self.blocks = nn.ModuleList(UConvBlock(group_size, hidden, depth, improved=True) for _ in range(n_layers))

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size, frames = x.shape
        for group_comm, block in zip(self.group_comms, self.blocks):
            x = group_comm(x)
            x = block(x.reshape(batch * groups, group_size, frames)).reshape(x.shape)
        return x


class GC3Masker(nn.Module):
    """GroupNorm -> split into groups -> context encoder (``codec_layers`` group-comm
    BiLSTM layers over each 50%-overlapping context of ``context_size`` frames, then the
    mean over the context) -> GC backbone on the summaries -> context decoder (summary
    added to every frame of its normalised context, ``codec_layers`` more layers) ->
    overlap-add (plain sum) -> group-shared 1x1 conv to ``n_src`` masks -> ReLU.

    Input ``[batch, n_filters, frames]``; output ``[batch, n_src, n_filters, frames]``.
    See :class:`GC3` for the arguments.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        n_groups: int = 16,
        group_overlap: float = 0.0,
        context_size: int = 32,
        codec_layers: int = 2,
        codec_hidden: int = 256,
        group_comm: str = "tac",
        backbone: str = "dprnn",
        n_layers: int | None = None,
        backbone_hidden: int | None = None,
        chunk_size: int = 24,
        tcn_blocks_per_repeat: int = 6,
        tcn_kernel_size: int = 3,
        uconv_depth: int = 5,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"GC3: backbone must be one of {BACKBONES}, got {backbone!r}")
        if group_comm not in GROUP_COMMS:
            raise ValueError(f"GC3: group_comm must be one of {GROUP_COMMS}, got {group_comm!r}")
        n_layers = DEFAULT_LAYERS[backbone] if n_layers is None else n_layers
        backbone_hidden = DEFAULT_HIDDEN[backbone] if backbone_hidden is None else backbone_hidden
        widths = {"n_filters": n_filters, "codec_hidden": codec_hidden, "backbone_hidden": backbone_hidden}
        for name, value in widths.items():
            if value % n_groups:
                raise ValueError(f"GC3: {name}={value} must be a multiple of n_groups={n_groups}")
        if context_size < 2 or context_size % 2:
            raise ValueError(f"GC3: context_size must be even and >= 2, got {context_size}")
        if backbone == "dprnn" and (chunk_size < 2 or chunk_size % 2):
            # The reference's segmentation reads two tilings shifted by chunk_size / 2.
            raise ValueError(f"GC3: chunk_size must be even and >= 2, got {chunk_size}")
        group_size = n_filters // n_groups
        group_hop = group_size * (1.0 - group_overlap)
        if not 0.0 <= group_overlap < 1.0 or group_hop != int(group_hop) or (n_filters - group_size) % int(group_hop):
            raise ValueError(
                f"GC3: group_overlap={group_overlap} must give a whole group hop that tiles "
                f"{n_filters} channels in groups of {group_size}"
            )
        self.n_src = n_src
        self.n_filters = n_filters
        self.group_size = group_size
        self.context_size = context_size
        # Channel index of every (group, position in group); overlapping groups repeat channels.
        # Counted on the CPU (bincount has no meta kernel), then placed on the default
        # device, so that the model can also be built on the meta device.
        starts = torch.arange(0, n_filters - group_size + 1, int(group_hop), device="cpu")
        index = starts[:, None] + torch.arange(group_size, device="cpu")
        count = torch.bincount(index.reshape(-1), minlength=n_filters).float()
        device = torch.get_default_device()
        self.register_buffer("group_index", index.reshape(-1).to(device), persistent=False)
        self.register_buffer("channel_count", count.to(device), persistent=False)
        self.n_group_slots = index.shape[0]

        self.input_norm = nn.GroupNorm(1, n_filters)
        codec_width = codec_hidden // n_groups
        self.context_encoder = nn.ModuleList(
            GroupCommBLSTMLayer(group_comm, group_size, codec_width) for _ in range(codec_layers)
        )
        self.context_decoder = nn.ModuleList(
            GroupCommBLSTMLayer(group_comm, group_size, codec_width) for _ in range(codec_layers)
        )
        width = backbone_hidden // n_groups
        if backbone == "dprnn":
            self.backbone: nn.Module = GroupDPRNN(group_comm, group_size, width, n_layers, chunk_size)
        elif backbone == "tcn":
            self.backbone = GroupTCN(group_comm, group_size, width, n_layers, tcn_blocks_per_repeat, tcn_kernel_size)
        else:
            self.backbone = GroupUConv(group_comm, group_size, width, n_layers, uconv_depth)
        self.mask_conv = nn.Conv1d(group_size, n_src * group_size, 1)

    def forward(self, rep: Tensor) -> Tensor:
        batch, _, frames = rep.shape
        groups, group_size, context = self.n_group_slots, self.group_size, self.context_size
        feats = self.input_norm(rep)[:, self.group_index]  # [batch, groups * M, frames]
        blocks = chunk(feats.reshape(batch * groups, group_size, frames), context, context // 2, "pad_segment")
        n_contexts = blocks.shape[-1]
        # Every context is one item: [batch * n_contexts, groups, M, context]
        blocks = blocks.reshape(batch, groups, group_size, context, n_contexts).permute(0, 4, 1, 2, 3)
        blocks = blocks.reshape(batch * n_contexts, groups, group_size, context)
        encoded = blocks
        for layer in self.context_encoder:
            encoded = layer(encoded)
        summary = encoded.mean(dim=-1).reshape(batch, n_contexts, groups, group_size).permute(0, 2, 3, 1)
        summary = self.backbone(summary)  # [batch, groups, M, n_contexts]
        decoded = blocks + summary.permute(0, 3, 1, 2).reshape(batch * n_contexts, groups, group_size, 1)
        for layer in self.context_decoder:
            decoded = layer(decoded)
        decoded = decoded.reshape(batch, n_contexts, groups, group_size, context).permute(0, 2, 3, 4, 1)
        out = overlap_add(
            decoded.reshape(batch * groups, group_size, context, n_contexts), context // 2, frames, "pad_segment"
        )
        masks = torch.relu(self.mask_conv(out))  # [batch * groups, n_src * M, frames]
        masks = masks.reshape(batch, groups, self.n_src, group_size, frames).transpose(1, 2)
        return self._merge_groups(masks.reshape(batch, self.n_src, groups * group_size, frames))

    def _merge_groups(self, masks: Tensor) -> Tensor:
        """``[batch, n_src, groups * M, frames] -> [batch, n_src, n_filters, frames]``,
        averaging channels that overlapping groups share."""
        if self.n_group_slots * self.group_size == self.n_filters:
            return masks  # no overlap: the group index is the identity
        merged = masks.new_zeros(masks.shape[0], masks.shape[1], self.n_filters, masks.shape[-1])
        merged.index_add_(2, self.group_index, masks)
        return merged / self.channel_count[:, None]


@register_model(
    "gc3",
    small_config=dict(
        n_filters=16, n_groups=4, context_size=4, codec_hidden=16, backbone_hidden=16, n_layers=2, chunk_size=4
    ),
)
class GC3(EncoderMaskerDecoder):
    """GC3-equipped TasNet. Defaults are the paper's GC3-DPRNN with TAC (Table III):
    16 kHz, encoder N=128 filters of 32 samples (2 ms) with stride 16, K=16 groups
    (M=8), codec of 2 + 2 layers with C=32-frame contexts, 8 GC-DPRNN blocks on
    24-frame chunks, widths Q/K with Q=256: 123,772 parameters.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: N. kernel_size, stride: encoder/decoder window and hop (samples).
        n_groups: K; M = N / K channels per group.
        group_overlap: overlap ratio between neighbouring groups (paper Table IV; 0 by
            default, 0.25 or 0.5 give 21 or 31 groups of M=8 for N=128). Masks of shared
            channels are averaged. The parameter count does not change.
        context_size: C, frames per context (contexts overlap by 50%).
        codec_layers: L_c, layers in each of the context encoder and decoder.
        codec_hidden: Q of the codec; its BiLSTMs have Q/K units per direction.
        group_comm: "tac" (default, hidden 3 * width) or "blstm" (original GroupComm).
        backbone: "dprnn" (default), "tcn" (Conv-TasNet) or "sudormrf" (U-ConvBlocks).
        n_layers: L_s, backbone blocks (default 8 / 12 / 8 by backbone; the TCN's 12 are
            2 repeats of ``tcn_blocks_per_repeat``).
        backbone_hidden: model-wide width divided among the groups (default 256 for DPRNN
            = LSTM units, 512 for TCN and U-ConvBlock = hidden conv channels).
        chunk_size: GC-DPRNN chunk size B on the summary sequence (hop B/2).
        tcn_blocks_per_repeat, tcn_kernel_size: TCN dilation cycle and kernel.
        uconv_depth: U-ConvBlock resolutions (5 in the paper).
        sample_rate: the sample rate the model is trained at.

    The paper's other configurations: K=32, ``n_layers=14`` (56,298 parameters);
    ``group_comm="blstm"`` (124,120); ``backbone="tcn"`` (191,168). Its GC3-SuDoRM-RF
    prints 60.0K, which no reading reproduces; ``backbone="sudormrf"`` gives 62,852, the
    count of the authors' code with 8 blocks (56,474 with their default 6). Not
    implemented: the DPTNet backbone and the self-attention group communication (an
    ablation whose sizes the paper does not pin down).

    Framing follows the authors' code (``yluo42/GC3``) at every input length:

    - waveform (``framing="hop_padded"`` of :class:`EncoderMaskerDecoder`):
      ``GC3_network.py``, ``TasNet.pad_input``: ``kernel_size - (stride + time %
      kernel_size) % kernel_size`` zeros at the end, then ``stride`` zeros at both ends;
      the decoder output is cropped back as at the end of ``TasNet.forward``. Needs
      ``kernel_size == 2 * stride``, as the reference's window/hop always are.
    - context codec and GC-DPRNN chunks (``chunk_padding="pad_segment"`` of
      :mod:`sepkit.nn.dual_path`): ``utility/basics.py``, ``pad_segment`` /
      ``split_feature`` / ``merge_feature``, with hop C/2 and B/2; so ``context_size``
      and ``chunk_size`` must be even.

    Export (``sepkit export``, :mod:`sepkit.export`): at declared lengths only
    (``--lengths``). The inter-chunk BLSTMs runs an ``nn.LSTM`` over the chunk axis, whose
    size follows the input length, and ``torch.export`` (torch 2.13) specialises an
    LSTM's sequence length to the example's, so no graph with a dynamic length exists.
    """

    ssc_presets = {
        # The Linears of every group-communication module (TAC, or the BLSTM projection).
        "group_comm": {"include": ["masker.*group_comm*"]},
        # The Linear after every group-shared BiLSTM (codec layers and DPRNN blocks).
        "projection": {"include": ["masker.*proj"], "exclude": ["masker.*group_comm*"]},
        # Every channel-mixing Linear / 1x1 conv of the masker except GC-DPRNN's output
        # Conv2d (72 parameters): a 2-D SSC of kernel k needs k*k <= M = 8 input channels.
        "pointwise": {
            "include": ["masker.*group_comm*", "masker.*proj", "masker.*_conv"],
            "exclude": ["masker.backbone.output_conv"],
        },
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 128,
        kernel_size: int = 32,
        stride: int = 16,
        n_groups: int = 16,
        group_overlap: float = 0.0,
        context_size: int = 32,
        codec_layers: int = 2,
        codec_hidden: int = 256,
        group_comm: str = "tac",
        backbone: str = "dprnn",
        n_layers: int | None = None,
        backbone_hidden: int | None = None,
        chunk_size: int = 24,
        tcn_blocks_per_repeat: int = 6,
        tcn_kernel_size: int = 3,
        uconv_depth: int = 5,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride),
            masker=GC3Masker(
                n_filters,
                n_src,
                n_groups=n_groups,
                group_overlap=group_overlap,
                context_size=context_size,
                codec_layers=codec_layers,
                codec_hidden=codec_hidden,
                group_comm=group_comm,
                backbone=backbone,
                n_layers=n_layers,
                backbone_hidden=backbone_hidden,
                chunk_size=chunk_size,
                tcn_blocks_per_repeat=tcn_blocks_per_repeat,
                tcn_kernel_size=tcn_kernel_size,
                uconv_depth=uconv_depth,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride),
            n_src=n_src,
            sample_rate=sample_rate,
            framing="hop_padded",
        )
