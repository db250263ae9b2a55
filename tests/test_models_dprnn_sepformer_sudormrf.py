"""DPRNN, SepFormer and SuDoRM-RF: published parameter counts, shapes for any length,
tracing, and their building blocks against independent formulations."""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch
from torch import nn

from sepkit.models import build_model
from sepkit.models.sepformer import SepFormerBlock
from sepkit.nn.dual_path_rnn import DPRNNBlock
from sepkit.nn.transformer import TransformerLayer, TransformerStack, sinusoidal_positions

TINY = {
    "dprnn": dict(n_filters=16, kernel_size=8, stride=4, bottleneck=8, hidden_size=8, n_blocks=2, chunk_size=16, hop=8),
    "sepformer": dict(
        n_filters=16,
        d_model=16,
        n_heads=2,
        d_ffn=32,
        n_repeats=1,
        n_intra_layers=1,
        n_inter_layers=1,
        chunk_size=10,
        hop=5,
    ),
    "sudormrf": dict(n_filters=32, bottleneck=16, hidden_channels=32, n_blocks=2, upsampling_depth=3),
    "sudormrf_improved": dict(
        n_filters=32, bottleneck=16, hidden_channels=32, n_blocks=2, upsampling_depth=3, improved=True
    ),
}


def tiny(key: str, **overrides) -> nn.Module:
    name = "sudormrf" if key.startswith("sudormrf") else key
    return build_model(name, **{**TINY[key], **overrides})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, config, published",
    [
        ("dprnn", {}, 2_608_065),  # DPRNN paper, 2.6M
        ("dprnn", {"bottleneck": 128}, 3_651_073),  # Asteroid's recipe, 3.65M
        ("sepformer", {}, 25_679_361),  # SpeechBrain recipe / paper's 26M
        ("sudormrf", {}, 2_662_022),  # 1.0x: official notebook's 2.66M
        ("sudormrf", {"n_blocks": 8}, 1_414_790),  # 0.5x: 1.42M
        ("sudormrf", {"n_blocks": 4}, 791_174),  # 0.25x: 0.79M
        ("sudormrf", {"improved": True, "bottleneck": 256}, 5_016_353),  # README 5.02M
        ("sudormrf", {"improved": True, "bottleneck": 256, "n_filters": 2048}, 6_363_425),  # README 6.36M
    ],
)
def test_parameter_counts_match_published_models(name: str, config: dict, published: int) -> None:
    assert n_params(build_model(name, **config)) == published


@pytest.mark.parametrize("key", list(TINY))
@pytest.mark.parametrize("n_src", [1, 3])
def test_any_length_gives_the_same_length(key: str, n_src: int) -> None:
    model = tiny(key, n_src=n_src).eval()
    with torch.no_grad():
        for length in (1, 37, 333):
            est = model(torch.randn(2, length))
            assert est.shape == (2, n_src, length)
            assert torch.isfinite(est).all()


@pytest.mark.parametrize("key", list(TINY))
def test_torch_export_reproduces_eager_output(key: str) -> None:
    # Exported for one static length: the pipeline's padding arithmetic is plain Python,
    # so each input length is its own graph.
    torch.manual_seed(0)
    # Exporting LSTMs is slow; one dual-path block shows the same graph features.
    model = (tiny(key, n_blocks=1) if key == "dprnn" else tiny(key)).eval()
    wav = torch.randn(1, 480)
    exported = torch.export.export(model, (wav,))
    other = torch.randn(1, 480)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model(other))


@pytest.mark.parametrize("key", list(TINY))
def test_forward_and_backward_reach_every_parameter(key: str) -> None:
    model = tiny(key)
    model(torch.randn(2, 400)).square().mean().backward()
    unused = {"masker.unused_mask_input_norm.weight", "masker.unused_mask_input_norm.bias"}
    missing = [n for n, p in model.named_parameters() if p.grad is None and n not in unused]
    assert not missing


def _dual_path_loop(x: torch.Tensor, intra, inter) -> tuple[list, list]:
    """Run ``intra`` on every chunk and ``inter`` on every within-chunk position, one
    sequence at a time: ``[channels, chunk_size, n_chunks]`` indexing, no reshapes."""
    return [intra(x[:, :, j].T.unsqueeze(0))[0].T for j in range(x.shape[-1])], [
        inter(x[:, i, :].T.unsqueeze(0))[0].T for i in range(x.shape[1])
    ]


