"""Load weights of GC3's released code (github yluo42/GC3, ``GC3_network.py``'s ``TasNet``)
into sepkit's ``gc3``.

The repository publishes code, not weights; a model trained with it is a ``state_dict``
of ``TasNet(enc_dim, hidden_dim, sr, win, layer, num_spk, context_size, group_size,
block_size, module)``. :func:`from_gc3` takes that state dict and those constructor
arguments, builds the equivalent ``gc3`` and renames every weight onto it; an unknown,
missing or misshapen weight is an error naming it.

Mapping of the reference's modules: ``context_enc``/``context_dec`` (``GC_RNN``: TAC,
``ProjRNN`` and GroupNorm per layer) -> ``masker.context_encoder``/``context_decoder``;
``module="DPRNN"`` (``DP_wrapper`` around ``GC_DPRNN``: TAC, row/col ``ProjRNN`` and
norms) -> ``backbone="dprnn"``; ``module="TCN"`` (``GC_TCN``, 2 stacks of ``layer``
``DepthConv1d``) -> ``backbone="tcn"``; ``module="UBlock"`` (``GC_UConvBlock``) ->
``backbone="sudormrf"``. ``module="Transformer"`` (GC-DPTNet) has no sepkit equivalent.

Framing differs: the reference pads the waveform by half a window on both sides and its
``split_feature`` always appends 1..K zero frames; the masker computations agree where
both put the same zeros (see tests/test_converters.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import build_model

MODULES = ("DPRNN", "TCN", "UBlock")
# Defaults of the reference TasNet's constructor.
REFERENCE_DEFAULTS: dict[str, Any] = dict(
    enc_dim=128,
    hidden_dim=256,
    sr=16000,
    win=2,
    layer=6,
    num_spk=2,
    context_size=32,
    group_size=16,
    block_size=24,
    module="DPRNN",
)


def _tac(prefix: str, target: str) -> list[tuple[str, str]]:
    """Renames of one reference ``TAC`` (``prefix`` a regex ending in ``TAC\\.``)."""
    parts = [
        ("TAC_input.0.", "transform."),
        ("TAC_input.1.", "transform_act."),
        ("TAC_mean.0.", "average."),
        ("TAC_mean.1.", "average_act."),
        ("TAC_output.0.", "concat."),
        ("TAC_output.1.", "concat_act."),
        ("TAC_norm.", "norm."),
    ]
    return [(prefix + re.escape(old), target + new) for old, new in parts]


def _renames(module: str) -> list[tuple[str, str]]:
    renames = [
        (r"^encoder\.weight$", "encoder.conv.weight"),
        (r"^decoder\.weight$", "decoder.deconv.weight"),
        (r"^norm\.", "masker.input_norm."),
        (r"^mask\.0\.", "masker.mask_conv."),
    ]
    for side, name in (("enc", "context_encoder"), ("dec", "context_decoder")):
        renames += _tac(rf"^context_{side}\.TAC\.(\d+)\.", rf"masker.{name}.\1.group_comm.")
        renames += [
            (rf"^context_{side}\.rnn\.(\d+)\.rnn\.", rf"masker.{name}.\1.rnn.rnn."),
            (rf"^context_{side}\.rnn\.(\d+)\.proj\.", rf"masker.{name}.\1.rnn.proj."),
            (rf"^context_{side}\.LN\.(\d+)\.", rf"masker.{name}.\1.rnn.norm."),
        ]
    backbone = "masker.backbone."
    if module == "DPRNN":
        dp = r"^seq_model\.seq_model\."
        renames += _tac(dp + r"TAC\.(\d+)\.", backbone + r"group_comms.\1.")
        renames += [
            (dp + r"row_rnn\.(\d+)\.rnn\.", backbone + r"blocks.\1.intra_rnn."),
            (dp + r"row_rnn\.(\d+)\.proj\.", backbone + r"blocks.\1.intra_proj."),
            (dp + r"row_norm\.(\d+)\.", backbone + r"blocks.\1.intra_norm."),
            (dp + r"col_rnn\.(\d+)\.rnn\.", backbone + r"blocks.\1.inter_rnn."),
            (dp + r"col_rnn\.(\d+)\.proj\.", backbone + r"blocks.\1.inter_proj."),
            (dp + r"col_norm\.(\d+)\.", backbone + r"blocks.\1.inter_norm."),
            (dp + r"output\.", backbone + "output_conv."),
        ]
    elif module == "TCN":
        renames += _tac(r"^seq_model\.TAC\.(\d+)\.", backbone + r"group_comms.\1.")
        for old, new in (
            ("conv1d", "in_conv"),
            ("nonlinearity1", "act1"),
            ("reg1", "norm1"),
            ("dconv1d", "depthwise"),
            ("nonlinearity2", "act2"),
            ("reg2", "norm2"),
            ("res_out", "res_conv"),
            ("skip_out", "skip_conv"),
        ):
            renames.append((rf"^seq_model\.TCN\.(\d+)\.{old}\.", backbone + rf"blocks.\1.{new}."))
        renames.append((r"^seq_model\.output\.", backbone + "output_conv."))
    else:
        block = r"^seq_model\.(\d+)\."
        renames += _tac(block + r"TAC\.", backbone + r"group_comms.\1.")
        for old, new in (
            (r"proj_1x1\.conv\.", "in_conv."),
            (r"proj_1x1\.norm\.", "in_norm."),
            (r"proj_1x1\.act\.", "in_act."),
            (r"spp_dw\.(\d+)\.conv\.", r"depthwise.\2."),
            (r"spp_dw\.(\d+)\.norm\.", r"depthwise_norms.\2."),
            (r"final_norm\.norm\.", "final_norm."),
            (r"final_norm\.act\.", "final_act."),
            (r"res_conv\.", "out_conv."),
        ):
            renames.append((block + r"UBlock\." + old, backbone + r"blocks.\1." + new))
    return renames


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"from_gc3: {message}")


def gc3_config(args: Mapping[str, Any]) -> dict[str, Any]:
    """sepkit ``gc3`` config for the reference ``TasNet`` constructor arguments."""
    unknown = sorted(set(args) - set(REFERENCE_DEFAULTS))
    _require(not unknown, f"unknown TasNet arguments {unknown}")
    a = {**REFERENCE_DEFAULTS, **args}
    module = a["module"]
    _require(module in MODULES, f"module {module!r} has no sepkit equivalent (supported: {', '.join(MODULES)})")
    window = int(a["sr"] * a["win"] / 1000)
    config: dict[str, Any] = dict(
        n_src=a["num_spk"],
        n_filters=a["enc_dim"],
        kernel_size=window,
        stride=window // 2,
        n_groups=a["group_size"],
        context_size=a["context_size"],
        codec_layers=2,
        codec_hidden=a["hidden_dim"],
        group_comm="tac",
        sample_rate=int(a["sr"]),
    )
    if module == "DPRNN":
        config |= dict(
            backbone="dprnn", n_layers=a["layer"], backbone_hidden=a["hidden_dim"], chunk_size=a["block_size"]
        )
    elif module == "TCN":
        # GC_TCN(enc_dim, enc_dim, 4 * enc_dim, layer, stack=2, kernel=3).
        config |= dict(
            backbone="tcn",
            n_layers=2 * a["layer"],
            tcn_blocks_per_repeat=a["layer"],
            tcn_kernel_size=3,
            backbone_hidden=4 * a["enc_dim"],
        )
    else:
        # GC_UConvBlock(out_channels=enc_dim, in_channels=2 * hidden_dim, upsampling_depth=5).
        config |= dict(backbone="sudormrf", n_layers=a["layer"], backbone_hidden=2 * a["hidden_dim"], uconv_depth=5)
    return config


def from_gc3(state: Mapping[str, torch.Tensor], **reference_args: Any) -> EncoderMaskerDecoder:
    """Build sepkit's ``gc3`` from a state dict of the reference ``TasNet``.

    Args:
        state: ``TasNet(...).state_dict()`` (a ``module.`` prefix of ``DataParallel`` is
            removed).
        **reference_args: the ``TasNet`` constructor arguments the state dict was made
            with (:data:`REFERENCE_DEFAULTS` for the ones not given).

    Returns:
        The model in eval mode with ``model_name``/``model_config`` recorded.

    Raises:
        ValueError: an unsupported ``module``, or a weight that is unknown, missing, of
            the wrong shape or not finite; the message names it.
    """
    config = gc3_config(reference_args)
    module = {**REFERENCE_DEFAULTS, **reference_args}["module"]
    if any(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    model = build_model("gc3", **config)
    target = model.state_dict()
    renames = _renames(module)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = None
        for pattern, replacement in renames:
            candidate, count = re.subn(pattern, replacement, key)
            if count:
                new_key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", candidate))
                break
        _require(new_key is not None, f"unknown weight {key!r} for module {module!r}")
        _require(new_key in target, f"weight {key!r} (as {new_key!r}) has no place in sepkit's gc3")
        _require(
            target[new_key].shape == value.shape,
            f"weight {key!r} has shape {tuple(value.shape)}, sepkit's {new_key!r} has {tuple(target[new_key].shape)}",
        )
        _require(not value.is_floating_point() or bool(torch.isfinite(value).all()), f"{key!r} holds NaN or infinity")
        mapped[new_key] = value
    missing = [key for key in target if key not in mapped]
    _require(not missing, f"no reference weight for sepkit's {missing[:5]}")
    model.load_state_dict(mapped, strict=True)
    return model.eval()
