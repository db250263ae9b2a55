"""The fused SSC layer as the custom ops ``torch.ops.sepkit.ssc`` / ``sepkit::ssc_backward``
(schema, fake implementations for torch.compile, autograd registration).

The op runs the Triton kernels (:mod:`sepkit.ops.ssc_triton`, imported on first use) when
:func:`sepkit.ops.ssc_backend.resolve_backend` picks them, and the reference math
(:mod:`sepkit.ops.ssc_pytorch`) otherwise, so it runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepkit.ops.ssc_backend import resolve_backend
from sepkit.ops.ssc_layout import output_shape
from sepkit.ops.ssc_pytorch import ssc_reference, ssc_reference_backward


@torch.library.custom_op("sepkit::ssc", mutates_args=())
def ssc_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    linear_first: bool,
    channels_last: bool,
) -> Tensor:
    """Fused SSC forward (see :func:`ssc_reference` for shapes)."""
    if resolve_backend(x) == "triton":
        from sepkit.ops import ssc_triton

        return ssc_triton.ssc_forward(x, weight, bias, kernel_size, dilation, stride, linear_first, channels_last)
    with torch.no_grad():
        y = ssc_reference(x, weight, bias, kernel_size, dilation, stride, linear_first, channels_last)
    return y.contiguous()


@ssc_op.register_fake
def _ssc_op_fake(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    linear_first: bool,
    channels_last: bool,
) -> Tensor:
    return x.new_empty(output_shape(x.shape, weight.shape[0], stride, channels_last))


@torch.library.custom_op("sepkit::ssc_backward", mutates_args=())
def ssc_backward_op(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    linear_first: bool,
    channels_last: bool,
    need_input_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`ssc_op`; a gradient that is not needed
    (or ``dbias`` without bias) comes back as an empty tensor."""
    if resolve_backend(x) == "triton":
        from sepkit.ops import ssc_triton

        return ssc_triton.ssc_backward(
            grad_out,
            x,
            weight,
            has_bias,
            kernel_size,
            dilation,
            stride,
            linear_first,
            channels_last,
            need_input_grad,
            need_weight_grad,
        )
    dx, dw, db = ssc_reference_backward(
        grad_out, x, weight, has_bias, kernel_size, dilation, stride, linear_first, channels_last
    )
    empty = grad_out.new_empty(0)
    return (
        dx.contiguous() if need_input_grad else empty,
        dw.contiguous() if need_weight_grad else empty,
        db if db is not None else empty,
    )


@ssc_backward_op.register_fake
def _ssc_backward_fake(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
    kernel_size: list[int],
    dilation: list[int],
    stride: list[int],
    linear_first: bool,
    channels_last: bool,
    need_input_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    empty = grad_out.new_empty(0)
    return (
        x.new_empty(x.shape) if need_input_grad else empty,
        weight.new_empty(weight.shape) if need_weight_grad else empty,
        weight.new_empty(weight.shape[0]) if has_bias else empty,
    )


def _ssc_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, kernel_size, dilation, stride, linear_first, channels_last = inputs
    ctx.save_for_backward(x, weight)
    ctx.config = (  # type: ignore[attr-defined]
        bias is not None,
        kernel_size,
        dilation,
        stride,
        linear_first,
        channels_last,
    )


def _ssc_autograd_backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
    has_bias, kernel_size, dilation, stride, linear_first, channels_last = ctx.config  # type: ignore[attr-defined]
    need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
    dx, dw, db = ssc_backward_op(
        grad_out.contiguous(),
        x,
        weight,
        has_bias,
        kernel_size,
        dilation,
        stride,
        linear_first,
        channels_last,
        need_x,
        need_w,
    )
    return (
        dx if need_x else None,
        dw if need_w else None,
        db if (has_bias and need_b) else None,
        None,
        None,
        None,
        None,
        None,
    )


ssc_op.register_autograd(_ssc_autograd_backward, setup_context=_ssc_setup_context)
