"""A-FRCNN (Hu, Li, Zhang, Luo, Lemercier & Gerkmann, "Speech Separation Using an
Asynchronous Fully Recurrent Convolutional Neural Network", NeurIPS 2021): one multi-scale
block (bottom-up pass, local fusion of adjacent stages, global fusion into the bottom
stage) unfolded ``B`` times with tied weights.

The layout follows the authors' released model code (JusperLee/AFRCNN-For-Speech-Separation
on GitHub), which is the only reading that reproduces the paper's parameter counts: 6,134,793 for the default
model whatever ``B`` is, 1,739,785 for the "sum" variant, 4,018,183 / 5,076,488 /
7,193,098 for S = 3 / 4 / 6 stages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model
from sepkit.nn.norms import GlobalLayerNorm

FUSIONS = ("concat", "sum")
UNFOLDINGS = ("SC", "DC", "CC")
DECODERS = ("official", "shared")


class PointwiseNormAct(nn.Module):
    """1x1 conv -> gLN -> PReLU: ``[batch, in_channels, time] -> [batch, out_channels, time]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1)
        self.norm = GlobalLayerNorm(out_channels)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class DepthwiseNorm(nn.Module):
    """Depthwise conv (kernel 5, stride 1 or 2) -> gLN, no activation.

    ``[batch, channels, time] -> [batch, channels, ceil(time / stride)]``.
    """

    def __init__(self, channels: int, stride: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=channels)
        self.norm = GlobalLayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class AFRCNNBlock(nn.Module):
    """One micro-level A-FRCNN block (paper Fig. 1c, "Method B" connections).

    1. bottom-up: stage 0 is a stride-1 depthwise conv of the projected input, stage i a
       stride-2 depthwise conv of stage i-1 (stages updated one after the other);
    2. local fusion, all stages at once: stage i fuses [its lower neighbour downsampled
       by a second stride-2 depthwise conv, itself, its upper neighbour upsampled by
       nearest interpolation];
    3. global fusion: every fused stage, upsampled to stage-0 length, fused into one map,
       projected back to ``bottleneck`` channels and added to the block input.

    "Fusion" is concatenation + 1x1 conv + gLN + PReLU (``fusion="concat"``), or for the
    paper's "sum" variant a sum + gLN + PReLU in the local fusion (the global fusion stays
    a concatenation, as in the released ``AFRCNN(sum).py``).

    Input and output ``[batch, bottleneck, frames]``.

    Args:
        bottleneck: channels between blocks (``Bc``).
        channels: channels of every stage (``C``).
        n_stages: ``S``.
        fusion: "concat" or "sum" (local fusion only).
        share_upward: reuse the vertical upward conv of stage i for the oblique upward
            connection into stage i's local fusion, as the paper's text asks; the released
            code (default ``False``) keeps them separate (4 x 4,096 more parameters).
    """

    def __init__(
        self,
        bottleneck: int,
        channels: int,
        n_stages: int,
        fusion: str = "concat",
        share_upward: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"AFRCNNBlock: fusion must be one of {FUSIONS}, got {fusion!r}")
        if n_stages < 2:
            raise ValueError(f"AFRCNNBlock: need at least 2 stages, got {n_stages}")
        self.n_stages = n_stages
        self.fusion = fusion
        self.share_upward = share_upward
        self.proj = PointwiseNormAct(bottleneck, channels)
        self.bottom_up = nn.ModuleList(DepthwiseNorm(channels, stride=1 if i == 0 else 2) for i in range(n_stages))
        # Oblique upward connection into stage i (i >= 1); index i-1 holds stage i's conv.
        self.oblique_up = (
            None if share_upward else nn.ModuleList(DepthwiseNorm(channels, stride=2) for _ in range(n_stages - 1))
        )
        if fusion == "concat":
            self.local_fuse = nn.ModuleList(
                PointwiseNormAct(self._n_inputs(i) * channels, channels) for i in range(n_stages)
            )
        else:
            self.local_fuse = nn.ModuleList(
                nn.Sequential(GlobalLayerNorm(channels), nn.PReLU()) for _ in range(n_stages)
            )
        self.global_fuse = PointwiseNormAct(n_stages * channels, channels)
        self.res_conv = nn.Conv1d(channels, bottleneck, 1)

    def _n_inputs(self, stage: int) -> int:
        return 1 + (stage > 0) + (stage < self.n_stages - 1)

    def _upward(self, stage: int) -> nn.Module:
        return self.bottom_up[stage] if self.oblique_up is None else self.oblique_up[stage - 1]

    def forward(self, x: Tensor) -> Tensor:
        # 1. asynchronous bottom-up pass
        stages = [self.bottom_up[0](self.proj(x))]
        for i in range(1, self.n_stages):
            stages.append(self.bottom_up[i](stages[-1]))
        # 2. local fusion of adjacent stages, all computed from the bottom-up states
        fused = []
        for i, own in enumerate(stages):
            parts = []
            if i > 0:
                parts.append(self._upward(i)(stages[i - 1]))
            parts.append(own)
            if i < self.n_stages - 1:
                parts.append(F.interpolate(stages[i + 1], size=own.shape[-1], mode="nearest"))
            if self.fusion == "concat":
                fused.append(self.local_fuse[i](torch.cat(parts, dim=1)))
            else:
                fused.append(self.local_fuse[i](torch.stack(parts).sum(0)))
        # 3. delayed global fusion into the bottom stage
        length = fused[0].shape[-1]
        top_down = [fused[0]] + [F.interpolate(f, size=length, mode="nearest") for f in fused[1:]]
        return self.res_conv(self.global_fuse(torch.cat(top_down, dim=1))) + x


