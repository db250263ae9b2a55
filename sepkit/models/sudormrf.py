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
from sepkit.nn.tac import TAC
from sepkit.nn.uconv import UConvBlock, global_norm

DECODER_MODES = ("grouped", "joint", "shared")


class GroupCommUConvBlock(nn.Module):
    """U-ConvBlock with group communication, ``GC_UConvBlock`` of the authors'
    ``groupcomm_sudormrf_v2.py``: the ``channels`` are split into K groups of M =
    ``channels / K``; a TAC (hidden ``3 M``, gLN eps 1e-8) mixes the groups, then one
    improved :class:`UConvBlock` (``hidden_channels / K`` wide), shared by all groups, runs
    on each group separately (its norms see one group's M channels).

    ``[batch, channels, frames]`` in and out.
    """

    def __init__(self, channels: int, hidden_channels: int, upsampling_depth: int, n_groups: int) -> None:
        super().__init__()
        if channels % n_groups or hidden_channels % n_groups:
            raise ValueError(
                f"SuDoRM-RF group communication: {n_groups} groups do not divide bottleneck {channels} "
                f"and hidden_channels {hidden_channels}"
            )
        self.n_groups = n_groups
        group_size = channels // n_groups
        self.tac = TAC(group_size, 3 * group_size, eps=1e-8)
        self.block = UConvBlock(group_size, hidden_channels // n_groups, upsampling_depth, improved=True)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, frames = x.shape
        mixed = self.tac(x.reshape(batch, self.n_groups, channels // self.n_groups, frames))
        return self.block(mixed.reshape(batch * self.n_groups, -1, frames)).reshape(x.shape)


class FilterAxisConv2d(nn.Conv2d):
    """The original SuDoRM-RF mask layer, ``nn.Conv2d(1, n_src, (kernel, 1),
    padding=(padding, 0))`` on ``[batch, 1, n_filters, frames]``, computed as one matrix
    product per source.

    The kernel slides along the filter axis only, so for every frame the output column
    is a banded (Toeplitz) matrix ``A_s[f, g] = w_s[g - f + padding]`` (zero outside
    ``0 <= g - f + padding < kernel``) times the input column: ``masks[b, s, :, t] =
    A_s x[b, :, t] + bias_s``. The paper's kernel spans the whole filter axis (N + 1
    taps), which oneDNN's convolution backward handles in about 28 s for a ``[2, 512,
    3200]`` input on one thread; the same arithmetic as a matrix product takes a fraction
    of a second. Same parameters and state dict as the ``nn.Conv2d`` it subclasses.

    ``[batch, 1, n_filters, frames] -> [batch, n_src, n_filters + 2 padding - kernel + 1,
    frames]``.
    """

    def __init__(self, n_src: int, kernel: int, padding: int) -> None:
        super().__init__(1, n_src, (kernel, 1), padding=(padding, 0))

    def toeplitz(self, n_filters: int) -> Tensor:
        """The banded matrices ``A``, ``[n_src, out_filters, n_filters]``."""
        kernel, padding = self.kernel_size[0], self.padding[0]
        out_filters = n_filters + 2 * padding - kernel + 1
        device = self.weight.device
        tap = torch.arange(n_filters, device=device) - torch.arange(out_filters, device=device)[:, None] + padding
        # Taps outside the kernel read an appended zero, so A is built by one gather.
        tap = torch.where((tap >= 0) & (tap < kernel), tap, kernel)
        taps = F.pad(self.weight.reshape(self.out_channels, kernel), (0, 1))
        return taps[:, tap]

    def forward(self, x: Tensor) -> Tensor:
        batch, _, n_filters, frames = x.shape
        matrices = self.toeplitz(n_filters).to(x.dtype)
        out = torch.matmul(matrices.reshape(-1, n_filters), x.reshape(batch, n_filters, frames))
        out = out.reshape(batch, self.out_channels, -1, frames)
        return out + self.bias.to(x.dtype)[:, None, None]


class SuDoRMRFMasker(nn.Module):
    """Input norm -> 1x1 bottleneck -> ``n_blocks`` U-ConvBlocks -> masks.

    With ``n_groups > 1`` (improved only) each block is a :class:`GroupCommUConvBlock`.

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
        n_groups: int = 1,
    ) -> None:
        super().__init__()
        self.n_src = n_src
        self.n_filters = n_filters
        self.improved = improved
        self.input_norm = global_norm(n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        if n_groups > 1:
            if not improved or final_prelu_per_channel:
                raise ValueError("SuDoRM-RF group communication (n_groups > 1) exists for the improved block only")
            blocks = [
                GroupCommUConvBlock(bottleneck, hidden_channels, upsampling_depth, n_groups) for _ in range(n_blocks)
            ]
        else:
            blocks = [
                UConvBlock(bottleneck, hidden_channels, upsampling_depth, improved, final_prelu_per_channel)
                for _ in range(n_blocks)
            ]
        self.blocks = nn.Sequential(*blocks)
        if improved:
            self.mask_act_in = nn.PReLU()
            self.mask_conv = nn.Conv1d(bottleneck, n_src * n_filters, 1)
        else:
            self.reshape_conv = nn.Conv1d(bottleneck, n_filters, 1) if bottleneck != n_filters else nn.Identity()
            # Sliding along the filter axis with kernel N+1 and padding N - N//2 keeps
            # the filter count, so every mask value sees every filter of its frame.
            self.mask_conv2d = FilterAxisConv2d(n_src, n_filters + 1, n_filters - n_filters // 2)
            # The official model defines a norm for the mask input that its forward never
            # applies. It is kept, unused, so that the parameter count (2,662,022 for
            # 1.0x, the published 2.66M) and the official state-dict layout match.
            self.unused_mask_input_norm = global_norm(n_filters)

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


@register_model(
    "sudormrf", small_config=dict(n_filters=16, bottleneck=8, hidden_channels=16, n_blocks=2, upsampling_depth=3)
)
class SuDoRMRF(EncoderMaskerDecoder):
    """SuDoRM-RF. Defaults are the paper's 1.0x model: encoder kernel 21, stride 10, 512
    bases with bias and ReLU; bottleneck C=128, C_U=512, 16 U-ConvBlocks of depth 5
    (Q=4 downsamplings); softmax masks; per-source decoders: 2,662,022 parameters.
    ``n_blocks=8`` / ``4`` give the 0.5x / 0.25x models (1,414,790 / 791,174).

    ``improved=True`` is SuDoRM-RF++ (gLN blocks, ReLU masks, joint decoder, encoder
    without bias); the reference's README model uses ``bottleneck=256``.

    ``improved=True, n_groups=K`` is the group-communication SuDoRM-RF++ ("SuDoRM-RF++
    GC", ``GroupCommSudoRmRf`` of ``sudo_rm_rf/dnn/models/groupcomm_sudormrf_v2.py``,
    whose ``group_size`` argument is this K): the same encoder, masks, decoder and
    framing as SuDoRM-RF++, with every block a TAC across K groups followed by one
    U-ConvBlock shared by the groups (:class:`GroupCommUConvBlock`). It is an option of
    this model rather than of ``gc3`` because it is SuDoRM-RF++ with other blocks: GC3
    adds a context codec and splits the encoder output into groups, this model splits
    only the bottleneck, and its state dict keeps SuDoRM-RF++'s top-level layout. The
    reference's defaults (``bottleneck=256``, 16 groups, other sizes as the paper's
    model) have 565,073 parameters (tests/test_converters.py
    counts them from the reference's layer shapes).

    As in the reference (``etzinis/sudo_rm_rf``), the encoder and decoder are zero-padded
    by ``kernel_size // 2`` on each side and the input is padded on the right to a
    multiple of:

    - original: ``stride * 2**(depth-1)``, which is ``sudormrf.py``'s ``self.lcm =
      lcm(kernel_size // 2, 2**depth)`` for the reference's kernels (stride ``kernel_size
      // 2`` = 10: 160 for depth 5, 80 for depth 4);
    - improved: ``stride * 2**depth``, ``improved_sudormrf.py``'s
      ``pad_to_appropriate_length`` with ``n_least_samples_req = kernel_size // 2 *
      2**depth`` (320 for the paper's model), at least one multiple.

    The amount of padding changes the output (the zero frames enter the global norms),
    so each variant uses its own reference's multiple; ``pad_multiple`` overrides it
    (Asteroid pads both variants to ``lcm(kernel_size // 2, 2**depth)``). With ``normalize_input`` the
    mixture is scaled to zero mean and unit variance as the reference runner does with
    every mixture it trains and evaluates on (``normalize_tensor_wav`` in
    ``sudo_rm_rf/dnn/experiments/run_improved_sudormrf.py``: unbiased standard
    deviation plus 1e-8), and the estimates are scaled back (each source gets
    ``1/n_src`` of the mixture mean so they still sum to the mixture's level).

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
        n_groups: K > 1 gives group-communication blocks (improved only); 1, plain blocks.
        normalize_input: normalise the mixture inside the model.
        pad_multiple: pad the input to a multiple of this many samples (a multiple of
            ``stride``); defaults to the variant's reference, see above.
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
        n_groups: int = 1,
        normalize_input: bool = True,
        pad_multiple: int | None = None,
        sample_rate: int = 8000,
    ) -> None:
        if decoder is None:
            decoder = "joint" if improved else "grouped"
        if encoder_bias is None:
            encoder_bias = not improved
        if pad_multiple is None:
            pad_multiple = stride * 2 ** (upsampling_depth if improved else upsampling_depth - 1)
        super().__init__(
            encoder=ConvEncoder(
                n_filters, kernel_size, stride, bias=encoder_bias, activation=None if improved else "relu"
            ),
            masker=SuDoRMRFMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                hidden_channels=hidden_channels,
                n_blocks=n_blocks,
                upsampling_depth=upsampling_depth,
                improved=improved,
                final_prelu_per_channel=final_prelu_per_channel,
                n_groups=n_groups,
            ),
            decoder=SuDoRMRFDecoder(n_filters, n_src, kernel_size, stride, decoder),
            n_src=n_src,
            sample_rate=sample_rate,
            length_multiple=pad_multiple,
            framing="centered",
        )
        self.normalize_input = normalize_input
        # SSC swap group of the 1x1 convolutions; the output layer differs by variant.
        block = "masker.blocks.*.block" if n_groups > 1 else "masker.blocks.*"
        pointwise = ["masker.bottleneck", f"{block}.in_conv", f"{block}.out_conv"]
        if improved:
            pointwise.append("masker.mask_conv")
        elif bottleneck != n_filters:
            pointwise.append("masker.reshape_conv")
        self.ssc_presets = {"pointwise": {"include": pointwise}}

    def forward(self, wav: Tensor) -> Tensor:
        """Separate ``[batch, time]`` (or ``[batch, 1, time]`` / ``[time]``) into
        ``[batch, n_src, time]``, normalising the mixture first if configured."""
        if not self.normalize_input:
            return super().forward(wav)
        # Statistics of the unpadded mixture, as the reference computes them on its data,
        # with its unbiased std; a one-sample input (whose unbiased std is undefined)
        # falls back to the population std, 0, so it is only centred.
        mean = wav.mean(dim=-1, keepdim=True)
        correction = 1 if wav.shape[-1] > 1 else 0
        scale = wav.std(dim=-1, keepdim=True, correction=correction) + 1e-8
        est = super().forward((wav - mean) / scale)
        return est * scale.reshape(-1, 1, 1) + mean.reshape(-1, 1, 1) / self.n_src
