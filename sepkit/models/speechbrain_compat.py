"""Load SpeechBrain's published SepFormer models (the ``speechbrain/sepformer-*`` model
cards) into sepkit's ``sepformer``.

A model card folder holds ``hyperparams.yaml`` (HyperPyYAML: ``!new:``/``!ref`` tags
that SpeechBrain would execute) and three plain state dicts, ``encoder.ckpt``,
``masknet.ckpt`` and ``decoder.ckpt``. :func:`from_speechbrain` reads the YAML with a
safe loader that keeps every tag as inert data, takes the sizes from the
``dual_path.Encoder``, ``Dual_Path_Model``, ``SBTransformerBlock`` and ``Decoder``
entries, loads the checkpoints with ``torch.load(weights_only=True)`` and renames every
weight onto sepkit's SepFormer; an unknown or missing weight is an error naming it.

SpeechBrain's computation is reproduced exactly except for framing: its encoder drops
the samples after the last full frame and its segmentation always appends between 1 and
``K`` zero frames, whereas sepkit pads onto its own grids. Outputs agree exactly when the
input needs no encoder padding (``(time - kernel) % stride == 0``) and the frame count
``L`` satisfies ``0 < L % K < K/2`` (then both add the same zeros).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from sepkit.models.pipeline import EncoderMaskerDecoder
from sepkit.models.registry import build_model
from sepkit.nn.transformer import sinusoidal_positions

HYPERPARAMS = "hyperparams.yaml"
CHECKPOINTS = ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt")

_DUAL_PATH = "speechbrain.lobes.models.dual_path."


class _Tagged:
    """A HyperPyYAML tagged node (``!new:cls``, ``!ref <x>``, ...), kept as data."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag = tag
        self.value = value


class _InertLoader(yaml.SafeLoader):
    """SafeLoader that turns every ``!tag`` into a :class:`_Tagged` value instead of
    refusing it (SpeechBrain's loader would instantiate the named classes)."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return _Tagged("!" + suffix, value)


_InertLoader.add_multi_constructor("!", _tagged)


def is_speechbrain_folder(path: str | os.PathLike[str]) -> bool:
    """A folder laid out like a SpeechBrain separation model card."""
    folder = Path(path)
    return folder.is_dir() and all((folder / name).is_file() for name in (HYPERPARAMS, *CHECKPOINTS))


class _Hyperparams:
    """The top level of a model card's hyperparams.yaml with ``!ref <name>`` resolution."""

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        try:
            top = yaml.load(path.read_text(encoding="utf-8"), Loader=_InertLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: unreadable hyperparams ({type(err).__name__})") from None
        if not isinstance(top, dict):
            raise ValueError(f"{path}: hyperparams is not a mapping")
        self.top = top

    def resolve(self, value: Any, depth: int = 0) -> Any:
        if not isinstance(value, _Tagged) or value.tag != "!ref":
            return value
        match = re.fullmatch(r"\s*<([\w.]+)>\s*", str(value.value))
        if match is None or match.group(1) not in self.top or depth > 20:
            raise ValueError(f"{self.source}: cannot resolve reference {value.value!r}")
        return self.resolve(self.top[match.group(1)], depth + 1)

    def module(self, class_name: str) -> dict[str, Any]:
        """Arguments of the single top-level ``!new:`` entry of ``dual_path.<class_name>``."""
        tag = f"!new:{_DUAL_PATH}{class_name}"
        found = [name for name, value in self.top.items() if isinstance(value, _Tagged) and value.tag == tag]
        if len(found) != 1:
            raise ValueError(f"{self.source}: expected one {class_name} entry ({tag}), found {len(found)}")
        return self.arguments(self.top[found[0]], class_name)

    def arguments(self, node: Any, class_name: str) -> dict[str, Any]:
        node = self.resolve(node)
        if not (isinstance(node, _Tagged) and node.tag == f"!new:{_DUAL_PATH}{class_name}"):
            raise ValueError(f"{self.source}: expected a {class_name}, got {getattr(node, 'tag', node)!r}")
        args = node.value if isinstance(node.value, dict) else {}
        return {key: self.resolve(value) for key, value in args.items()}


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"from_speechbrain({source}): {message}")


_REQUIRED = object()


def _integer(args: Mapping[str, Any], key: str, source: str, where: str, default: Any = _REQUIRED) -> int:
    """A positive integer setting of a hyperparams entry (``default`` when absent)."""
    value = args.get(key, default)
    _require(value is not _REQUIRED, source, f"{where} has no {key}")
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _require(ok, source, f"{where} {key} {getattr(value, 'tag', value)!r} is not a positive integer")
    return value


