"""GC3: published parameter counts (and its 16 kHz baselines), group communication against
direct formulations, context codec shapes, group overlap, lengths, SSC presets."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch
from conftest import check_recipe
from torch import nn

from sepkit.models import build_model
from sepkit.models.gc3 import GroupBLSTM, GroupCommBLSTMLayer
from sepkit.nn.tac import TAC

TINY = dict(
    n_filters=16,
    kernel_size=8,
    stride=4,
    n_groups=4,
    context_size=4,
    codec_layers=1,
    codec_hidden=16,
    n_layers=2,
    backbone_hidden=16,
    chunk_size=4,
)
BACKBONES = ["dprnn", "tcn", "sudormrf"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Paper Tables III and V print 123.8K / 56.3K / 124.1K / 191.2K; the exact figures are the
# recount of the authors' released code.
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, 123_772),
        ({"n_groups": 32, "n_layers": 14}, 56_298),
        ({"group_comm": "blstm"}, 124_120),
        ({"backbone": "tcn"}, 191_168),
        ({"backbone": "sudormrf"}, 62_852),  # authors' code, 8 blocks (paper prints 60.0K)
        ({"group_overlap": 0.25}, 123_772),  # Table IV: overlap shares every weight
        ({"group_overlap": 0.5}, 123_772),
    ],
)
def test_parameter_counts(config: dict, expected: int) -> None:
    assert n_params(build_model("gc3", **config)) == expected


def test_component_counts() -> None:
    # spec §10: TAC(8, 48) 3,579; residual BLSTM(8, 16) with projection and norm 3,608;
    # one codec layer 7,187.
    assert n_params(TAC(8, 48)) == 8 * 48 + 48 + 48 * 48 + 48 + 96 * 8 + 8 + 3 + 16 == 3_579
    assert n_params(GroupBLSTM(8, 16)) == 3_608
    assert n_params(GroupCommBLSTMLayer("tac", 8, 16)) == 7_187


def test_16khz_baselines_are_configs_of_the_baseline_models() -> None:
    # Table II / V baselines: DPRNN 2.6M (TAC authors' direct head, bias-free bottleneck)
    # and Conv-TasNet "2 TCNs with 6 blocks" 2.5M, both N=128, 2 ms window at 16 kHz.
    dprnn = build_model(
        "dprnn",
        n_filters=128,
        kernel_size=32,
        stride=16,
        bottleneck=64,
        hidden_size=128,
        n_blocks=6,
        chunk_size=100,
        hop=50,
        mask_activation="relu",
        output_head="direct",
        bottleneck_bias=False,
        sample_rate=16000,
    )
    assert n_params(dprnn) == 2_616_065
    tcn = build_model(
        "conv_tasnet",
        n_filters=128,
        kernel_size=32,
        stride=16,
        bottleneck=128,
        hidden=512,
        skip_channels=128,
        n_blocks=6,
        n_repeats=2,
        mask_activation="relu",
        sample_rate=16000,
    )
    assert n_params(tcn) == 2_475_673
    with torch.no_grad():
        assert dprnn.eval()(torch.randn(1, 801)).shape == (1, 2, 801)


def tac_reference(tac: TAC, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 2-4 written per group and per position, plus the code's GroupNorm + residual.
    ``x``: [batch, groups, M, frames]."""
    batch, groups, group_size, frames = x.shape
    out = torch.empty(batch, groups, group_size, frames, dtype=x.dtype)
    for b in range(batch):
        for t in range(frames):
            f = [tac.transform_act(tac.transform(x[b, i, :, t])) for i in range(groups)]
            mean = tac.average_act(tac.average(sum(f) / groups))
            for i in range(groups):
                out[b, i, :, t] = tac.concat_act(tac.concat(torch.cat([f[i], mean])))
    gn = tac.norm
    mu = out.mean(dim=(2, 3), keepdim=True)
    var = out.var(dim=(2, 3), unbiased=False, keepdim=True)
    normed = (out - mu) / torch.sqrt(var + gn.eps) * gn.weight[:, None] + gn.bias[:, None]
    return x + normed


