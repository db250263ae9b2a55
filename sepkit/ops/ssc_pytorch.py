"""Plain-PyTorch reference of the SSC relative context and the SSC layer (runs on any device).

Relative context (paper §3, Figure 3; the group split and offsets ``s_i`` are in
:mod:`sepkit.ops.ssc_layout`)::

    out[c, t] = x[c, t] - x[c, t + s_i]    if s_i != 0 and 0 <= t + s_i < L
    out[c, t] = x[c, t]                    otherwise (zero offset, or shifted out of bounds)

so the group with offset -1 sees the previous element; with several spatial axes a
position is copied unchanged when the shifted position falls outside the grid on any axis.

The SSC layer is ``Y = W . rc(X) + b`` followed by keeping every ``stride``-th position
(output length ``ceil(L / stride)`` per axis); with ``linear_first`` it is
``Y = rc(W . X) + b`` (the relative context then splits the *output* channels; the bias is
added after it so that the subtraction does not cancel it).

Three forms: :func:`ssc_reference`, the autograd composition whose relative context is the
custom op ``torch.ops.sepkit.relative_context`` (torch.compile traces it without a graph
break); :class:`SSCEagerFunction`, a memory-lean autograd function for the plain layer in
eager mode; :func:`ssc_reference_backward`, explicit gradients without autograd (the
fused op's CPU path and the Triton kernels' oracle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sepkit.ops.ssc_layout import IntOrTuple, Offsets, adjoint_offsets, as_tuple, group_bounds, group_offsets

# ---------------------------------------------------------------------------------------
# Reference relative context
# ---------------------------------------------------------------------------------------


def _interior(length: int, shift: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` whose shifted partner ``t + shift`` lies inside ``[0, length)``."""
    lo = min(max(0, -shift), length)
    hi = max(min(length, length - shift), lo)
    return lo, hi


def _group_run_view(
    t: Tensor,
    channel_dim: int,
    time_dim: int,
    c_start: int,
    n_run: int,
    size: int,
    time_start: int,
    n: int,
    time_step: int,
) -> Tensor | None:
    """View of ``t`` with ``n_run * size`` channels from ``c_start`` unflattened to
    (group, member) and ``n`` time steps: element (g, j, i) is
    ``t[c_start + g * size + j, time_start + g * time_step + i]``. None when that needs a
    negative stride (which ``as_strided`` refuses)."""
    v = t.narrow(channel_dim, c_start, n_run * size).unflatten(channel_dim, (n_run, size))
    unflat_time_dim = time_dim + (time_dim > channel_dim)
    sizes, strides = list(v.shape), list(v.stride())
    sizes[unflat_time_dim] = n
    strides[channel_dim] = 0 if n_run == 1 else strides[channel_dim] + time_step * t.stride(time_dim)
    if strides[channel_dim] < 0:
        return None
    return v.as_strided(sizes, strides, v.storage_offset() + time_start * t.stride(time_dim))


