"""Custom ops (SSC relative context: reference and fused kernels).

Modules, each importing only those above it: ``ssc_layout`` (group split and offsets),
``ssc_pytorch`` (plain-PyTorch reference), ``ssc_backend`` (backend choice), ``ssc_op`` (the custom
op, Triton or reference), ``ssc`` (the :func:`ssc_layer` entry point); ``ssc_triton`` (the
kernels) imports only ``ssc_layout`` and is imported by ``ssc_op`` on first use.
"""

from sepkit.ops.ssc import ssc_layer
from sepkit.ops.ssc_backend import resolve_backend, set_backend, use_backend
from sepkit.ops.ssc_pytorch import relative_context, ssc_reference

__all__ = [
    "relative_context",
    "resolve_backend",
    "set_backend",
    "ssc_layer",
    "ssc_reference",
    "use_backend",
]
