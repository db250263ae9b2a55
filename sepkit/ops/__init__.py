"""Custom ops (SSC relative context: reference and fused kernels)."""

from sepkit.ops.ssc import (
    relative_context,
    resolve_backend,
    set_backend,
    ssc_layer,
    ssc_reference,
    use_backend,
)

__all__ = [
    "relative_context",
    "resolve_backend",
    "set_backend",
    "ssc_layer",
    "ssc_reference",
    "use_backend",
]
