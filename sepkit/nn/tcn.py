"""The temporal convolutional network block of Conv-TasNet (Luo & Mesgarani, "Conv-TasNet:
Surpassing Ideal Time-Frequency Magnitude Masking for Speech Separation", IEEE/ACM TASLP
2019), also the backbone block of GC3's GC-TCN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepkit.nn.activations import activate, activate_, eager_inference
from sepkit.nn.depthwise import DepthwiseConv1d
from sepkit.nn.norms import GlobalLayerNorm, make_norm


def pointwise_channels_last(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """A 1x1 ``conv`` applied to ``x`` of layout ``[batch, frames, channels]``; returns
    ``[batch, frames, conv.out_channels]``. The input is handed to oneDNN as the
    channels-last (NHWC) image it already is, which its 1x1 kernels read in place: in the
    usual ``[batch, channels, frames]`` layout oneDNN first copies every input into its
    blocked layout, a scratch tensor as large as the input at every call."""
    y = F.conv2d(x.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias)
    return y.squeeze(2).transpose(1, 2)


def pointwise_into(x: Tensor, conv: nn.Conv1d, out: Tensor) -> Tensor:
    """A 1x1 ``conv`` from ``x`` ``[batch, frames, in]`` into ``out`` ``[batch, frames,
    out]``, one matrix product per batch item, nothing allocated. Either may be a
    transposed view of a ``[batch, channels, frames]`` tensor: the products read and
    write transposed operands in place."""
    weight = conv.weight.squeeze(2).T  # [in, out]
    for item in range(x.shape[0]):
        if conv.bias is None:
            torch.mm(x[item], weight, out=out[item])
        else:
            torch.addmm(conv.bias, x[item], weight, out=out[item])
    return out


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

    def supports_channels_last_inference(self) -> bool:
        """Whether :meth:`infer_channels_last_` computes this block: plain 1x1 convolutions
        (not SSC layers), gLN, single-slope PReLUs and a depthwise convolution that keeps
        the number of frames."""
        convs = [self.in_conv, self.res_conv] + ([self.skip_conv] if self.skip_conv is not None else [])
        depthwise = self.depthwise
        (pad,), (dilation,), (kernel,) = depthwise.padding, depthwise.dilation, depthwise.kernel_size
        return (
            all(type(conv) is nn.Conv1d and conv.kernel_size == (1,) for conv in convs)
            and type(depthwise) is DepthwiseConv1d
            and (self.causal or 2 * pad == dilation * (kernel - 1))
            and all(type(norm) is GlobalLayerNorm for norm in (self.norm1, self.norm2))
            and all(type(act) is nn.PReLU and act.num_parameters == 1 for act in (self.act1, self.act2))
        )

    def infer_channels_last_(self, x: Tensor, skip_sum: Tensor | None, hidden: Tensor, work: Tensor) -> None:
        """This block at CPU inference, in the channels-last layout and in the caller's
        buffers: adds the residual to ``x`` ``[batch, frames, bottleneck]`` and the skip to
        ``skip_sum`` ``[batch, frames, skip_channels]``; ``hidden`` and ``work`` ``[batch,
        frames, hidden]`` are scratch. The same sums as :meth:`forward` up to float
        rounding (only where :meth:`supports_channels_last_inference`).

        Why: every tensor of the block is then written where the last block's was, and
        no convolution copies its input into oneDNN's blocked layout (the expanding 1x1
        is one matrix product into ``hidden``; the reducing ones read ``work`` as the
        channels-last image it is). A call of the paper Conv-TasNet on a 4 s chunk then
        adds about 23 MiB to the resident memory at its peak instead of 43, and allocates
        nothing block-sized that the C heap could scatter: with large buffers unmapped
        when freed (:func:`sepkit.allocator.unmap_large_buffers`) it takes 0.19 s, the
        module path 0.68 s (page faults of oneDNN's scratch)."""
        pointwise_into(x, self.in_conv, hidden)
        self.norm1.normalize_channels_last_(activate_(self.act1, hidden))
        self.depthwise.channels_last_into(hidden, work)
        self.norm2.normalize_channels_last_(activate_(self.act2, work))
        x += pointwise_channels_last(work, self.res_conv)
        if skip_sum is not None and self.skip_conv is not None:
            skip_sum += pointwise_channels_last(work, self.skip_conv)
