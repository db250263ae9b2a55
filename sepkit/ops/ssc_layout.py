"""SSC group layout: how the channel axis is split into ``K`` groups and which offset each
group gets (paper §3, Figure 3); shared by the reference (:mod:`sepkit.ops.ssc_pytorch`)
and the Triton kernels (:mod:`sepkit.ops.ssc_triton`).

The channel axis is split into ``K`` contiguous groups with ``torch.tensor_split`` sizes
(the first ``C % K`` groups take one extra channel). Group ``i`` gets one offset per
spatial axis; for one spatial axis ``s_i = (i - K // 2) * dilation``. Offsets run from
``-(K // 2)`` to ``K - 1 - K // 2``: for odd ``K`` they are symmetric, for even ``K`` there
is one more negative offset than positive (``K = 4`` gives -2, -1, 0, +1), i.e. even
kernels look one step further into the past, matching the paper's "from -K/2" wording.
For ``N`` spatial axes ``K`` is the product of the per-axis kernel sizes and the groups
take the offsets of the kernel grid in row-major order (3x3: (-1,-1), (-1,0), ..., (1,1)).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

IntOrTuple = int | Sequence[int]
Offsets = tuple[tuple[int, ...], ...]


def as_tuple(value: IntOrTuple, n_axes: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``n_axes`` entries, or check a sequence has ``n_axes`` entries."""
    if isinstance(value, int):
        out = (value,) * n_axes
    else:
        out = tuple(int(v) for v in value)
        if len(out) != n_axes:
            raise ValueError(f"{name} needs {n_axes} entries (one per spatial axis), got {value!r}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {value!r}")
    return out


def group_offsets(kernel_size: Sequence[int], dilation: Sequence[int]) -> Offsets:
    """Offsets of the ``prod(kernel_size)`` channel groups, row-major over the kernel grid.

    Axis ``j`` of group ``(i_0, ..., i_n)`` is shifted by ``(i_j - k_j // 2) * d_j``.
    """
    return tuple(
        tuple((i - k // 2) * d for i, k, d in zip(index, kernel_size, dilation))
        for index in itertools.product(*(range(k) for k in kernel_size))
    )


def adjoint_offsets(offsets: Offsets) -> Offsets:
    """Offsets of the transposed relative context: the same group split, negated shifts."""
    return tuple(tuple(-s for s in offset) for offset in offsets)


def group_bounds(channels: int, n_groups: int) -> list[tuple[int, int]]:
    """``[start, end)`` channel ranges of ``torch.tensor_split(range(channels), n_groups)``."""
    base, extra = divmod(channels, n_groups)
    bounds = []
    start = 0
    for i in range(n_groups):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def output_shape(x_shape: Sequence[int], out_channels: int, stride: Sequence[int], channels_last: bool) -> list[int]:
    """Shape of the SSC output for input shape ``x_shape``."""
    n_spatial = len(stride)
    if channels_last:
        spatial = x_shape[1 : 1 + n_spatial]
        return [x_shape[0], *[-(-n // s) for n, s in zip(spatial, stride)], out_channels]
    spatial = x_shape[2 : 2 + n_spatial]
    return [x_shape[0], out_channels, *[-(-n // s) for n, s in zip(spatial, stride)]]
