"""SSC reference, layers, custom op and swap (CPU; the Triton kernels are in
test_ssc_triton.py)."""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sepkit.ops
import sepkit.ops.ssc_backend as backend_module
import sepkit.ops.ssc_pytorch as pytorch_module
from sepkit.nn import SSCConv1d, SSCConv2d, SSCLinear, from_module, swap_to_ssc
from sepkit.ops import relative_context, ssc_layer, ssc_reference, use_backend
from sepkit.ops.ssc_layout import group_offsets
from sepkit.ops.ssc_op import ssc_op


def oracle_relative_context(x: torch.Tensor, kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    """Independent formulation: a fixed-weight depthwise conv with +1 at the centre tap and
    -1 at the tap of the channel's group offset, zero padding (so an out-of-range partner
    subtracts nothing and the input is copied)."""
    channels, n_axes = x.shape[1], x.dim() - 2
    n_groups = math.prod(kernel_size)
    grid = list(itertools.product(*(range(k) for k in kernel_size)))
    offsets = [[(i - k // 2) * d for i, k, d in zip(idx, kernel_size, dilation)] for idx in grid]
    reach = [max(abs(off[a]) for off in offsets) for a in range(n_axes)]
    weight = torch.zeros(channels, 1, *(2 * r + 1 for r in reach), dtype=x.dtype)
    for group, members in enumerate(torch.tensor_split(torch.arange(channels), n_groups)):
        for c in members.tolist():
            weight[(c, 0, *reach)] = 1.0
            if any(offsets[group]):
                weight[(c, 0, *(r + o for r, o in zip(reach, offsets[group])))] -= 1.0
    conv = F.conv1d if n_axes == 1 else F.conv2d
    return conv(x, weight, padding=tuple(reach), groups=channels)


def oracle_ssc(x, weight, bias, kernel_size, dilation, stride, linear_first):
    """Channels-first SSC layer from the oracle relative context (float64)."""

    def linear(t):
        return torch.einsum("oc,bc...->bo...", weight, t)

    y = (
        oracle_relative_context(linear(x), kernel_size, dilation)
        if linear_first
        else linear(oracle_relative_context(x, kernel_size, dilation))
    )
    index = (slice(None), slice(None), *(slice(None, None, s) for s in stride))
    y = y[index]
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * len(kernel_size)))
    return y


def test_figure3_example():
    # Paper Figure 3: C = K = 5, offsets -2..2; out-of-range and zero-offset rows copy.
    x = torch.arange(6.0).repeat(5, 1)[None]
    expected = torch.tensor(
        [
            [0, 1, 2, 2, 2, 2],
            [0, 1, 1, 1, 1, 1],
            [0, 1, 2, 3, 4, 5],
            [-1, -1, -1, -1, -1, 5],
            [-2, -2, -2, -2, 4, 5],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(relative_context(x, 5)[0], expected)


@pytest.mark.parametrize(
    "channels,spatial,kernel_size,dilation",
    [
        (7, (11,), (3,), (1,)),  # C not divisible by K
        (8, (9,), (4,), (1,)),  # even K: offsets -2, -1, 0, 1
        (9, (3,), (9,), (1,)),  # L shorter than the largest shift
        (6, (10,), (3,), (2,)),  # dilation
        (5, (6,), (5,), (3,)),  # K = C
        (4, (5,), (1,), (1,)),  # K = 1 is the identity
        (40, (70,), (31,), (1,)),  # many groups of unequal size (1-D strided-run path)
        (20, (30,), (6,), (2,)),  # even K with dilation on the strided-run path
        (11, (4, 6), (3, 3), (1, 1)),  # 2-D, 9 groups
        (7, (5, 4), (2, 3), (2, 1)),  # 2-D, even kernel, dilation on one axis
    ],
)
def test_reference_matches_depthwise_oracle(channels, spatial, kernel_size, dilation):
    x = torch.randn(3, channels, *spatial, dtype=torch.float64)
    expected = oracle_relative_context(x, kernel_size, dilation)
    assert torch.allclose(relative_context(x, kernel_size, dilation), expected, atol=1e-12)


def test_reference_channels_last_and_int_arguments():
    x = torch.randn(2, 13, 7, dtype=torch.float64)  # [batch, time, channels]
    got = relative_context(x, 3, 2, channel_dim=-1, spatial_dims=(-2,))
    expected = oracle_relative_context(x.transpose(1, 2), (3,), (2,)).transpose(1, 2)
    assert torch.allclose(got, expected, atol=1e-12)
    image = torch.randn(1, 9, 4, 5, dtype=torch.float64)
    assert torch.allclose(relative_context(image, 3), oracle_relative_context(image, (3, 3), (1, 1)))
    # A non-contiguous channels-first view with many groups.
    wide = torch.randn(2, 40, 33, dtype=torch.float64).transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.allclose(relative_context(wide, 7), oracle_relative_context(wide, (7,), (1,)))


def test_reference_refuses_more_groups_than_channels():
    with pytest.raises(ValueError, match="K = 9 groups need at least 9 channels"):
        relative_context(torch.randn(1, 4, 10, 10), (3, 3))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "channels,length,kernel_size,dilation,partner_anchored_fits",
    [
        (40, 70, 31, 1, True),  # K = 31 groups of 1 and 2 channels; bands 15 wide
        (64, 50, 9, 2, True),  # dilation; C % K = 1
        (20, 31, 6, 2, True),  # even K: offsets -6..4, so the adjoint's are -4..6
        (7, 11, 3, 1, True),  # one group per run
        (40, 50, 31, 1, False),  # the channels-last adjoint needs 4R < L, else the general path
    ],
)
def test_strided_run_path_and_its_adjoint_match_the_oracle(
    channels_last, channels, length, kernel_size, dilation, partner_anchored_fits
):
    # Forward against the depthwise-conv oracle, and the adjoint (the relative context
    # with negated offsets, what backward runs) against autograd through the oracle.
    torch.manual_seed(0)
    x = torch.randn(2, channels, length, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, channels, length, dtype=torch.float64)
    expected = oracle_relative_context(x, (kernel_size,), (dilation,))
    (expected_adjoint,) = torch.autograd.grad(expected, x, grad)
    offsets = group_offsets((kernel_size,), (dilation,))
    adjoint = tuple((-s,) for (s,) in offsets)
    layout = (-1, (-2,)) if channels_last else (1, (2,))

    def native(t: torch.Tensor) -> torch.Tensor:  # [batch, C, L] -> the tested layout
        return t.detach().transpose(1, 2).contiguous() if channels_last else t.detach()

    # Only the channels-last adjoint (negative step, channels densest) is partner-anchored.
    adjoint_fast = partner_anchored_fits or not channels_last
    for offs, want, fast in ((offsets, expected, True), (adjoint, expected_adjoint, adjoint_fast)):
        source = native(x if offs is offsets else grad)
        out = torch.full_like(source, float("nan"))  # every position must be written
        channel_dim, spatial_dims = layout[0] % 3, (layout[1][0] % 3,)
        took_fast_path = pytorch_module._relative_context_1d_runs(source, channel_dim, spatial_dims, offs, out)
        assert took_fast_path == fast
        if not fast:
            out = pytorch_module._apply_relative_context(source, channel_dim, spatial_dims, offs)
        assert torch.allclose(out, native(want), atol=1e-12)


def test_gradcheck_relative_context_and_layer():
    x = torch.randn(2, 7, 9, dtype=torch.float64, requires_grad=True)
    # fast_mode compares random projections of the Jacobians: a full check at a fraction
    # of the cost of one perturbation per input element.
    assert torch.autograd.gradcheck(lambda t: relative_context(t, 3, 2), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: relative_context(t, 4), (x,), fast_mode=True)
    image = torch.randn(1, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: relative_context(t, (3, 3)), (image,), fast_mode=True)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for linear_first in (False, True):
        assert torch.autograd.gradcheck(
            lambda t, w_, b_, linear_first=linear_first: ssc_reference(t, w_, b_, [3], [1], [2], linear_first),
            (x, w, b),
            fast_mode=True,
        )


@pytest.mark.parametrize("channels_last,stride", [(False, 1), (False, 2), (True, 3)])
def test_eager_layer_gradients_match_the_autograd_composition(channels_last, stride):
    # ssc_layer's eager CPU path (rc(X)'s buffer reused for dX) against autograd through
    # the differentiable composition.
    torch.manual_seed(0)
    shape = (2, 10, 7) if channels_last else (2, 7, 10)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    config = ((3,), (2,), (stride,), False, channels_last)
    y = ssc_layer(x, w, b, *config)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), grad)
    expected = torch.autograd.grad(ssc_reference(x, w, b, *config), (x, w, b), grad)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-12)


