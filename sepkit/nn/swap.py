"""Swap ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers of a model for SSC layers by
module path (``build_model(..., ssc={...})`` and the ``ssc:`` block of every recipe use
this)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from sepkit.nn.ssc import from_module, replacement_problem
from sepkit.ops.ssc import IntOrTuple

# Layer types a glob may select: the replaceable ones and those refused with a reason.
_CANDIDATE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass
class SwappedLayer:
    """One replaced layer: its module path, both layers' summaries and parameter counts."""

    path: str
    original: str
    replacement: str
    params_before: int
    params_after: int


@dataclass
class SSCSwapReport:
    """What :func:`swap_to_ssc` replaced and the model's parameter count before/after."""

    swapped: list[SwappedLayer] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def __str__(self) -> str:
        lines = [f"SSC swap: {len(self.swapped)} layers"]
        for entry in self.swapped:
            lines.append(
                f"  {entry.path}: {entry.original} -> {entry.replacement} "
                f"({entry.params_before:,} -> {entry.params_after:,} params)"
            )
        lines.append(f"  model parameters: {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _matches(path: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns or ())


def swap_to_ssc(
    module: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    kernel_size: IntOrTuple | None = None,
    dilation: IntOrTuple | None = None,
    linear_first: bool = False,
    seq_dim: int = -2,
) -> SSCSwapReport:
    """Replace, in place, every Linear/Conv1d/Conv2d whose module path matches ``include``
    and none of ``exclude`` by its SSC equivalent (:func:`sepkit.nn.ssc.from_module`).

    Args:
        module: the model; modified in place.
        include: glob patterns on dotted module paths (``fnmatch``, ``*`` crosses dots),
            e.g. ``["masker.*.ffn.*"]``; None selects every candidate layer.
        exclude: glob patterns removed from the selection.
        kernel_size: K (int, or one per spatial axis for Conv2d); None keeps a conv's own
            kernel size. Required when a Linear is selected.
        dilation: offset spacing; None keeps a conv's own dilation (1 for a Linear).
        linear_first: SSC variant with the linear map before the relative context.
        seq_dim: sequence axis of the inputs of swapped Linear layers (channels last).

    Returns:
        A :class:`SSCSwapReport`.

    Raises:
        ValueError: naming every selected layer that cannot be replaced and why (grouped or
            depthwise conv, transposed conv, K > channels, length-changing padding, a
            Linear inside nn.MultiheadAttention, ...), before anything is changed; or when
            the selection is empty.
    """
    selected: list[tuple[str, nn.Module]] = []
    refused: list[str] = []
    for path, layer in module.named_modules():
        if not path or not isinstance(layer, _CANDIDATE_TYPES):
            continue
        if include is not None and not _matches(path, include):
            continue
        if _matches(path, exclude):
            continue
        parent_path, _, _ = path.rpartition(".")
        parent = module.get_submodule(parent_path)
        if isinstance(parent, nn.MultiheadAttention):
            refused.append(
                f"{path}: used by nn.MultiheadAttention, which reads its weights directly instead of calling the layer"
            )
            continue
        problem = replacement_problem(layer, kernel_size, linear_first)
        if problem is not None:
            refused.append(f"{path} ({type(layer).__name__}): {problem}")
            continue
        selected.append((path, layer))
    if refused:
        raise ValueError(
            f"swap_to_ssc on {type(module).__name__} cannot replace {len(refused)} selected "
            "layer(s) (narrow `include` or add them to `exclude`):\n  " + "\n  ".join(refused)
        )
    if not selected:
        raise ValueError(
            f"swap_to_ssc on {type(module).__name__}: include={list(include or [])} "
            f"exclude={list(exclude or [])} selects no Linear/Conv1d/Conv2d layer"
        )
    report = SSCSwapReport(params_before=_count(module))
    for path, layer in selected:
        new = from_module(layer, kernel_size=kernel_size, dilation=dilation, linear_first=linear_first, seq_dim=seq_dim)
        new.module_path = path
        new.train(layer.training)
        parent_path, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent_path), name, new)
        report.swapped.append(SwappedLayer(path, repr(layer), repr(new), _count(layer), _count(new)))
    report.params_after = _count(module)
    return report