def test_tac_matches_per_group_formulation() -> None:
    torch.manual_seed(0)
    tac = TAC(3, 5).double()
    x = torch.randn(2, 4, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(tac(x), tac_reference(tac, x))


@pytest.mark.parametrize("module", [TAC(3, 5), GroupBLSTM(3, 4)], ids=["tac", "blstm"])
def test_group_comm_accepts_any_position_layout(module: nn.Module) -> None:
    """A [chunk, n_chunks] position grid (inside GC-DPRNN) gives the same result as the
    same positions flattened into one axis (codec, TCN, U-ConvBlock)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, 6)  # [batch, groups, M, chunk, n_chunks]
    with torch.no_grad():
        flat = module(x.reshape(2, 4, 3, 30)).reshape(x.shape)
        torch.testing.assert_close(module(x), flat)


def test_tac_is_equivariant_to_group_order() -> None:
    torch.manual_seed(0)
    tac = TAC(3, 5)
    x = torch.randn(2, 4, 3, 7)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(tac(x[:, perm]), tac(x)[:, perm])


def test_group_blstm_runs_across_groups() -> None:
    torch.manual_seed(0)
    module = GroupBLSTM(3, 4).double()
    x = torch.randn(1, 5, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        pre_norm = torch.stack(
            [module.proj(module.rnn(x[:, :, :, t])[0]) for t in range(2)], dim=-1
        )  # [1, groups, M, frames]
        expected = x + module.norm(pre_norm.reshape(5, 3, 2)).reshape(x.shape)
        torch.testing.assert_close(module(x), expected)


def test_backbone_runs_on_the_context_summaries() -> None:
    """The codec shortens the sequence ~C/2 times: frames -> 50%-overlap contexts."""
    model = build_model("gc3").eval()
    seen = []
    model.masker.backbone.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    wav = torch.randn(1, 16_000)  # 1 s at 16 kHz: 999 frames -> 64 contexts of 32
    with torch.no_grad():
        model(wav)
    frames = (16_000 - 32) // 16 + 1
    assert seen == [torch.Size([1, 16, 8, 64])]
    assert abs(seen[0][-1] - 2 * frames / 32) <= 2


@pytest.mark.parametrize(("overlap", "groups"), [(0.25, 21), (0.5, 31)])
def test_overlapping_groups_average_shared_channels(overlap: float, groups: int) -> None:
    model = build_model("gc3", group_overlap=overlap)
    masker = model.masker
    assert masker.n_group_slots == groups
    hop = int(8 * (1 - overlap))
    # Per-slot masks equal to their channel index merge back to exactly that index.
    slots = torch.arange(groups)[:, None] * hop + torch.arange(8)
    masks = slots.reshape(1, 1, -1, 1).float().expand(2, 3, -1, 5)
    merged = masker._merge_groups(masks)
    torch.testing.assert_close(merged, torch.arange(128).float().reshape(1, 1, 128, 1).expand(2, 3, 128, 5))


def test_bad_options_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="backbone"):
        build_model("gc3", backbone="dptnet")
    with pytest.raises(ValueError, match="group_comm"):
        build_model("gc3", group_comm="sa")
    with pytest.raises(ValueError, match="group_overlap"):
        build_model("gc3", group_overlap=0.3)
    with pytest.raises(ValueError, match="multiple of n_groups"):
        build_model("gc3", n_groups=24)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("group_comm", ["tac", "blstm"])
@pytest.mark.parametrize(("length", "n_src"), [(1, 1), (37, 3), (401, 2)])
def test_output_length_equals_input_length(backbone: str, group_comm: str, length: int, n_src: int) -> None:
    hidden = 16 if backbone == "dprnn" else 32
    model = build_model(
        "gc3", **{**TINY, "backbone_hidden": hidden}, backbone=backbone, group_comm=group_comm, n_src=n_src
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("config", [{}, {"backbone": "tcn"}, {"backbone": "sudormrf"}, {"group_overlap": 0.5}])
def test_paper_config_forward_backward(config: dict) -> None:
    model = build_model("gc3", **config)
    out = model(torch.randn(1, 1603))  # 0.1 s at 16 kHz
    assert out.shape == (1, 2, 1603)
    out.pow(2).mean().backward()
    # As in Conv-TasNet, the last TCN block's residual output feeds nothing (only its skip
    # is used); the published 191,168 counts it all the same.
    unused = {"masker.backbone.blocks.11.res_conv.weight", "masker.backbone.blocks.11.res_conv.bias"}
    for name, p in model.named_parameters():
        if config.get("backbone") == "tcn" and name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


PRESETS = ["group_comm", "projection", "pointwise"]


def preset_layers(model: nn.Module, preset: dict[str, list[str]]) -> dict[str, list[nn.Module]]:
    excluded = preset.get("exclude", [])
    return {
        pattern: [
            m
            for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
            and fnmatch.fnmatchcase(name, pattern)
            and not any(fnmatch.fnmatchcase(name, e) for e in excluded)
        ]
        for pattern in preset["include"]
    }


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("group_comm", ["tac", "blstm"])
@pytest.mark.parametrize("preset", PRESETS)
def test_ssc_preset_globs_match_pointwise_layers(backbone: str, group_comm: str, preset: str) -> None:
    model = build_model("gc3", **TINY, backbone=backbone, group_comm=group_comm)
    for pattern, layers in preset_layers(model, model.ssc_presets[preset]).items():
        assert layers, f"{preset}/{backbone}/{group_comm}: {pattern} selects no Linear/Conv layer"
        for layer in layers:
            if not isinstance(layer, nn.Linear):
                assert set(layer.kernel_size) == {1} and layer.groups == 1, f"{pattern} selects {layer}"
    if backbone == "dprnn":  # every exclusion names something real in the default model
        names = [name for name, _ in model.named_modules()]
        for pattern in model.ssc_presets[preset].get("exclude", []):
            assert fnmatch.filter(names, pattern), f"{preset}: exclude {pattern} matches nothing"


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("preset", PRESETS)
def test_ssc_preset_swap_runs(backbone: str, preset: str) -> None:
    model = build_model("gc3", backbone=backbone, ssc={"preset": preset, "kernel_size": 3})
    out = model(torch.randn(1, 1603))
    assert out.shape == (1, 2, 1603)
    out.pow(2).mean().backward()


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("whamr/gc3_dprnn.yaml", 123_772),
        ("whamr/gc3_dprnn_k32.yaml", 56_298),
        ("whamr/gc3_dprnn_blstm.yaml", 124_120),
        ("whamr/gc3_dprnn_overlap50.yaml", 123_772),
        ("whamr/gc3_tcn.yaml", 191_168),
        ("whamr/gc3_sudormrf.yaml", 62_852),
        ("wsj0-2mix/gc3_dprnn.yaml", 123_772),
        ("libri2mix/gc3_dprnn.yaml", 123_772),
    ],
)
def test_paper_recipes_build_the_paper_models(
    recipe: str, expected: int, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert n_params(check_recipe(RECIPES / recipe, capsys, monkeypatch)) == expected


def test_synthetic_recipe_builds(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    check_recipe(RECIPES / "synthetic" / "gc3.yaml", capsys, monkeypatch)