@pytest.mark.parametrize("linear_first", [False, True])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_ssc_conv1d_matches_oracle(linear_first, stride):
    layer = SSCConv1d(9, 6, kernel_size=3, stride=stride, dilation=2, linear_first=linear_first).double()
    x = torch.randn(2, 9, 10, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 6, math.ceil(10 / stride))
    expected = oracle_ssc(x, layer.weight, layer.bias, (3,), (2,), (stride,), linear_first)
    assert torch.allclose(y, expected, atol=1e-12)


def test_ssc_conv2d_matches_oracle():
    layer = SSCConv2d(10, 4, kernel_size=(3, 3), stride=(2, 1)).double()
    x = torch.randn(2, 10, 5, 6, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 4, 3, 6)
    expected = oracle_ssc(x, layer.weight, layer.bias, (3, 3), (1, 1), (2, 1), False)
    assert torch.allclose(y, expected, atol=1e-12)


def test_stride_keeps_every_sth_position_after_the_context():
    layer = SSCConv1d(6, 6, kernel_size=3, stride=1, bias=False).double()
    strided = SSCConv1d(6, 6, kernel_size=3, stride=3, bias=False).double()
    strided.load_state_dict(layer.state_dict())
    x = torch.randn(1, 6, 11, dtype=torch.float64)
    assert torch.allclose(strided(x), layer(x)[..., 0::3], atol=1e-12)