class AFRCNNMasker(nn.Module):
    """gLN -> 1x1 bottleneck -> A-FRCNN block unfolded ``n_blocks`` times with tied
    weights -> PReLU -> 1x1 to ``n_src * n_filters`` -> ReLU masks.

    Macro-level unfolding (paper eqs. 4-5), with ``r`` the bottleneck output and ``f`` the
    block: R(1) = f(r), then for t >= 1
      SC: R(t+1) = f(phi(R(t) + r)), phi = depthwise 1x1 conv + PReLU (shared);
      DC: R(t+1) = f(phi(R(t))), same phi;
      CC: R(t+1) = f(phi([R(t); r])), phi = full 1x1 conv 2Bc -> Bc + PReLU (6.7 M total,
          Table 6).

    Input ``[batch, n_filters, frames]``; output ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        bottleneck: int = 512,
        channels: int = 512,
        n_stages: int = 5,
        n_blocks: int = 16,
        fusion: str = "concat",
        unfold: str = "SC",
        share_upward: bool = False,
    ) -> None:
        super().__init__()
        if unfold not in UNFOLDINGS:
            raise ValueError(f"AFRCNNMasker: unfold must be one of {UNFOLDINGS}, got {unfold!r}")
        if n_blocks < 1:
            raise ValueError(f"AFRCNNMasker: n_blocks must be >= 1, got {n_blocks}")
        self.n_src = n_src
        self.n_filters = n_filters
        self.n_blocks = n_blocks
        self.unfold = unfold
        self.input_norm = GlobalLayerNorm(n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        self.block = AFRCNNBlock(bottleneck, channels, n_stages, fusion, share_upward)
        if unfold == "CC":
            phi_conv = nn.Conv1d(2 * bottleneck, bottleneck, 1)
        else:
            phi_conv = nn.Conv1d(bottleneck, bottleneck, 1, groups=bottleneck)
        self.phi = nn.Sequential(phi_conv, nn.PReLU())
        self.output_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, n_src * n_filters, 1)

    def forward(self, rep: Tensor) -> Tensor:
        r = self.bottleneck(self.input_norm(rep))
        x = self.block(r)
        for _ in range(1, self.n_blocks):
            if self.unfold == "SC":
                x = self.block(self.phi(x + r))
            elif self.unfold == "DC":
                x = self.block(self.phi(x))
            else:
                x = self.block(self.phi(torch.cat([x, r], dim=1)))
        masks = torch.relu(self.mask_conv(self.output_act(x)))
        batch, _, frames = masks.shape
        return masks.view(batch, self.n_src, self.n_filters, frames)


class SourceMixingDecoder(nn.Module):
    """The released A-FRCNN decoder: one ``ConvTranspose1d(n_src * n_filters -> n_src)``,
    so every output source is synthesised from *all* sources' masked features.

    ``[batch, n_src, n_filters, frames] -> [batch, n_src, (frames - 1) * stride + kernel_size]``.
    """

    def __init__(self, n_filters: int, n_src: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.deconv = nn.ConvTranspose1d(n_src * n_filters, n_src, kernel_size, stride=stride, bias=False)

    def forward(self, rep: Tensor) -> Tensor:
        batch, n_src, n_filters, frames = rep.shape
        return self.deconv(rep.reshape(batch, n_src * n_filters, frames))


@register_model("afrcnn", small_config=dict(n_filters=16, bottleneck=8, channels=8, n_stages=2, n_blocks=2))
class AFRCNN(EncoderMaskerDecoder):
    """A-FRCNN. Defaults are A-FRCNN-16 (paper Table 3): S=5 stages, C=Bc=N=512,
    encoder/decoder kernel 21 stride 10, SC unfolding, concatenation fusion, 8 kHz:
    6,134,793 parameters for any ``n_blocks``. The paper's "sum" variant is
    ``fusion="sum", bottleneck=128`` (1,739,785 parameters).

    The encoder is centred as in the released code (``kernel_size // 2`` zeros on both
    sides, so ``frames = time / stride``) and the input is zero-padded on the right to a
    multiple of ``lcm(stride, 2**n_stages)`` (160 for the defaults), then the output is
    cropped back to the input length.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: N, encoder bases.
        kernel_size, stride: encoder/decoder kernel (L) and hop.
        bottleneck: Bc, channels between unfolded blocks (always preceded by a 1x1 conv,
            as in the released model, even when equal to ``n_filters``).
        channels: C, channels of every stage.
        n_stages: S. n_blocks: B, unfolding steps (weights tied, so no extra parameters).
        fusion: "concat" (default) or "sum" (local fusion by summation, paper Table 3).
        unfold: "SC" (default), "DC" or "CC" macro-level unfolding (paper Table 6).
        share_upward: tie the vertical and oblique upward convs (paper text) instead of
            keeping them separate (released code, default).
        decoder: "official" (default; one transposed conv over all sources' masked
            features, 43,008 parameters, as released) or "shared" (one synthesis
            filterbank applied to each source separately, paper eq. 3, 10,752 parameters;
            total 6,102,537).
        sample_rate: the sample rate the model is trained at.
    """

    ssc_presets = {
        # Every pointwise (1x1) conv that mixes channels; the depthwise phi and the
        # depthwise k5 convs are excluded (SSC replaces channel-mixing linear maps).
        "pointwise": {
            "include": [
                "masker.bottleneck",
                "masker.block.proj.conv",
                "masker.block.local_fuse.*.conv",
                "masker.block.global_fuse.conv",
                "masker.block.res_conv",
                "masker.mask_conv",
            ]
        },
        # Only the fusion 1x1s (the bulk of the parameters and MACs).
        "fusion": {"include": ["masker.block.local_fuse.*.conv", "masker.block.global_fuse.conv"]},
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 512,
        kernel_size: int = 21,
        stride: int = 10,
        bottleneck: int = 512,
        channels: int = 512,
        n_stages: int = 5,
        n_blocks: int = 16,
        fusion: str = "concat",
        unfold: str = "SC",
        share_upward: bool = False,
        decoder: str = "official",
        sample_rate: int = 8000,
    ) -> None:
        if decoder not in DECODERS:
            raise ValueError(f"AFRCNN: decoder must be one of {DECODERS}, got {decoder!r}")
        encoder = ConvEncoder(n_filters, kernel_size, stride)
        synthesis: nn.Module = (
            SourceMixingDecoder(n_filters, n_src, kernel_size, stride)
            if decoder == "official"
            else ConvDecoder(n_filters, kernel_size, stride)
        )
        nn.init.xavier_uniform_(encoder.conv.weight)
        nn.init.xavier_uniform_(synthesis.deconv.weight)
        super().__init__(
            encoder=encoder,
            masker=AFRCNNMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                channels=channels,
                n_stages=n_stages,
                n_blocks=n_blocks,
                fusion=fusion,
                unfold=unfold,
                share_upward=share_upward,
            ),
            decoder=synthesis,
            n_src=n_src,
            sample_rate=sample_rate,
            # lcm with 2**n_stages keeps every stage length exact.
            length_multiple=math.lcm(stride, 2**n_stages),
            framing="centered",
        )
