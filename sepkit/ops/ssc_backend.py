"""SSC backend choice: the Triton kernels for CUDA tensors, the plain-PyTorch reference for
everything else, per call from the tensor's device; forced with :func:`set_backend` /
:func:`use_backend` or the environment variable ``SEPKIT_SSC_BACKEND`` (``auto``,
``reference`` or ``triton``; ``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from torch import Tensor

BACKEND_ENV = "SEPKIT_SSC_BACKEND"
BACKENDS = ("auto", "reference", "triton")
_backend_override: str | None = None


def set_backend(name: str | None) -> None:
    """Force the SSC backend for this process: ``"reference"``, ``"triton"`` or
    ``"auto"``/None (CUDA tensors use Triton, everything else the reference). Overrides
    the ``SEPKIT_SSC_BACKEND`` environment variable."""
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown SSC backend {name!r}; choose one of {BACKENDS}")
    _backend_override = name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager form of :func:`set_backend` (restores the previous choice)."""
    previous = _backend_override
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def resolve_backend(x: Tensor) -> str:
    """``"triton"`` or ``"reference"`` for a call on tensor ``x``."""
    choice = _backend_override or os.environ.get(BACKEND_ENV, "auto") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={choice!r} is not one of {BACKENDS}")
    if choice == "auto":
        return "triton" if x.is_cuda and _triton_available() else "reference"
    return choice


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