def _relative_context_1d_runs(
    x: Tensor, channel_dim: int, spatial_dims: tuple[int, ...], offsets: Offsets, out: Tensor
) -> bool:
    """One-axis fast path with a number of ops that does not grow with K except for the
    thin boundary bands; returns False (nothing written) when it does not apply.

    The offsets ``s_g = s_0 + g * step`` are linear in the group index, so for a run of
    equally sized groups (at most two runs: ``C % K`` groups of ``m + 1`` channels, the rest
    of ``m``) the positions and their partners each form one strided view, and the run is
    one subtraction. Moving one group on moves ``m`` channels and, in the *output-anchored*
    view, ``step`` time steps for the partner: output ``t`` for every group, partners
    ``t + s_g``, ``t`` in ``[R, L - R)`` (``R`` the largest shift). When ``step`` is negative
    and the channels are the densest axis (channels-last adjoints), that view would need a
    negative group stride, so the run is *partner-anchored* instead: partners ``p`` in
    ``[R, L - R)`` for every group, outputs ``p - s_g``; every group then covers a slightly
    different output range. Positions a run does not cover lie in a band at most ``2R``
    wide at either end: the band is copied first and each group's band positions that do
    have a partner are subtracted afterwards (small ops); the zero-offset group, which the
    run subtracted from itself, is copied last.
    """
    n_groups = len(offsets)
    if len(spatial_dims) != 1 or n_groups < 2:
        return False
    shifts = [offset[0] for offset in offsets]
    step = shifts[1] - shifts[0]
    if any(shift != shifts[0] + g * step for g, shift in enumerate(shifts)):
        return False
    (time_dim,) = spatial_dims
    length = x.shape[time_dim]
    reach = max(abs(shift) for shift in shifts)
    channels = x.shape[channel_dim]
    base, extra = divmod(channels, n_groups)
    runs = [(g0, g1, size) for g0, g1, size in ((0, extra, base + 1), (extra, n_groups, base)) if g1 > g0 and size > 0]
    n = length - 2 * reach
    for partner_anchored in (False, True):
        # The run writes group g's outputs [reach - anchor[g], length - reach - anchor[g]).
        anchor = shifts if partner_anchored else [0] * n_groups
        head, tail = reach - min(anchor), reach + max(anchor)
        if n <= 0 or head + tail >= length:
            return False
        views = []
        for g0, g1, size in runs:
            c_start = g0 * (base + 1)  # g0 is 0 or extra
            out_start, out_step = reach - anchor[g0], -step if partner_anchored else 0
            part_start, part_step = out_start + shifts[g0], 0 if partner_anchored else step
            args = (channel_dim, time_dim, c_start, g1 - g0, size)
            centre = _group_run_view(x, *args, out_start, n, out_step)
            target = _group_run_view(out, *args, out_start, n, out_step)
            partner = _group_run_view(x, *args, part_start, n, part_step)
            if centre is None or target is None or partner is None:
                break
            views.append((centre, partner, target))
        else:
            break
    else:
        return False
    out.narrow(time_dim, 0, head).copy_(x.narrow(time_dim, 0, head))
    out.narrow(time_dim, length - tail, tail).copy_(x.narrow(time_dim, length - tail, tail))
    for centre, partner, target in views:
        torch.sub(centre, partner, out=target)
    for (c0, c1), shift, a in zip(group_bounds(channels, n_groups), shifts, anchor):
        src = x.narrow(channel_dim, c0, c1 - c0)
        dst = out.narrow(channel_dim, c0, c1 - c0)
        if shift == 0:
            dst.narrow(time_dim, reach, n).copy_(src.narrow(time_dim, reach, n))
            continue
        lo, hi = _interior(length, shift)
        for start, stop in ((lo, reach - a), (length - reach - a, hi)):
            if stop > start:
                torch.sub(
                    src.narrow(time_dim, start, stop - start),
                    src.narrow(time_dim, start + shift, stop - start),
                    out=dst.narrow(time_dim, start, stop - start),
                )
    return True


