"""The fused Triton SSC kernels, run on CPU tensors under ``TRITON_INTERPRET=1``, against
the float64 reference in forward and backward on small awkward shapes.

Triton decides between compiling and interpreting when it is imported (its own
``tl.zeros`` etc. are decorated then), so the interpreter can only be switched on before
the first ``import triton`` of the process, and must stay on afterwards (Triton re-checks
it when launching). This module does that when it is the first to import Triton and there
is no GPU whose compiled kernels the switch would break; otherwise
(e.g. an earlier test module imported ``torch._dynamo``, which imports Triton) the same
tests run in a child process started with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from sepkit.nn import SSCConv1d, SSCLinear  # noqa: E402
from sepkit.ops import ssc_reference, use_backend  # noqa: E402
from sepkit.ops.ssc_pytorch import ssc_reference_backward  # noqa: E402

INTERPRETED_HERE = isinstance(triton.language.zeros, InterpretedFunction)
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED_HERE,
    reason="Triton was imported before TRITON_INTERPRET=1 could be set; these cases run "
    "in a child process (test_interpreted_kernels_in_child_process)",
)


@pytest.mark.skipif(INTERPRETED_HERE, reason="the kernel tests run in this process")
def test_interpreted_kernels_in_child_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


@pytest.fixture(scope="module")
def kernels():
    """``sepkit.ops.ssc_triton`` (decorated in interpreter mode)."""
    module = importlib.import_module("sepkit.ops.ssc_triton")
    assert module.INTERPRETED
    return module


# (batch, in, out, spatial, kernel_size, dilation, stride, linear_first, channels_last, bias)
CASES = {
    "C_not_divisible_by_K": (2, 7, 5, (11,), (3,), (1,), (1,), False, False, True),
    "L_shorter_than_shift": (1, 9, 4, (3,), (9,), (1,), (1,), False, False, True),
    "K1": (2, 5, 6, (7,), (1,), (1,), (1,), False, False, False),
    "K_equals_C": (1, 5, 3, (6,), (5,), (1,), (1,), False, False, True),
    "dilation2_stride2": (2, 7, 5, (11,), (3,), (2,), (2,), False, False, True),
    "channels_last_stride2": (2, 7, 5, (10,), (3,), (1,), (2,), False, True, True),
    "linear_first_dilation2_stride2": (2, 6, 7, (11,), (3,), (2,), (2,), True, False, True),
    "linear_first_channels_last_even_K": (2, 5, 6, (9,), (4,), (1,), (3,), True, True, False),
    "conv2d_3x3_stride2": (1, 10, 4, (4, 5), (3, 3), (1, 1), (2, 2), False, False, True),
    "conv2d_linear_first": (1, 4, 9, (3, 4), (3, 3), (1, 2), (1, 2), True, False, True),
    "wide_tiles": (1, 20, 18, (19,), (5,), (1,), (1,), False, True, True),
}


def _inputs(case: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    batch, c_in, c_out, spatial, *_, channels_last, bias = case
    generator = torch.Generator().manual_seed(0)
    shape = (batch, *spatial, c_in) if channels_last else (batch, c_in, *spatial)
    x = torch.randn(shape, generator=generator).to(dtype)
    w = (torch.randn(c_out, c_in, generator=generator) / c_in**0.5).to(dtype)
    b = torch.randn(c_out, generator=generator).to(dtype) if bias else None
    return x, w, b


def _check(kernels, case: tuple, dtype: torch.dtype, atol: float, rtol: float) -> None:
    *_, kernel_size, dilation, stride, linear_first, channels_last, _bias = case
    config = (list(kernel_size), list(dilation), list(stride), linear_first, channels_last)
    x, w, b = _inputs(case, dtype)
    y = kernels.ssc_forward(x, w, b, *config)
    # The reference in float64 from the same (rounded) inputs.
    x64, w64 = x.double(), w.double()
    b64 = b.double() if b is not None else None
    expected = ssc_reference(x64, w64, b64, *config)
    assert y.dtype == dtype and y.shape == expected.shape
    torch.testing.assert_close(y.double(), expected, atol=atol, rtol=rtol)

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    dx, dw, db = kernels.ssc_backward(grad, x, w, b is not None, *config, True, True)
    ref_dx, ref_dw, ref_db = ssc_reference_backward(grad.double(), x64, w64, b is not None, *config)
    torch.testing.assert_close(dx.double(), ref_dx, atol=atol, rtol=rtol)
    torch.testing.assert_close(dw.double(), ref_dw, atol=atol * 4, rtol=rtol)
    if b is not None:
        torch.testing.assert_close(db.double(), ref_db, atol=atol * 4, rtol=rtol)
    else:
        assert db.numel() == 0


@needs_interpreter
@pytest.mark.parametrize("name", list(CASES))
def test_kernels_fp32_match_reference(kernels, name):
    _check(kernels, CASES[name], torch.float32, atol=1e-5, rtol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("name", ["dilation2_stride2", "linear_first_channels_last_even_K"])
def test_kernels_bf16_match_reference(kernels, name):
    # bf16 operands, fp32 accumulation: the output rounding (8 bits of mantissa) dominates.
    _check(kernels, CASES[name], torch.bfloat16, atol=3e-2, rtol=2e-2)


@needs_interpreter
def test_kernels_fp16_match_reference(kernels):
    _check(kernels, CASES["channels_last_stride2"], torch.float16, atol=5e-3, rtol=5e-3)


def test_reference_backward_matches_autograd():
    # The explicit reference backward (used by the custom op on CPU and as the kernels'
    # oracle above) against autograd through the reference forward.
    for case in (CASES["linear_first_dilation2_stride2"], CASES["conv2d_3x3_stride2"], CASES["channels_last_stride2"]):
        *_, kernel_size, dilation, stride, linear_first, channels_last, _bias = case
        config = (list(kernel_size), list(dilation), list(stride), linear_first, channels_last)
        x, w, b = (t.double().requires_grad_() for t in _inputs(case, torch.float64))
        y = ssc_reference(x, w, b, *config)
        grad = torch.randn(y.shape, dtype=torch.float64)
        y.backward(grad)
        dx, dw, db = ssc_reference_backward(grad, x.detach(), w.detach(), True, *config)
        for got, expected in ((dx, x.grad), (dw, w.grad), (db, b.grad)):
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@needs_interpreter
def test_layers_dispatch_to_the_kernels_with_autograd(kernels, monkeypatch):
    # Forcing the Triton backend routes the layers through torch.ops.sepkit.ssc and its
    # registered autograd, i.e. the path a CUDA tensor takes.
    calls = []
    for name in ("ssc_forward", "ssc_backward"):
        original = getattr(kernels, name)

        def counted(*args, _original=original, _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(kernels, name, counted)
    torch.manual_seed(0)
    for layer, x in (
        (SSCConv1d(7, 5, 3, stride=2, dilation=2), torch.randn(2, 7, 9)),
        (SSCLinear(6, 8, 4, linear_first=True), torch.randn(2, 10, 6)),
    ):
        x.requires_grad_()
        with use_backend("triton"):
            y = layer(x)
            y.square().sum().backward()
        assert calls == ["ssc_forward", "ssc_backward"]
        calls.clear()
        fused = (y.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
        x.grad = None
        layer.zero_grad()
        with use_backend("reference"):
            y_ref = layer(x)
            y_ref.square().sum().backward()
        reference = (y_ref.detach(), x.grad, layer.weight.grad, layer.bias.grad)
        for got, expected in zip(fused, reference):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
