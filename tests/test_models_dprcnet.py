"""DP-RCNet: published parameter count and MACs, length handling, options, SSC presets."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import check_recipe
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sepkit.models import build_model
from sepkit.nn.dual_path import chunk, overlap_add

TINY = dict(n_filters=16, bottleneck=8, chunk_size=8, hop=4, dims=(4, 8), depths=(1, 2), hidden=6)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lstm_macs(lstm: nn.LSTM, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of a one-layer (Bi)LSTM on ``[batch, seq, input]``: per step and
    direction, the four gates' input and recurrent matmuls, ``4 * H * (I + H)``."""
    batch, seq, _ = inputs.shape
    directions = 2 if lstm.bidirectional else 1
    return directions * batch * seq * 4 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size)


def count_macs(model: nn.Module, wav: torch.Tensor) -> int:
    """Matmul/conv MACs (FLOPs / 2) from FlopCounterMode, plus the LSTMs counted analytically:
    on CPU the fused ``aten::lstm`` kernel is invisible to FlopCounterMode."""
    lstm_total = []
    hooks = [
        m.register_forward_hook(lambda mod, args, _out: lstm_total.append(lstm_macs(mod, args[0])))
        for m in model.modules()
        if isinstance(m, nn.LSTM)
    ]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(wav)
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2 + sum(lstm_total)


def test_lstm_mac_formula_matches_decomposed_lstm() -> None:
    """Oracle for ``lstm_macs``: on the meta device the LSTM decomposes into mm/addmm, which
    FlopCounterMode does count."""
    lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True).to("meta")
    inputs = torch.empty(3, 7, 6, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        lstm(inputs)
    assert counter.get_total_flops() // 2 == lstm_macs(lstm, inputs)


def test_parameter_count_matches_paper() -> None:
    # Paper Table 1: 9.2 M; the spec's rebuild gives exactly 9,179,696, and the per-block
    # closed form is 16 D^2 + 2578 D + 266,240.
    model = build_model("dprcnet")
    assert n_params(model) == 9_179_696
    for stage, width in zip(model.masker.stages, (16, 32, 64, 128)):
        for block in stage.blocks:
            assert n_params(block) == 16 * width**2 + 2578 * width + 266_240


def test_hidden_64_reading_is_ruled_out() -> None:
    # The spec's alternative (64 units per direction) gives 4.19 M, not the paper's 9.2 M.
    assert n_params(build_model("dprcnet", hidden=64)) == 4_190_768


def per_position_macs(dims: tuple[int, ...], depths: tuple[int, ...], hidden: int, bottleneck: int) -> int:
    """Separator MACs per chunked position (chunk_size * n_chunks), excluding the mask conv:
    per block 2 BiLSTMs (2 * 2 * 4H(D + H)), 2 FCs (2 * 2H D), 2 FFNs (2 * 8 D^2); per stage
    entry one 1x1 conv."""
    total, in_channels = 0, bottleneck
    for width, depth in zip(dims, depths):
        total += in_channels * width
        total += depth * (2 * 2 * 4 * hidden * (width + hidden) + 2 * 2 * hidden * width + 2 * 8 * width**2)
        in_channels = width
    return total


def expected_macs(frames: int, positions: int, n_filters: int, kernel: int, n_src: int, cfg: dict) -> int:
    """Encoder, bottleneck, separator, mask conv and decoder MACs (closed form)."""
    dims, depths, hidden, bottleneck = cfg["dims"], cfg["depths"], cfg["hidden"], cfg["bottleneck"]
    return (
        frames * n_filters * kernel  # encoder
        + frames * n_filters * bottleneck  # segmentation 1x1
        + positions * per_position_macs(dims, depths, hidden, bottleneck)
        + positions * dims[-1] * n_src * n_filters  # mask conv
        + n_src * frames * n_filters * kernel  # decoder
    )


PAPER = dict(dims=(16, 32, 64, 128), depths=(3, 3, 9, 3), hidden=128, bottleneck=64)


def test_macs_match_closed_form_and_paper() -> None:
    """Measured MACs (FlopCounterMode + analytic LSTMs) equal the closed form on a short
    input; the closed form at 4 s then gives the paper-scale figure.

    Tolerance for the paper's 76.63 G (ptflops, 4 s at 8 kHz): 3 %. Our count is matmuls
    and convs only (ptflops also counts LSTM gate arithmetic, biases, norms and GELUs,
    about 2 %). DPRNN's padding makes 86 chunks of 96 from 3,999 frames (spec: 74.91 G
    matmul MACs, 2.2 % under); the fewest-zeros rule's 85 chunks would be 3.4 % under.
    """
    model = build_model("dprcnet").eval()
    wav = torch.randn(1, 400)  # 50 ms
    frames = (400 - 16) // 8 + 1
    positions = chunk(torch.zeros(1, 1, frames), 96, 48, "pad_segment").shape[-2:].numel()
    assert count_macs(model, wav) == expected_macs(frames, positions, 256, 16, 2, PAPER)

    frames_4s = (32_000 - 16) // 8 + 1
    positions_4s = 96 * 86  # the spec's shape trace: U is (64, 96, 86) for 4 s
    assert chunk(torch.zeros(1, 1, frames_4s), 96, 48, "pad_segment").shape[-2:].numel() == positions_4s
    macs_4s = expected_macs(frames_4s, positions_4s, 256, 16, 2, PAPER)
    assert abs(macs_4s / 76.63e9 - 1) < 0.03, macs_4s
    fewest_zeros = chunk(torch.zeros(1, 1, frames_4s), 96, 48, "overlap").shape[-2:].numel()
    assert abs(expected_macs(frames_4s, fewest_zeros, 256, 16, 2, PAPER) / 76.63e9 - 1) > 0.03


@pytest.mark.parametrize("length", [1, 17, 1003])
@pytest.mark.parametrize("n_src", [1, 3])
def test_output_length_equals_input_length(length: int, n_src: int) -> None:
    model = build_model("dprcnet", **TINY, n_src=n_src).eval()
    with torch.no_grad():
        out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length)
    assert torch.isfinite(out).all()


