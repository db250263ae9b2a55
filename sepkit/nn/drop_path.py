"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016) on a
residual branch."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's branch with probability ``p``
    and rescale the kept ones by ``1 / (1 - p)``. Identity in eval mode or for ``p = 0``.

    Input and output ``[batch, *]``; one keep/drop draw per batch item.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: drop probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep
