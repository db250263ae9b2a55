"""The U-ConvBlock of SuDoRM-RF (Tzinis, Wang & Smaragdis, "Sudo rm -rf: Efficient Networks
for Universal Audio Source Separation", MLSP 2020) and of its improved variant
SuDoRM-RF++ (Tzinis, Wang, Jiang & Smaragdis, "Compute and memory efficient universal
sound source separation", J. Signal Processing Systems 2022)."""

from __future__ import annotations

from torch import Tensor, nn


def global_norm(channels: int) -> nn.GroupNorm:
    """gLN as the SuDoRM-RF reference writes it: GroupNorm with one group (statistics over
    channels and time per utterance, per-channel gain and bias), eps 1e-8.
    ``[batch, channels, frames]`` in and out."""
    return nn.GroupNorm(1, channels, eps=1e-8)


class UConvBlock(nn.Module):
    """One U-ConvBlock on ``[batch, channels, frames]`` (same shape out).

    1x1 conv up to ``hidden_channels`` -> norm -> PReLU; a depthwise k5 conv, then
    ``upsampling_depth - 1`` depthwise k5 stride-2 convs (each followed by a norm);
    nearest x2 upsampling summed from coarse to fine; norm -> PReLU; 1x1 conv back to
    ``channels``; residual. The original block adds a norm after that conv and a final
    norm -> PReLU after the residual; the improved block (``improved=True``) has neither.

    Any frame count works: an upsampled level is cropped to its finer neighbour.

    Used by SuDoRM-RF and by GC3's GC-SuDoRM-RF backbone.

    Args:
        channels: C, the bottleneck width of the stack (the reference's ``out_channels``).
        hidden_channels: C_U, the expanded width inside the block (``in_channels``).
        upsampling_depth: number of resolutions; the paper's Q=4 downsamplings is 5.
        improved: SuDoRM-RF++ block (no output norm/activation, single PReLU after the
            input projection).
        final_prelu_per_channel: per-channel PReLU after the pyramid. Defaults to the
            official code (True for the original block, False for the improved one);
            Asteroid's improved block uses True.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        upsampling_depth: int = 5,
        improved: bool = False,
        final_prelu_per_channel: bool | None = None,
    ) -> None:
        super().__init__()
        if upsampling_depth < 1:
            raise ValueError(f"UConvBlock: upsampling_depth must be >= 1, got {upsampling_depth}")
        if final_prelu_per_channel is None:
            final_prelu_per_channel = not improved
        self.improved = improved
        self.in_conv = nn.Conv1d(channels, hidden_channels, 1)
        self.in_norm = global_norm(hidden_channels)
        self.in_act = nn.PReLU(1 if improved else hidden_channels)
        self.depthwise = nn.ModuleList(
            nn.Conv1d(
                hidden_channels, hidden_channels, 5, stride=1 if level == 0 else 2, padding=2, groups=hidden_channels
            )
            for level in range(upsampling_depth)
        )
        self.depthwise_norms = nn.ModuleList(global_norm(hidden_channels) for _ in range(upsampling_depth))
        self.final_norm = global_norm(hidden_channels)
        self.final_act = nn.PReLU(hidden_channels if final_prelu_per_channel else 1)
        self.out_conv = nn.Conv1d(hidden_channels, channels, 1)
        if not improved:
            self.out_norm = global_norm(channels)
            self.block_norm = global_norm(channels)
            self.block_act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.in_act(self.in_norm(self.in_conv(x)))
        levels = []
        for conv, norm in zip(self.depthwise, self.depthwise_norms):
            y = norm(conv(y))
            levels.append(y)
        merged = levels[-1]
        for finer in reversed(levels[:-1]):
            merged = finer + merged.repeat_interleave(2, dim=-1)[..., : finer.shape[-1]]
        out = self.out_conv(self.final_act(self.final_norm(merged)))
        if self.improved:
            return out + x
        return self.block_act(self.block_norm(self.out_norm(out) + x))
