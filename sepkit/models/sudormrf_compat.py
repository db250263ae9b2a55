"""Load the SuDoRM-RF authors' released models (github etzinis/sudo_rm_rf, Zenodo record
6299852) into sepkit's ``sudormrf``.

The releases are whole modules saved with ``torch.save(model, path)``. They are read
with :mod:`sepkit.restricted_pickle`, which never imports or runs the authors' classes:
the module tree comes back as inert stand-ins from which the constructor arguments
(``in_channels``, ``out_channels``, ``num_blocks``, ``upsampling_depth``,
``enc_kernel_size``, ``enc_num_basis``, ``num_sources``) and the state dict are read.
A plain state dict of either model (e.g. a training checkpoint, ``module.`` prefix of
``DataParallel`` allowed) is accepted too when those arguments are given.

Supported: ``SuDORMRF`` of ``sudormrf.py`` (the original model: grouped decoder with bias,
ReLU encoder with bias, softmax masks), ``SuDORMRF`` of ``improved_sudormrf.py``
(SuDoRM-RF++: joint decoder and encoder without bias, ReLU masks) and
``GroupCommSudoRmRf`` of ``groupcomm_sudormrf_v2.py`` (SuDoRM-RF++ GC: SuDoRM-RF++ whose
blocks ``sm.<i>`` hold a ``TAC`` and a group-shared ``UBlock``), which becomes sepkit's
``sudormrf(improved=True, n_groups=K)``. K is not stored on the authors' top-level module
(only on each block), so it is read from the weights: the TAC's input width is the
group size ``out_channels / K``.

The authors encode with stride ``kernel // 2`` and padding ``kernel // 2`` and pad the
input to a multiple of ``kernel // 2 * 2**depth`` (original: their lcm); sepkit's
centred framing is the same computation on lengths that are such multiples. The README
of the release normalises each mixture to zero mean and unit variance before the model,
which sepkit's ``normalize_input`` does inside it (population instead of unbiased std).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import build_model
from sepkit.restricted_pickle import (
    StandIn,
    read_pickled_modules,
    stand_in_attributes,
    stand_in_state_dict,
)

# Class names of the authors' separators, as their pickles name them.
SUDORMRF_CLASSES = ("SuDORMRF", "SuDORMRFImproved", "GroupCommSudoRmRf")
ARCHITECTURE_ARGS = (
    "in_channels",
    "out_channels",
    "num_blocks",
    "upsampling_depth",
    "enc_kernel_size",
    "enc_num_basis",
    "num_sources",
)

_BLOCK = r"^sm\.(\d+)\."
_COMMON_RENAMES: list[tuple[str, str]] = [
    (_BLOCK + r"proj_1x1\.conv\.", r"masker.blocks.\1.in_conv."),
    (_BLOCK + r"proj_1x1\.norm\.", r"masker.blocks.\1.in_norm."),
    (_BLOCK + r"proj_1x1\.act\.", r"masker.blocks.\1.in_act."),
    (_BLOCK + r"spp_dw\.(\d+)\.conv\.", r"masker.blocks.\1.depthwise.\2."),
    (_BLOCK + r"spp_dw\.(\d+)\.norm\.", r"masker.blocks.\1.depthwise_norms.\2."),
    (_BLOCK + r"final_norm\.norm\.", r"masker.blocks.\1.final_norm."),
    (_BLOCK + r"final_norm\.act\.", r"masker.blocks.\1.final_act."),
    (r"^ln\.", "masker.input_norm."),
    (r"^decoder\.", "decoder.deconv."),
]
_ORIGINAL_RENAMES: list[tuple[str, str]] = [
    (r"^encoder\.0\.", "encoder.conv."),
    (r"^l1\.", "masker.bottleneck."),
    (_BLOCK + r"conv_1x1_exp\.conv\.", r"masker.blocks.\1.out_conv."),
    (_BLOCK + r"conv_1x1_exp\.norm\.", r"masker.blocks.\1.out_norm."),
    (_BLOCK + r"module_act\.norm\.", r"masker.blocks.\1.block_norm."),
    (_BLOCK + r"module_act\.act\.", r"masker.blocks.\1.block_act."),
    (r"^reshape_before_masks\.", "masker.reshape_conv."),
    (r"^m\.", "masker.mask_conv2d."),
    (r"^ln_mask_in\.", "masker.unused_mask_input_norm."),
]
_IMPROVED_RENAMES: list[tuple[str, str]] = [
    (r"^encoder\.weight$", "encoder.conv.weight"),
    (r"^bottleneck\.", "masker.bottleneck."),
    (_BLOCK + r"res_conv\.", r"masker.blocks.\1.out_conv."),
    (r"^mask_net\.0\.", "masker.mask_act_in."),
    (r"^mask_net\.1\.", "masker.mask_conv."),
]
# GroupCommSudoRmRf: each block's TAC, and its U-ConvBlock one level down (``UBlock``),
# which sepkit keeps as ``tac`` and ``block`` of a GroupCommUConvBlock.
_GROUP_COMM_RENAMES: list[tuple[str, str]] = [
    (_BLOCK + r"TAC\." + re.escape(reference) + r"\.", rf"masker.blocks.\1.tac.{ours}.")
    for reference, ours in [
        ("TAC_input.0", "transform"),
        ("TAC_input.1", "transform_act"),
        ("TAC_mean.0", "average"),
        ("TAC_mean.1", "average_act"),
        ("TAC_output.0", "concat"),
        ("TAC_output.1", "concat_act"),
        ("TAC_norm", "norm"),
    ]
] + [
    (_BLOCK + r"UBlock\." + pattern.removeprefix(_BLOCK), replacement.replace(r"blocks.\1.", r"blocks.\1.block."))
    for pattern, replacement in _COMMON_RENAMES + _IMPROVED_RENAMES
    if pattern.startswith(_BLOCK)
]
_TAC_INPUT = "sm.0.TAC.TAC_input.0.weight"
# The improved model's own layer norm calls its affine parameters gamma and beta.
_NORM_SUFFIXES = [(r"\.gamma$", ".weight"), (r"\.beta$", ".bias")]


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"from_sudormrf({source}): {message}")


def _rename(key: str, renames: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in renames:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            for suffix, plain in _NORM_SUFFIXES:
                new_key = re.sub(suffix, plain, new_key)
            return new_key
    return None


def _is_improved(state: Mapping[str, torch.Tensor]) -> bool:
    """The two models differ in their top-level layer names (``l1``/``m`` vs
    ``bottleneck``/``mask_net``); group communication adds ``TAC`` inside the blocks."""
    return "bottleneck.weight" in state


def _group_count(state: Mapping[str, torch.Tensor], args: Mapping[str, Any], source: str) -> int:
    """K of a group-communication state (1 without TAC): ``out_channels`` over the width
    of the first TAC's input Linear ``[3 M, M]``."""
    if not any(".TAC." in key for key in state):
        return 1
    weight = state.get(_TAC_INPUT)
    _require(isinstance(weight, torch.Tensor) and weight.dim() == 2, source, f"no 2-D weight {_TAC_INPUT!r}")
    group_size = weight.shape[1]
    channels = args.get("out_channels")
    _require(
        isinstance(channels, int) and group_size > 0 and channels % group_size == 0,
        source,
        f"{_TAC_INPUT!r} has input width {group_size}, which does not divide out_channels {channels}",
    )
    return channels // group_size


