"""Fused Triton kernels for the SSC layer (forward and backward), dispatched to by
:mod:`sepkit.ops.ssc_op`; the group layout comes from :mod:`sepkit.ops.ssc_layout`, the only
sepkit module this one imports.

Every SSC product is one of two GEMM shapes with the relative context folded into a load:

``_ssc_mm_kernel``  ``out[b, n, m] = sum_k A[n, k] * rcV[b, k, m] (+ bias[n])``
    ``rcV[k, m] = V[k, m] - V[k, m + shift]`` (masked at the grid edge), computed while the
    V tile is loaded. The shift is either per reduction channel ``k`` (read from a table)
    or per output channel ``n``; in the second case each program's ``n`` tile lies inside
    one channel group so the shift is uniform over the tile and the shifted V tile can be
    shared by all its columns. Uses:

    * forward ``Y = W . rc(X) + b``: A = W, V = X, shift per k (input channel);
    * forward ``linear_first``, ``Y = rc(W . X) + b = W_g . rc_g(X)`` for each output group
      g: A = W, V = X, shift per n (output channel);
    * ``dX = rc^T(W^T . dY)``: A = W^T, V = dY read on the input grid (zero off the stride
      grid), adjoint shift ``-s`` per n (input channel). Applying the adjoint shift to the
      operand rather than in an epilogue keeps the FLOP count of a plain GEMM;
    * ``linear_first`` ``dX = W^T . rc^T(dY)``: shift per k (output channel).

``_ssc_wgrad_kernel``  ``dW[o, c] = sum_{b, m} P[b, o, m] * R[b, c, m]``
    split over ``(batch, positions)`` blocks into fp32 partial sums; either R = rc(X) with a
    shift per c (plain SSC) or P = rc^T(dY) with a shift per o (``linear_first``). The
    programs of the first c tile also sum dY for ``db``.

Spatial layout: one or two spatial axes, viewed as a logical ``H x W`` input grid (1-D:
``H = 1``) flattened to positions ``h * W + w``; the strided output grid is
``ceil(H / SH) x ceil(W / SW)``. A tensor is addressed as ``base + b * s_batch +
channel * s_channel + position * s_position``, which covers channels-first
(``[B, C, H, W]``) and channels-last (``[B, H, W, C]``) contiguous layouts alike.

Accumulation is fp32; fp16/bf16 operands feed the tensor cores directly. The difference
``V[m] - V[m + s]`` is formed in fp32 and rounded to the operand dtype, exactly like the
reference does. Under ``TRITON_INTERPRET=1`` bf16 operands are widened to fp32 before
``tl.dot`` because the interpreter multiplies bf16 bit patterns as integers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from sepkit.ops.ssc_layout import group_bounds, group_offsets

INTERPRETED = bool(triton.knobs.runtime.interpret)


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------


@triton.jit
def _load_positions(ptr, rows, h, w, mask, W, WO, SH, SW, s_channel, s_position, SOURCE_STRIDED: tl.constexpr):
    """Load ``ptr[rows, (h, w)]`` (logical input-grid coordinates). A strided source is
    stored on the output grid only and reads as zero off it."""
    if SOURCE_STRIDED:
        mask = mask & (h % SH == 0) & (w % SW == 0)
        position = (h // SH) * WO + (w // SW)
    else:
        position = h * W + w
    position = tl.where(mask, position, 0)
    return tl.load(ptr + rows * s_channel + position * s_position, mask=mask, other=0.0)


@triton.jit
def _load_context(
    ptr, rows, h, w, shift_h, shift_w, mask, H, W, WO, SH, SW, s_channel, s_position, SOURCE_STRIDED: tl.constexpr
):
    """``(V[rows, p], V[rows, p + shift])`` in fp32; the second is zero where the shift is
    zero or leaves the grid, so ``centre - shifted`` is the relative context."""
    centre = _load_positions(ptr, rows, h, w, mask, W, WO, SH, SW, s_channel, s_position, SOURCE_STRIDED)
    hs = h + shift_h
    ws = w + shift_w
    # Compared elementwise (not as ``shift != 0``): a scalar shift would make a 0-d mask,
    # which the interpreter combines into an int32 mask that tl.load rejects.
    inside = (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W) & ((hs != h) | (ws != w))
    shifted = _load_positions(ptr, rows, hs, ws, mask & inside, W, WO, SH, SW, s_channel, s_position, SOURCE_STRIDED)
    return centre.to(tl.float32), shifted.to(tl.float32)


@triton.jit
def _ssc_mm_kernel(
    v_ptr,
    a_ptr,
    bias_ptr,
    out_ptr,
    k_shift_ptr,
    n_tile_ptr,
    M,
    K,
    H,
    W,
    WO,
    SH,
    SW,
    v_s_batch,
    v_s_channel,
    v_s_position,
    a_s_n,
    a_s_k,
    o_s_batch,
    o_s_channel,
    o_s_position,
    M_ON_OUTPUT_GRID: tl.constexpr,
    SOURCE_STRIDED: tl.constexpr,
    SHIFT_ON_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    # n tiles come from a table: [start, end, shift_h, shift_w] per tile.
    n_start = tl.load(n_tile_ptr + pid_n * 4)
    n_end = tl.load(n_tile_ptr + pid_n * 4 + 1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < n_end
    if M_ON_OUTPUT_GRID:
        h = (offs_m // WO) * SH
        w = (offs_m % WO) * SW
    else:
        h = offs_m // W
        w = offs_m % W
    v_base = v_ptr + pid_b * v_s_batch
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(
            a_ptr + offs_k[:, None] * a_s_k + offs_n[None, :] * a_s_n, mask=k_mask[:, None] & n_mask[None, :], other=0.0
        )
        if SHIFT_ON_N:
            shift_h = tl.load(n_tile_ptr + pid_n * 4 + 2)
            shift_w = tl.load(n_tile_ptr + pid_n * 4 + 3)
        else:
            shift_h = tl.load(k_shift_ptr + offs_k * 2, mask=k_mask, other=0)[None, :]
            shift_w = tl.load(k_shift_ptr + offs_k * 2 + 1, mask=k_mask, other=0)[None, :]
        centre, shifted = _load_context(
            v_base,
            offs_k[None, :],
            h[:, None],
            w[:, None],
            shift_h,
            shift_w,
            m_mask[:, None] & k_mask[None, :],
            H,
            W,
            WO,
            SH,
            SW,
            v_s_channel,
            v_s_position,
            SOURCE_STRIDED,
        )
        v = (centre - shifted).to(a.dtype)
        if UPCAST_DOT:
            acc = tl.dot(v.to(tl.float32), a.to(tl.float32), acc)
        else:
            acc = tl.dot(v, a, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + pid_b * o_s_batch + offs_n[None, :] * o_s_channel + offs_m[:, None] * o_s_position
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _ssc_wgrad_kernel(
    p_ptr,
    r_ptr,
    p_shift_ptr,
    r_shift_ptr,
    dw_ptr,
    db_ptr,
    N_P,
    N_R,
    M,
    BLOCKS_PER_SPLIT,
    TOTAL_BLOCKS,
    H,
    W,
    WO,
    SH,
    SW,
    p_s_batch,
    p_s_channel,
    p_s_position,
    r_s_batch,
    r_s_channel,
    r_s_position,
    M_ON_OUTPUT_GRID: tl.constexpr,
    SHIFT_P: tl.constexpr,
    SHIFT_R: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_split = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    p_mask = offs_p < N_P
    r_mask = offs_r < N_R
    if SHIFT_P:
        p_sh = tl.load(p_shift_ptr + offs_p * 2, mask=p_mask, other=0)[:, None]
        p_sw = tl.load(p_shift_ptr + offs_p * 2 + 1, mask=p_mask, other=0)[:, None]
    else:
        p_sh = 0
        p_sw = 0
    if SHIFT_R:
        r_sh = tl.load(r_shift_ptr + offs_r * 2, mask=r_mask, other=0)[None, :]
        r_sw = tl.load(r_shift_ptr + offs_r * 2 + 1, mask=r_mask, other=0)[None, :]
    else:
        r_sh = 0
        r_sw = 0
    m_blocks = tl.cdiv(M, BLOCK_M)
    first = pid_split * BLOCKS_PER_SPLIT
    last = tl.minimum(first + BLOCKS_PER_SPLIT, TOTAL_BLOCKS)
    acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for block in range(first, last):
        batch = (block // m_blocks).to(tl.int64)
        offs_m = (block % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        if M_ON_OUTPUT_GRID:
            h = (offs_m // WO) * SH
            w = (offs_m % WO) * SW
        else:
            h = offs_m // W
            w = offs_m % W
        # P is dY: stored on the output grid, hence a strided source.
        p_centre, p_shifted = _load_context(
            p_ptr + batch * p_s_batch,
            offs_p[:, None],
            h[None, :],
            w[None, :],
            p_sh,
            p_sw,
            p_mask[:, None] & m_mask[None, :],
            H,
            W,
            WO,
            SH,
            SW,
            p_s_channel,
            p_s_position,
            True,
        )
        r_centre, r_shifted = _load_context(
            r_ptr + batch * r_s_batch,
            offs_r[None, :],
            h[:, None],
            w[:, None],
            r_sh,
            r_sw,
            m_mask[:, None] & r_mask[None, :],
            H,
            W,
            WO,
            SH,
            SW,
            r_s_channel,
            r_s_position,
            False,
        )
        p = (p_centre - p_shifted).to(p_ptr.dtype.element_ty)
        r = (r_centre - r_shifted).to(r_ptr.dtype.element_ty)
        if UPCAST_DOT:
            acc = tl.dot(p.to(tl.float32), r.to(tl.float32), acc)
        else:
            acc = tl.dot(p, r, acc, input_precision=PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(p_centre, axis=1)
    dw_ptrs = dw_ptr + pid_split * N_P * N_R + offs_p[:, None] * N_R + offs_r[None, :]
    tl.store(dw_ptrs, acc, mask=p_mask[:, None] & r_mask[None, :])
    if HAS_BIAS:
        if pid_r == 0:
            tl.store(db_ptr + pid_split * N_P + offs_p, bias_acc, mask=p_mask)


# ---------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------


class _Grid:
    """Canonical 2-D view of the spatial axes of one SSC call."""

    def __init__(
        self, spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int], stride: Sequence[int]
    ) -> None:
        if len(spatial) not in (1, 2):
            raise NotImplementedError(f"the Triton SSC kernels support 1 or 2 spatial axes, got {len(spatial)}")
        pad = 2 - len(spatial)
        self.H, self.W = (1,) * pad + tuple(spatial)
        self.SH, self.SW = (1,) * pad + tuple(stride)
        self.HO, self.WO = -(-self.H // self.SH), -(-self.W // self.SW)
        self.kernel_size = tuple(kernel_size)
        self.offsets = tuple((0,) * pad + off for off in group_offsets(kernel_size, dilation))

    @property
    def positions(self) -> int:
        return self.H * self.W

    @property
    def out_positions(self) -> int:
        return self.HO * self.WO


@functools.lru_cache(maxsize=256)
def _channel_shift_table(channels: int, offsets: tuple, sign: int, device: torch.device) -> Tensor:
    """int32 ``[channels, 2]``: the (h, w) shift of each channel's group, times ``sign``."""
    table = torch.zeros(channels, 2, dtype=torch.int32)
    for (c0, c1), (dh, dw) in zip(group_bounds(channels, len(offsets)), offsets):
        table[c0:c1, 0] = sign * dh
        table[c0:c1, 1] = sign * dw
    return table.to(device)


