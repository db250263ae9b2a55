"""SuDoRM-RF's filter-axis mask convolution as banded matrix products (FilterAxisConv2d)
against the nn.Conv2d it replaces, in float64."""

import pytest
import torch
import torch.nn.functional as F
from fixtures.oracles import assert_forward_and_gradients_equal
from torch import nn

from sepkit.models.sudormrf import FilterAxisConv2d, SuDoRMRF


@pytest.mark.parametrize(
    "n_filters, n_src, frames",
    [
        (16, 2, 9),  # the model's layer: kernel N + 1, padding N - N // 2
        (7, 3, 5),  # odd N: the conv returns N + 1 rows
        (6, 1, 4),
    ],
)
def test_matches_conv2d_forward_and_backward(n_filters: int, n_src: int, frames: int) -> None:
    torch.manual_seed(0)
    kernel, padding = n_filters + 1, n_filters - n_filters // 2
    layer = FilterAxisConv2d(n_src, kernel, padding).double()
    x = torch.randn(2, 1, n_filters, frames, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, layer.weight, layer.bias, padding=(padding, 0))
    actual = layer(x)
    assert actual.shape == expected.shape == (2, n_src, n_filters + 2 * padding - kernel + 1, frames)
    params = [x, layer.weight, layer.bias]
    assert_forward_and_gradients_equal(actual, expected, params, params)


@pytest.mark.parametrize("kernel, padding", [(3, 1), (5, 0), (4, 3)])
def test_short_kernels_match_conv2d(kernel: int, padding: int) -> None:
    # Not the model's geometry, but the banded matrix must be right for any kernel/padding.
    torch.manual_seed(1)
    layer = FilterAxisConv2d(2, kernel, padding).double()
    x = torch.randn(3, 1, 10, 6, dtype=torch.float64)
    expected = F.conv2d(x, layer.weight, layer.bias, padding=(padding, 0))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_is_a_drop_in_conv2d_in_the_model() -> None:
    model = SuDoRMRF(n_filters=16, bottleneck=8, hidden_channels=16, n_blocks=1, upsampling_depth=3)
    layer = model.masker.mask_conv2d
    assert isinstance(layer, nn.Conv2d) and layer.kernel_size == (17, 1) and layer.padding == (8, 0)
    assert {"masker.mask_conv2d.weight", "masker.mask_conv2d.bias"} <= set(model.state_dict())
    x = torch.randn(1, 1, 16, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer.double()(t), (x,))
