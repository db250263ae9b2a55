"""Custom ops (SSC relative context: reference and fused kernels)."""
