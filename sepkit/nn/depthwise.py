"""Depthwise dilated 1-D convolution computed as a sum of shifted, scaled copies.

oneDNN's grouped convolution is slow on CPU for depthwise kernels with large dilation
(TCN blocks dilate up to 2**7): about 4 ms forward+backward at ``[8, 128, 250]`` with
dilation 16, where ``kernel_size`` fused multiply-adds over slices take a third of
that. The kernel taps are few (3 in Conv-TasNet), so each one is a slice-aligned
``addcmul`` and the backward pass is the same in the other direction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _DepthwiseShiftConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, offsets: tuple[int, ...], out_length: int):
        # Output t reads input t + offset_k for each tap k; x is the unpadded input.
        out = x.new_zeros(x.shape[0], x.shape[1], out_length)
        if bias is not None:
            out += bias[:, None]
        for k, offset in enumerate(offsets):
            dst, src = _tap_slices_between(out_length, x.shape[-1], offset)
            if dst is not None:
                out[..., dst].addcmul_(x[..., src], weight[:, k, None])
        ctx.save_for_backward(x, weight)
        ctx.offsets = offsets
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
        for k, offset in enumerate(ctx.offsets):
            dst, src = _tap_slices_between(grad_out.shape[-1], x.shape[-1], offset)
            if dst is None:
                continue
            if grad_x is not None:
                grad_x[..., src].addcmul_(grad_out[..., dst], weight[:, k, None])
            if grad_weight is not None:
                grad_weight[:, k] = torch.einsum("bct,bct->c", grad_out[..., dst], x[..., src])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=(0, 2))
        return grad_x, grad_weight, grad_bias, None, None


def _tap_slices_between(out_length: int, in_length: int, offset: int) -> tuple[slice | None, slice]:
    """``(dst, src)``: output positions ``t`` whose input ``t + offset`` exists."""
    start = max(0, -offset)
    stop = min(out_length, in_length - offset)
    if stop <= start:
        return None, slice(0, 0)
    return slice(start, stop), slice(start + offset, stop + offset)


class DepthwiseConv1d(nn.Conv1d):
    """``nn.Conv1d(channels, channels, kernel_size, dilation=d, groups=channels,
    padding=p)`` with stride 1 and zero padding, computed tap by tap.

    Same parameters, state dict and output as the ``nn.Conv1d`` it subclasses (so
    checkpoints, parameter counts and Asteroid weight loading are unchanged); only the
    arithmetic differs. ``[batch, channels, time] -> [batch, channels, time + 2p -
    d (k - 1)]``.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__(
            channels, channels, kernel_size, dilation=dilation, padding=padding, groups=channels, bias=bias
        )

    @property
    def tap_offsets(self) -> tuple[int, ...]:
        """Per tap, where an output frame ``t`` reads the unpadded input: ``t + offset``."""
        (pad,), (dilation,), (kernel,) = self.padding, self.dilation, self.kernel_size
        return tuple(k * dilation - pad for k in range(kernel))

    def forward(self, x: Tensor) -> Tensor:
        (pad,), (dilation,), (kernel,) = self.padding, self.dilation, self.kernel_size
        out_length = x.shape[-1] + 2 * pad - dilation * (kernel - 1)
        # Under autocast x arrives in the low-precision dtype; compute in it, as conv would.
        weight = self.weight.squeeze(1).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return _DepthwiseShiftConv.apply(x, weight, bias, self.tap_offsets, out_length)

    def channels_last_into(self, x: Tensor, out: Tensor) -> Tensor:
        """Inference on the channels-last layout: the first ``frames`` outputs of
        :meth:`forward` for ``x`` ``[batch, frames, channels]``, written into ``out`` of the
        same shape (all of them unless the padding is causal, where the block keeps
        exactly these)."""
        offsets = self.tap_offsets
        # [kernel, channels]: each tap's weights contiguous, as the channels of x are (a
        # strided broadcast operand would take the elementwise kernels off their vector path)
        weight = self.weight[:, 0, :].T.contiguous()
        frames = x.shape[1]
        # the tap without offset first: it writes every output frame, bias included
        if 0 in offsets:
            torch.mul(x, weight[offsets.index(0)], out=out)
            if self.bias is not None:
                out += self.bias
        elif self.bias is not None:
            out.copy_(self.bias.expand_as(out))
        else:
            out.zero_()
        for tap, offset in enumerate(offsets):
            dst, src = _tap_slices_between(frames, frames, offset)
            if offset != 0 and dst is not None:
                out[:, dst].addcmul_(x[:, src], weight[tap])
        return out
