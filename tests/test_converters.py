"""Converters of published models: SpeechBrain's SepFormer model cards, the SuDoRM-RF
authors' releases and state dicts of GC3's released code.

The published files are rebuilt here, by this file's own code, with the key names and
shapes that the reference modules' attribute structure gives (SpeechBrain's
``dual_path.Encoder``/``Dual_Path_Model``/``SBTransformerBlock``/``Decoder``; the
SuDoRM-RF repository's ``sudormrf.py``/``improved_sudormrf.py``; GC3's
``GC3_network.TasNet`` with its ``GC_RNN``, ``DP_wrapper``/``GC_DPRNN``, ``GC_TCN`` and
``GC_UConvBlock``), filled with random weights. The oracle is a small float64 re-implementation of each reference's forward
pass written from those weights with torch.nn.functional, not sepkit's modules. Neither
reference repository is needed.
"""

from __future__ import annotations

import fractions
import math
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import run_sepkit
from torch import nn

from sepkit.checkpoint import CheckpointError, load_model, save_model
from sepkit.models import build_model
from sepkit.models.gc3_compat import from_gc3
from sepkit.models.speechbrain_compat import from_speechbrain
from sepkit.models.sudormrf_compat import from_sudormrf
from sepkit.restricted_pickle import RestrictedPickleError, read_pickled_modules, stand_in_state_dict

# ----------------------------------------------------------------------------- SpeechBrain

SB_SIZES = dict(n_filters=16, kernel=4, d_model=8, n_heads=2, d_ffn=16, repeats=2, intra=1, inter=2, chunk=10, spks=2)
SB_MAX_LEN = 60  # SpeechBrain's PositionalEncoding default is 2500; any length >= the test's works

SB_HYPERPARAMS = """\
# Model card layout (speechbrain/sepformer-wsj02mix), shrunk.
sample_rate: 8000
num_spks: {spks}
N_encoder_out: {n_filters}
out_channels: {d_model}
kernel_size: {kernel}
kernel_stride: {stride}

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>

SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {intra}
    d_model: !ref <out_channels>
    nhead: {n_heads}
    d_ffn: {d_ffn}
    dropout: 0
    use_positional_encoding: True
    norm_before: True

SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {inter}
    d_model: !ref <out_channels>
    nhead: {n_heads}
    d_ffn: {d_ffn}
    dropout: 0
    use_positional_encoding: True
    norm_before: True

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <out_channels>
    num_layers: {repeats}
    K: {chunk}
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: False
    skip_around_intra: True

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False

modules:
    encoder: !ref <Encoder>
    decoder: !ref <Decoder>
    masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
"""


def sb_positions(length: int, d_model: int) -> torch.Tensor:
    """SpeechBrain's stored ``pe`` buffer ``[1, length, d_model]`` as its PositionalEncoding
    builds it: in float32, ``position * exp(2i * -ln(10000) / d_model)``, sin on even and
    cos on odd columns (returned in float64 holding those float32 values)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table.double().unsqueeze(0)


def sb_masknet_shapes(s: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``Dual_Path_Model(...).state_dict()`` with SBTransformerBlock
    intra/inter models (pre-norm, positional encoding), norm "ln" (GroupNorm(1, C)),
    no linear layer after intra/inter."""
    n, d, f, spks = s["n_filters"], s["d_model"], s["d_ffn"], s["spks"]
    shapes: dict[str, tuple[int, ...]] = {"norm.weight": (n,), "norm.bias": (n,), "conv1d.weight": (d, n, 1)}
    for i in range(s["repeats"]):
        for path, layers in (("intra", s["intra"]), ("inter", s["inter"])):
            block = f"dual_mdl.{i}.{path}_mdl."
            for j in range(layers):
                layer = f"{block}mdl.layers.{j}."
                shapes |= {
                    layer + "self_att.att.in_proj_weight": (3 * d, d),
                    layer + "self_att.att.in_proj_bias": (3 * d,),
                    layer + "self_att.att.out_proj.weight": (d, d),
                    layer + "self_att.att.out_proj.bias": (d,),
                    layer + "pos_ffn.ffn.0.weight": (f, d),
                    layer + "pos_ffn.ffn.0.bias": (f,),
                    layer + "pos_ffn.ffn.3.weight": (d, f),
                    layer + "pos_ffn.ffn.3.bias": (d,),
                    layer + "norm1.norm.weight": (d,),
                    layer + "norm1.norm.bias": (d,),
                    layer + "norm2.norm.weight": (d,),
                    layer + "norm2.norm.bias": (d,),
                }
            shapes |= {block + "mdl.norm.norm.weight": (d,), block + "mdl.norm.norm.bias": (d,)}
            shapes[block + "pos_enc.pe"] = (1, SB_MAX_LEN, d)
            shapes |= {f"dual_mdl.{i}.{path}_norm.weight": (d,), f"dual_mdl.{i}.{path}_norm.bias": (d,)}
    shapes |= {
        "conv2d.weight": (d * spks, d, 1, 1),
        "conv2d.bias": (d * spks,),
        "end_conv1x1.weight": (n, d, 1),
        "prelu.weight": (1,),
        "output.0.weight": (d, d, 1),
        "output.0.bias": (d,),
        "output_gate.0.weight": (d, d, 1),
        "output_gate.0.bias": (d,),
    }
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        state[key] = (torch.randn(shape, generator=generator) / math.sqrt(shape[-1] if len(shape) > 1 else 4)).float()
    return state