def test_dprnn_block_matches_per_sequence_loop() -> None:
    torch.manual_seed(0)
    block = DPRNNBlock(6, 5, norm="gLN").double()
    x = torch.randn(1, 6, 7, 4, dtype=torch.float64)

    def one_sequence(rnn: nn.RNNBase, proj: nn.Linear):
        # The block's RNNs are time-major: [steps, 1, C] in, [steps, 1, H] out.
        return lambda s: proj(rnn(s.transpose(0, 1))[0].transpose(0, 1))

    with torch.no_grad():
        intra_out, _ = _dual_path_loop(x[0], one_sequence(block.intra_rnn, block.intra_proj), lambda s: s)
        after_intra = x + block.intra_norm(torch.stack(intra_out, dim=-1).unsqueeze(0))
        _, inter_out = _dual_path_loop(after_intra[0], lambda s: s, one_sequence(block.inter_rnn, block.inter_proj))
        expected = after_intra + block.inter_norm(torch.stack(inter_out, dim=1).unsqueeze(0))
        torch.testing.assert_close(block(x), expected)


def test_sepformer_block_matches_per_sequence_loop() -> None:
    torch.manual_seed(0)
    stack = lambda: TransformerStack(1, 8, 2, 16, 0.0, norm_first=True, positional=True)  # noqa: E731
    block = SepFormerBlock(stack(), stack(), 8, "gLN", skip_around_intra=True).double().eval()
    x = torch.randn(1, 8, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        intra_out, _ = _dual_path_loop(x[0], block.intra, lambda s: s)
        after_intra = block.intra_norm(torch.stack(intra_out, dim=-1).unsqueeze(0)) + x
        _, inter_out = _dual_path_loop(after_intra[0], lambda s: s, block.inter)
        expected = block.inter_norm(torch.stack(inter_out, dim=1).unsqueeze(0)) + after_intra
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_layer_matches_torch_encoder_layer(norm_first: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerLayer(16, 4, 32, 0.0, norm_first).double().eval()
    ref = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first, layer_norm_eps=1e-6
    )
    ref = ref.double().eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
        ref.self_attn.in_proj_weight.copy_(ours.attention.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attention.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attention.out.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attention.out.bias)
        ref.linear1.load_state_dict(ours.ffn.linear_in.state_dict())
        ref.linear2.load_state_dict(ours.ffn.linear_out.state_dict())
        ref.norm1.load_state_dict(ours.attention_norm.state_dict())
        ref.norm2.load_state_dict(ours.ffn_norm.state_dict())
        x = torch.randn(3, 11, 16, dtype=torch.float64)
        torch.testing.assert_close(ours(x), ref(x))


def test_sinusoidal_positions_follow_the_formula() -> None:
    # The table is built in float32 (as SpeechBrain's), so it meets the exact formula to
    # float32 rounding of the angle (|angle| < 50 here: a few 1e-6).
    table = sinusoidal_positions(50, 8, torch.zeros((), dtype=torch.float64))
    for pos in (0, 1, 17, 49):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sudormrf_input_normalisation_makes_it_gain_and_offset_equivariant() -> None:
    # The reference normalises every mixture; in-model normalisation therefore makes the
    # output follow the input's scale, and split its offset evenly over the sources.
    torch.manual_seed(0)
    model = tiny("sudormrf").eval()
    wav = torch.randn(2, 640)
    with torch.no_grad():
        base = model(wav)
        shifted = model(7.0 * wav + 0.5)
    torch.testing.assert_close(shifted, 7.0 * base + 0.25, rtol=1e-4, atol=1e-4)
    # Statistics are per mixture and every input layout is accepted.
    with torch.no_grad():
        torch.testing.assert_close(model(wav[1]), base[1:])
        torch.testing.assert_close(model(wav[1:].unsqueeze(1)), base[1:])
        assert torch.isfinite(model(torch.ones(1, 1))).all()


def test_sudormrf_decoder_modes() -> None:
    grouped = tiny("sudormrf")
    joint = tiny("sudormrf", decoder="joint")
    assert grouped.decoder.deconv.groups == 2 and grouped.decoder.deconv.bias is not None
    assert joint.decoder.deconv.groups == 1 and joint.decoder.deconv.bias is None
    # Grouped: each source's output depends on that source's masked representation only.
    rep = torch.zeros(1, 2, 32, 10)
    rep[:, 0] = torch.randn(32, 10)
    out = grouped.decoder(rep) - grouped.decoder(torch.zeros_like(rep))
    assert out[:, 0].abs().sum() > 0 and torch.all(out[:, 1] == 0)


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("dprnn", {"mask_activation": "tanh"}, "mask_activation"),
        ("dprnn", {"chunk_padding": "reflect"}, "chunk_padding"),
        ("dprnn", {"rnn_type": "transformer"}, "rnn_type"),
        ("sepformer", {"d_model": 10, "n_heads": 3}, "divisible"),
        ("sudormrf", {"stride": 20}, "stride"),
        ("sudormrf", {"decoder": "other"}, "mode"),
    ],
)
def test_bad_configs_are_rejected(name: str, config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, **config)