@functools.lru_cache(maxsize=256)
def _tile_table(channels: int, block: int, offsets: tuple | None, sign: int, device: torch.device) -> Tensor:
    """int32 ``[tiles, 4]`` of ``(start, end, shift_h, shift_w)``: plain tiles of ``block``
    channels, or (``offsets`` given) tiles cut inside each channel group."""
    rows = []
    if offsets is None:
        rows = [(s, min(s + block, channels), 0, 0) for s in range(0, channels, block)]
    else:
        for (c0, c1), (dh, dw) in zip(group_bounds(channels, len(offsets)), offsets):
            rows += [(s, min(s + block, c1), sign * dh, sign * dw) for s in range(c0, c1, block)]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 4).to(device)


def _pow2_between(value: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(1, value))))


def _dot_settings(dtype: torch.dtype) -> tuple[bool, str]:
    """(widen operands before tl.dot, tl.dot input precision) for an operand dtype."""
    upcast = INTERPRETED and dtype == torch.bfloat16
    if dtype == torch.float32:
        return upcast, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return upcast, "tf32"


def _mm_blocks(m: int, n_block_hint: int, k: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)."""
    if INTERPRETED:
        # numpy emulation: the smallest tiles tl.dot accepts keep the tests fast.
        return 16, _pow2_between(n_block_hint, 16, 16), 16, 1
    block_n = _pow2_between(n_block_hint, 16, 128)
    block_k = 32 if dtype == torch.float32 else 64
    block_m = 128 if m >= 128 else 64
    return block_m, block_n, block_k, 8 if block_m * block_n >= 128 * 128 else 4


def _check_device(*tensors: Tensor) -> None:
    for t in tensors:
        if not t.is_cuda and not INTERPRETED:
            raise RuntimeError(
                "sepkit SSC Triton kernels got a CPU tensor; they run on CPU only under "
                "TRITON_INTERPRET=1 (set it before importing sepkit.ops.ssc_triton)"
            )


def _layout_strides(t: Tensor, channels_last: bool) -> tuple[int, int, int]:
    """(batch, channel, position) strides of a contiguous SSC tensor."""
    if channels_last:
        return t.stride(0), 1, t.shape[-1]
    return t.stride(0), t.stride(1), 1


def _spatial(x: Tensor, n_spatial: int, channels_last: bool) -> tuple[int, ...]:
    return tuple(x.shape[1 : 1 + n_spatial]) if channels_last else tuple(x.shape[2:])


def _mm(
    v: Tensor,
    a: Tensor,
    a_strides: tuple[int, int],
    bias: Tensor | None,
    out: Tensor,
    channels_last: bool,
    grid: _Grid,
    n_channels: int,
    reduction: int,
    m_on_output_grid: bool,
    source_strided: bool,
    k_shift: Tensor | None,
    group_offsets_on_n: tuple | None,
    n_sign: int,
) -> None:
    """Launch ``_ssc_mm_kernel`` (see the module docstring for the four uses)."""
    batch = v.shape[0]
    m = grid.out_positions if m_on_output_grid else grid.positions
    if group_offsets_on_n is not None:
        block_hint = -(-n_channels // len(group_offsets_on_n))  # the largest group
    else:
        block_hint = n_channels
    block_m, block_n, block_k, warps = _mm_blocks(m, block_hint, reduction, a.dtype)
    tiles = _tile_table(n_channels, block_n, group_offsets_on_n, n_sign, v.device)
    upcast, precision = _dot_settings(a.dtype)
    dummy = tiles  # stands in for absent pointers; never read
    launch = (triton.cdiv(m, block_m), tiles.shape[0], batch)
    _ssc_mm_kernel[launch](
        v,
        a,
        bias if bias is not None else dummy,
        out,
        k_shift if k_shift is not None else dummy,
        tiles,
        m,
        reduction,
        grid.H,
        grid.W,
        grid.WO,
        grid.SH,
        grid.SW,
        *_layout_strides(v, channels_last),
        a_strides[0],
        a_strides[1],
        *_layout_strides(out, channels_last),
        M_ON_OUTPUT_GRID=m_on_output_grid,
        SOURCE_STRIDED=source_strided,
        SHIFT_ON_N=group_offsets_on_n is not None,
        HAS_BIAS=bias is not None,
        UPCAST_DOT=upcast,
        PRECISION=precision,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )


def ssc_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    linear_first: bool,
    channels_last: bool,
) -> Tensor:
    """Fused SSC forward; shapes as :func:`sepkit.ops.ssc_pytorch.ssc_reference`."""
    _check_device(x, weight)
    x = x.contiguous()
    weight = weight.contiguous().to(x.dtype)
    if bias is not None:
        bias = bias.contiguous()
    grid = _Grid(_spatial(x, len(kernel_size), channels_last), kernel_size, dilation, stride)
    out_channels, in_channels = weight.shape
    batch = x.shape[0]
    spatial_out = (grid.HO, grid.WO)[2 - len(kernel_size) :]
    shape = (batch, *spatial_out, out_channels) if channels_last else (batch, out_channels, *spatial_out)
    out = x.new_empty(shape)
    w_strides = (weight.stride(0), weight.stride(1))  # A[n = o, k = c] = W[o, c]
    if linear_first:
        _mm(
            x,
            weight,
            w_strides,
            bias,
            out,
            channels_last,
            grid,
            out_channels,
            in_channels,
            m_on_output_grid=True,
            source_strided=False,
            k_shift=None,
            group_offsets_on_n=grid.offsets,
            n_sign=1,
        )
    else:
        shifts = _channel_shift_table(in_channels, grid.offsets, 1, x.device)
        _mm(
            x,
            weight,
            w_strides,
            bias,
            out,
            channels_last,
            grid,
            out_channels,
            in_channels,
            m_on_output_grid=True,
            source_strided=False,
            k_shift=shifts,
            group_offsets_on_n=None,
            n_sign=1,
        )
    return out


def ssc_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
    linear_first: bool,
    channels_last: bool,
    need_input_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused SSC backward: ``(dx, dweight, dbias)``, empty tensors where not needed."""
    _check_device(grad_out, x, weight)
    x = x.contiguous()
    grad_out = grad_out.contiguous().to(x.dtype)
    w = weight.contiguous().to(x.dtype)
    grid = _Grid(_spatial(x, len(kernel_size), channels_last), kernel_size, dilation, stride)
    out_channels, in_channels = w.shape
    empty = grad_out.new_empty(0)

    dx = empty
    if need_input_grad:
        dx = torch.empty_like(x)
        wt_strides = (w.stride(1), w.stride(0))  # A[n = c, k = o] = W[o, c]
        if linear_first:
            shifts = _channel_shift_table(out_channels, grid.offsets, -1, x.device)
            _mm(
                grad_out,
                w,
                wt_strides,
                None,
                dx,
                channels_last,
                grid,
                in_channels,
                out_channels,
                m_on_output_grid=False,
                source_strided=True,
                k_shift=shifts,
                group_offsets_on_n=None,
                n_sign=1,
            )
        else:
            _mm(
                grad_out,
                w,
                wt_strides,
                None,
                dx,
                channels_last,
                grid,
                in_channels,
                out_channels,
                m_on_output_grid=False,
                source_strided=True,
                k_shift=None,
                group_offsets_on_n=grid.offsets,
                n_sign=-1,
            )

    dw, db = empty, empty
    if need_weight_grad or has_bias:
        dw_full, db_full = _weight_grad(
            grad_out, x, grid, out_channels, in_channels, has_bias, linear_first, channels_last
        )
        if need_weight_grad:
            dw = dw_full.to(weight.dtype)
        if has_bias:
            db = db_full.to(weight.dtype)
    return dx, dw, db