def _transformer_args(args: Mapping[str, Any], source: str, which: str) -> dict[str, Any]:
    _require(args.get("activation", "relu") == "relu", source, f"{which}: only ReLU feed-forwards are supported")
    attention = args.get("attention_type", "regularMHA")
    _require(attention == "regularMHA", source, f"{which}: attention_type {attention!r} is not supported")
    for key in ("kdim", "vdim"):
        _require(args.get(key) is None, source, f"{which}: {key} is not supported")
    dropout = args.get("dropout", 0.1)
    _require(isinstance(dropout, (int, float)) and 0 <= dropout < 1, source, f"{which}: dropout {dropout!r} invalid")
    return dict(
        d_model=_integer(args, "d_model", source, which),
        n_heads=_integer(args, "nhead", source, which),
        d_ffn=_integer(args, "d_ffn", source, which, 2048),
        dropout=float(dropout),
        positional=bool(args.get("use_positional_encoding", False)),
        norm_first=bool(args.get("norm_before", False)),
    )


def speechbrain_config(folder: Path) -> dict[str, Any]:
    """sepkit ``sepformer`` config equivalent to a model card's hyperparams.yaml."""
    source = str(folder)
    params = _Hyperparams(folder / HYPERPARAMS)
    encoder = params.module("Encoder")
    masknet = params.module("Dual_Path_Model")
    decoder = params.module("Decoder")
    intra_args = params.arguments(masknet.get("intra_model"), "SBTransformerBlock")
    inter_args = params.arguments(masknet.get("inter_model"), "SBTransformerBlock")
    intra = _transformer_args(intra_args, source, "intra")
    inter = _transformer_args(inter_args, source, "inter")
    _require(intra == inter, source, f"intra and inter transformers differ beyond depth: {intra} vs {inter}")

    kernel = _integer(encoder, "kernel_size", source, "Encoder", 2)
    n_filters = _integer(encoder, "out_channels", source, "Encoder", 64)
    _require(_integer(encoder, "in_channels", source, "Encoder", 1) == 1, source, "only mono encoders are supported")
    decoder_shape = tuple(_integer(decoder, key, source, "Decoder") for key in ("in_channels", "out_channels"))
    decoder_shape += tuple(_integer(decoder, key, source, "Decoder") for key in ("kernel_size", "stride"))
    _require(
        decoder_shape == (n_filters, 1, kernel, kernel // 2),
        source,
        "the decoder does not mirror the encoder (in_channels, out_channels 1, kernel_size, stride kernel_size//2)",
    )
    _require(decoder.get("bias", True) is False, source, "decoder bias is not supported (SepFormer's decoder has none)")
    _require(_integer(masknet, "in_channels", source, "MaskNet") == n_filters, source, "MaskNet in_channels != N")
    _require(_integer(masknet, "out_channels", source, "MaskNet") == intra["d_model"], source, "MaskNet out_channels")
    norm = masknet.get("norm", "ln")
    _require(norm == "ln", source, f"MaskNet norm {norm!r} unsupported (only 'ln', a one-group GroupNorm)")
    _require(not masknet.get("linear_layer_after_inter_intra", True), source, "linear_layer_after_inter_intra=True")
    _require(not masknet.get("use_global_pos_enc", False), source, "use_global_pos_enc=True is not supported")
    chunk_size = _integer(masknet, "K", source, "MaskNet", 200)
    _require(chunk_size % 2 == 0, source, f"odd chunk length K={chunk_size} is not supported")
    # SpeechBrain's separator resamples inputs to this rate, so every model card sets it.
    sample_rate = params.top.get("sample_rate")
    _require(
        isinstance(sample_rate, int) and not isinstance(sample_rate, bool) and sample_rate > 0,
        source,
        f"hyperparams sample_rate {sample_rate!r} is not a positive integer",
    )
    return dict(
        n_src=_integer(masknet, "num_spks", source, "MaskNet", 2),
        n_filters=n_filters,
        kernel_size=kernel,
        stride=kernel // 2,
        n_repeats=_integer(masknet, "num_layers", source, "MaskNet", 1),
        n_intra_layers=_integer(intra_args, "num_layers", source, "intra"),
        n_inter_layers=_integer(inter_args, "num_layers", source, "inter"),
        chunk_size=chunk_size,
        hop=chunk_size // 2,
        norm="gLN",
        skip_around_intra=bool(masknet.get("skip_around_intra", True)),
        sample_rate=sample_rate,
        **intra,
    )


_LAYER = r"^dual_mdl\.(\d+)\.(intra|inter)_mdl\.mdl\.layers\.(\d+)\."
_MASKNET_RENAMES: list[tuple[str, str]] = [
    (r"^norm\.", "masker.input_norm."),
    (r"^conv1d\.", "masker.input_conv."),
    (_LAYER + r"self_att\.att\.in_proj_", r"masker.blocks.\1.\2.layers.\3.attention.qkv."),
    (_LAYER + r"self_att\.att\.out_proj\.", r"masker.blocks.\1.\2.layers.\3.attention.out."),
    (_LAYER + r"pos_ffn\.ffn\.0\.", r"masker.blocks.\1.\2.layers.\3.ffn.linear_in."),
    (_LAYER + r"pos_ffn\.ffn\.3\.", r"masker.blocks.\1.\2.layers.\3.ffn.linear_out."),
    (_LAYER + r"norm1\.norm\.", r"masker.blocks.\1.\2.layers.\3.attention_norm."),
    (_LAYER + r"norm2\.norm\.", r"masker.blocks.\1.\2.layers.\3.ffn_norm."),
    (r"^dual_mdl\.(\d+)\.(intra|inter)_mdl\.mdl\.norm\.norm\.", r"masker.blocks.\1.\2.final_norm."),
    (r"^dual_mdl\.(\d+)\.(intra|inter)_norm\.", r"masker.blocks.\1.\2_norm."),
    (r"^prelu\.", "masker.output_act."),
    (r"^conv2d\.", "masker.output_conv."),
    (r"^output\.0\.", "masker.output_tanh."),
    (r"^output_gate\.0\.", "masker.output_gate."),
    (r"^end_conv1x1\.", "masker.mask_conv."),
]
# The positional table SpeechBrain stores as a buffer; sepkit computes it per call.
_POSITIONS = re.compile(r"^dual_mdl\.\d+\.(intra|inter)_mdl\.pos_enc\.pe$")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise ValueError(f"{path}: not a plain state dict ({type(err).__name__})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(state)


def _rename(key: str) -> str | None:
    for pattern, replacement in _MASKNET_RENAMES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def speechbrain_state_dict(folder: Path, target: Mapping[str, torch.Tensor], d_model: int) -> dict[str, torch.Tensor]:
    """The three model card checkpoints renamed onto sepkit SepFormer keys (``target``:
    the model's own state dict, for names and shapes)."""
    source = str(folder)
    mapped: dict[str, torch.Tensor] = {}

    def place(origin: str, key: str, value: torch.Tensor) -> None:
        _require(key in target, source, f"{origin} has no place in sepkit's sepformer (as {key!r})")
        expected = target[key].shape
        # SpeechBrain's gLN weights may be [C, 1] / [C, 1, 1]; sepkit's are [C].
        if value.shape != expected and value.numel() == expected.numel() and value.squeeze().shape == expected:
            value = value.reshape(expected)
        _require(
            value.shape == expected,
            source,
            f"{origin} has shape {tuple(value.shape)}, sepkit's {key!r} has {tuple(expected)}",
        )
        _require(key not in mapped, source, f"{origin} fills {key!r} a second time")
        _require(bool(torch.isfinite(value).all()), source, f"{origin} holds NaN or infinity")
        mapped[key] = value

    encoder = _read_checkpoint(folder / "encoder.ckpt")
    for key, value in encoder.items():
        _require(key == "conv1d.weight", source, f"unexpected weight {key!r} in encoder.ckpt")
        place(f"encoder.ckpt:{key}", "encoder.conv.weight", value)
    decoder = _read_checkpoint(folder / "decoder.ckpt")
    for key, value in decoder.items():
        _require(key == "weight", source, f"unexpected weight {key!r} in decoder.ckpt")
        place(f"decoder.ckpt:{key}", "decoder.deconv.weight", value)
    for key, value in _read_checkpoint(folder / "masknet.ckpt").items():
        if _POSITIONS.match(key):
            # A fixed sinusoid; check it is the one sepkit computes, then drop it.
            ok = value.dim() == 3 and value.shape[0] == 1 and value.shape[2] == d_model
            table = sinusoidal_positions(value.shape[1], d_model, value[0].double()) if ok else None
            ok = ok and torch.allclose(value[0].double(), table, atol=1e-4)
            _require(ok, source, f"masknet.ckpt:{key} is not the sinusoidal position table sepkit uses")
            continue
        new_key = _rename(key)
        _require(new_key is not None, source, f"unknown weight masknet.ckpt:{key!r}")
        place(f"masknet.ckpt:{key}", new_key, value)
    missing = [key for key in target if key not in mapped]
    _require(not missing, source, f"no SpeechBrain weight for sepkit's {missing[:5]}")
    return mapped


def from_speechbrain(folder: str | os.PathLike[str], sample_rate: int | None = None) -> EncoderMaskerDecoder:
    """Build sepkit's ``sepformer`` from a SpeechBrain SepFormer model card folder.

    Args:
        folder: holds ``hyperparams.yaml``, ``encoder.ckpt``, ``masknet.ckpt`` and
            ``decoder.ckpt`` (as downloaded from e.g. ``speechbrain/sepformer-wsj02mix``).
        sample_rate: overrides the ``sample_rate`` of the hyperparams.

    Returns:
        The model in eval mode, ``model_name``/``model_config`` recorded as ``build_model``
        does, so :func:`sepkit.checkpoint.save_model` writes it as a sepkit model file.

    Raises:
        ValueError: a missing file, a setting sepkit cannot reproduce, or a weight that is
            unknown, missing or of the wrong shape; the message names it.
    """
    folder = Path(folder)
    if not is_speechbrain_folder(folder):
        raise ValueError(f"{folder}: not a SpeechBrain model folder ({HYPERPARAMS} + {', '.join(CHECKPOINTS)})")
    config = speechbrain_config(folder)
    if sample_rate is not None:
        config["sample_rate"] = int(sample_rate)
    model = build_model("sepformer", **config)
    model.load_state_dict(speechbrain_state_dict(folder, model.state_dict(), config["d_model"]), strict=True)
    return model.eval()