TINY_CONV_TASNET = {"n_filters": 16, "bottleneck": 8, "hidden": 16, "skip_channels": 8, "n_blocks": 2, "n_repeats": 1}
SSC_CASES = [("conv_tasnet", TINY_CONV_TASNET, "pointwise")]
SSC_CASES += [("dprnn", TINY["dprnn"], "projection"), ("sepformer", TINY["sepformer"], "ffn")]
SSC_CASES += [("sudormrf", TINY["sudormrf"], "pointwise"), ("sudormrf", TINY["sudormrf_improved"], "pointwise")]


@pytest.mark.parametrize("name, config, preset", SSC_CASES)
def test_ssc_presets_name_existing_linear_layers(name: str, config: dict, preset: str) -> None:
    model = build_model(name, **config)
    modules = dict(model.named_modules())
    for pattern in model.ssc_presets[preset]["include"]:
        hits = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
        assert hits, f"{name}: preset {preset!r} pattern {pattern!r} matches nothing"
        assert all(isinstance(modules[n], (nn.Linear, nn.Conv1d)) for n in hits)


@pytest.mark.parametrize("name, config, preset", SSC_CASES)
def test_ssc_preset_swap_runs_forward_and_backward(name: str, config: dict, preset: str) -> None:
    model = build_model(name, ssc={"preset": preset, "kernel_size": 3}, **config)
    plain = build_model(name, **config)
    swapped = [entry.path for entry in model.ssc_report.swapped]
    patterns = model.ssc_presets[preset]["include"]
    assert sorted(swapped) == sorted(
        n for n, _ in plain.named_modules() if any(fnmatch.fnmatchcase(n, p) for p in patterns)
    )
    wav = torch.randn(2, 400)
    model(wav).square().mean().backward()
    plain(wav).square().mean().backward()
    modules, plain_modules = dict(model.named_modules()), dict(plain.named_modules())
    for path in swapped:
        assert type(modules[path]).__name__.startswith("SSC")
        # A swapped layer gets a gradient wherever the original layer does (Conv-TasNet's
        # last residual conv feeds nothing, in the paper's model too).
        plain_used = all(p.grad is not None for p in plain_modules[path].parameters())
        assert plain_used == all(p.grad is not None for p in modules[path].parameters()), path


@pytest.mark.parametrize("n_src", [1, 3])
def test_sudormrf_group_comm_any_length_and_gradients(n_src: int) -> None:
    torch.manual_seed(0)
    config = dict(n_filters=16, bottleneck=8, hidden_channels=16, n_blocks=2, upsampling_depth=3)
    model = build_model("sudormrf", n_src=n_src, improved=True, n_groups=4, **config)
    for length in (1, 7, 80, 81):
        est = model(torch.randn(2, length))
        assert est.shape == (2, n_src, length) and torch.isfinite(est).all()
    est.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # The SSC preset names the 1x1 convolutions inside the group-shared blocks.
    pointwise = model.ssc_presets["pointwise"]["include"]
    paths = [
        name for name, module in model.named_modules() if isinstance(module, nn.Conv1d) and module.kernel_size == (1,)
    ]
    matched = [path for path in paths if any(fnmatch.fnmatchcase(path, p) for p in pointwise)]
    assert "masker.blocks.1.block.in_conv" in matched and "masker.blocks.0.block.out_conv" in matched


def test_sudormrf_group_comm_refuses_what_the_reference_lacks() -> None:
    with pytest.raises(ValueError, match="improved block only"):
        build_model("sudormrf", improved=False, n_groups=4)
    with pytest.raises(ValueError, match="3 groups do not divide bottleneck 128"):
        build_model("sudormrf", improved=True, n_groups=3)