def sudormrf_config(args: Mapping[str, Any], improved: bool, source: str, sample_rate: int) -> dict[str, Any]:
    """sepkit ``sudormrf`` config for the authors' constructor arguments."""
    missing = [name for name in ARCHITECTURE_ARGS if name not in args]
    _require(not missing, source, f"missing constructor arguments {missing}")
    values = {name: args[name] for name in ARCHITECTURE_ARGS}
    bad = [name for name, value in values.items() if isinstance(value, bool) or not isinstance(value, int)]
    _require(not bad, source, f"constructor arguments {bad} are not integers")
    kernel = values["enc_kernel_size"]
    _require(kernel % 2 == 1, source, f"enc_kernel_size {kernel} is even; the released models use odd kernels")
    return dict(
        n_src=values["num_sources"],
        n_filters=values["enc_num_basis"],
        kernel_size=kernel,
        stride=kernel // 2,
        bottleneck=values["out_channels"],
        hidden_channels=values["in_channels"],
        n_blocks=values["num_blocks"],
        upsampling_depth=values["upsampling_depth"],
        improved=improved,
        decoder="joint" if improved else "grouped",
        encoder_bias=not improved,
        normalize_input=True,
        sample_rate=sample_rate,
    )


def _load_into(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], improved: bool, group_comm: bool, source: str
) -> None:
    target = model.state_dict()
    renames = _COMMON_RENAMES + (_IMPROVED_RENAMES if improved else _ORIGINAL_RENAMES)
    if group_comm:
        renames = _GROUP_COMM_RENAMES + renames
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        _require(isinstance(value, torch.Tensor), source, f"weight {key!r} is not a tensor")
        new_key = _rename(key, renames)
        _require(new_key is not None, source, f"unknown weight {key!r}")
        _require(new_key in target, source, f"weight {key!r} (as {new_key!r}) has no place in sepkit's sudormrf")
        _require(
            target[new_key].shape == value.shape,
            source,
            f"weight {key!r} has shape {tuple(value.shape)}, sepkit's {new_key!r} has {tuple(target[new_key].shape)}",
        )
        _require(not value.is_floating_point() or bool(torch.isfinite(value).all()), source, f"{key!r} holds NaN/inf")
        mapped[new_key] = value
    missing = [key for key in target if key not in mapped]
    _require(not missing, source, f"no weight for sepkit's {missing[:5]}")
    model.load_state_dict(mapped, strict=True)


