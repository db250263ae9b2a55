"""SuDoRM-RF (Tzinis, Wang & Smaragdis, MLSP 2020) and its improved variant SuDoRM-RF++
(JSPS 2022): stacks of U-ConvBlocks, successive depthwise downsampling and nearest
upsampling, on a learned filterbank with a padded encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.models.filterbanks import ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import register_model

DECODER_MODES = ("grouped", "joint", "shared")


def _global_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm with one group is gLN (statistics over channels and time per utterance,
    # per-channel gain and bias); eps as in the reference code.
    return nn.GroupNorm(1, channels, eps=1e-8)


class UConvBlock(nn.Module):
    """One U-ConvBlock on ``[batch, channels, frames]`` (same shape out).

    1x1 conv up to ``hidden_channels`` -> norm -> PReLU; a depthwise k5 conv, then
    ``upsampling_depth - 1`` depthwise k5 stride-2 convs (each followed by a norm);
    nearest x2 upsampling summed from coarse to fine; norm -> PReLU; 1x1 conv back to
    ``channels``; residual. The original block adds a norm after that conv and a final
    norm -> PReLU after the residual; the improved block (``improved=True``) has neither.

    Any frame count works: an upsampled level is cropped to its finer neighbour.

    Stable signature (reused by GC3):
    ``UConvBlock(channels, hidden_channels, upsampling_depth=5, improved=False,
    final_prelu_per_channel=None)``.

    Args:
        channels: C, the bottleneck width of the stack (the reference's ``out_channels``).
        hidden_channels: C_U, the expanded width inside the block (``in_channels``).
        upsampling_depth: number of resolutions; the paper's Q=4 downsamplings is 5.
        improved: SuDoRM-RF++ block (no output norm/activation, single PReLU after the
            input projection).
        final_prelu_per_channel: per-channel PReLU after the pyramid. Defaults to the
            official code (True for the original block, False for the improved one);
            Asteroid's improved block uses True.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        upsampling_depth: int = 5,
        improved: bool = False,
        final_prelu_per_channel: bool | None = None,
    ) -> None:
        super().__init__()
        if upsampling_depth < 1:
            raise ValueError(f"UConvBlock: upsampling_depth must be >= 1, got {upsampling_depth}")
        if final_prelu_per_channel is None:
            final_prelu_per_channel = not improved
        self.improved = improved
        self.in_conv = nn.Conv1d(channels, hidden_channels, 1)
        self.in_norm = _global_norm(hidden_channels)
        self.in_act = nn.PReLU(1 if improved else hidden_channels)
        self.depthwise = nn.ModuleList(
            nn.Conv1d(hidden_channels, hidden_channels, 5, stride=1 if level == 0 else 2, padding=2, groups=hidden_channels)
            for level in range(upsampling_depth)
        )
        self.depthwise_norms = nn.ModuleList(_global_norm(hidden_channels) for _ in range(upsampling_depth))
        self.final_norm = _global_norm(hidden_channels)
        self.final_act = nn.PReLU(hidden_channels if final_prelu_per_channel else 1)
        self.out_conv = nn.Conv1d(hidden_channels, channels, 1)
        if not improved:
            self.out_norm = _global_norm(channels)
            self.block_norm = _global_norm(channels)
            self.block_act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.in_act(self.in_norm(self.in_conv(x)))
        levels = []
        for conv, norm in zip(self.depthwise, self.depthwise_norms):
            y = norm(conv(y))
            levels.append(y)
        merged = levels[-1]
        for finer in reversed(levels[:-1]):
            merged = finer + merged.repeat_interleave(2, dim=-1)[..., : finer.shape[-1]]
        out = self.out_conv(self.final_act(self.final_norm(merged)))
        if self.improved:
            return out + x
        return self.block_act(self.block_norm(self.out_norm(out) + x))