def write_sb_folder(folder: Path, seed: int = 0, masknet_edit=None, hyperparams_edit=None) -> dict:
    """A SpeechBrain model card folder with random weights; returns the three state dicts."""
    s = SB_SIZES
    folder.mkdir(parents=True, exist_ok=True)
    text = SB_HYPERPARAMS.format(stride=s["kernel"] // 2, **s)
    if hyperparams_edit:
        text = hyperparams_edit(text)
    (folder / "hyperparams.yaml").write_text(text)
    masknet = random_state(sb_masknet_shapes(s), seed)
    for key in masknet:
        if key.endswith("pos_enc.pe"):
            masknet[key] = sb_positions(SB_MAX_LEN, s["d_model"]).float()
    if masknet_edit:
        masknet_edit(masknet)
    encoder = random_state({"conv1d.weight": (s["n_filters"], 1, s["kernel"])}, seed + 1)
    decoder = random_state({"weight": (s["n_filters"], 1, s["kernel"])}, seed + 2)
    for name, state in (("encoder", encoder), ("masknet", masknet), ("decoder", decoder)):
        torch.save(state, folder / f"{name}.ckpt")
    return {"encoder": encoder, "masknet": masknet, "decoder": decoder}


def sb_transformer(x: torch.Tensor, w: dict, prefix: str, n_layers: int, n_heads: int) -> torch.Tensor:
    """SBTransformerBlock (pre-norm, positional encoding added once) on ``[batch, length, d]``."""
    d = x.shape[-1]
    # SpeechBrain's float32 table (its stored buffer), added in the oracle's float64.
    x = x + sb_positions(x.shape[1], d)[0]
    for j in range(n_layers):
        p = f"{prefix}mdl.layers.{j}."
        h = F.layer_norm(x, (d,), w[p + "norm1.norm.weight"], w[p + "norm1.norm.bias"], eps=1e-6).transpose(0, 1)
        attended, _ = F.multi_head_attention_forward(
            h,
            h,
            h,
            d,
            n_heads,
            w[p + "self_att.att.in_proj_weight"],
            w[p + "self_att.att.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            w[p + "self_att.att.out_proj.weight"],
            w[p + "self_att.att.out_proj.bias"],
            training=False,
            need_weights=False,
        )
        x = x + attended.transpose(0, 1)
        h = F.layer_norm(x, (d,), w[p + "norm2.norm.weight"], w[p + "norm2.norm.bias"], eps=1e-6)
        hidden = F.relu(F.linear(h, w[p + "pos_ffn.ffn.0.weight"], w[p + "pos_ffn.ffn.0.bias"]))
        x = x + F.linear(hidden, w[p + "pos_ffn.ffn.3.weight"], w[p + "pos_ffn.ffn.3.bias"])
    return F.layer_norm(x, (d,), w[prefix + "mdl.norm.norm.weight"], w[prefix + "mdl.norm.norm.bias"], eps=1e-6)


def sb_separate(mix: torch.Tensor, states: dict) -> torch.Tensor:
    """SpeechBrain's SepFormer separation of ``[batch, time]`` -> ``[batch, spks, time]``
    (float64): encoder (no padding, ReLU), Dual_Path_Model, decoder, output padded or
    cut to the input length as SpeechBrain's separator does."""
    s = SB_SIZES
    w = {key: value.double() for key, value in states["masknet"].items()}
    stride, chunk, half = s["kernel"] // 2, s["chunk"], s["chunk"] // 2
    enc = F.relu(F.conv1d(mix.unsqueeze(1), states["encoder"]["conv1d.weight"].double(), stride=stride))
    batch, _, frames = enc.shape
    x = F.conv1d(F.group_norm(enc, 1, w["norm.weight"], w["norm.bias"], eps=1e-8), w["conv1d.weight"])
    # Segmentation: half a chunk of zeros on the left; on the right, half a chunk plus
    # the 1..K zeros ("gap") that put the end on the chunk grid; chunks every K/2 frames.
    gap = chunk - (half + frames % chunk) % chunk
    padded = F.pad(x, (half, gap + half))
    starts = list(range(0, padded.shape[-1] - chunk + 1, half))
    x = torch.stack([padded[..., t : t + chunk] for t in starts], dim=-1)  # [B, D, K, S]
    for i in range(s["repeats"]):
        b, d, k, n_chunks = x.shape
        intra = x.permute(0, 3, 2, 1).reshape(b * n_chunks, k, d)
        intra = sb_transformer(intra, w, f"dual_mdl.{i}.intra_mdl.", s["intra"], s["n_heads"])
        intra = intra.reshape(b, n_chunks, k, d).permute(0, 3, 2, 1)
        intra = F.group_norm(intra, 1, w[f"dual_mdl.{i}.intra_norm.weight"], w[f"dual_mdl.{i}.intra_norm.bias"], 1e-8)
        intra = intra + x
        inter = intra.permute(0, 2, 3, 1).reshape(b * k, n_chunks, d)
        inter = sb_transformer(inter, w, f"dual_mdl.{i}.inter_mdl.", s["inter"], s["n_heads"])
        inter = inter.reshape(b, k, n_chunks, d).permute(0, 3, 1, 2)
        inter = F.group_norm(inter, 1, w[f"dual_mdl.{i}.inter_norm.weight"], w[f"dual_mdl.{i}.inter_norm.bias"], 1e-8)
        x = inter + intra
    x = F.conv2d(F.prelu(x, w["prelu.weight"]), w["conv2d.weight"], w["conv2d.bias"])
    x = x.reshape(batch * s["spks"], -1, chunk, len(starts))
    summed = torch.zeros(x.shape[0], x.shape[1], padded.shape[-1], dtype=x.dtype)
    for index, t in enumerate(starts):
        summed[..., t : t + chunk] += x[..., index]
    x = summed[..., half : half + frames]
    gated = torch.tanh(F.conv1d(x, w["output.0.weight"], w["output.0.bias"]))
    gated = gated * torch.sigmoid(F.conv1d(x, w["output_gate.0.weight"], w["output_gate.0.bias"]))
    masks = F.relu(F.conv1d(gated, w["end_conv1x1.weight"])).reshape(batch, s["spks"], -1, frames)
    sources = [
        F.conv_transpose1d(masks[:, j] * enc, states["decoder"]["weight"].double(), stride=stride).squeeze(1)
        for j in range(s["spks"])
    ]
    est = torch.stack(sources, dim=1)
    length = mix.shape[-1]
    return F.pad(est, (0, max(0, length - est.shape[-1])))[..., :length]


def sb_length(frames: int) -> int:
    """Samples that give exactly ``frames`` encoder frames and need no encoder padding."""
    return (frames - 1) * (SB_SIZES["kernel"] // 2) + SB_SIZES["kernel"]


@pytest.mark.parametrize("frames", [43, 62, 21])
def test_speechbrain_sepformer_matches_the_reference_forward(tmp_path, frames) -> None:
    # Frame counts with 0 < frames % K < K/2: SpeechBrain's segmentation then appends
    # exactly the zeros sepkit's does (elsewhere it appends one more hop of zero frames,
    # which the inter-chunk attention sees). Sample counts on the encoder's frame grid.
    assert 0 < frames % SB_SIZES["chunk"] < SB_SIZES["chunk"] // 2
    states = write_sb_folder(tmp_path / "card")
    model = from_speechbrain(tmp_path / "card").double()
    mix = torch.randn(2, sb_length(frames), generator=torch.Generator().manual_seed(frames), dtype=torch.float64)
    with torch.no_grad():
        expected = sb_separate(mix, states)
        got = model(mix)
    assert got.shape == expected.shape == (2, 2, mix.shape[-1])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert model.model_name == "sepformer"
    config = model.model_config
    assert (config["n_repeats"], config["n_intra_layers"], config["n_inter_layers"]) == (2, 1, 2)
    assert (config["chunk_size"], config["hop"], config["kernel_size"], config["stride"]) == (10, 5, 4, 2)


def test_speechbrain_checkpoints_are_plain_state_dicts(tmp_path) -> None:
    states = write_sb_folder(tmp_path / "card")
    for name in ("encoder", "masknet", "decoder"):
        loaded = torch.load(tmp_path / "card" / f"{name}.ckpt", weights_only=True)
        assert loaded.keys() == states[name].keys()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update({"dual_mdl.0.intra_mdl.mdl.layers.0.extra.weight": torch.zeros(3)}), "extra.weight"),
        (lambda m: m.pop("dual_mdl.1.inter_mdl.mdl.layers.1.norm2.norm.bias"), "layers.1.ffn_norm.bias"),
        (lambda m: m.update({"conv1d.weight": torch.zeros(8, 16, 3)}), "conv1d.weight"),
        (lambda m: m.update({"dual_mdl.0.intra_mdl.pos_enc.pe": torch.zeros(1, SB_MAX_LEN, 8)}), "pos_enc.pe"),
        (lambda m: m["prelu.weight"].fill_(float("nan")), "prelu.weight"),
    ],
    ids=["unknown", "missing", "shape", "positions", "nan"],
)
def test_speechbrain_bad_weights_are_named(tmp_path, edit, message) -> None:
    write_sb_folder(tmp_path / "card", masknet_edit=edit)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        from_speechbrain(tmp_path / "card")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.replace("linear_layer_after_inter_intra: False", "linear_layer_after_inter_intra: True"),
            "linear",
        ),
        (lambda t: t.replace("norm: ln", "norm: cln"), "'cln'"),
        (lambda t: t.replace("bias: False", "bias: True"), "bias"),
        (lambda t: t.replace("!ref <SBtfinter>", "!ref <NoSuchBlock>"), "NoSuchBlock"),
        (lambda t: t.replace("sample_rate: 8000", "sample_rate: fast"), "sample_rate 'fast'"),
        (lambda t: t.replace("sample_rate: 8000", ""), "sample_rate None"),
        (lambda t: t.replace("    K: 10", "    K: !apply:int [10]"), "MaskNet K '!apply:int'"),
        (lambda t: t.replace("    nhead: 2\n", "", 1), "intra has no nhead"),
    ],
    ids=["linear", "norm", "decoder-bias", "dangling-ref", "rate-text", "rate-missing", "tagged-int", "no-heads"],
)
def test_speechbrain_unsupported_settings_are_named(tmp_path, edit, message) -> None:
    write_sb_folder(tmp_path / "card", hyperparams_edit=edit)
    with pytest.raises(ValueError, match=message):
        from_speechbrain(tmp_path / "card")


