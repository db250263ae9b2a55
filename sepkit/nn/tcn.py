"""The temporal convolutional network block of Conv-TasNet (Luo & Mesgarani, "Conv-TasNet:
Surpassing Ideal Time-Frequency Magnitude Masking for Speech Separation", IEEE/ACM TASLP
2019), also the backbone block of GC3's GC-TCN."""

from __future__ import annotations

from torch import Tensor, nn

from sepkit.nn.activations import activate, eager_inference
from sepkit.nn.depthwise import DepthwiseConv1d
from sepkit.nn.norms import make_norm


class TemporalBlock(nn.Module):
    """One 1-D conv block: 1x1 up to ``hidden`` -> PReLU -> norm -> depthwise dilated
    conv -> PReLU -> norm, with a 1x1 residual output and an optional 1x1 skip output.

    Input ``[batch, bottleneck, frames]``; returns ``(residual, skip)`` of shapes
    ``[batch, bottleneck, frames]`` and ``[batch, skip_channels, frames]`` (skip is
    ``None`` when ``skip_channels == 0``).
    """

    def __init__(
        self,
        bottleneck: int,
        hidden: int,
        skip_channels: int,
        kernel_size: int,
        dilation: int,
        norm: str,
        causal: bool,
    ) -> None:
        super().__init__()
        self.causal = causal
        # Non-causal: symmetric padding; causal: all padding on the left, trimmed after.
        self.pad = (kernel_size - 1) * dilation
        self.in_conv = nn.Conv1d(bottleneck, hidden, 1)
        self.act1 = nn.PReLU()
        self.norm1 = make_norm(norm, hidden)
        self.depthwise = DepthwiseConv1d(
            hidden, kernel_size, dilation=dilation, padding=self.pad if causal else self.pad // 2
        )
        self.act2 = nn.PReLU()
        self.norm2 = make_norm(norm, hidden)
        self.res_conv = nn.Conv1d(hidden, bottleneck, 1)
        self.skip_conv = nn.Conv1d(hidden, skip_channels, 1) if skip_channels > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        # at inference both activations are written over the fresh tensors they read
        in_place = eager_inference()
        y = self.norm1(activate(self.act1, self.in_conv(x), in_place))
        y = self.depthwise(y)
        if self.causal and self.pad > 0:
            y = y[..., : -self.pad]
        y = self.norm2(activate(self.act2, y, in_place))
        skip = self.skip_conv(y) if self.skip_conv is not None else None
        return self.res_conv(y), skip