def _apply_relative_context(
    x: Tensor,
    channel_dim: int,
    spatial_dims: tuple[int, ...],
    offsets: Offsets,
    out: Tensor | None = None,
) -> Tensor:
    """Relative context with explicit per-group offsets. ``out`` (same shape as ``x``, not
    overlapping it) receives the result if given.

    Few large ops rather than many small ones: first the boundary band of every spatial
    axis (as wide as the largest shift on it) is copied for all channels at once, then each
    group's interior box is overwritten by one subtraction. A position outside its group's
    interior lies in that band, so it keeps the copied input, as the definition says.
    """
    if out is None:
        out = torch.empty_like(x)
    if _relative_context_1d_runs(x, channel_dim, spatial_dims, offsets, out):
        return out
    lengths = [x.shape[d] for d in spatial_dims]
    reach = [max(abs(offset[j]) for offset in offsets) for j in range(len(spatial_dims))]
    for dim, length, band in zip(spatial_dims, lengths, reach):
        if 2 * band >= length:
            out.copy_(x)
            break
        if band > 0:
            out.narrow(dim, 0, band).copy_(x.narrow(dim, 0, band))
            out.narrow(dim, length - band, band).copy_(x.narrow(dim, length - band, band))
    for (c0, c1), offset in zip(group_bounds(x.shape[channel_dim], len(offsets)), offsets):
        if c1 == c0:
            continue
        src = x.narrow(channel_dim, c0, c1 - c0)
        dst = out.narrow(channel_dim, c0, c1 - c0)
        if not any(offset):
            dst.copy_(src)
            continue
        ranges = [_interior(n, shift) for n, shift in zip(lengths, offset)]
        if any(hi == lo for lo, hi in ranges):
            continue  # no interior: the whole group lies in the copied band
        centre, partner, target = src, src, dst
        for dim, shift, (lo, hi) in zip(spatial_dims, offset, ranges):
            centre = centre.narrow(dim, lo, hi - lo)
            partner = partner.narrow(dim, lo + shift, hi - lo)
            target = target.narrow(dim, lo, hi - lo)
        torch.sub(centre, partner, out=target)
    return out


@torch.library.custom_op("sepkit::relative_context", mutates_args=())
def relative_context_op(
    x: Tensor,
    channel_dim: int,
    spatial_dims: list[int],
    kernel_size: list[int],
    dilation: list[int],
    adjoint: bool,
) -> Tensor:
    """The relative context (``adjoint``: its transpose, the same split with negated
    offsets) as an opaque op: torch.compile keeps the strided in-place implementation as
    one call in its graph instead of breaking the graph at it, and autograd uses the
    transpose for the gradient."""
    offsets = group_offsets(tuple(kernel_size), tuple(dilation))
    if adjoint:
        offsets = adjoint_offsets(offsets)
    return _apply_relative_context(x, channel_dim, tuple(spatial_dims), offsets)


@relative_context_op.register_fake
def _relative_context_op_fake(
    x: Tensor,
    channel_dim: int,
    spatial_dims: list[int],
    kernel_size: list[int],
    dilation: list[int],
    adjoint: bool,
) -> Tensor:
    return torch.empty_like(x)


def _relative_context_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.layout = inputs[1:]  # type: ignore[attr-defined]


def _relative_context_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
    channel_dim, spatial_dims, kernel_size, dilation, adjoint = ctx.layout  # type: ignore[attr-defined]
    return (
        relative_context_op(grad, channel_dim, spatial_dims, kernel_size, dilation, not adjoint),
        None,
        None,
        None,
        None,
        None,
    )


relative_context_op.register_autograd(_relative_context_backward, setup_context=_relative_context_setup_context)


def relative_context(
    x: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    *,
    channel_dim: int = 1,
    spatial_dims: Sequence[int] | None = None,
) -> Tensor:
    """Relative context of paper §3 (plain PyTorch reference, differentiable).

    Args:
        x: ``[batch, channels, *spatial]`` by default; any layout with ``channel_dim`` and
            ``spatial_dims`` given (channels-last sequences: ``channel_dim=-1,
            spatial_dims=(-2,)``).
        kernel_size: K per spatial axis (an int applies to every axis); the channels are
            split into ``prod(kernel_size)`` groups.
        dilation: spacing of the offsets per spatial axis.
        channel_dim: the axis that is split into groups.
        spatial_dims: the axes that are shifted; default every axis after ``channel_dim``.

    Returns:
        Tensor of the shape of ``x``.
    """
    ndim = x.dim()
    channel_dim = channel_dim % ndim
    if spatial_dims is None:
        spatial_dims = tuple(range(channel_dim + 1, ndim))
    dims = tuple(d % ndim for d in spatial_dims)
    if not dims or channel_dim in dims or len(set(dims)) != len(dims):
        raise ValueError(
            f"relative_context: bad axes (channel_dim={channel_dim}, spatial_dims={spatial_dims}) "
            f"for an input of shape {tuple(x.shape)}"
        )
    kernel = as_tuple(kernel_size, len(dims), "kernel_size")
    dil = as_tuple(dilation, len(dims), "dilation")
    n_groups = math.prod(kernel)
    if n_groups > x.shape[channel_dim]:
        raise ValueError(
            f"relative_context: K = {n_groups} groups need at least {n_groups} channels, got {x.shape[channel_dim]}"
        )
    return relative_context_op(x, channel_dim, list(dims), list(kernel), list(dil), False)


