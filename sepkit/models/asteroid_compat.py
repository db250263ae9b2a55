"""Load models trained with Asteroid (0.7) into the equivalent sepkit model.

Asteroid saves a dict with ``model_name``, ``model_args``, ``state_dict`` (and
``infos``) via ``model.serialize()``. :func:`from_asteroid` maps ConvTasNet,
DPRNNTasNet, SuDORMRFNet and SuDORMRFImprovedNet onto ``conv_tasnet``, ``dprnn`` and
``sudormrf`` with the switches that reproduce Asteroid's computation:

- ConvTasNet and DPRNN: Asteroid's encoder does not pad the input (it drops the last
  ``(time - kernel_size) % stride`` samples) and ``pad_x_to_y`` zero-pads the decoded
  estimates back to the input length: ``framing="truncate"`` (an input shorter than one
  window, which Asteroid cannot take, is padded to one window).
- DPRNN: Asteroid pads ``chunk_size`` on both sides when chunking (``chunk_padding="chunk"``).
- SuDoRM-RF: Asteroid's encoder has no bias, one decoder is shared by all sources
  (``decoder="shared"``), and it does not normalise the input; its improved block uses
  a per-channel PReLU after the pyramid; it pads the input of both variants to a
  multiple of ``lcm(kernel_size // 2, 2**depth)`` (``pad_multiple``).
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import build_model

Renames = list[tuple[str, str]]


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"from_asteroid({source}): {message}")


def _check_common(args: Mapping[str, Any], source: str) -> None:
    fb_name = args.get("fb_name", "free")
    _require(fb_name in ("free", "FreeFB"), source, f"only the free filterbank is supported, got {fb_name!r}")
    for key in ("in_chan", "out_chan"):
        if args.get(key) is not None:
            message = f"{key}={args[key]} differs from n_filters={args['n_filters']}"
            _require(args[key] == args["n_filters"], source, message)


def _norm(args: Mapping[str, Any], source: str) -> str:
    norm = args.get("norm_type", "gLN")
    _require(norm in ("gLN", "cLN", "BN"), source, f"norm_type {norm!r} has no sepkit equivalent (gLN, cLN, BN)")
    return norm


def _conv_tasnet(args: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any], Renames]:
    _check_common(args, source)
    _require(args.get("encoder_activation") in (None, "linear"), source, "encoder_activation must be linear")
    mask_act = args.get("mask_act", "sigmoid")
    _require(mask_act in ("sigmoid", "relu"), source, f"mask_act {mask_act!r} unsupported")
    config = dict(
        n_src=args["n_src"],
        n_filters=args["n_filters"],
        kernel_size=args["kernel_size"],
        stride=args["stride"],
        bottleneck=args["bn_chan"],
        hidden=args["hid_chan"],
        skip_channels=args["skip_chan"] or 0,
        conv_kernel_size=args["conv_kernel_size"],
        n_blocks=args["n_blocks"],
        n_repeats=args["n_repeats"],
        norm=_norm(args, source),
        causal=bool(args.get("causal", False)),
        mask_activation=mask_act,
        framing="truncate",
        sample_rate=int(args.get("sample_rate", 8000)),
    )
    renames = [
        (r"^masker\.bottleneck\.0\.", "masker.input_norm."),
        (r"^masker\.bottleneck\.1\.", "masker.bottleneck."),
        (r"^masker\.TCN\.(\d+)\.shared_block\.0\.", r"masker.blocks.\1.in_conv."),
        (r"^masker\.TCN\.(\d+)\.shared_block\.1\.", r"masker.blocks.\1.act1."),
        (r"^masker\.TCN\.(\d+)\.shared_block\.2\.", r"masker.blocks.\1.norm1."),
        # The causal block wraps the depthwise conv with a chop: shared_block.3.0.
        (r"^masker\.TCN\.(\d+)\.shared_block\.3\.(0\.)?", r"masker.blocks.\1.depthwise."),
        (r"^masker\.TCN\.(\d+)\.shared_block\.4\.", r"masker.blocks.\1.act2."),
        (r"^masker\.TCN\.(\d+)\.shared_block\.5\.", r"masker.blocks.\1.norm2."),
        (r"^masker\.TCN\.(\d+)\.", r"masker.blocks.\1."),
        (r"^masker\.mask_net\.0\.", "masker.output_act."),
        (r"^masker\.mask_net\.1\.", "masker.mask_conv."),
    ]
    return "conv_tasnet", config, renames


def _dprnn(args: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any], Renames]:
    _check_common(args, source)
    _require(args.get("encoder_activation") in (None, "linear"), source, "encoder_activation must be linear")
    _require(args.get("num_layers", 1) == 1, source, "only one RNN layer per path is supported")
    _require(not args.get("use_mulcat", False), source, "MulCat blocks are not supported")
    mask_act = args.get("mask_act", "sigmoid")
    _require(mask_act in ("sigmoid", "relu"), source, f"mask_act {mask_act!r} unsupported")
    chunk_size = args["chunk_size"]
    config = dict(
        n_src=args["n_src"],
        n_filters=args["n_filters"],
        kernel_size=args["kernel_size"],
        stride=args["stride"],
        bottleneck=args["bn_chan"],
        hidden_size=args["hid_size"],
        n_blocks=args["n_repeats"],
        chunk_size=chunk_size,
        hop=args.get("hop_size") or chunk_size // 2,
        norm=_norm(args, source),
        bidirectional=bool(args.get("bidirectional", True)),
        rnn_type=str(args.get("rnn_type", "LSTM")).upper(),
        # Asteroid passes dropout to one-layer torch RNNs, where torch ignores it.
        dropout=0.0,
        mask_activation=mask_act,
        chunk_padding="chunk",
        framing="truncate",
        sample_rate=int(args.get("sample_rate", 8000)),
    )
    renames = [
        (r"^masker\.bottleneck\.0\.", "masker.input_norm."),
        (r"^masker\.bottleneck\.1\.", "masker.bottleneck."),
        (r"^masker\.net\.(\d+)\.intra_RNN\.rnn\.", r"masker.blocks.\1.intra_rnn."),
        (r"^masker\.net\.(\d+)\.inter_RNN\.rnn\.", r"masker.blocks.\1.inter_rnn."),
        (r"^masker\.net\.(\d+)\.intra_linear\.", r"masker.blocks.\1.intra_proj."),
        (r"^masker\.net\.(\d+)\.inter_linear\.", r"masker.blocks.\1.inter_proj."),
        (r"^masker\.net\.(\d+)\.", r"masker.blocks.\1."),
        (r"^masker\.first_out\.0\.", "masker.output_act."),
        (r"^masker\.first_out\.1\.", "masker.output_conv."),
        (r"^masker\.net_out\.0\.", "masker.output_tanh."),
        (r"^masker\.net_gate\.0\.", "masker.output_gate."),
        (r"^masker\.mask_net\.", "masker.mask_conv."),
    ]
    return "dprnn", config, renames


def _sudormrf(args: Mapping[str, Any], source: str, improved: bool) -> tuple[str, dict[str, Any], Renames]:
    _check_common(args, source)
    expected_act = "relu" if improved else "softmax"
    mask_act = args.get("mask_act", expected_act)
    _require(mask_act == expected_act, source, f"mask_act must be {expected_act!r}, got {mask_act!r}")
    # With one source Asteroid's softmax mask is identically 1; sepkit uses a sigmoid.
    _require(improved or args["n_src"] > 1, source, "one-source SuDORMRFNet (constant softmax mask) is not supported")
    _require(args.get("encoder_activation") == (None if improved else "relu"), source, "unexpected encoder_activation")
    config = dict(
        n_src=args["n_src"],
        n_filters=args["n_filters"],
        kernel_size=args["kernel_size"],
        stride=args["stride"],
        bottleneck=args["bn_chan"],
        hidden_channels=args["n_filters"],
        n_blocks=args["num_blocks"],
        upsampling_depth=args["upsampling_depth"],
        improved=improved,
        decoder="shared",
        encoder_bias=False,
        final_prelu_per_channel=True,
        normalize_input=False,
        # Asteroid pads both variants to the original's multiple (the authors' improved
        # model pads to twice that).
        pad_multiple=math.lcm(args["kernel_size"] // 2, 2 ** args["upsampling_depth"]),
        sample_rate=int(args.get("sample_rate", 8000)),
    )
    block = r"^masker\.sm\.(\d+)\."
    renames = [
        # Asteroid's padding wrapper exposes the same filters under two names.
        (r"^encoder\.encoder\.filterbank\._filters$", "encoder.conv.weight"),
        (r"^masker\.ln\.", "masker.input_norm."),
        (r"^masker\.l1\.", "masker.bottleneck."),
        (block + r"proj_1x1\.conv\.", r"masker.blocks.\1.in_conv."),
        (block + r"proj_1x1\.norm\.", r"masker.blocks.\1.in_norm."),
        (block + r"proj_1x1\.act\.", r"masker.blocks.\1.in_act."),
        (block + r"spp_dw\.(\d+)\.conv\.", r"masker.blocks.\1.depthwise.\2."),
        (block + r"spp_dw\.(\d+)\.norm\.", r"masker.blocks.\1.depthwise_norms.\2."),
        (block + r"conv_1x1_exp\.conv\.", r"masker.blocks.\1.out_conv."),
        (block + r"conv_1x1_exp\.norm\.", r"masker.blocks.\1.out_norm."),
        (block + r"res_conv\.", r"masker.blocks.\1.out_conv."),
        (block + r"final_norm\.norm\.", r"masker.blocks.\1.final_norm."),
        (block + r"final_norm\.act\.", r"masker.blocks.\1.final_act."),
        (block + r"module_act\.norm\.", r"masker.blocks.\1.block_norm."),
        (block + r"module_act\.act\.", r"masker.blocks.\1.block_act."),
        (r"^masker\.reshape_before_masks\.", "masker.reshape_conv."),
        (r"^masker\.m\.", "masker.mask_conv2d."),
        (r"^masker\.mask_net\.0\.", "masker.mask_act_in."),
        (r"^masker\.mask_net\.1\.", "masker.mask_conv."),
    ]
    return "sudormrf", config, renames


_CONVERTERS: dict[str, Callable[[Mapping[str, Any], str], tuple[str, dict[str, Any], Renames]]] = {
    "ConvTasNet": _conv_tasnet,
    "DPRNNTasNet": _dprnn,
    "SuDORMRFNet": lambda args, source: _sudormrf(args, source, improved=False),
    "SuDORMRFImprovedNet": lambda args, source: _sudormrf(args, source, improved=True),
}

# Filterbank parameters are named the same way in every Asteroid model.
_FILTERBANK_RENAMES: Renames = [
    (r"^encoder\.filterbank\._filters$", "encoder.conv.weight"),
    (r"^decoder\.filterbank\._filters$", "decoder.deconv.weight"),
]
# Asteroid's own layer norms call their affine parameters gamma and beta.
_NORM_SUFFIXES: Renames = [(r"\.gamma$", ".weight"), (r"\.beta$", ".bias")]

# Parameters the official SuDoRM-RF defines but never uses; Asteroid does not have them,
# so they keep their initial values.
_UNMAPPED_OK = ("masker.unused_mask_input_norm.",)


def _rename(key: str, renames: Renames) -> str:
    """Apply the first matching prefix rule, then the norm suffix rules."""
    for pattern, replacement in renames:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            key = new_key
            break
    for pattern, replacement in _NORM_SUFFIXES:
        key = re.sub(pattern, replacement, key)
    return key


# Asteroid records torch.__version__ (a TorchVersion, a str subclass) in ``infos``, and
# published files carry numpy scalars there (metrics, counts): a numpy scalar pickles as
# ``multiarray.scalar(dtype, raw bytes)``, plain values with no code behind them. Files
# written under numpy 1.x name the module ``numpy.core``, numpy 2 ``numpy._core``. Only
# these classes are added to the weights-only unpickler's allowlist.
_ASTEROID_INFO_GLOBALS: list[Any] = [
    torch.torch_version.TorchVersion,
    np.dtype,
    *(
        type(np.dtype(kind))
        for kind in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
    ),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
]


def from_asteroid(path_or_state: str | os.PathLike[str] | Mapping[str, Any]) -> EncoderMaskerDecoder:
    """Build the sepkit model equivalent to an Asteroid model file and load its weights.

    Args:
        path_or_state: a file written by ``torch.save(asteroid_model.serialize(), path)``
            (Asteroid's ``best_model.pth``), or that dict itself.

    Returns:
        The sepkit model (``conv_tasnet``, ``dprnn`` or ``sudormrf``) in eval mode, with
        ``model_name``/``model_config`` recorded as ``build_model`` does.

    Raises:
        ValueError: the file is not an Asteroid model dict, names an unsupported model,
            or uses options sepkit cannot reproduce.
    """
    if isinstance(path_or_state, Mapping):
        source, package = "<dict>", path_or_state
    else:
        source = os.fspath(path_or_state)
        try:
            with torch.serialization.safe_globals(_ASTEROID_INFO_GLOBALS):
                package = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message spans many lines; keep the one naming the refused global or class.
            named = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "but got" in line]
            reason = named[-1] if named else "unreadable pickle"
            raise ValueError(f"{source}: not loadable as weights only ({reason})") from None
        _require(isinstance(package, Mapping), source, f"expected a dict, got {type(package).__name__}")
    missing = [key for key in ("model_name", "model_args", "state_dict") if key not in package]
    _require(not missing, source, f"not an Asteroid model dict (missing {missing})")
    name = package["model_name"]
    _require(name in _CONVERTERS, source, f"unsupported Asteroid model {name!r}; supported: {sorted(_CONVERTERS)}")
    model_name, config, renames = _CONVERTERS[name](package["model_args"], source)
    model = build_model(model_name, **config)

    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in package["state_dict"].items():
        new_key = _rename(key, renames + _FILTERBANK_RENAMES)
        if new_key not in target:
            # sepkit's cLN wraps an nn.LayerNorm: <norm>.norm.weight instead of <norm>.weight.
            wrapped = ".norm.".join(new_key.rsplit(".", 1))
            new_key = wrapped if wrapped in target else new_key
        _require(new_key in target, source, f"parameter {key!r} (as {new_key!r}) has no place in sepkit's {model_name}")
        _require(
            target[new_key].shape == value.shape,
            source,
            f"parameter {key!r} has shape {tuple(value.shape)}, "
            f"sepkit's {new_key!r} has {tuple(target[new_key].shape)}",
        )
        mapped[new_key] = value
    unfilled = [key for key in target if key not in mapped and not key.startswith(_UNMAPPED_OK)]
    _require(not unfilled, source, f"no Asteroid parameter for sepkit's {unfilled[:5]}")
    for key in target:
        mapped.setdefault(key, target[key])
    model.load_state_dict(mapped, strict=True)
    return model.eval()
