"""Paper Table 1's size claim: SepFormer with its feed-forward Linear layers swapped for SSC
(K = 3) keeps the Linear model's ~26M parameters, while Conv1d(k=3) raises it to ~59M."""

from __future__ import annotations

import torch
from torch import nn

from sepkit.models import build_model
from sepkit.nn import SSCLinear


class ChannelsLastConv1d(nn.Module):
    """``nn.Conv1d(k, "same" padding)`` on ``[batch, length, features]``, the drop-in
    convolutional replacement of a feed-forward Linear used in the paper's "SepFormer Conv"."""

    def __init__(self, linear: nn.Linear, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(linear.in_features, linear.out_features, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _swap_ffn_for_conv(model: nn.Module, kernel_size: int) -> int:
    swapped = 0
    for name, module in list(model.named_modules()):
        if name.endswith(".ffn"):
            module.linear_in = ChannelsLastConv1d(module.linear_in, kernel_size)
            module.linear_out = ChannelsLastConv1d(module.linear_out, kernel_size)
            swapped += 2
    return swapped


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sepformer_ssc_keeps_linear_size_and_conv_doubles_it():
    linear = build_model("sepformer")
    ssc = build_model("sepformer", ssc={"preset": "ffn", "kernel_size": 3})
    n_linear, n_ssc = _count(linear), _count(ssc)
    # Paper Table 1: "26" million for Linear and SSC, "59" million for Conv.
    assert 25.0e6 < n_linear < 26.5e6
    assert n_ssc == n_linear
    assert len(ssc.ssc_report.swapped) == 64  # 2 blocks x (8 intra + 8 inter) layers x 2
    assert all(isinstance(m, SSCLinear) for n, m in ssc.named_modules() if n.endswith(("linear_in", "linear_out")))
    del ssc
    assert _swap_ffn_for_conv(linear, 3) == 64
    n_conv = _count(linear)
    assert 58.5e6 < n_conv < 60.0e6
    # Exactly the extra (k - 1) taps of every feed-forward weight.
    d_model, d_ffn, n_linears = 256, 1024, 64
    assert n_conv - n_ssc == (3 - 1) * d_model * d_ffn * n_linears


def test_tiny_sepformer_runs_with_both_swaps():
    config = dict(
        n_filters=16,
        d_model=16,
        n_heads=2,
        d_ffn=32,
        n_repeats=1,
        n_intra_layers=1,
        n_inter_layers=1,
        chunk_size=10,
        hop=5,
    )
    torch.manual_seed(0)
    ssc = build_model("sepformer", ssc={"preset": "ffn", "kernel_size": 3}, **config)
    conv = build_model("sepformer", **config)
    _swap_ffn_for_conv(conv, 3)
    mixture = torch.randn(1, 320)
    for model in (ssc, conv):
        estimate = model(mixture)
        assert estimate.shape == (1, 2, 320)
        estimate.square().mean().backward()