# ---------------------------------------------------------------------------------------
# Reference SSC layer
# ---------------------------------------------------------------------------------------


def _layer_axes(ndim: int, n_spatial: int, channels_last: bool) -> tuple[int, tuple[int, ...]]:
    """(channel axis, spatial axes) of a ``[batch, C, *S]`` or ``[batch, *S, C]`` tensor."""
    if channels_last:
        return ndim - 1, tuple(range(ndim - 1 - n_spatial, ndim - 1))
    return 1, tuple(range(2, 2 + n_spatial))


def _downsample(x: Tensor, spatial_dims: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Keep positions 0, S, 2S, ... on every spatial axis."""
    if all(s == 1 for s in stride):
        return x
    index: list[slice] = [slice(None)] * x.dim()
    for dim, s in zip(spatial_dims, stride):
        index[dim] = slice(None, None, s)
    return x[tuple(index)]


def _apply_weight(x: Tensor, weight: Tensor, bias: Tensor | None, channels_last: bool) -> Tensor:
    """The pointwise linear map over the channel axis: ``[.., C, ..] -> [.., O, ..]``."""
    if channels_last:
        return F.linear(x, weight, bias)
    batch, channels = x.shape[:2]
    flat = x.reshape(batch, channels, -1)
    if bias is None:
        # bmm on the expanded weight: torch.matmul would fold the batch into the rows of a
        # transposed copy of the activations.
        y = torch.bmm(weight.expand(batch, -1, -1), flat)
    else:
        # baddbmm fuses the bias into the GEMM instead of a second pass over Y.
        y = torch.baddbmm(
            bias.view(1, -1, 1).expand(batch, -1, flat.shape[2]),
            weight.expand(batch, -1, -1),
            flat,
        )
    return y.view(batch, weight.shape[0], *x.shape[2:])


def ssc_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    linear_first: bool = False,
    channels_last: bool = False,
) -> Tensor:
    """SSC layer in plain PyTorch (differentiable).

    Args:
        x: ``[batch, in_channels, *spatial]`` or, with ``channels_last``,
            ``[batch, *spatial, in_channels]``; ``len(spatial) == len(kernel_size)``.
        weight: ``[out_channels, in_channels]``. bias: ``[out_channels]`` or None.
        kernel_size, dilation, stride: one entry per spatial axis.

    Returns:
        ``[batch, out_channels, *ceil(spatial / stride)]`` (channels last likewise).
    """
    channel_dim, spatial_dims = _layer_axes(x.dim(), len(kernel_size), channels_last)
    if linear_first:
        z = _apply_weight(x, weight, None, channels_last)
        y = _downsample(
            relative_context(z, kernel_size, dilation, channel_dim=channel_dim, spatial_dims=spatial_dims),
            spatial_dims,
            tuple(stride),
        )
        if bias is None:
            return y
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        return y + bias.view(shape)
    r = relative_context(x, kernel_size, dilation, channel_dim=channel_dim, spatial_dims=spatial_dims)
    return _apply_weight(_downsample(r, spatial_dims, tuple(stride)), weight, bias, channels_last)


def _contract(a: Tensor, b: Tensor, channel_dim: int) -> Tensor:
    """``sum over every axis but channel_dim of a[.., i, ..] * b[.., j, ..]`` -> ``[i, j]``."""
    if channel_dim == 1:
        # Channels first: one GEMM per batch item, no transposed copy of the inputs.
        a3 = a.reshape(a.shape[0], a.shape[1], -1)
        b3 = b.reshape(b.shape[0], b.shape[1], -1)
        return torch.bmm(a3, b3.transpose(1, 2)).sum(0)
    a2 = a.reshape(-1, a.shape[channel_dim])
    b2 = b.reshape(-1, b.shape[channel_dim])
    return a2.t() @ b2


def ssc_reference_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    linear_first: bool = False,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Explicit gradients ``(dx, dweight, dbias)`` of :func:`ssc_reference` (no autograd, so
    it also runs inside the custom op, below the autograd dispatch key).

    With ``dYu`` the output gradient scattered back onto the input grid (zero between the
    kept positions) and ``rc^T`` the relative context with negated offsets:
    plain ``dX = rc^T(W^T dYu)``, ``dW = dY . downsample(rc(X))^T``;
    ``linear_first``: ``dX = W^T rc^T(dYu)``, ``dW = rc^T(dYu) . X^T``; ``db = sum dY``.
    """
    channel_dim, spatial_dims = _layer_axes(x.dim(), len(kernel_size), channels_last)
    adjoint = adjoint_offsets(group_offsets(tuple(kernel_size), tuple(dilation)))
    upsampled_shape = list(x.shape)
    upsampled_shape[channel_dim] = weight.shape[0]
    grad_up = grad_out.new_zeros(upsampled_shape)
    _downsample(grad_up, spatial_dims, tuple(stride)).copy_(grad_out)
    if linear_first:
        grad_z = _apply_relative_context(grad_up, channel_dim, spatial_dims, adjoint)
        dx = _apply_weight(grad_z, weight.t(), None, channels_last)
        dw = _contract(grad_z, x, channel_dim)
    else:
        grad_r = _apply_weight(grad_up, weight.t(), None, channels_last)
        dx = _apply_relative_context(grad_r, channel_dim, spatial_dims, adjoint)
        r = _apply_relative_context(x, channel_dim, spatial_dims, group_offsets(tuple(kernel_size), tuple(dilation)))
        dw = _contract(grad_out, _downsample(r, spatial_dims, tuple(stride)), channel_dim)
    if not has_bias:
        return dx, dw, None
    return dx, dw, grad_out.sum(dim=[d for d in range(grad_out.dim()) if d != channel_dim])


class SSCEagerFunction(torch.autograd.Function):
    """Eager reference of the plain SSC layer (relative context first) that needs one
    activation-sized buffer fewer than the autograd composition: ``rc(X)`` is saved for
    ``dW`` and, once ``dW`` is formed, its buffer receives ``dX``. A second backward
    through the same graph (``retain_graph=True``) therefore fails with autograd's
    in-place modification error; :func:`ssc_reference` has no such restriction."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        channels_last: bool,
    ) -> Tensor:
        channel_dim, spatial_dims = _layer_axes(x.dim(), len(kernel_size), channels_last)
        offsets = group_offsets(kernel_size, dilation)
        r = _apply_relative_context(x, channel_dim, spatial_dims, offsets)
        ctx.save_for_backward(r, weight)
        ctx.layout = (channel_dim, spatial_dims, offsets, stride, channels_last)  # type: ignore[attr-defined]
        return _apply_weight(_downsample(r, spatial_dims, stride), weight, bias, channels_last)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        r, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        channel_dim, spatial_dims, offsets, stride, channels_last = ctx.layout  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        dw = _contract(grad_out, _downsample(r, spatial_dims, stride), channel_dim) if need_w else None
        db = grad_out.sum(dim=[d for d in range(grad_out.dim()) if d != channel_dim]) if need_b else None
        dx = None
        if need_x:
            grad_r = _apply_weight(grad_out, weight.t(), None, channels_last)
            if any(s > 1 for s in stride):
                scattered = grad_r.new_zeros(r.shape)
                _downsample(scattered, spatial_dims, stride).copy_(grad_r)
                grad_r = scattered
            dx = _apply_relative_context(grad_r, channel_dim, spatial_dims, adjoint_offsets(offsets), out=r)
        return dx, dw, db, None, None, None, None
