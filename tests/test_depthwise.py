"""DepthwiseConv1d against the grouped nn.Conv1d it replaces (float64 oracle)."""

import pytest
import torch
from fixtures.oracles import assert_forward_and_gradients_equal
from torch import nn

from sepkit.nn.depthwise import DepthwiseConv1d


@pytest.mark.parametrize(
    "channels, kernel, dilation, padding, length",
    [
        (6, 3, 1, 1, 20),  # Conv-TasNet's first block
        (5, 3, 16, 16, 10),  # dilation longer than the sequence: taps fall off both ends
        (4, 3, 2, 4, 20),  # causal TCN padding, (k - 1) * d on both sides
        (4, 5, 3, 6, 15),
        (3, 1, 1, 0, 7),
        (4, 3, 8, 16, 5),
    ],
)
def test_matches_grouped_conv_forward_and_backward(channels, kernel, dilation, padding, length):
    torch.manual_seed(0)
    reference = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=padding, groups=channels).double()
    shifted = DepthwiseConv1d(channels, kernel, dilation, padding).double()
    shifted.load_state_dict(reference.state_dict())
    x = torch.randn(2, channels, length, dtype=torch.float64, requires_grad=True)
    expected, actual = reference(x), shifted(x)
    assert_forward_and_gradients_equal(
        actual, expected, [x, shifted.weight, shifted.bias], [x, reference.weight, reference.bias]
    )


def test_is_a_drop_in_conv1d():
    layer = DepthwiseConv1d(8, 3, dilation=4, padding=4, bias=False)
    assert isinstance(layer, nn.Conv1d) and layer.groups == 8 and layer.bias is None
    assert set(layer.state_dict()) == {"weight"}
    x = torch.randn(1, 8, 30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer.double()(t), (x,))


def test_runs_in_bfloat16_under_autocast():
    layer = DepthwiseConv1d(4, 3, dilation=2, padding=2)
    x = torch.randn(2, 4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(
        y.float(),
        nn.functional.conv1d(x, layer.weight, layer.bias, padding=2, dilation=2, groups=4),
        atol=0.1,
        rtol=0.05,
    )