def test_paper_config_forward_backward() -> None:
    model = build_model("dprcnet")
    out = model(torch.randn(1, 403))  # 50 ms: the fewest chunks (3 x 96 positions)
    assert out.shape == (1, 2, 403)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # LayerScale starts at 1e-6, yet the first LSTM must receive a gradient.
    assert model.masker.stages[0].blocks[0].intra.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_block_residual_placements() -> None:
    """Sub-block residuals: x + b1(x), then + b2(.); block residual: x + b2(b1(x))."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 5)
    for residual in ("sub_block", "block"):
        model = build_model("dprcnet", **TINY, residual=residual, layer_scale_init=0.5).eval()
        block = model.masker.stages[0].blocks[0]
        with torch.no_grad():
            if residual == "sub_block":
                mid = x + block.intra(x)
                expected = mid + block.inter(mid)
            else:
                expected = x + block.inter(block.intra(x))
            torch.testing.assert_close(block(x), expected)


def test_branch_runs_lstm_along_the_right_axis() -> None:
    """Intra: each chunk is a sequence (chunks independent); inter: each in-chunk position
    is a sequence across chunks."""
    torch.manual_seed(0)
    block = build_model("dprcnet", **TINY).masker.stages[0].blocks[0].eval()
    x = torch.randn(1, 4, 8, 5)
    changed = x.clone()
    changed[..., 0, 2] += 1.0  # one frame of chunk 2
    with torch.no_grad():
        intra_delta = (block.intra(changed) - block.intra(x)).abs().sum(dim=(0, 1))
        inter_delta = (block.inter(changed) - block.inter(x)).abs().sum(dim=(0, 1))
    assert intra_delta[:, [0, 1, 3, 4]].max() == 0 and intra_delta[:, 2].min() > 0
    assert inter_delta[1:].max() == 0 and inter_delta[0].min() > 0


def test_drop_path_is_stochastic_in_training_only() -> None:
    model = build_model("dprcnet", **TINY, drop_path_rate=0.5, layer_scale_init=1.0)
    wav = torch.randn(8, 200)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(wav), model(wav))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(model(wav), model(wav))


def test_bad_options_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="residual"):
        build_model("dprcnet", **TINY, residual="none")
    with pytest.raises(ValueError, match="dims"):
        build_model("dprcnet", **{**TINY, "depths": (1,)})


PRESETS = ["ffn", "linear", "pointwise"]


@pytest.mark.parametrize("preset", PRESETS)
def test_ssc_preset_globs_match_pointwise_layers(preset: str) -> None:
    model = build_model("dprcnet", **TINY)
    modules = dict(model.named_modules())
    for pattern in model.ssc_presets[preset]["include"]:
        matched = [m for name, m in modules.items() if fnmatch.fnmatchcase(name, pattern)]
        assert matched, f"{preset}: {pattern} matches no module"
        for module in matched:
            assert isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)), f"{pattern} matched {type(module).__name__}"
            if not isinstance(module, nn.Linear):
                assert set(module.kernel_size) == {1} and module.groups == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_ssc_preset_swap_runs(preset: str) -> None:
    # Wider than TINY: a 2-D SSC of kernel 3 needs at least 9 input channels.
    config = {**TINY, "bottleneck": 12, "dims": (12, 16)}
    model = build_model("dprcnet", **config, ssc={"preset": preset, "kernel_size": 3})
    out = model(torch.randn(2, 300))
    assert out.shape == (2, 2, 300)
    out.pow(2).mean().backward()


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("corpus", ["wsj0-2mix", "libri2mix", "wham"])
def test_paper_recipes_build_the_paper_model(
    corpus: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert n_params(check_recipe(RECIPES / corpus / "dprcnet.yaml", capsys, monkeypatch)) == 9_179_696


def test_synthetic_recipe_builds(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    check_recipe(RECIPES / "synthetic" / "dprcnet.yaml", capsys, monkeypatch)


# ---------------------------------------------------------------------------------------
# The choices the paper leaves open (module docstring, items 1-11): each test fails if
# the choice changes.


def test_choice_segmentation_padding_is_dprnn_codes() -> None:
    # Item 1. Oracle: K frames, chunk I, hop H = I/2: I - (H + K % I) % I zeros at the
    # end, H at both ends, J = 2 (K + rest + H) / I chunks; lengths on the chunk grid, in
    # both halves of a chunk, and shorter than one chunk.
    model = build_model("dprcnet", **TINY).eval()
    assert model.masker.chunk_padding == "pad_segment"
    seen: list[tuple[int, int]] = []
    model.masker.stages[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    chunk_size, hop = TINY["chunk_size"], TINY["hop"]
    for frames in (1, 3, 4, 7, 8, 9, 13, 16, 21):
        length = (frames - 1) * 8 + 16
        with torch.no_grad():
            model(torch.randn(1, length))
        rest = chunk_size - (hop + frames % chunk_size) % chunk_size
        assert seen.pop() == (chunk_size, 2 * (frames + rest + hop) // chunk_size), frames


def test_choice_segmentation_norm_is_global_layer_norm() -> None:
    # Item 2. gLN: one mean and variance over channels and frames per utterance.
    model = build_model("dprcnet", **TINY).double()
    rep = torch.randn(2, 16, 30, dtype=torch.float64) * 3 + 1
    mean = rep.mean(dim=(1, 2), keepdim=True)
    var = ((rep - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(model.masker.input_norm(rep), (rep - mean) / torch.sqrt(var + 1e-8))


def test_choice_layer_norms_are_per_position_over_channels() -> None:
    # Item 3. The stage entry and each sub-block normalise the D channels of every
    # (intra, inter) position on its own, eps 1e-6.
    torch.manual_seed(0)
    model = build_model("dprcnet", **TINY).double()
    entry = model.masker.stages[0].entry
    x = torch.randn(2, TINY["bottleneck"], 8, 5, dtype=torch.float64) * 2 + 0.5
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    normed = (x - mean) / torch.sqrt(var + 1e-6)
    torch.testing.assert_close(entry(x), entry.conv(normed))
    branch = model.masker.stages[0].blocks[0].intra
    assert isinstance(branch.norm, nn.LayerNorm) and branch.norm.normalized_shape == (4,) and branch.norm.eps == 1e-6


def test_choice_default_skip_is_one_residual_per_sub_block() -> None:
    # Item 4 (test_block_residual_placements checks both formulas when asked for).
    torch.manual_seed(0)
    block = build_model("dprcnet", **TINY, layer_scale_init=0.5).masker.stages[0].blocks[0].eval()
    x = torch.randn(2, 4, 8, 5)
    with torch.no_grad():
        mid = x + block.intra(x)
        torch.testing.assert_close(block(x), mid + block.inter(mid))


def test_choice_layer_scale_is_per_channel_per_sub_block() -> None:
    # Item 5: one gamma [D_r] per sub-block at 1e-6, scaling the branch output.
    model = build_model("dprcnet")
    for stage, width in zip(model.masker.stages, (16, 32, 64, 128)):
        for block in stage.blocks:
            for branch in (block.intra, block.inter):
                assert branch.gamma.shape == (width,)
                assert torch.equal(branch.gamma, torch.full((width,), 1e-6))
    torch.manual_seed(0)
    branch = build_model("dprcnet", **TINY, layer_scale_init=1.0).masker.stages[0].blocks[0].intra.eval()
    x = torch.randn(1, 4, 8, 3)
    with torch.no_grad():
        unscaled = branch(x)
        branch.gamma.copy_(torch.tensor([1.0, 2.0, 0.0, -1.0]))
        torch.testing.assert_close(branch(x), unscaled * torch.tensor([1.0, 2.0, 0.0, -1.0])[:, None, None])


def test_choice_drop_path_rises_linearly_over_the_blocks() -> None:
    # Item 6: 0.1 by default, linspace(0, 0.1, 18) over the 18 blocks in order.
    model = build_model("dprcnet")
    rates = [block.drop_path.p for stage in model.masker.stages for block in stage.blocks]
    assert rates == pytest.approx([0.1 * i / 17 for i in range(18)])


def test_choice_sub_block_order_and_output_head() -> None:
    # Items 7 and 8: the sub-block computes LayerScale(FC2(GELU(FC1(LN(FC(BiLSTM(x))))))),
    # and the masker GELU -> 1x1 Conv2d -> overlap-add -> sigmoid, with no final norm
    # after the last stage; rebuilt here from the layers, in the stated order.
    torch.manual_seed(0)
    model = build_model("dprcnet", **TINY, layer_scale_init=0.7).double().eval()
    masker = model.masker
    branch = masker.stages[0].blocks[0].intra
    assert branch.lstm.dropout == 0 and branch.lstm.bidirectional and branch.act.approximate == "none"
    x = torch.randn(1, 4, 8, 3, dtype=torch.float64)
    seq = x.permute(0, 3, 2, 1).reshape(3, 8, 4)
    y = branch.lstm(seq)[0]
    y = F.gelu(branch.pw1(F.layer_norm(branch.fc(y), (4,), branch.norm.weight, branch.norm.bias, 1e-6)))
    y = branch.pw2(y) * branch.gamma
    with torch.no_grad():
        torch.testing.assert_close(branch(x), y.reshape(1, 3, 8, 4).permute(0, 3, 2, 1))

        rep = torch.randn(2, 16, 23, dtype=torch.float64)
        h = chunk(masker.bottleneck(masker.input_norm(rep)), 8, 4, "pad_segment")
        for stage in masker.stages:
            h = stage(h)
        logits = overlap_add(masker.mask_conv(F.gelu(h)), 4, 23, "pad_segment")
        expected = torch.sigmoid(logits).reshape(2, 2, 16, 23)
        torch.testing.assert_close(masker(rep), expected)
    assert masker.output_act.approximate == "none"


def test_choice_stage_one_squeezes_the_bottleneck() -> None:
    # Item 9: B = 64 -> D_1 = 16, then doubling.
    entries = [stage.entry.conv for stage in build_model("dprcnet").masker.stages]
    assert [(c.in_channels, c.out_channels) for c in entries] == [(64, 16), (16, 32), (32, 64), (64, 128)]


def test_choice_encoder_decoder_are_linear_without_bias_and_pad_on_the_right() -> None:
    # Item 10: no encoder activation, no biases, one shared decoder; an off-grid input is
    # zero-padded on the right onto the frame grid and the estimate cropped.
    torch.manual_seed(0)
    model = build_model("dprcnet", **TINY).double().eval()
    assert model.encoder.conv.bias is None and model.decoder.deconv.bias is None
    wav = torch.randn(2, 101, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(-wav), -model.encoder(wav))
        padded = F.pad(wav, (0, 104 - 101))  # (104 - 16) % 8 == 0
        rep = model.encoder(padded)
        masks = model.masker(rep)
        expected = torch.stack([model.decoder.deconv(masks[:, s] * rep).squeeze(1) for s in range(2)], dim=1)
        torch.testing.assert_close(model(wav), expected[..., :101])


def test_choice_initialisation_is_convnexts() -> None:
    # Item 11: truncated normal std 0.02 and zero biases for the separator's Linear and
    # Conv2d layers after the segmentation.
    torch.manual_seed(0)
    model = build_model("dprcnet")
    layers = [m for m in model.masker.stages.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    layers.append(model.masker.mask_conv)
    weights = torch.cat([m.weight.detach().reshape(-1) for m in layers])
    assert all(not m.bias.any() for m in layers)
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert not model.masker.bottleneck.bias.eq(0).all()  # PyTorch's default there