@pytest.mark.parametrize("seq_dim,shape", [(-2, (2, 3, 12, 8)), (0, (12, 2, 8)), (1, (2, 12, 8))])
def test_ssc_linear_seq_dim(seq_dim, shape):
    layer = SSCLinear(8, 5, kernel_size=3, seq_dim=seq_dim).double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (*shape[:-1], 5)
    moved = x.movedim(seq_dim, -2)  # [..., time, features]
    channels_first = moved.reshape(-1, 12, 8).transpose(1, 2)
    expected = oracle_ssc(channels_first, layer.weight, layer.bias, (3,), (1,), (1,), False)
    expected = expected.transpose(1, 2).reshape(*moved.shape[:-1], 5).movedim(-2, seq_dim)
    assert torch.allclose(y, expected, atol=1e-12)


def test_ssc_linear_needs_a_sequence_axis():
    layer = SSCLinear(8, 4, kernel_size=3)
    layer.module_path = "head.proj"
    with pytest.raises(ValueError, match="'head.proj' needs a sequence axis"):
        layer(torch.randn(8))


@pytest.mark.parametrize("kernel_size", [1, 3, 31])
def test_parameter_count_independent_of_k(kernel_size):
    layer = SSCConv1d(64, 32, kernel_size)
    assert sum(p.numel() for p in layer.parameters()) == 64 * 32 + 32
    assert sum(p.numel() for p in SSCLinear(64, 32, kernel_size, bias=False).parameters()) == 64 * 32


def test_layer_refuses_more_groups_than_channels():
    with pytest.raises(ValueError, match="K = 9 channel groups but in_channels = 8"):
        SSCConv2d(8, 16, 3)
    with pytest.raises(ValueError, match="out_channels = 4"):
        SSCConv1d(16, 4, 5, linear_first=True)


def test_from_module_pointwise_with_k1_is_the_same_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9)
    conv = nn.Conv1d(6, 4, 1, stride=2)
    assert torch.allclose(from_module(conv, kernel_size=1)(x), conv(x), atol=1e-6)
    linear = nn.Linear(6, 4)
    assert torch.allclose(from_module(linear, kernel_size=1)(x.transpose(1, 2)), linear(x.transpose(1, 2)), atol=1e-6)
    conv2 = nn.Conv2d(6, 4, 1, bias=False)
    image = torch.randn(1, 6, 3, 5)
    assert torch.allclose(from_module(conv2, kernel_size=1)(image), conv2(image), atol=1e-6)