class SuDoRMRFMasker(nn.Module):
    """Input norm -> 1x1 bottleneck -> ``n_blocks`` U-ConvBlocks -> masks.

    Original: 1x1 back to ``n_filters``, then a Conv2d spanning the whole filter axis
    (kernel ``n_filters + 1``) gives one mask per source; softmax over sources
    (sigmoid for one source). Improved: PReLU -> 1x1 to ``n_src * n_filters`` -> ReLU.

    Input ``[batch, n_filters, frames]``; output masks ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        bottleneck: int = 128,
        hidden_channels: int = 512,
        n_blocks: int = 16,
        upsampling_depth: int = 5,
        improved: bool = False,
        final_prelu_per_channel: bool | None = None,
    ) -> None:
        super().__init__()
        self.n_src = n_src
        self.n_filters = n_filters
        self.improved = improved
        self.input_norm = _global_norm(n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        self.blocks = nn.Sequential(
            *(
                UConvBlock(bottleneck, hidden_channels, upsampling_depth, improved, final_prelu_per_channel)
                for _ in range(n_blocks)
            )
        )
        if improved:
            self.mask_act_in = nn.PReLU()
            self.mask_conv = nn.Conv1d(bottleneck, n_src * n_filters, 1)
        else:
            self.reshape_conv = nn.Conv1d(bottleneck, n_filters, 1) if bottleneck != n_filters else nn.Identity()
            # Sliding along the filter axis with kernel N+1 and padding N - N//2 keeps
            # the filter count, so every mask value sees every filter of its frame.
            self.mask_conv2d = nn.Conv2d(1, n_src, (n_filters + 1, 1), padding=(n_filters - n_filters // 2, 0))
            # The official model defines a norm for the mask input that its forward never
            # applies. It is kept, unused, so that the parameter count (2,662,022 for
            # 1.0x, the published 2.66M) and the official state-dict layout match.
            self.unused_mask_input_norm = _global_norm(n_filters)

    def forward(self, rep: Tensor) -> Tensor:
        x = self.blocks(self.bottleneck(self.input_norm(rep)))
        batch, _, frames = x.shape
        if self.improved:
            masks = self.mask_conv(self.mask_act_in(x)).reshape(batch, self.n_src, self.n_filters, frames)
            return torch.relu(masks)
        scores = self.mask_conv2d(self.reshape_conv(x).unsqueeze(1))
        if self.n_src == 1:
            return torch.sigmoid(scores)
        return torch.softmax(scores, dim=1)


class SuDoRMRFDecoder(nn.Module):
    """Transposed-conv decoder in the three forms the reference code uses.

    ``"grouped"`` (original SuDoRM-RF): one decoder per source, ``groups=n_src``, with
    bias. ``"joint"`` (SuDoRM-RF++): one ConvTranspose1d over all sources' masked
    representations (``groups=1``, no bias). ``"shared"`` (Asteroid): the same
    single-output decoder applied to every source.

    ``[batch, n_src, n_filters, frames] -> [batch, n_src, (frames - 1) * stride + kernel_size]``.
    """

    def __init__(self, n_filters: int, n_src: int, kernel_size: int, stride: int, mode: str) -> None:
        super().__init__()
        if mode not in DECODER_MODES:
            raise ValueError(f"SuDoRM-RF decoder: mode must be one of {DECODER_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "shared":
            self.deconv = nn.ConvTranspose1d(n_filters, 1, kernel_size, stride=stride, bias=False)
        else:
            groups = n_src if mode == "grouped" else 1
            self.deconv = nn.ConvTranspose1d(
                n_filters * n_src, n_src, kernel_size, stride=stride, groups=groups, bias=mode == "grouped"
            )

    def forward(self, rep: Tensor) -> Tensor:
        batch, n_src, n_filters, frames = rep.shape
        if self.mode == "shared":
            return self.deconv(rep.reshape(batch * n_src, n_filters, frames)).reshape(batch, n_src, -1)
        return self.deconv(rep.reshape(batch, n_src * n_filters, frames))


@register_model("sudormrf")
class SuDoRMRF(EncoderMaskerDecoder):
    """SuDoRM-RF. Defaults are the paper's 1.0x model: encoder kernel 21, stride 10, 512
    bases with bias and ReLU; bottleneck C=128, C_U=512, 16 U-ConvBlocks of depth 5
    (Q=4 downsamplings); softmax masks; per-source decoders: 2,662,022 parameters.
    ``n_blocks=8`` / ``4`` give the 0.5x / 0.25x models (1,414,790 / 791,174).

    ``improved=True`` is SuDoRM-RF++ (gLN blocks, ReLU masks, joint decoder, encoder
    without bias); the reference's README model uses ``bottleneck=256``.

    As in the reference, the encoder and decoder are zero-padded by ``kernel_size // 2``
    on each side and the input is padded to a multiple of ``stride * 2**(depth-1)``
    (equal to the reference's ``lcm(kernel_size // 2, 2**depth)`` for its kernels). With
    ``normalize_input`` the mixture is scaled to zero mean and unit variance, as the
    reference does with every mixture it trains and evaluates on, and the estimates are
    scaled back (each source gets ``1/n_src`` of the mixture mean so they still sum to
    the mixture's level).

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: encoder bases E.
        kernel_size: encoder window (odd in the reference).
        stride: encoder hop; at most ``kernel_size // 2 + 1`` so the padded decoder covers
            the input.
        bottleneck: C. hidden_channels: C_U. n_blocks: U-ConvBlocks. upsampling_depth:
            resolutions per block.
        improved: SuDoRM-RF++ instead of the original.
        decoder: "grouped", "joint" or "shared"; defaults to the variant's own.
        encoder_bias: defaults to the variant's own (original True, improved False).
        final_prelu_per_channel: see :class:`UConvBlock`.
        normalize_input: normalise the mixture inside the model.
        sample_rate: sample rate the model is trained at.
    """

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 512,
        kernel_size: int = 21,
        stride: int = 10,
        bottleneck: int = 128,
        hidden_channels: int = 512,
        n_blocks: int = 16,
        upsampling_depth: int = 5,
        improved: bool = False,
        decoder: str | None = None,
        encoder_bias: bool | None = None,
        final_prelu_per_channel: bool | None = None,
        normalize_input: bool = True,
        sample_rate: int = 8000,
    ) -> None:
        if stride > kernel_size // 2 + 1:
            raise ValueError(
                f"SuDoRM-RF: stride {stride} > kernel_size // 2 + 1 = {kernel_size // 2 + 1} "
                "leaves the padded decoder shorter than the input"
            )
        if decoder is None:
            decoder = "joint" if improved else "grouped"
        if encoder_bias is None:
            encoder_bias = not improved
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride, bias=encoder_bias, activation=None if improved else "relu"),
            masker=SuDoRMRFMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                hidden_channels=hidden_channels,
                n_blocks=n_blocks,
                upsampling_depth=upsampling_depth,
                improved=improved,
                final_prelu_per_channel=final_prelu_per_channel,
            ),
            decoder=SuDoRMRFDecoder(n_filters, n_src, kernel_size, stride, decoder),
            n_src=n_src,
            sample_rate=sample_rate,
            length_multiple=stride * 2 ** (upsampling_depth - 1),
        )
        self.normalize_input = normalize_input
        self.edge = kernel_size // 2
        if improved:
            self.ssc_presets = {"pointwise": {"include": ["masker.bottleneck", "masker.blocks.*.in_conv", "masker.blocks.*.out_conv", "masker.mask_conv"]}}
        else:
            pointwise = ["masker.bottleneck", "masker.blocks.*.in_conv", "masker.blocks.*.out_conv"]
            if bottleneck != n_filters:
                pointwise.append("masker.reshape_conv")
            self.ssc_presets = {"pointwise": {"include": pointwise}}

    def padded_length(self, length: int) -> int:
        """The reference pads the input with zeros up to a multiple of its block grid."""
        multiple = self.length_multiple
        return max(1, -(-length // multiple)) * multiple

    def separate_padded(self, wav: Tensor) -> Tensor:
        """``[batch, time]`` with ``time`` on the block grid -> ``[batch, n_src, time]``."""
        length = wav.shape[-1]
        if self.normalize_input:
            mean = wav.mean(dim=-1, keepdim=True)
            scale = wav.std(dim=-1, keepdim=True) + 1e-8
            wav = (wav - mean) / scale
        rep = self.encoder(F.pad(wav, (self.edge, self.edge)))
        masks = self.masker(rep)
        est = self.decoder(masks * rep.unsqueeze(1))[..., self.edge : self.edge + length]
        if self.normalize_input:
            est = est * scale.unsqueeze(1) + mean.unsqueeze(1) / self.n_src
        return est
