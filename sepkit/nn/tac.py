"""Transform-average-concatenate (TAC) group communication (Luo, Chen, Han & Mesgarani,
"Ultra-lightweight speech separation via group-communication", ICASSP 2021, eqs. 2-4),
shared by GC3 and the group-communication SuDoRM-RF++."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def groups_to_channels_last(x: Tensor) -> Tensor:
    """``[batch, groups, M, *positions] -> [batch, groups, *positions, M]``."""
    return x.movedim(2, -1)


class TAC(nn.Module):
    """Transform-average-concatenate across the K groups of a feature map.

    At every position: ``f_i = PReLU(W1 g_i)``, ``f = PReLU(W2 mean_i f_i)``,
    ``out_i = g_i + gLN(PReLU(W3 [f_i; f]))``. The norm (one group over the M channels
    and all positions of each (batch, group) item) is in the authors' code, not the paper.

    Input and output ``[batch, groups, group_size, *positions]``.

    Args:
        group_size: M, channels per group.
        hidden: width of the transform and average stages.
        eps: the norm's epsilon: GC3's ``nn.GroupNorm`` uses torch's 1e-5, the
            group-communication SuDoRM-RF's ``GlobLN`` 1e-8.
    """

    def __init__(self, group_size: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.transform = nn.Linear(group_size, hidden)
        self.transform_act = nn.PReLU()
        self.average = nn.Linear(hidden, hidden)
        self.average_act = nn.PReLU()
        self.concat = nn.Linear(2 * hidden, group_size)
        self.concat_act = nn.PReLU()
        self.norm = nn.GroupNorm(1, group_size, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        batch, groups, group_size = x.shape[:3]
        f = self.transform_act(self.transform(groups_to_channels_last(x)))
        mean = self.average_act(self.average(f.mean(dim=1, keepdim=True)))
        g = self.concat_act(self.concat(torch.cat([f, mean.expand_as(f)], dim=-1))).movedim(-1, 2)
        g = self.norm(g.reshape(batch * groups, group_size, -1)).reshape(x.shape)
        return x + g