def test_from_module_takes_conv_settings():
    conv = nn.Conv1d(12, 8, 5, stride=2, dilation=3, padding=6, bias=False)
    ssc_layer = from_module(conv)
    assert isinstance(ssc_layer, SSCConv1d)
    assert (ssc_layer.kernel_size, ssc_layer.stride, ssc_layer.dilation) == ((5,), (2,), (3,))
    assert ssc_layer.bias is None
    x = torch.randn(2, 12, 17)
    assert ssc_layer(x).shape == conv(x).shape
    conv2 = nn.Conv2d(12, 8, (3, 3), stride=2, padding=1)
    ssc2 = from_module(conv2, kernel_size=(1, 3))
    assert isinstance(ssc2, SSCConv2d) and ssc2.n_groups == 3
    image = torch.randn(1, 12, 7, 9)
    assert ssc2(image).shape == conv2(image).shape


@pytest.mark.parametrize(
    "layer,match",
    [
        (nn.Conv1d(8, 8, 3, padding=1, groups=8), "depthwise convolution"),
        (nn.Conv1d(8, 8, 3, padding=1, groups=2), "grouped convolution"),
        (nn.ConvTranspose1d(8, 8, 4, stride=2), "transposed"),
        (nn.Conv1d(2, 8, 3, padding=1), "K = 3 channel groups exceed the 2 input channels"),
        (nn.Conv1d(8, 8, 3), "changes the output length"),
        (nn.Linear(8, 8), "give kernel_size"),
    ],
)
def test_from_module_refusals(layer, match):
    with pytest.raises(ValueError, match=match):
        from_module(layer)


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.depthwise = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Conv1d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, time, 16]
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.ffn(x)
        return self.head(self.depthwise(x.transpose(1, 2)))


def test_swap_to_ssc_replaces_by_glob_and_reports():
    torch.manual_seed(0)
    model = _TinyTransformer()
    before = sum(p.numel() for p in model.parameters())
    report = swap_to_ssc(model, include=["ffn.*", "head"], exclude=["ffn.2"], kernel_size=3)
    assert [entry.path for entry in report.swapped] == ["ffn.0", "head"]
    assert isinstance(model.ffn[0], SSCLinear) and isinstance(model.ffn[2], nn.Linear)
    assert isinstance(model.head, SSCConv1d) and model.head.n_groups == 3
    assert report.params_before == report.params_after == before
    assert model.head.module_path == "head"
    assert "ffn.0" in str(report)
    assert model(torch.randn(2, 10, 16)).shape == (2, 4, 10)


def test_swap_to_ssc_refuses_with_module_names():
    model = _TinyTransformer()
    with pytest.raises(ValueError) as info:
        swap_to_ssc(model, kernel_size=3)
    message = str(info.value)
    assert "depthwise (Conv1d): depthwise convolution" in message
    assert "attn.out_proj: used by nn.MultiheadAttention" in message
    assert isinstance(model.ffn[0], nn.Linear)  # nothing swapped on refusal
    with pytest.raises(ValueError, match="selects no Linear/Conv1d/Conv2d"):
        swap_to_ssc(model, include=["nothing.*"], kernel_size=3)


def test_build_model_ssc_block():
    from sepkit.models import build_model

    config = dict(n_filters=32, bottleneck=16, hidden=32, skip_channels=16, n_blocks=2, n_repeats=1)
    plain = build_model("conv_tasnet", **config)
    swapped = build_model("conv_tasnet", ssc={"preset": "pointwise", "kernel_size": 3}, **config)
    assert sum(p.numel() for p in swapped.parameters()) == sum(p.numel() for p in plain.parameters())
    assert isinstance(swapped.masker.blocks[1].in_conv, SSCConv1d)
    assert swapped.model_config["ssc"] == {"preset": "pointwise", "kernel_size": 3}
    assert swapped(torch.randn(1, 400)).shape == (1, 2, 400)