def from_sudormrf(
    path_or_state: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    architecture: Mapping[str, int] | None = None,
    sample_rate: int = 8000,
) -> EncoderMaskerDecoder:
    """Build sepkit's ``sudormrf`` from a released SuDoRM-RF model.

    Args:
        path_or_state: a ``.pt`` file holding the pickled module (read without executing
            it), or a state dict of ``SuDORMRF`` (original or improved) or of
            ``GroupCommSudoRmRf``.
        architecture: the authors' constructor arguments (:data:`ARCHITECTURE_ARGS`);
            required for a state dict, read from the file otherwise.
        sample_rate: the rate the model was trained at (the released models: 8000 Hz).

    Returns:
        The model in eval mode with ``model_name``/``model_config`` recorded.

    Raises:
        ValueError: not a SuDoRM-RF model, or a weight that is unknown, missing or of the
            wrong shape; the message names it.
    """
    if isinstance(path_or_state, Mapping):
        source = "<state dict>"
        state = dict(path_or_state)
        _require(architecture is not None, source, "a state dict needs the architecture arguments")
    else:
        source = os.fspath(path_or_state)
        root = read_pickled_modules(Path(source))
        # A DataParallel wrapper keeps the model as its submodule "module".
        if isinstance(root, StandIn) and root.qualified_name.endswith("DataParallel"):
            wrapper_state = root.state if isinstance(root.state, dict) else {}
            root = (wrapper_state.get("_modules") or {}).get("module")
        _require(isinstance(root, StandIn), source, f"the file holds {type(root).__name__}, not a pickled model")
        class_name = root.qualified_name.rsplit(".", 1)[-1]
        _require(class_name in SUDORMRF_CLASSES, source, f"{root.qualified_name} is not a SuDoRM-RF model")
        state = stand_in_state_dict(root, source)
        architecture = stand_in_attributes(root) if architecture is None else architecture
    if any(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    improved = _is_improved(state)
    config = sudormrf_config(architecture, improved, source, sample_rate)
    n_groups = _group_count(state, architecture, source)
    _require(improved or n_groups == 1, source, "TAC blocks in an original (not improved) SuDoRM-RF")
    if n_groups > 1:
        config["n_groups"] = n_groups
    model = build_model("sudormrf", **config)
    _load_into(model, state, improved, n_groups > 1, source)
    return model.eval()
