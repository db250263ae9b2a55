"""The fused Triton SSC kernels against the float64 reference, forward and backward, on small
awkward shapes: compiled on a CUDA GPU, or interpreted on CPU tensors under
``TRITON_INTERPRET=1``.

Triton decides between compiling and interpreting when it is imported (its own
``tl.zeros`` etc. are decorated then), so the interpreter can only be switched on before
the first ``import triton`` of the process, and must stay on afterwards (Triton re-checks
it when launching). This module switches it on when it is the first to import Triton and
there is no GPU whose compiled kernels the switch would break. The kernel cases
(:class:`TestKernels`) run here when the kernels can: interpreted, or compiled on a GPU.
Otherwise (no GPU, and e.g. an earlier test module imported ``torch._dynamo``, which
imports Triton) they are not collected here at all, and
:func:`test_interpreted_kernels_in_child_process` runs them in a child pytest started with
``TRITON_INTERPRET=1`` and checks from its JUnit report that every one of them passed.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

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
# Where the kernel cases run in this process: CPU tensors through the interpreter, CUDA
# tensors through compiled kernels, or nowhere (then in the child process).
if INTERPRETED_HERE:
    KERNEL_DEVICE: torch.device | None = torch.device("cpu")
elif torch.cuda.is_available():
    KERNEL_DEVICE = torch.device("cuda")
else:
    KERNEL_DEVICE = None


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


def _inputs(
    case: tuple, dtype: torch.dtype, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Seeded ``x`` (``[batch, in, *spatial]`` or channels last), ``w [out, in]`` and bias
    ``[out]`` (or None), drawn on the CPU so every device sees the same numbers."""
    batch, c_in, c_out, spatial, *_, channels_last, bias = case
    generator = torch.Generator().manual_seed(0)
    shape = (batch, *spatial, c_in) if channels_last else (batch, c_in, *spatial)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    w = (torch.randn(c_out, c_in, generator=generator) / c_in**0.5).to(device=device, dtype=dtype)
    b = torch.randn(c_out, generator=generator).to(device=device, dtype=dtype) if bias else None
    return x, w, b


def _check(kernels, case: tuple, dtype: torch.dtype, atol: float, rtol: float) -> None:
    *_, kernel_size, dilation, stride, linear_first, channels_last, _bias = case
    config = (list(kernel_size), list(dilation), list(stride), linear_first, channels_last)
    x, w, b = _inputs(case, dtype, KERNEL_DEVICE)
    y = kernels.ssc_forward(x, w, b, *config)
    # The reference in float64 on the CPU from the same (rounded) inputs.
    x64, w64 = x.cpu().double(), w.cpu().double()
    b64 = b.cpu().double() if b is not None else None
    expected = ssc_reference(x64, w64, b64, *config)
    assert y.device == x.device and y.dtype == dtype and y.shape == expected.shape
    torch.testing.assert_close(y.cpu().double(), expected, atol=atol, rtol=rtol)

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(device=x.device, dtype=dtype)
    dx, dw, db = kernels.ssc_backward(grad, x, w, b is not None, *config, True, True)
    ref_dx, ref_dw, ref_db = ssc_reference_backward(grad.cpu().double(), x64, w64, b is not None, *config)
    torch.testing.assert_close(dx.cpu().double(), ref_dx, atol=atol, rtol=rtol)
    torch.testing.assert_close(dw.cpu().double(), ref_dw, atol=atol * 4, rtol=rtol)
    if b is not None:
        torch.testing.assert_close(db.cpu().double(), ref_db, atol=atol * 4, rtol=rtol)
    else:
        assert db.numel() == 0


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


@pytest.fixture(scope="module")
def kernels():
    """``sepkit.ops.ssc_triton``, interpreted on CPU or compiled for the GPU."""
    module = importlib.import_module("sepkit.ops.ssc_triton")
    assert module.INTERPRETED == (KERNEL_DEVICE == torch.device("cpu"))
    return module


class TestKernels:
    """The kernel cases; collected only where they can run (see the module docstring), so a
    run never reports them as skipped."""

    __test__ = KERNEL_DEVICE is not None

    @pytest.mark.parametrize("name", list(CASES))
    def test_kernels_fp32_match_reference(self, kernels, name):
        _check(kernels, CASES[name], torch.float32, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("name", ["dilation2_stride2", "linear_first_channels_last_even_K"])
    def test_kernels_bf16_match_reference(self, kernels, name):
        # bf16 operands, fp32 accumulation: the output rounding (8 bits of mantissa) dominates.
        _check(kernels, CASES[name], torch.bfloat16, atol=3e-2, rtol=2e-2)

    def test_kernels_fp16_match_reference(self, kernels):
        _check(kernels, CASES["channels_last_stride2"], torch.float16, atol=5e-3, rtol=5e-3)

    def test_layers_dispatch_to_the_kernels_with_autograd(self, kernels, monkeypatch):
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
            layer.to(KERNEL_DEVICE)
            x = x.to(KERNEL_DEVICE).requires_grad_()
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


def _kernel_case_ids() -> set[str]:
    """JUnit names (``method[param]``) of every TestKernels case, from its parametrisation."""
    ids = set()
    for name, method in vars(TestKernels).items():
        if not name.startswith("test_"):
            continue
        params = [mark.args[1] for mark in getattr(method, "pytestmark", []) if mark.name == "parametrize"]
        assert len(params) <= 1, "extend _kernel_case_ids for stacked parametrisations"
        ids |= {f"{name}[{value}]" for value in params[0]} if params else {name}
    return ids


def test_interpreted_kernels_in_child_process(tmp_path: Path):
    # Every kernel case must pass in the child: a skip, failure or error, or a case that
    # was not run at all, fails this test.
    report = tmp_path / "child.xml"
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"{__file__}::TestKernels",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        assert case.get("classname", "").endswith("TestKernels"), case.attrib
        not_passed = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name")] = not_passed[0] if not_passed else "passed"
    expected = _kernel_case_ids()
    assert outcomes == dict.fromkeys(expected, "passed")


test_interpreted_kernels_in_child_process.__test__ = KERNEL_DEVICE is None  # type: ignore[attr-defined]
