"""Conv-TasNet (Luo & Mesgarani, TASLP 2019): a TCN masker on a learned filterbank."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from sepkit.models.filterbanks import ConvDecoder, ConvEncoder
from sepkit.models.pipeline import EncoderMaskerDecoder, Framing
from sepkit.models.registry import register_model
from sepkit.nn.activations import activate, activate_, eager_inference, make_activation
from sepkit.nn.norms import make_norm
from sepkit.nn.tcn import TemporalBlock, pointwise_into


class TCNMasker(nn.Module):
    """Conv-TasNet's separator: norm -> 1x1 bottleneck -> R repeats of X dilated blocks
    (dilation ``2**x``) -> PReLU -> 1x1 to ``n_src * n_filters`` -> mask nonlinearity.

    With the skip path on, the masks read only the summed skips, so the last block's
    residual 1x1 feeds nothing and gets no gradient; it is kept, as in the reference
    layout, and counted in the published 5,050,545.

    Input ``[batch, n_filters, frames]``; output masks ``[batch, n_src, n_filters, frames]``.
    """

    def __init__(
        self,
        n_filters: int,
        n_src: int,
        bottleneck: int = 128,
        hidden: int = 512,
        skip_channels: int = 128,
        kernel_size: int = 3,
        n_blocks: int = 8,
        n_repeats: int = 3,
        norm: str = "gLN",
        causal: bool = False,
        mask_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.n_src = n_src
        self.n_filters = n_filters
        self.input_norm = make_norm(norm, n_filters)
        self.bottleneck = nn.Conv1d(n_filters, bottleneck, 1)
        self.blocks = nn.ModuleList(
            TemporalBlock(bottleneck, hidden, skip_channels, kernel_size, 2**x, norm, causal)
            for _ in range(n_repeats)
            for x in range(n_blocks)
        )
        self.use_skip = skip_channels > 0
        self.output_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(skip_channels if self.use_skip else bottleneck, n_src * n_filters, 1)
        self.mask_act = make_activation(mask_activation, "mask_activation")

    def forward(self, rep: Tensor) -> Tensor:
        # At inference the sums accumulate into tensors this method made and the
        # activations are written over their inputs: no new tensor per block but the
        # block's own.
        in_place = eager_inference()
        if in_place and self._supports_channels_last_inference(rep):
            return self._masks_channels_last(rep)
        x = self.bottleneck(self.input_norm(rep))
        skip_sum: Tensor | None = None
        for block in self.blocks:
            residual, skip = block(x)
            x = x.add_(residual) if in_place else x + residual
            if skip is not None:
                if skip_sum is None:
                    skip_sum = skip
                else:
                    skip_sum = skip_sum.add_(skip) if in_place else skip_sum + skip
        out = skip_sum if self.use_skip else x
        masks = activate(self.mask_act, self.mask_conv(activate(self.output_act, out, in_place)), in_place)
        batch, _, frames = masks.shape
        return masks.view(batch, self.n_src, self.n_filters, frames)

    def _supports_channels_last_inference(self, rep: Tensor) -> bool:
        pointwise = (self.bottleneck, self.mask_conv)
        # Its matrix products run in the weights' dtype: under autocast (bf16-mixed
        # validation) the module path's convolutions choose the dtype.
        if rep.device.type != "cpu" or rep.dtype != self.bottleneck.weight.dtype or torch.is_autocast_enabled("cpu"):
            return False
        # It calls none of the blocks' layers: a hook on any of them (feature capture,
        # sepkit.profiling.count_macs) must see the module path.
        hooked = bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks) or any(
            layer._forward_hooks or layer._forward_pre_hooks for layer in self.modules()
        )
        return (
            not hooked
            and all(type(conv) is nn.Conv1d and conv.kernel_size == (1,) for conv in pointwise)
            and type(self.output_act) is nn.PReLU
            and self.output_act.num_parameters == 1
            and all(block.supports_channels_last_inference() for block in self.blocks)
        )

    def _masks_channels_last(self, rep: Tensor) -> Tensor:
        """:meth:`forward` at CPU inference: the TCN runs on ``[batch, frames, channels]``
        tensors (:meth:`TemporalBlock.infer_channels_last_`), every block in the same two
        scratch buffers; the bottleneck reads the normalised representation and the mask
        convolution writes the ``[batch, n_src * N, frames]`` masks through transposed
        matrix products, so neither layout is ever copied. Same sums as the module path up
        to float rounding. ``[batch, N, frames]`` -> ``[batch, n_src, N, frames]``."""
        batch, _, frames = rep.shape
        normed = self.input_norm(rep).transpose(1, 2)  # [batch, frames, N], a view
        x = pointwise_into(normed, self.bottleneck, rep.new_empty(batch, frames, self.bottleneck.out_channels))
        del normed
        hidden_channels = self.blocks[0].in_conv.out_channels
        hidden, work = rep.new_empty(2, batch, frames, hidden_channels)
        skip_sum = rep.new_zeros(batch, frames, self.mask_conv.in_channels) if self.use_skip else None
        for block in self.blocks:
            block.infer_channels_last_(x, skip_sum, hidden, work)
        del hidden, work
        out = activate_(self.output_act, skip_sum if skip_sum is not None else x)
        masks = rep.new_empty(batch, self.mask_conv.out_channels, frames)
        pointwise_into(out, self.mask_conv, masks.transpose(1, 2))
        return activate_(self.mask_act, masks).view(batch, self.n_src, self.n_filters, frames)


@register_model(
    "conv_tasnet", small_config=dict(n_filters=16, bottleneck=8, hidden=16, skip_channels=8, n_blocks=2, n_repeats=1)
)
class ConvTasNet(EncoderMaskerDecoder):
    """Conv-TasNet. Defaults are the paper's best non-causal model (Table II):
    N=512, L=16 (stride 8), B=128, H=512, Sc=128, P=3, X=8, R=3, gLN, sigmoid masks:
    5,050,545 parameters.

    Framing (``framing`` of :class:`EncoderMaskerDecoder`): by default the authors' code
    (``naplab/Conv-TasNet``, ``conv_tasnet.py``, ``TasNet.pad_signal`` and the crop in
    ``TasNet.forward``), ``"hop_padded"``: ``kernel - (stride + time % kernel) % kernel``
    zeros on the right, ``stride`` zeros on both sides, the estimates cropped to samples
    ``stride .. stride + time``. It needs ``kernel_size == 2 * stride`` (the authors'
    only geometry); other geometries default to ``"end"``. ``"truncate"`` is Asteroid's
    (no padding, estimates zero-padded at the end by ``pad_x_to_y``), used by
    :func:`~sepkit.models.from_asteroid`.

    Input ``[batch, time]``; output ``[batch, n_src, time]``.

    Args:
        n_src: number of sources.
        n_filters: N, encoder/decoder bases.
        kernel_size: L, encoder/decoder length in samples.
        stride: encoder hop (``kernel_size // 2`` in the paper).
        bottleneck: B. hidden: H. skip_channels: Sc (0 disables the skip path).
        conv_kernel_size: P. n_blocks: X. n_repeats: R.
        norm: "gLN" (default), "cLN", "BN" or "id"; ``causal=True`` should use "cLN".
        causal: causal depthwise convolutions.
        mask_activation: "sigmoid" (paper) or "relu" (Asteroid's recipes).
        filterbank_init: "random" (paper) or "stft": start encoder and decoder as a
            windowed Fourier analysis/synthesis pair (still learned).
        framing: see above; ``None`` is the authors' rule where it applies.
        sample_rate: the sample rate the model is trained at.
    """

    ssc_presets = {
        "pointwise": {
            "include": [
                "masker.bottleneck",
                "masker.blocks.*.in_conv",
                "masker.blocks.*.res_conv",
                "masker.blocks.*.skip_conv",
                "masker.mask_conv",
            ]
        }
    }

    def __init__(
        self,
        n_src: int = 2,
        n_filters: int = 512,
        kernel_size: int = 16,
        stride: int = 8,
        bottleneck: int = 128,
        hidden: int = 512,
        skip_channels: int = 128,
        conv_kernel_size: int = 3,
        n_blocks: int = 8,
        n_repeats: int = 3,
        norm: str = "gLN",
        causal: bool = False,
        mask_activation: str = "sigmoid",
        filterbank_init: str = "random",
        framing: Framing | None = None,
        sample_rate: int = 8000,
    ) -> None:
        if framing is None:
            framing = "hop_padded" if kernel_size == 2 * stride else "end"
        super().__init__(
            encoder=ConvEncoder(n_filters, kernel_size, stride, init=filterbank_init),
            masker=TCNMasker(
                n_filters,
                n_src,
                bottleneck=bottleneck,
                hidden=hidden,
                skip_channels=skip_channels,
                kernel_size=conv_kernel_size,
                n_blocks=n_blocks,
                n_repeats=n_repeats,
                norm=norm,
                causal=causal,
                mask_activation=mask_activation,
            ),
            decoder=ConvDecoder(n_filters, kernel_size, stride, init=filterbank_init),
            n_src=n_src,
            sample_rate=sample_rate,
            framing=framing,
        )
