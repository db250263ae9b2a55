"""SSC layers ("SSC Layer - A Replacement for Convolutional Layers", anonymous, under review): drop-in replacements
for ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` with local context at the parameter count
of a pointwise layer.

Every layer holds ``weight [out, in]`` (and ``bias [out]``) whatever its kernel size; the
kernel size only decides how many channel groups the relative context uses
(:func:`sepkit.ops.relative_context`). The math and the backend dispatch live in
:func:`sepkit.ops.ssc.ssc_layer`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sepkit.ops.ssc import ssc_layer
from sepkit.ops.ssc_layout import IntOrTuple, as_tuple


class _SSCBase(nn.Module):
    """Shared parameters, initialisation and validation of the SSC layers."""

    n_spatial: int = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        bias: bool = True,
        linear_first: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_tuple(kernel_size, self.n_spatial, "kernel_size")
        self.stride = as_tuple(stride, self.n_spatial, "stride")
        self.dilation = as_tuple(dilation, self.n_spatial, "dilation")
        self.linear_first = linear_first
        # Set by swap_to_ssc so errors can name the layer inside its model.
        self.module_path = ""
        grouped = out_channels if linear_first else in_channels
        n_groups = math.prod(self.kernel_size)
        if n_groups > grouped:
            side = "out_channels" if linear_first else "in_channels"
            raise ValueError(
                f"{type(self).__name__}: kernel size {self.kernel_size} makes K = {n_groups} "
                f"channel groups but {side} = {grouped}; SSC needs K <= channels"
            )
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def n_groups(self) -> int:
        """K, the number of channel groups of the relative context."""
        return math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Linear / a 1x1 nn.Conv (fan_in = in_channels).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def _name(self) -> str:
        return f"{type(self).__name__}" + (f" at {self.module_path!r}" if self.module_path else "")

    def _check_input(self, x: Tensor, channel_dim: int, expected_dims: int, layout: str) -> None:
        if x.dim() != expected_dims:
            raise ValueError(f"{self._name()} expects {layout}, got shape {tuple(x.shape)}")
        if x.shape[channel_dim] != self.in_channels:
            raise ValueError(
                f"{self._name()} expects {self.in_channels} channels on axis {channel_dim}, got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, bias={self.bias is not None}"
        )
        return text + (", linear_first=True" if self.linear_first else "")


class SSCConv1d(_SSCBase):
    """SSC replacement for ``nn.Conv1d``: input ``[batch, in_channels, time]``, output
    ``[batch, out_channels, ceil(time / stride)]``; parameters ``in * out (+ out)``.

    Args:
        in_channels, out_channels: channel sizes.
        kernel_size: K, the number of channel groups (offsets ``-(K//2) .. K-1-K//2``).
        stride: keep every ``stride``-th position after the relative context.
        dilation: spacing of the offsets.
        bias: learn an output bias.
        linear_first: apply the linear map before the relative context (groups then split
            the output channels).
    """

    n_spatial = 1

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x, 1, 3, "[batch, channels, time]")
        return ssc_layer(
            x,
            self.weight,
            self.bias,
            self.kernel_size,
            self.dilation,
            self.stride,
            self.linear_first,
            channels_last=False,
        )


class SSCConv2d(_SSCBase):
    """SSC replacement for ``nn.Conv2d``: input ``[batch, in_channels, height, width]``,
    output ``[batch, out_channels, ceil(height / sh), ceil(width / sw)]``. ``kernel_size``
    ``(kh, kw)`` gives ``K = kh * kw`` groups, offsets in row-major order of the kernel grid.
    Other arguments as :class:`SSCConv1d`."""

    n_spatial = 2

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x, 1, 4, "[batch, channels, height, width]")
        return ssc_layer(
            x,
            self.weight,
            self.bias,
            self.kernel_size,
            self.dilation,
            self.stride,
            self.linear_first,
            channels_last=False,
        )


class SSCLinear(_SSCBase):
    """SSC replacement for ``nn.Linear`` on channels-last sequences (e.g. a transformer's
    feed-forward layers): input ``[..., time, ..., in_features]`` with the sequence on
    ``seq_dim`` (default ``-2``: ``[batch, time, features]``), output the same with
    ``out_features`` and ``ceil(time / stride)`` steps.

    Args:
        in_features, out_features: feature sizes.
        kernel_size: K, the number of channel groups.
        seq_dim: the sequence axis of the input (must not be the feature axis).
        stride, dilation, bias, linear_first: as :class:`SSCConv1d`.
    """

    n_spatial = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        seq_dim: int = -2,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
        linear_first: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, kernel_size, stride, dilation, bias, linear_first)
        self.seq_dim = seq_dim

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"{self._name()} needs a sequence axis (seq_dim={self.seq_dim}) besides the "
                f"feature axis; got shape {tuple(x.shape)}: a Linear applied to single vectors "
                "cannot be replaced by SSC"
            )
        seq_dim = self.seq_dim % x.dim()
        if seq_dim == x.dim() - 1:
            raise ValueError(f"{self._name()}: seq_dim={self.seq_dim} is the feature axis")
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{self._name()} expects {self.in_channels} features on the last axis, got shape {tuple(x.shape)}"
            )
        moved = x.movedim(seq_dim, -2)
        lead = moved.shape[:-2]
        flat = moved.reshape(-1, moved.shape[-2], moved.shape[-1])
        y = ssc_layer(
            flat,
            self.weight,
            self.bias,
            self.kernel_size,
            self.dilation,
            self.stride,
            self.linear_first,
            channels_last=True,
        )
        return y.reshape(*lead, y.shape[-2], y.shape[-1]).movedim(-2, seq_dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seq_dim={self.seq_dim}"


def replacement_problem(
    layer: nn.Module, kernel_size: IntOrTuple | None = None, linear_first: bool = False
) -> str | None:
    """Why ``layer`` cannot be replaced by an SSC layer, or None if it can."""
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "transposed (upsampling) convolutions have no SSC equivalent"
    if isinstance(layer, nn.Linear):
        if kernel_size is None:
            return "an nn.Linear has no kernel size: give kernel_size"
        n_spatial, channels = 1, (layer.out_features if linear_first else layer.in_features)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        n_spatial = 1 if isinstance(layer, nn.Conv1d) else 2
        channels = layer.out_channels if linear_first else layer.in_channels
        if layer.groups != 1:
            kind = "depthwise" if layer.groups == layer.in_channels else "grouped"
            return f"{kind} convolution (groups={layer.groups}) mixes no channels; SSC needs groups=1"
        if isinstance(layer.padding, str):
            if layer.padding != "same":
                return f"padding={layer.padding!r} changes the output length; SSC keeps ceil(L / stride)"
        else:
            for k, d, p in zip(layer.kernel_size, layer.dilation, layer.padding):
                if 2 * p != d * (k - 1):
                    return (
                        f"padding={layer.padding} with kernel_size={layer.kernel_size} and "
                        f"dilation={layer.dilation} changes the output length; SSC keeps "
                        "ceil(L / stride) (needs 2 * padding == dilation * (kernel_size - 1))"
                    )
    else:
        return f"{type(layer).__name__} is not an nn.Linear, nn.Conv1d or nn.Conv2d"
    kernel = as_tuple(kernel_size if kernel_size is not None else layer.kernel_size, n_spatial, "kernel_size")
    if math.prod(kernel) > channels:
        side = "output" if linear_first else "input"
        return f"K = {math.prod(kernel)} channel groups exceed the {channels} {side} channels"
    return None


def from_module(
    layer: nn.Module,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
    linear_first: bool = False,
    seq_dim: int = -2,
) -> SSCConv1d | SSCConv2d | SSCLinear:
    """The SSC equivalent of an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``.

    Channels, stride, dilation and bias come from ``layer``; K from the conv's kernel size
    unless ``kernel_size`` is given (required for ``nn.Linear``). A pointwise layer's weight
    and bias are copied, so with K = 1 the SSC layer computes exactly what ``layer`` did;
    a wider conv's taps have no SSC counterpart and the SSC layer is freshly initialised.
    The result is on the layer's device and dtype.
    """
    problem = replacement_problem(layer, kernel_size, linear_first)
    if problem is not None:
        raise ValueError(f"cannot build an SSC layer from {layer!r}: {problem}")
    new: SSCConv1d | SSCConv2d | SSCLinear
    if isinstance(layer, nn.Linear):
        assert kernel_size is not None  # guaranteed by replacement_problem
        new = SSCLinear(
            layer.in_features,
            layer.out_features,
            as_tuple(kernel_size, 1, "kernel_size")[0],
            seq_dim=seq_dim,
            dilation=as_tuple(dilation or 1, 1, "dilation")[0],
            bias=layer.bias is not None,
            linear_first=linear_first,
        )
        pointwise = True
    else:
        assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
        cls = SSCConv1d if isinstance(layer, nn.Conv1d) else SSCConv2d
        new = cls(
            layer.in_channels,
            layer.out_channels,
            kernel_size if kernel_size is not None else layer.kernel_size,
            stride=layer.stride,
            dilation=dilation if dilation is not None else layer.dilation,
            bias=layer.bias is not None,
            linear_first=linear_first,
        )
        pointwise = all(k == 1 for k in layer.kernel_size)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    if pointwise:
        with torch.no_grad():
            new.weight.copy_(layer.weight.reshape(new.weight.shape))
            if layer.bias is not None and new.bias is not None:
                new.bias.copy_(layer.bias)
    return new


__all__ = ["SSCConv1d", "SSCConv2d", "SSCLinear", "from_module", "replacement_problem"]
