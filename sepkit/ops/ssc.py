"""SSC (shift split channels) layer entry point, :func:`ssc_layer`: validates the arguments
and dispatches between the plain-PyTorch reference and the fused custom op.

Where things live: the group split and offsets in :mod:`sepkit.ops.ssc_layout`, the
relative context and the reference layer (paper §3) in :mod:`sepkit.ops.ssc_pytorch`, the
custom op ``torch.ops.sepkit.ssc`` in :mod:`sepkit.ops.ssc_op`, its Triton kernels in
:mod:`sepkit.ops.ssc_triton` and the backend choice (``SEPKIT_SSC_BACKEND``) in
:mod:`sepkit.ops.ssc_backend`. In eager mode the plain reference layer uses the memory-lean
:class:`~sepkit.ops.ssc_pytorch.SSCEagerFunction`; ``linear_first`` and code being
compiled use the autograd composition :func:`~sepkit.ops.ssc_pytorch.ssc_reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepkit.ops.ssc_backend import resolve_backend
from sepkit.ops.ssc_layout import IntOrTuple, as_tuple
from sepkit.ops.ssc_op import ssc_op
from sepkit.ops.ssc_pytorch import SSCEagerFunction, ssc_reference


def ssc_layer(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    linear_first: bool = False,
    channels_last: bool = False,
) -> Tensor:
    """SSC layer ``Y = W . rc(X) + b`` (or ``rc(W . X) + b``), then stride; dispatched to
    the Triton custom op or the reference by :func:`resolve_backend`.

    Args:
        x: ``[batch, in_channels, *spatial]`` (``channels_last``:
            ``[batch, *spatial, in_channels]``), one spatial axis per kernel_size entry.
        weight: ``[out_channels, in_channels]``; bias ``[out_channels]`` or None.

    Returns:
        ``[batch, out_channels, *ceil(spatial / stride)]`` (channels last likewise).
    """
    n_spatial = 1 if isinstance(kernel_size, int) else len(kernel_size)
    if x.dim() != 2 + n_spatial:
        raise ValueError(
            f"ssc: expected a {2 + n_spatial}-d input ([batch, channels, {n_spatial} spatial axes]), "
            f"got shape {tuple(x.shape)}"
        )
    kernel = list(as_tuple(kernel_size, n_spatial, "kernel_size"))
    dil = list(as_tuple(dilation, n_spatial, "dilation"))
    strides = list(as_tuple(stride, n_spatial, "stride"))
    in_channels = x.shape[-1] if channels_last else x.shape[1]
    if weight.dim() != 2 or weight.shape[1] != in_channels:
        raise ValueError(f"ssc: weight shape {tuple(weight.shape)} does not match {in_channels} input channels")
    if resolve_backend(x) == "reference":
        if linear_first or torch.compiler.is_compiling():
            # The composition is what torch.compile should trace (and fuse).
            return ssc_reference(x, weight, bias, kernel, dil, strides, linear_first, channels_last)
        return SSCEagerFunction.apply(x, weight, bias, tuple(kernel), tuple(dil), tuple(strides), channels_last)
    return ssc_op(x, weight, bias, kernel, dil, strides, linear_first, channels_last)