def _weight_grad(
    grad_out: Tensor,
    x: Tensor,
    grid: _Grid,
    out_channels: int,
    in_channels: int,
    has_bias: bool,
    linear_first: bool,
    channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """``dW`` and ``db`` in fp32 via split-reduction partial sums."""
    batch = x.shape[0]
    # Plain SSC reduces over output positions (X read at q * stride, rc on X);
    # linear_first over all input positions (rc^T on the upsampled dY).
    m = grid.positions if linear_first else grid.out_positions
    if INTERPRETED:
        block_p, block_r, block_m, warps = 16, 16, 16, 1
    else:
        block_p = _pow2_between(out_channels, 16, 128)
        block_r = _pow2_between(in_channels, 16, 128)
        block_m = 32 if x.dtype == torch.float32 else 64
        warps = 8 if block_p * block_r >= 128 * 128 else 4
    total_blocks = batch * triton.cdiv(m, block_m)
    tiles = triton.cdiv(out_channels, block_p) * triton.cdiv(in_channels, block_r)
    if INTERPRETED:
        splits = min(total_blocks, 2)
    else:
        # Enough programs to fill the GPU about four times over.
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        splits = max(1, min(total_blocks, math.ceil(4 * sms / tiles)))
    per_split = triton.cdiv(total_blocks, splits)
    splits = triton.cdiv(total_blocks, per_split)
    dw_parts = torch.empty(splits, out_channels, in_channels, device=x.device, dtype=torch.float32)
    db_parts = torch.empty(splits, out_channels, device=x.device, dtype=torch.float32)
    if linear_first:
        p_shift = _channel_shift_table(out_channels, grid.offsets, -1, x.device)
        r_shift = p_shift
    else:
        r_shift = _channel_shift_table(in_channels, grid.offsets, 1, x.device)
        p_shift = r_shift
    upcast, precision = _dot_settings(x.dtype)
    launch = (triton.cdiv(out_channels, block_p), triton.cdiv(in_channels, block_r), splits)
    _ssc_wgrad_kernel[launch](
        grad_out,
        x,
        p_shift,
        r_shift,
        dw_parts,
        db_parts,
        out_channels,
        in_channels,
        m,
        per_split,
        total_blocks,
        grid.H,
        grid.W,
        grid.WO,
        grid.SH,
        grid.SW,
        *_layout_strides(grad_out, channels_last),
        *_layout_strides(x, channels_last),
        M_ON_OUTPUT_GRID=not linear_first,
        SHIFT_P=linear_first,
        SHIFT_R=not linear_first,
        HAS_BIAS=has_bias,
        UPCAST_DOT=upcast,
        PRECISION=precision,
        BLOCK_P=block_p,
        BLOCK_R=block_r,
        BLOCK_M=block_m,
        num_warps=warps,
    )
    return dw_parts.sum(0), db_parts.sum(0)