def test_custom_op_opcheck_on_cpu():
    # Schema, fake (meta) implementation and autograd registration of sepkit::ssc.
    x = torch.randn(2, 7, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for args in [
        (x, w, None, [3], [2], [2], True, False),
        (x.detach().transpose(1, 2).contiguous().requires_grad_(), w, b, [3], [1], [2], False, True),
    ]:
        torch.library.opcheck(ssc_op, args)
    y = ssc_op(x, w, b, [3], [2], [2], True, False)
    y.backward(torch.ones_like(y))
    x_ref, w_ref, b_ref = (t.detach().requires_grad_() for t in (x, w, b))
    ssc_reference(x_ref, w_ref, b_ref, [3], [2], [2], True, False).backward(torch.ones_like(y))
    for got, expected in ((x.grad, x_ref.grad), (w.grad, w_ref.grad), (b.grad, b_ref.grad)):
        assert torch.allclose(got, expected, atol=1e-12)
    # sepkit::relative_context, which the reference composition calls.
    image = torch.randn(1, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    for args in [
        (x, 1, [2], [3], [2], False),
        (x.detach().transpose(1, 2).contiguous().requires_grad_(), 2, [1], [4], [1], True),
        (image, 1, [2, 3], [3, 3], [1, 1], False),
    ]:
        torch.library.opcheck(pytorch_module.relative_context_op, args)


def test_torch_compile_traces_the_custom_op_and_the_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)

    def through_op(x_, w_):
        return ssc_op(x_, w_, None, [3], [1], [2], False, False).square().sum()

    compiled = torch.compile(through_op, backend="aot_eager", fullgraph=True)
    loss = compiled(x, w)
    loss.backward()
    x_ref, w_ref = x.detach().requires_grad_(), w.detach().requires_grad_()
    ssc_reference(x_ref, w_ref, None, [3], [1], [2], False, False).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(w.grad, w_ref.grad, atol=1e-4)

    # The layers trace in one graph (no breaks), forward and backward, in both layouts.
    for layer, shape in ((SSCConv1d(8, 6, 3), (2, 8, 12)), (SSCLinear(8, 6, 5), (2, 12, 8))):
        x_eager = torch.randn(*shape, requires_grad=True)
        x_compiled = x_eager.detach().requires_grad_()
        eager = layer(x_eager)
        eager.square().sum().backward()
        compiled_layer = torch.compile(layer, backend="aot_eager", fullgraph=True)
        compiled = compiled_layer(x_compiled)
        compiled.square().sum().backward()
        assert torch.allclose(compiled, eager, atol=1e-6)
        assert torch.allclose(x_compiled.grad, x_eager.grad, atol=1e-5)


def test_backend_resolution(monkeypatch):
    x = torch.randn(1, 3, 4)
    assert backend_module.resolve_backend(x) == "reference"
    monkeypatch.setenv(backend_module.BACKEND_ENV, "triton")
    assert backend_module.resolve_backend(x) == "triton"
    with use_backend("reference"):
        assert backend_module.resolve_backend(x) == "reference"
    assert backend_module.resolve_backend(x) == "triton"
    monkeypatch.setenv(backend_module.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="SEPKIT_SSC_BACKEND='fast'"):
        backend_module.resolve_backend(x)
    with pytest.raises(ValueError, match="unknown SSC backend"):
        backend_module.set_backend("cuda")


def test_ops_modules_import_without_cycles_and_triton_needs_only_the_layout():
    # Import graph of sepkit/ops read from the source (lazy imports inside functions
    # included): the Triton kernels depend on the group layout alone, and no module reaches
    # itself again.
    ops_dir = Path(sepkit.ops.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in ops_dir.glob("*.py"):
        module = f"sepkit.ops.{path.stem}" if path.stem != "__init__" else "sepkit.ops"
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sepkit.ops"):
                # ``from sepkit.ops import ssc_triton`` imports the submodule (the package
                # itself is initialised before any of its modules runs).
                submodules = {f"sepkit.ops.{a.name}" for a in node.names if (ops_dir / f"{a.name}.py").exists()}
                imported |= submodules if node.module == "sepkit.ops" and submodules else {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("sepkit.ops")}
        graph[module] = imported - {module}
    assert graph["sepkit.ops.ssc_triton"] == {"sepkit.ops.ssc_layout"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for child in graph.get(start, set()) - seen:
            if child == target or reaches(child, target, seen | {child}):
                return True
        return False

    cyclic = [module for module in graph if module != "sepkit.ops" and reaches(module, module, set())]
    assert cyclic == []