def test_speechbrain_yaml_tags_are_never_executed(tmp_path) -> None:
    # A tag naming a callable with a side effect stays data: the file is never written.
    marker = tmp_path / "executed"
    evil = f"touch: !apply:pathlib.Path.touch\n    - {marker}\n"
    write_sb_folder(tmp_path / "card", hyperparams_edit=lambda t: t + evil)
    from_speechbrain(tmp_path / "card")
    assert not marker.exists()


# ----------------------------------------------------------------------------- SuDoRM-RF

SUDO_ARGS = dict(
    out_channels=8,
    in_channels=16,
    num_blocks=2,
    upsampling_depth=3,
    enc_kernel_size=21,
    enc_num_basis=12,
    num_sources=2,
)


def sudo_shapes(improved: bool, a: dict = SUDO_ARGS) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the authors' ``SuDORMRF`` (``improved_sudormrf.py``
    if ``improved``, else ``sudormrf.py``) for constructor arguments ``a``."""
    e, k, c, cu, spks = a["enc_num_basis"], a["enc_kernel_size"], a["out_channels"], a["in_channels"], a["num_sources"]
    norm = ("gamma", "beta") if improved else ("weight", "bias")
    shapes: dict[str, tuple[int, ...]] = {}
    if improved:
        shapes["encoder.weight"] = (e, 1, k)
        shapes |= {
            f"ln.{norm[0]}": (e,),
            f"ln.{norm[1]}": (e,),
            "bottleneck.weight": (c, e, 1),
            "bottleneck.bias": (c,),
        }
    else:
        shapes |= {"encoder.0.weight": (e, 1, k), "encoder.0.bias": (e,)}
        shapes |= {"ln.weight": (e,), "ln.bias": (e,), "l1.weight": (c, e, 1), "l1.bias": (c,)}
    for i in range(a["num_blocks"]):
        b = f"sm.{i}."
        shapes |= {b + "proj_1x1.conv.weight": (cu, c, 1), b + "proj_1x1.conv.bias": (cu,)}
        shapes |= {b + f"proj_1x1.norm.{norm[0]}": (cu,), b + f"proj_1x1.norm.{norm[1]}": (cu,)}
        shapes[b + "proj_1x1.act.weight"] = (1,) if improved else (cu,)
        for level in range(a["upsampling_depth"]):
            shapes |= {b + f"spp_dw.{level}.conv.weight": (cu, 1, 5), b + f"spp_dw.{level}.conv.bias": (cu,)}
            shapes |= {b + f"spp_dw.{level}.norm.{norm[0]}": (cu,), b + f"spp_dw.{level}.norm.{norm[1]}": (cu,)}
        shapes |= {b + f"final_norm.norm.{norm[0]}": (cu,), b + f"final_norm.norm.{norm[1]}": (cu,)}
        shapes[b + "final_norm.act.weight"] = (1,) if improved else (cu,)
        if improved:
            shapes |= {b + "res_conv.weight": (c, cu, 1), b + "res_conv.bias": (c,)}
        else:
            shapes |= {b + "conv_1x1_exp.conv.weight": (c, cu, 1), b + "conv_1x1_exp.conv.bias": (c,)}
            shapes |= {b + "conv_1x1_exp.norm.weight": (c,), b + "conv_1x1_exp.norm.bias": (c,)}
            shapes |= {b + "module_act.norm.weight": (c,), b + "module_act.norm.bias": (c,)}
            shapes[b + "module_act.act.weight"] = (c,)
    if improved:
        shapes |= {"mask_net.0.weight": (1,), "mask_net.1.weight": (spks * e, c, 1), "mask_net.1.bias": (spks * e,)}
        shapes["decoder.weight"] = (e * spks, spks, k)
    else:
        shapes |= {"reshape_before_masks.weight": (e, c, 1), "reshape_before_masks.bias": (e,)}
        shapes |= {"m.weight": (spks, 1, e + 1, 1), "m.bias": (spks,)}
        shapes |= {"decoder.weight": (e * spks, 1, k), "decoder.bias": (spks,)}
        shapes |= {"ln_mask_in.weight": (e,), "ln_mask_in.bias": (e,)}
    return shapes


def gc_sudo_shapes(a: dict, groups: int) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the authors' ``GroupCommSudoRmRf``
    (``groupcomm_sudormrf_v2.py``; its ``group_size`` argument is ``groups``): the
    improved model's top level, and per block a ``TAC(M, 3M)`` (M = ``out_channels /
    groups``) and one ``UBlock``, the improved U-ConvBlock at ``1/groups`` of the widths."""
    cu, m = a["in_channels"], a["out_channels"] // groups
    top = {key: shape for key, shape in sudo_shapes(True, dict(a, num_blocks=0)).items()}
    block = sudo_shapes(True, dict(a, num_blocks=1, out_channels=m, in_channels=cu // groups))
    shapes = dict(top)
    for i in range(a["num_blocks"]):
        t = f"sm.{i}.TAC."
        shapes |= {
            t + "TAC_input.0.weight": (3 * m, m),
            t + "TAC_input.0.bias": (3 * m,),
            t + "TAC_input.1.weight": (1,),
        }
        shapes |= {
            t + "TAC_mean.0.weight": (3 * m, 3 * m),
            t + "TAC_mean.0.bias": (3 * m,),
            t + "TAC_mean.1.weight": (1,),
        }
        shapes |= {
            t + "TAC_output.0.weight": (m, 6 * m),
            t + "TAC_output.0.bias": (m,),
            t + "TAC_output.1.weight": (1,),
        }
        shapes |= {t + "TAC_norm.gamma": (m,), t + "TAC_norm.beta": (m,)}
        shapes |= {
            f"sm.{i}.UBlock." + key.removeprefix("sm.0."): v for key, v in block.items() if key.startswith("sm.0.")
        }
    return shapes


def _norm(x: torch.Tensor, w: dict, prefix: str) -> torch.Tensor:
    """gLN of the reference (GroupNorm(1) or its GlobLN with gamma/beta, eps 1e-8)."""
    weight = w.get(prefix + "weight", w.get(prefix + "gamma"))
    bias = w.get(prefix + "bias", w.get(prefix + "beta"))
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-8) * weight[:, None] + bias[:, None]


def _ref_ublock(y: torch.Tensor, w: dict, b: str, depth: int, improved: bool) -> torch.Tensor:
    """The authors' ``UConvBlock.forward`` (weights under prefix ``b``) on ``[batch, C, T]``."""
    h = F.conv1d(y, w[b + "proj_1x1.conv.weight"], w[b + "proj_1x1.conv.bias"])
    h = F.prelu(_norm(h, w, b + "proj_1x1.norm."), w[b + "proj_1x1.act.weight"])
    levels = []
    for level in range(depth):
        conv_w, conv_b = w[b + f"spp_dw.{level}.conv.weight"], w[b + f"spp_dw.{level}.conv.bias"]
        h = F.conv1d(h, conv_w, conv_b, stride=1 if level == 0 else 2, padding=2, groups=h.shape[1])
        h = _norm(h, w, b + f"spp_dw.{level}.norm.")
        levels.append(h)
    merged = levels.pop()
    while levels:
        merged = levels.pop() + F.interpolate(merged, scale_factor=2, mode="nearest")
    merged = F.prelu(_norm(merged, w, b + "final_norm.norm."), w[b + "final_norm.act.weight"])
    if improved:
        return F.conv1d(merged, w[b + "res_conv.weight"], w[b + "res_conv.bias"]) + y
    out = _norm(
        F.conv1d(merged, w[b + "conv_1x1_exp.conv.weight"], w[b + "conv_1x1_exp.conv.bias"]),
        w,
        b + "conv_1x1_exp.norm.",
    )
    return F.prelu(_norm(out + y, w, b + "module_act.norm."), w[b + "module_act.act.weight"])


def _ref_gc_tac(x: torch.Tensor, w: dict, p: str, groups: int) -> torch.Tensor:
    """``TAC.forward`` of ``groupcomm_sudormrf_v2.py`` on ``[B, C, T]`` split into ``groups``:
    per frame and group Linear+PReLU, the mean over groups through Linear+PReLU,
    concatenated, Linear+PReLU, then its GlobLN (eps 1e-8) per group, residual."""
    b, c, t = x.shape
    g = x.reshape(b, groups, c // groups, t).permute(0, 3, 1, 2)  # B, T, G, M
    f = F.prelu(F.linear(g, w[p + "TAC_input.0.weight"], w[p + "TAC_input.0.bias"]), w[p + "TAC_input.1.weight"])
    mean = F.linear(f.mean(2), w[p + "TAC_mean.0.weight"], w[p + "TAC_mean.0.bias"])
    mean = F.prelu(mean, w[p + "TAC_mean.1.weight"]).unsqueeze(2).expand_as(f)
    out = F.linear(torch.cat([f, mean], dim=-1), w[p + "TAC_output.0.weight"], w[p + "TAC_output.0.bias"])
    out = F.prelu(out, w[p + "TAC_output.1.weight"]).permute(0, 2, 3, 1).reshape(b * groups, c // groups, t)
    return x + _norm(out, w, p + "TAC_norm.").reshape(x.shape)


def sudo_separate(mix: torch.Tensor, state: dict, improved: bool, a: dict = SUDO_ARGS, groups: int = 1) -> torch.Tensor:
    """The authors' ``SuDORMRF.forward`` (``GroupCommSudoRmRf.forward`` with ``groups`` >
    1) on ``[batch, time]`` -> ``[batch, spks, time]``. The improved models pad the input
    with zeros to a multiple of ``kernel // 2 * 2**depth`` (at least one) as their
    ``pad_to_appropriate_length``; for the original one, time must be such a multiple."""
    w = {key: value.double() for key, value in state.items()}
    k, e, spks, depth = a["enc_kernel_size"], a["enc_num_basis"], a["num_sources"], a["upsampling_depth"]
    x = mix.unsqueeze(1)
    if improved:
        multiple = k // 2 * 2**depth
        x = F.pad(x, (0, max(1, math.ceil(mix.shape[-1] / multiple)) * multiple - mix.shape[-1]))
    if improved:
        enc = F.conv1d(x, w["encoder.weight"], stride=k // 2, padding=k // 2)
        y = F.conv1d(_norm(enc, w, "ln."), w["bottleneck.weight"], w["bottleneck.bias"])
    else:
        enc = F.relu(F.conv1d(x, w["encoder.0.weight"], w["encoder.0.bias"], stride=k // 2, padding=k // 2))
        y = F.conv1d(_norm(enc, w, "ln."), w["l1.weight"], w["l1.bias"])
    for i in range(a["num_blocks"]):
        if groups == 1:
            y = _ref_ublock(y, w, f"sm.{i}.", depth, improved)
        else:
            y = _ref_gc_tac(y, w, f"sm.{i}.TAC.", groups)
            grouped = y.reshape(y.shape[0] * groups, -1, y.shape[-1])
            y = _ref_ublock(grouped, w, f"sm.{i}.UBlock.", depth, improved=True).reshape(y.shape)
    if improved:
        masks = F.conv1d(F.prelu(y, w["mask_net.0.weight"]), w["mask_net.1.weight"], w["mask_net.1.bias"])
        masks = F.relu(masks.reshape(y.shape[0], spks, e, -1))
        bias, groups = None, 1
    else:
        scores = F.conv2d(
            F.conv1d(y, w["reshape_before_masks.weight"], w["reshape_before_masks.bias"]).unsqueeze(1),
            w["m.weight"],
            w["m.bias"],
            padding=(e - e // 2, 0),
        )
        masks = torch.softmax(scores, dim=1)
        bias, groups = w["decoder.bias"], spks
    masked = (masks * enc.unsqueeze(1)).reshape(y.shape[0], spks * e, -1)
    est = F.conv_transpose1d(
        masked, w["decoder.weight"], bias, stride=k // 2, padding=k // 2, output_padding=k // 2 - 1, groups=groups
    )
    return est[..., : mix.shape[-1]]


class _AuthorsModule(nn.Module):
    """A module with the authors' attribute names, built from a flat state dict, standing
    in for their class when the test pickles a "released" file."""

    def __init__(self, state: dict[str, torch.Tensor], args: dict) -> None:
        super().__init__()
        for name, value in args.items():
            setattr(self, name, value)
        for key, value in state.items():
            owner: nn.Module = self
            *path, leaf = key.split(".")
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, nn.Parameter(value.clone()))
        self.upsampler = nn.Upsample(scale_factor=2)


def write_release(path: Path, state: dict, class_module: str, class_name: str = "SuDORMRF", args=SUDO_ARGS) -> None:
    """``torch.save(model, path)`` of a module pickled under the authors' class path
    (``<class_module>.<class_name>``), as their Zenodo files are."""
    model = _AuthorsModule(state, dict(args))
    cls = type(class_name, (_AuthorsModule,), {"__module__": class_module})
    model.__class__ = cls
    # Empty stand-in modules for the dotted path, so that pickle can name the class.
    parts = class_module.split(".")
    added = [".".join(parts[: end + 1]) for end in range(len(parts)) if ".".join(parts[: end + 1]) not in sys.modules]
    for name in added:
        sys.modules[name] = type(sys)(name)
    setattr(sys.modules[class_module], class_name, cls)
    try:
        torch.save(model, path)
    finally:
        for name in added:
            del sys.modules[name]


def sudo_length(multiple_count: int, a: dict = SUDO_ARGS) -> int:
    """A length the authors' padding leaves unchanged (a multiple of kernel//2 * 2**depth)."""
    return multiple_count * (a["enc_kernel_size"] // 2) * 2 ** a["upsampling_depth"]


@pytest.mark.parametrize("improved", [True, False], ids=["improved", "original"])
def test_sudormrf_release_matches_the_reference_forward(tmp_path, improved) -> None:
    state = random_state(sudo_shapes(improved), seed=3)
    module = "sudo_rm_rf.dnn.models." + ("improved_sudormrf" if improved else "sudormrf")
    write_release(tmp_path / "release.pt", state, module)
    model = from_sudormrf(tmp_path / "release.pt").double()
    # The released models expect a normalised mixture (the README does it outside the
    # model); compare the model proper, without sepkit's in-model normalisation.
    model.normalize_input = False
    mix = torch.randn(2, sudo_length(3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(mix), sudo_separate(mix, state, improved), rtol=1e-9, atol=1e-9)
    assert model.model_config["improved"] is improved
    assert model.model_config["stride"] == 10 and model.model_config["n_blocks"] == 2


def test_sudormrf_release_is_read_without_executing_pickled_code(tmp_path) -> None:
    state = random_state(sudo_shapes(True), seed=4)
    write_release(tmp_path / "release.pt", state, "sudo_rm_rf.dnn.models.improved_sudormrf")
    # Rewrite the archive with a pickle that would call os.system if unpickled normally.
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile.pt"
    with zipfile.ZipFile(tmp_path / "release.pt") as source, zipfile.ZipFile(hostile, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Payload(), protocol=2)
            target.writestr(item, data)
    root = read_pickled_modules(hostile)
    assert not marker.exists()
    assert root.qualified_name in ("posix.system", "nt.system", "os.system")
    with pytest.raises(ValueError, match="not a SuDoRM-RF model"):
        from_sudormrf(hostile)
    assert not marker.exists()


GC_ARGS = dict(SUDO_ARGS, out_channels=8, in_channels=16)
GC_GROUPS = 4
GC_MODULE = "sudo_rm_rf.dnn.models.groupcomm_sudormrf_v2"


def test_sudormrf_group_comm_default_count_equals_the_reference_layers() -> None:
    reference_defaults = dict(
        in_channels=512,
        out_channels=256,
        num_blocks=16,
        upsampling_depth=5,
        enc_kernel_size=21,
        enc_num_basis=512,
        num_sources=2,
    )
    reference = sum(math.prod(shape) for shape in gc_sudo_shapes(reference_defaults, groups=16).values())
    model = build_model("sudormrf", improved=True, bottleneck=256, n_groups=16)
    assert sum(p.numel() for p in model.parameters()) == reference == 565_073


# On the padding grid (2 and 3 multiples of 80), one sample either side, shorter than
# one encoder window (7), one sample.
@pytest.mark.parametrize("length", [1, 7, 159, 160, 161, 240])
def test_sudormrf_group_comm_release_matches_the_reference_forward(tmp_path, length) -> None:
    state = random_state(gc_sudo_shapes(GC_ARGS, GC_GROUPS), seed=8)
    write_release(tmp_path / "gc.pt", state, GC_MODULE, "GroupCommSudoRmRf", args=GC_ARGS)
    model = from_sudormrf(tmp_path / "gc.pt").double()
    assert model.model_config["n_groups"] == GC_GROUPS and model.model_config["improved"] is True
    # Every published weight has exactly one place, and every sepkit weight is filled.
    assert len(model.state_dict()) == len(state)
    model.normalize_input = False
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(mix), sudo_separate(mix, state, True, GC_ARGS, groups=GC_GROUPS), rtol=1e-9, atol=1e-9
        )


def test_sudormrf_improved_release_matches_the_reference_off_the_padding_grid(tmp_path) -> None:
    state = random_state(sudo_shapes(True), seed=9)
    model = from_sudormrf(state, architecture=SUDO_ARGS).double()
    model.normalize_input = False
    for length in (1, 7, 79, 81, 161):
        mix = torch.randn(1, length, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(model(mix), sudo_separate(mix, state, True), rtol=1e-9, atol=1e-9)


def test_sudormrf_bad_weights_are_named(tmp_path) -> None:
    state = random_state(sudo_shapes(True), seed=5)
    extra = dict(state, **{"sm.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"'sm\.0\.extra\.weight'"):
        from_sudormrf(extra, architecture=SUDO_ARGS)
    missing = {key: value for key, value in state.items() if key != "sm.1.res_conv.bias"}
    with pytest.raises(ValueError, match=r"masker\.blocks\.1\.out_conv\.bias"):
        from_sudormrf(missing, architecture=SUDO_ARGS)
    with pytest.raises(RestrictedPickleError, match="not a torch zip archive"):
        read_pickled_modules(tmp_path / "gc.pt.missing")
    gc_state = random_state(gc_sudo_shapes(GC_ARGS, GC_GROUPS), seed=5)
    gc_missing = {key: value for key, value in gc_state.items() if key != "sm.1.TAC.TAC_norm.beta"}
    with pytest.raises(ValueError, match=r"masker\.blocks\.1\.tac\.norm\.bias"):
        from_sudormrf(gc_missing, architecture=GC_ARGS)
    odd_width = dict(gc_state, **{"sm.0.TAC.TAC_input.0.weight": torch.zeros(9, 3)})
    with pytest.raises(ValueError, match=r"input width 3, which does not divide out_channels 8"):
        from_sudormrf(odd_width, architecture=GC_ARGS)
    stray_tac = dict(random_state(sudo_shapes(False), seed=5), **{"sm.0.TAC.TAC_input.0.weight": torch.zeros(6, 2)})
    with pytest.raises(ValueError, match="TAC blocks in an original"):
        from_sudormrf(stray_tac, architecture=SUDO_ARGS)


def test_non_tensor_weights_are_named(tmp_path) -> None:
    state = random_state(sudo_shapes(True), seed=11)
    odd = dict(state, **{"bottleneck.bias": [0.0] * 8})
    with pytest.raises(ValueError, match=r"'bottleneck\.bias' is not a tensor"):
        from_sudormrf(odd, architecture=SUDO_ARGS)
    module = nn.Module()
    module._buffers["odd"] = "text"
    torch.save(module, tmp_path / "odd.pt")
    with pytest.raises(RestrictedPickleError, match=r"odd\.pt: weight 'odd' is not a tensor"):
        stand_in_state_dict(read_pickled_modules(tmp_path / "odd.pt"), str(tmp_path / "odd.pt"))


def test_restricted_reader_refuses_legacy_and_foreign_files(tmp_path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(RestrictedPickleError, match=r"legacy\.pt: not a torch zip archive"):
        read_pickled_modules(legacy)
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(RestrictedPickleError, match=r"foreign\.zip: not a torch archive"):
        read_pickled_modules(foreign)


def test_sudormrf_state_dict_of_dataparallel_training_checkpoint(tmp_path) -> None:
    state = random_state(sudo_shapes(True), seed=6)
    wrapped = {"module." + key: value for key, value in state.items()}
    model = from_sudormrf(wrapped, architecture=SUDO_ARGS).double()
    model.normalize_input = False
    mix = torch.randn(1, sudo_length(2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(mix), sudo_separate(mix, state, True), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- end to end


def _separate_and_compare(tmp_path: Path, model_path: Path, length: int) -> None:
    """``load_model`` returns the converted model; ``sepkit separate`` on a real wav writes
    finite outputs equal to that model's eager output."""
    model = load_model(model_path)
    mix = np.random.default_rng(0).standard_normal(length).astype(np.float32) * 0.1
    wav = tmp_path / "mix.wav"
    sf.write(wav, mix, model.sample_rate, subtype="FLOAT")
    result = run_sepkit("separate", str(model_path), str(wav), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The child runs single-threaded (OMP_NUM_THREADS=1), this process with two threads:
    # float32 reduction order differs, hence 1e-5. (Switching this process's thread count
    # for the comparison is no option: with torch 2.13's CPU build, torch.set_num_threads(1)
    # and back leaves later batched torch.linalg.solve calls failing on bad LU pivots.)
    with torch.no_grad():
        expected = model(torch.from_numpy(mix).unsqueeze(0))[0].numpy()
    for index in range(model.n_src):
        written, rate = sf.read(tmp_path / "out" / f"mix_s{index + 1}.wav", dtype="float32")
        assert rate == model.sample_rate and written.shape == (length,)
        assert np.isfinite(written).all()
        np.testing.assert_allclose(written, expected[index], rtol=1e-5, atol=1e-5)


def test_load_model_and_separate_accept_a_speechbrain_folder(tmp_path) -> None:
    write_sb_folder(tmp_path / "card")
    converted = load_model(tmp_path / "card")
    assert converted.model_name == "sepformer"
    _separate_and_compare(tmp_path, tmp_path / "card", sb_length(43) * 20)
    # The converted model saves as an ordinary sepkit model file with the same weights.
    save_model(converted, tmp_path / "sepformer.pt")
    reloaded = load_model(tmp_path / "sepformer.pt")
    mix = torch.randn(1, sb_length(43), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(mix), converted(mix), rtol=0, atol=0)


def test_load_model_and_separate_accept_a_sudormrf_release(tmp_path) -> None:
    write_release(
        tmp_path / "release.pt", random_state(sudo_shapes(True), 7), "sudo_rm_rf.dnn.models.improved_sudormrf"
    )
    assert load_model(tmp_path / "release.pt").model_config["improved"] is True
    _separate_and_compare(tmp_path, tmp_path / "release.pt", sudo_length(10))


def test_load_model_and_separate_accept_a_group_comm_sudormrf_release(tmp_path) -> None:
    state = random_state(gc_sudo_shapes(GC_ARGS, GC_GROUPS), 12)
    write_release(tmp_path / "gc.pt", state, GC_MODULE, "GroupCommSudoRmRf", args=GC_ARGS)
    assert load_model(tmp_path / "gc.pt").model_config["n_groups"] == GC_GROUPS
    _separate_and_compare(tmp_path, tmp_path / "gc.pt", sudo_length(10, GC_ARGS) + 37)


# ----------------------------------------------------------------------------- GC3

GC3_ARGS = dict(
    enc_dim=16, hidden_dim=16, sr=8000, win=2, layer=2, num_spk=2, context_size=4, group_size=4, block_size=6
)


def _tac_shapes(prefix: str, m: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """``TAC(m, hidden)`` of the GC3 code: three Linear+PReLU stages and a GroupNorm."""
    return {
        prefix + "TAC_input.0.weight": (hidden, m),
        prefix + "TAC_input.0.bias": (hidden,),
        prefix + "TAC_input.1.weight": (1,),
        prefix + "TAC_mean.0.weight": (hidden, hidden),
        prefix + "TAC_mean.0.bias": (hidden,),
        prefix + "TAC_mean.1.weight": (1,),
        prefix + "TAC_output.0.weight": (m, 2 * hidden),
        prefix + "TAC_output.0.bias": (m,),
        prefix + "TAC_output.1.weight": (1,),
        prefix + "TAC_norm.weight": (m,),
        prefix + "TAC_norm.bias": (m,),
    }


def _proj_rnn_shapes(prefix: str, m: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """``ProjRNN(m, hidden, "LSTM", bidirectional=True)``: a one-layer BiLSTM and a Linear."""
    shapes = {}
    for suffix in ("", "_reverse"):
        shapes |= {
            f"{prefix}rnn.weight_ih_l0{suffix}": (4 * hidden, m),
            f"{prefix}rnn.weight_hh_l0{suffix}": (4 * hidden, hidden),
            f"{prefix}rnn.bias_ih_l0{suffix}": (4 * hidden,),
            f"{prefix}rnn.bias_hh_l0{suffix}": (4 * hidden,),
        }
    return shapes | {prefix + "proj.weight": (m, 2 * hidden), prefix + "proj.bias": (m,)}


def gc3_shapes(module: str, a: dict = GC3_ARGS) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of GC3_network.py's ``TasNet(**a, module=module)``."""
    n, h, g, spk = a["enc_dim"], a["hidden_dim"], a["group_size"], a["num_spk"]
    m, window = n // g, int(a["sr"] * a["win"] / 1000)
    shapes: dict[str, tuple[int, ...]] = {"encoder.weight": (n, 1, window), "norm.weight": (n,), "norm.bias": (n,)}
    for side in ("enc", "dec"):
        for i in range(2):
            shapes |= _tac_shapes(f"context_{side}.TAC.{i}.", m, 3 * h // g)
            shapes |= _proj_rnn_shapes(f"context_{side}.rnn.{i}.", m, h // g)
            shapes |= {f"context_{side}.LN.{i}.weight": (m,), f"context_{side}.LN.{i}.bias": (m,)}
    if module == "DPRNN":
        dp = "seq_model.seq_model."
        for i in range(a["layer"]):
            shapes |= _tac_shapes(f"{dp}TAC.{i}.", m, 3 * h // g)
            for path in ("row", "col"):
                shapes |= _proj_rnn_shapes(f"{dp}{path}_rnn.{i}.", m, h // g)
                shapes |= {f"{dp}{path}_norm.{i}.weight": (m,), f"{dp}{path}_norm.{i}.bias": (m,)}
        shapes |= {dp + "output.weight": (m, m, 1, 1), dp + "output.bias": (m,)}
    elif module == "TCN":
        hidden = 4 * n // g
        for i in range(2 * a["layer"]):
            shapes |= _tac_shapes(f"seq_model.TAC.{i}.", m, 3 * hidden)
            t = f"seq_model.TCN.{i}."
            shapes |= {t + "conv1d.weight": (hidden, m, 1), t + "conv1d.bias": (hidden,)}
            shapes |= {t + "dconv1d.weight": (hidden, 1, 3), t + "dconv1d.bias": (hidden,)}
            shapes |= {t + "res_out.weight": (m, hidden, 1), t + "res_out.bias": (m,)}
            shapes |= {t + "skip_out.weight": (m, hidden, 1), t + "skip_out.bias": (m,)}
            shapes |= {t + "nonlinearity1.weight": (1,), t + "nonlinearity2.weight": (1,)}
            shapes |= {t + "reg1.weight": (hidden,), t + "reg1.bias": (hidden,)}
            shapes |= {t + "reg2.weight": (hidden,), t + "reg2.bias": (hidden,)}
        shapes |= {"seq_model.output.weight": (m, m, 1), "seq_model.output.bias": (m,)}
    else:  # UBlock: GC_UConvBlock(enc_dim, 2 * hidden_dim, upsampling_depth=5)
        hidden = 2 * h // g
        for i in range(a["layer"]):
            shapes |= _tac_shapes(f"seq_model.{i}.TAC.", m, 3 * m)
            u = f"seq_model.{i}.UBlock."
            shapes |= {u + "proj_1x1.conv.weight": (hidden, m, 1), u + "proj_1x1.conv.bias": (hidden,)}
            shapes |= {u + "proj_1x1.norm.gamma": (hidden,), u + "proj_1x1.norm.beta": (hidden,)}
            shapes[u + "proj_1x1.act.weight"] = (1,)
            for level in range(5):
                shapes |= {
                    u + f"spp_dw.{level}.conv.weight": (hidden, 1, 5),
                    u + f"spp_dw.{level}.conv.bias": (hidden,),
                }
                shapes |= {u + f"spp_dw.{level}.norm.gamma": (hidden,), u + f"spp_dw.{level}.norm.beta": (hidden,)}
            shapes |= {u + "final_norm.norm.gamma": (hidden,), u + "final_norm.norm.beta": (hidden,)}
            shapes[u + "final_norm.act.weight"] = (1,)
            shapes |= {u + "res_conv.weight": (m, hidden, 1), u + "res_conv.bias": (m,)}
    shapes |= {"mask.0.weight": (spk * m, m, 1), "mask.0.bias": (spk * m,), "decoder.weight": (n, 1, window)}
    return shapes


def _segment(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """The references' ``split_feature``: ``[B, N, L] -> [B, N, size, S]`` chunks every
    size/2 frames after half a chunk of zeros on the left and ``gap`` + half a chunk on the
    right, ``gap`` in 1..size putting the end on the chunk grid."""
    half = size // 2
    gap = size - (half + x.shape[-1] % size) % size
    padded = F.pad(x, (half, gap + half))
    starts = range(0, padded.shape[-1] - size + 1, half)
    return torch.stack([padded[..., t : t + size] for t in starts], dim=-1), gap


def _merge(chunks: torch.Tensor, frames: int) -> torch.Tensor:
    """Inverse of :func:`_segment`: sum the chunks back in place, drop the padding."""
    size, half = chunks.shape[-2], chunks.shape[-2] // 2
    total = (chunks.shape[-1] - 1) * half + size
    summed = torch.zeros(*chunks.shape[:-2], total, dtype=chunks.dtype)
    for index in range(chunks.shape[-1]):
        summed[..., index * half : index * half + size] += chunks[..., index]
    return summed[..., half : half + frames]


def _ref_tac(x: torch.Tensor, w: dict, p: str) -> torch.Tensor:
    """GC3's TAC on ``[B, G, M, T]``."""
    b, g, m, t = x.shape
    f = F.prelu(
        F.linear(x.permute(0, 3, 1, 2), w[p + "TAC_input.0.weight"], w[p + "TAC_input.0.bias"]),
        w[p + "TAC_input.1.weight"],
    )
    mean = F.prelu(
        F.linear(f.mean(2), w[p + "TAC_mean.0.weight"], w[p + "TAC_mean.0.bias"]), w[p + "TAC_mean.1.weight"]
    )
    joined = torch.cat([f, mean.unsqueeze(2).expand_as(f)], dim=-1)
    out = F.prelu(
        F.linear(joined, w[p + "TAC_output.0.weight"], w[p + "TAC_output.0.bias"]), w[p + "TAC_output.1.weight"]
    )
    out = out.permute(0, 2, 3, 1).reshape(b * g, m, t)
    return x + F.group_norm(out, 1, w[p + "TAC_norm.weight"], w[p + "TAC_norm.bias"], eps=1e-5).reshape(x.shape)


def _ref_proj_rnn(x: torch.Tensor, w: dict, p: str) -> torch.Tensor:
    """ProjRNN on ``[batch, length, M]``: torch's own BiLSTM with the given weights, then the Linear."""
    m, hidden = x.shape[-1], w[p + "rnn.weight_hh_l0"].shape[1]
    lstm = nn.LSTM(m, hidden, batch_first=True, bidirectional=True).double()
    lstm.load_state_dict({key[len(p) + 4 :]: value for key, value in w.items() if key.startswith(p + "rnn.")})
    return F.linear(lstm(x)[0], w[p + "proj.weight"], w[p + "proj.bias"])


def _ref_gc_rnn(x: torch.Tensor, w: dict, p: str, groups: int) -> torch.Tensor:
    """GC_RNN (two layers of TAC -> residual normalised ProjRNN) on ``[B, N, L]``."""
    b, n, length = x.shape
    out = x.reshape(b, groups, n // groups, length)
    for i in range(2):
        seq = _ref_tac(out, w, f"{p}TAC.{i}.").transpose(2, 3).reshape(b * groups, length, -1)
        normed = F.group_norm(
            _ref_proj_rnn(seq, w, f"{p}rnn.{i}.").transpose(1, 2),
            1,
            w[f"{p}LN.{i}.weight"],
            w[f"{p}LN.{i}.bias"],
            eps=1e-5,
        )
        out = (seq + normed.transpose(1, 2)).reshape(b, groups, length, -1).transpose(2, 3)
    return out.reshape(b, n, length)


def _ref_gc_dprnn(x: torch.Tensor, w: dict, groups: int, layers: int, block: int) -> torch.Tensor:
    """DP_wrapper(GC_DPRNN) with one output stream on ``[B, N, L]``."""
    dp = "seq_model.seq_model."
    b, n, length = x.shape
    chunks, _ = _segment(x, block)
    k, s = chunks.shape[-2:]
    out = chunks.reshape(b, groups, n // groups, k, s)
    for i in range(layers):
        out = _ref_tac(out.reshape(b, groups, -1, k * s), w, f"{dp}TAC.{i}.").reshape(b * groups, -1, k, s)
        row = _ref_proj_rnn(out.permute(0, 3, 2, 1).reshape(b * groups * s, k, -1), w, f"{dp}row_rnn.{i}.")
        row = row.reshape(b * groups, s, k, -1).permute(0, 3, 2, 1)
        out = out + F.group_norm(row, 1, w[f"{dp}row_norm.{i}.weight"], w[f"{dp}row_norm.{i}.bias"], eps=1e-8)
        col = _ref_proj_rnn(out.permute(0, 2, 3, 1).reshape(b * groups * k, s, -1), w, f"{dp}col_rnn.{i}.")
        col = col.reshape(b * groups, k, s, -1).permute(0, 3, 1, 2)
        out = out + F.group_norm(col, 1, w[f"{dp}col_norm.{i}.weight"], w[f"{dp}col_norm.{i}.bias"], eps=1e-8)
    out = F.conv2d(out, w[dp + "output.weight"], w[dp + "output.bias"]).reshape(b, n, k, s)
    return _merge(out, length)


def gc3_reference_masks(enc: torch.Tensor, state: dict, a: dict = GC3_ARGS) -> torch.Tensor:
    """GC3_network.py's TasNet (module "DPRNN") from the encoder output ``[B, N, T]`` to
    the masks ``[B, spk, N, T]``, float64."""
    w = {key: value.double() for key, value in state.items()}
    b, n, frames = enc.shape
    g, spk, context = a["group_size"], a["num_spk"], a["context_size"]
    feats = F.group_norm(enc, 1, w["norm.weight"], w["norm.bias"], eps=1e-5)
    blocks, _ = _segment(feats, context)  # [B, N, C, S]
    n_contexts = blocks.shape[-1]
    items = blocks.permute(0, 3, 1, 2).reshape(b * n_contexts, n, context)
    summary = _ref_gc_rnn(items, w, "context_enc.", g).mean(2).reshape(b, n_contexts, n).transpose(1, 2)
    summary = _ref_gc_dprnn(summary, w, g, a["layer"], a["block_size"])
    decoded = (summary.unsqueeze(2) + blocks).permute(0, 3, 1, 2).reshape(b * n_contexts, n, context)
    decoded = _ref_gc_rnn(decoded, w, "context_dec.", g).reshape(b, n_contexts, n, context).permute(0, 2, 3, 1)
    out = _merge(decoded, frames).reshape(b * g, n // g, frames)
    masks = F.relu(F.conv1d(out, w["mask.0.weight"], w["mask.0.bias"]))
    return masks.reshape(b, g, spk, n // g, frames).transpose(1, 2).reshape(b, spk, n, frames)


@pytest.mark.parametrize("frames", [25, 37])
def test_gc3_dprnn_masker_matches_the_reference(frames) -> None:
    # The masker alone, on frame counts where the reference's split_feature appends the
    # same zeros as sepkit's chunking, for the contexts (frames % 4 == 1) and for the
    # GC-DPRNN chunks over the context summaries (14 and 20 summaries, % 6 == 2). The
    # encoder framing differs (the reference pads half a window on both sides).
    state = random_state(gc3_shapes("DPRNN"), seed=8)
    model = from_gc3(state, **GC3_ARGS).double()
    enc = torch.randn(2, GC3_ARGS["enc_dim"], frames, generator=torch.Generator().manual_seed(frames)).double()
    with torch.no_grad():
        torch.testing.assert_close(model.masker(enc), gc3_reference_masks(enc, state), rtol=1e-9, atol=1e-9)
    assert model.model_config["kernel_size"] == 16 and model.model_config["sample_rate"] == 8000


@pytest.mark.parametrize("module", ["DPRNN", "TCN", "UBlock"])
def test_gc3_every_reference_weight_lands_once(module) -> None:
    state = random_state(gc3_shapes(module), seed=9)
    model = from_gc3(state, **GC3_ARGS, module=module)
    converted = model.state_dict()
    # Every parameter of the sepkit model is a distinct reference tensor, bit for bit.
    assert sum(value.numel() for value in converted.values()) == sum(value.numel() for value in state.values())
    fingerprints = {tuple(value.flatten()[:3].tolist()) + (value.numel(),) for value in state.values()}
    assert all(tuple(v.flatten()[:3].tolist()) + (v.numel(),) in fingerprints for v in converted.values())
    with torch.no_grad():
        out = model(torch.randn(1, 400))
    assert out.shape == (1, 2, 400) and torch.isfinite(out).all()


def test_gc3_bad_weights_and_modules_are_named() -> None:
    state = random_state(gc3_shapes("DPRNN"), seed=10)
    with pytest.raises(ValueError, match=r"'seq_model\.seq_model\.extra'"):
        from_gc3(dict(state, **{"seq_model.seq_model.extra": torch.zeros(1)}), **GC3_ARGS)
    missing = {key: value for key, value in state.items() if key != "context_dec.LN.1.bias"}
    with pytest.raises(ValueError, match=r"masker\.context_decoder\.1\.rnn\.norm\.bias"):
        from_gc3(missing, **GC3_ARGS)
    with pytest.raises(ValueError, match="'Transformer' has no sepkit equivalent"):
        from_gc3(state, **GC3_ARGS, module="Transformer")
    with pytest.raises(ValueError, match=r"'mask\.0\.weight' has shape"):
        from_gc3(state, **dict(GC3_ARGS, num_spk=3))


def test_load_model_and_separate_accept_an_asteroid_file(tmp_path) -> None:
    asteroid_models = pytest.importorskip("asteroid.models", reason="asteroid 0.7.0 is not installed")
    reference = asteroid_models.DPRNNTasNet(n_src=2, n_filters=16, bn_chan=8, hid_size=8, chunk_size=10, n_repeats=1)
    torch.save(reference.serialize(), tmp_path / "best_model.pth")
    assert load_model(tmp_path / "best_model.pth").model_name == "dprnn"
    _separate_and_compare(tmp_path, tmp_path / "best_model.pth", 808)


def test_asteroid_file_with_numpy_scalars_in_its_infos_loads(tmp_path) -> None:
    """Published Asteroid files (e.g. DPRNNTasNet-ks2_WHAM_sepclean) carry numpy scalars
    in ``infos``; the weights-only unpickler must accept those plain values, and anything
    it still refuses must come out as one line naming the file."""
    asteroid_models = pytest.importorskip("asteroid.models", reason="asteroid 0.7.0 is not installed")
    reference = asteroid_models.DPRNNTasNet(n_src=2, n_filters=16, bn_chan=8, hid_size=8, chunk_size=10, n_repeats=1)
    package = reference.serialize()
    package["infos"]["final_metrics"] = {"si_sdr": np.float64(18.2), "n_utts": np.int64(3000)}
    torch.save(package, tmp_path / "pytorch_model.bin")
    model = load_model(tmp_path / "pytorch_model.bin")
    mixture = torch.randn(1, 800)
    with torch.no_grad():
        torch.testing.assert_close(model(mixture), reference.eval()(mixture), atol=1e-5, rtol=0)

    package["infos"]["bad"] = fractions.Fraction(1, 3)  # a class outside the allowlist
    torch.save(package, tmp_path / "hostile.bin")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "hostile.bin")
    message = str(error.value)
    assert "hostile.bin" in message and "\n" not in message
