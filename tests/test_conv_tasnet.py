"""Conv-TasNet, the shared pipeline and the norms."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from sepkit.models import build_model, list_models
from sepkit.models.filterbanks import ConvDecoder, ConvEncoder, stft_filterbank
from sepkit.nn.norms import ChannelwiseLayerNorm, GlobalLayerNorm

TINY = dict(n_filters=16, kernel_size=8, stride=4, bottleneck=8, hidden=16, skip_channels=8, n_blocks=2, n_repeats=1)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def analytic_conv_tasnet_params(N=512, L=16, B=128, H=512, Sc=128, P=3, X=8, R=3, C=2) -> int:
    """Parameter count from the paper's layer list (Luo & Mesgarani 2019, Table I)."""
    encoder = decoder = N * L  # bias-free filterbanks
    bottleneck = 2 * N + (N * B + B)  # gLN + 1x1
    block = (B * H + H) + 1 + 2 * H + (H * P + H) + 1 + 2 * H + (H * B + B) + (H * Sc + Sc)
    output = 1 + (Sc * C * N + C * N)  # PReLU + 1x1 to masks
    return encoder + decoder + bottleneck + X * R * block + output


def test_paper_configuration_parameter_count():
    model = build_model("conv_tasnet")
    assert count(model) == 5_050_545 == analytic_conv_tasnet_params()


@pytest.mark.parametrize("n_src", [1, 2, 3, 5])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 100, 1001])
def test_any_length_any_n_src(n_src, length):
    model = build_model("conv_tasnet", n_src=n_src, **TINY)
    out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length)
    assert model(torch.randn(2, 1, length)).shape == (2, n_src, length)


def test_sizes_and_mask_activation_are_configurable():
    model = build_model("conv_tasnet", mask_activation="relu", **TINY)
    assert count(model) == analytic_conv_tasnet_params(N=16, L=8, B=8, H=16, Sc=8, X=2, R=1)
    assert isinstance(model.masker.mask_act, torch.nn.ReLU)
    with pytest.raises(ValueError, match="mask_activation"):
        build_model("conv_tasnet", mask_activation="tanh", **TINY)


def test_causal_mode_never_looks_ahead():
    model = build_model("conv_tasnet", causal=True, norm="cLN", **TINY).eval()
    x = torch.randn(1, 800)
    y = model(x)
    x_future = x.clone()
    x_future[:, 600:] = torch.randn(1, 200)
    y_future = model(x_future)
    # Outputs before the change (minus one encoder window) must be identical.
    torch.testing.assert_close(y[..., :590], y_future[..., :590], rtol=0, atol=0)
    # The non-causal model does look ahead.
    noncausal = build_model("conv_tasnet", **TINY).eval()
    assert not torch.allclose(noncausal(x)[..., :590], noncausal(x_future)[..., :590])


def test_padded_length_covers_every_sample():
    model = build_model("conv_tasnet", **TINY, framing="end")
    for length in range(1, 60):
        padded = model.padded_length(length)
        assert padded >= length and (padded - 8) % 4 == 0 and padded - length < 4 + 8
    model.length_multiple = 10
    assert all(model.padded_length(n) % 10 == 0 for n in range(1, 60))


def test_global_and_channelwise_layer_norm_against_float64_formula():
    x = torch.randn(3, 6, 50, dtype=torch.float64) * 4 + 1
    gln = GlobalLayerNorm(6).double()
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(gln(x), (x - mean) / torch.sqrt(var + 1e-8))
    cln = ChannelwiseLayerNorm(6).double()
    mean_c = x.mean(dim=1, keepdim=True)
    var_c = ((x - mean_c) ** 2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(cln(x), (x - mean_c) / torch.sqrt(var_c + 1e-8))


def test_registry_records_name_and_config():
    assert "conv_tasnet" in list_models()
    model = build_model("conv_tasnet", n_src=3, **TINY)
    assert model.model_name == "conv_tasnet"
    assert model.model_config == dict(n_src=3, **TINY)
    with pytest.raises(KeyError, match="unknown model"):
        build_model("no_such_model")


def test_backward_reaches_every_parameter():
    model = build_model("conv_tasnet", **TINY)
    model(torch.randn(2, 200)).square().mean().backward()
    # The last block's residual output feeds nothing (only skips reach the mask head),
    # yet it is part of the published 5,050,545 count, as in the reference code.
    unused = {f"masker.blocks.{len(model.masker.blocks) - 1}.res_conv.{p}" for p in ("weight", "bias")}
    for name, param in model.named_parameters():
        if name in unused:
            assert param.grad is None
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("n_filters, kernel, stride", [(256, 256, 64), (512, 256, 128), (64, 32, 8), (16, 16, 8)])
def test_stft_filterbank_init_reconstructs_the_input(n_filters, kernel, stride):
    """Encoder then decoder, both initialised as the windowed-Fourier pair, is the
    identity wherever the window overlap-adds fully (everything but the outer frames)."""
    encoder = ConvEncoder(n_filters, kernel, stride, init="stft").double()
    decoder = ConvDecoder(n_filters, kernel, stride, init="stft").double()
    x = torch.randn(2, kernel + 40 * stride, dtype=torch.float64)
    y = decoder(encoder(x).unsqueeze(1))[:, 0]
    # The filters are stored in float32, so the identity holds to float32 rounding.
    torch.testing.assert_close(y[:, kernel:-kernel], x[:, kernel:-kernel], rtol=0, atol=1e-6)


def test_stft_filterbank_analysis_rows_are_band_limited():
    analysis, _ = stft_filterbank(64, 64, 16)
    spectrum = torch.fft.rfft(analysis.double(), n=512).abs()
    peaks = spectrum.argmax(dim=1)
    expected = ((torch.arange(32) + 0.5) / 64 * 512).round().long()
    # Cosine row j and sine row j both peak at frequency (j + 1/2) / n_filters; the lowest
    # and highest rows are left out, their main lobe merges with its mirror image at 0 / fs/2.
    inner = slice(1, 31)
    assert (peaks[:32][inner] - expected[inner]).abs().max() <= 1
    assert (peaks[32:][inner] - expected[inner]).abs().max() <= 1


def test_stft_init_keeps_the_parameter_count_and_rejects_unknown_inits():
    random_init = build_model("conv_tasnet")
    stft_init = build_model("conv_tasnet", filterbank_init="stft")
    assert sum(p.numel() for p in stft_init.parameters()) == sum(p.numel() for p in random_init.parameters())
    with pytest.raises(ValueError, match="filterbank init"):
        build_model("conv_tasnet", filterbank_init="mel")


@pytest.mark.parametrize(
    "module", [torch.nn.Sigmoid(), torch.nn.ReLU(), torch.nn.PReLU(init=0.3), torch.nn.PReLU(4, init=0.2)]
)
def test_activations_written_in_place_give_the_module_s_numbers(module):
    """activate_ against the module itself, bit for bit; it writes over its input where it
    can (PReLU with one slope on a CPU tensor), and a per-channel PReLU is left out of place."""
    from sepkit.nn.activations import activate_

    x = torch.randn(2, 4, 50)
    expected = module(x)
    given = x.clone()
    got = activate_(module, given)
    assert torch.equal(got, expected)
    per_channel = isinstance(module, torch.nn.PReLU) and module.num_parameters > 1
    assert (got.data_ptr() == given.data_ptr()) != per_channel


def test_inference_writes_the_tcn_over_its_own_tensors_with_the_same_numbers(monkeypatch):
    """Without autograd the TCN adds residuals and skips into tensors it made and writes
    its activations and mask nonlinearity over their inputs: the output equals the
    out-of-place computation (and the autograd one) bit for bit, and the peak of tensor
    memory during the call falls by at least one ``[n_src * N, frames]`` mask tensor."""
    import sepkit.models.conv_tasnet as conv_tasnet
    import sepkit.models.filterbanks as filterbanks
    import sepkit.nn.tcn as tcn
    from sepkit.profiling import PeakMemoryMode

    # the filterbanks' inference form sums in another order (its own test below), and so
    # does the channels-last TCN (test_channels_last_inference_equals_the_module_path)
    monkeypatch.setattr(filterbanks, "eager_inference", lambda: False)
    monkeypatch.setattr(conv_tasnet.TCNMasker, "_supports_channels_last_inference", lambda self, rep: False)
    torch.manual_seed(0)
    config = dict(TINY, n_filters=64, hidden=64, n_blocks=3, n_repeats=2)
    model = build_model("conv_tasnet", **config).eval()
    x = torch.randn(2, 8000)
    with torch.no_grad(), PeakMemoryMode() as in_place:
        y_in_place = model(x)
    y_autograd = model(x).detach()
    monkeypatch.setattr(conv_tasnet, "eager_inference", lambda: False)
    monkeypatch.setattr(tcn, "eager_inference", lambda: False)
    with torch.no_grad(), PeakMemoryMode() as out_of_place:
        y_out_of_place = model(x)
    assert torch.equal(y_in_place, y_out_of_place) and torch.equal(y_autograd, y_out_of_place)
    frames = model.encoder(x).shape[-1]
    mask_bytes = 2 * 2 * config["n_filters"] * frames * 4
    assert in_place.peak <= out_of_place.peak - mask_bytes, (in_place.peak, out_of_place.peak, mask_bytes)


CHANNELS_LAST_CASES = {
    "paper layout": dict(n_filters=32, hidden=24, bottleneck=12, skip_channels=10, n_blocks=3, n_repeats=2),
    "no skip path": dict(n_filters=32, hidden=24, bottleneck=12, skip_channels=0, n_blocks=3, n_repeats=1),
    "causal, relu masks, 3 sources": dict(
        n_filters=16, hidden=16, bottleneck=8, skip_channels=8, n_blocks=3, causal=True, norm="gLN", n_src=3
    ),
}


@pytest.mark.parametrize("case", sorted(CHANNELS_LAST_CASES))
def test_channels_last_inference_equals_the_module_path(case, monkeypatch):
    """At CPU inference the TCN runs channels-last in two reused buffers
    (TemporalBlock.infer_channels_last_): in float64 the same masks and separations as the
    module path (autograd on), to 1e-12, for two items of different content, with random
    norms, PReLU slopes and biases everywhere; and it is that path which ran."""
    import sepkit.nn.tcn as tcn

    config = dict(CHANNELS_LAST_CASES[case])
    if "relu" in case:
        config["mask_activation"] = "relu"
    torch.manual_seed(3)
    model = build_model("conv_tasnet", kernel_size=8, stride=4, **config).double().eval()
    with torch.no_grad():
        for name, parameter in model.masker.named_parameters():
            if "norm" in name or name.endswith("act.weight") or name.endswith(("act1.weight", "act2.weight")):
                parameter.uniform_(0.1, 1.5) if name.endswith("weight") else parameter.normal_()
            elif name.endswith("bias"):
                parameter.normal_(std=0.3)
    wav = torch.randn(2, 1603, dtype=torch.float64)
    calls = []
    block_method = tcn.TemporalBlock.infer_channels_last_
    monkeypatch.setattr(
        tcn.TemporalBlock, "infer_channels_last_", lambda self, *a: calls.append(self) or block_method(self, *a)
    )
    expected = model(wav).detach()  # autograd on: the module path
    assert calls == []
    with torch.no_grad():
        got = model(wav)
    assert len(calls) == len(model.masker.blocks)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_channels_last_inference_falls_back_where_it_does_not_apply():
    """cLN, a per-channel PReLU, an SSC layer inside a block, or a forward hook on any
    layer (which the channels-last path would not call): the module path runs."""
    from sepkit.nn.swap import swap_to_ssc

    models = [build_model("conv_tasnet", **TINY, norm="cLN")] + [build_model("conv_tasnet", **TINY) for _ in range(3)]
    models[1].masker.blocks[1].act2 = torch.nn.PReLU(TINY["hidden"])
    swap_to_ssc(models[2].masker, include=["blocks.0.in_conv"])
    seen = []
    models[3].masker.blocks[0].depthwise.register_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    rep = torch.rand(1, TINY["n_filters"], 99)
    assert build_model("conv_tasnet", **TINY).masker._supports_channels_last_inference(rep)
    for model in models:
        assert not model.masker._supports_channels_last_inference(rep)
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 400)).shape == (1, 2, 400)
    assert len(seen) == 1


def test_channels_last_inference_leaves_autocast_to_the_module_path(monkeypatch):
    """Under CPU autocast (validation in bf16-mixed training runs without grad) the module
    path runs, whose convolutions autocast picks the dtype for: the channels-last path's
    float32 matrix products raised on its bfloat16 activations (seen failing: "mat1 and
    mat2 must have the same dtype")."""
    import sepkit.models.conv_tasnet as conv_tasnet

    torch.manual_seed(0)
    model = build_model("conv_tasnet", **TINY).eval()
    wav = torch.randn(2, 800)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(wav)
    monkeypatch.setattr(conv_tasnet.TCNMasker, "_supports_channels_last_inference", lambda self, rep: False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(wav)
    assert got.dtype == expected.dtype and torch.equal(got, expected)


# One forward of the paper Conv-TasNet on a 4 s chunk (8 kHz) per path, after two
# warm-up calls: the resident memory it adds at its peak (VmHWM after resetting it through
# /proc/self/clear_refs). Run with every allocation of 1 MiB or more mapped on its own
# (MALLOC_MMAP_THRESHOLD_), so that what a call touches is what it holds, not what
# glibc's heap happened to keep: tensors and oneDNN's scratch buffers alike.
FORWARD_PEAK_CHILD = """
import sys, torch
import sepkit.models.conv_tasnet as conv_tasnet
from sepkit.models import build_model
def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key)) / 1024
if sys.argv[1] == "module":
    conv_tasnet.TCNMasker._supports_channels_last_inference = lambda self, rep: False
torch.manual_seed(0)
model = build_model("conv_tasnet", sample_rate=8000).eval()
wav = torch.randn(1, 32000)
with torch.no_grad():
    model(wav), model(wav)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS")
    model(wav)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures resident memory through Linux /proc")
def test_channels_last_inference_touches_less_memory_per_call():
    """The paper Conv-TasNet at CPU inference on a 4 s chunk: the channels-last TCN (two
    hidden-size buffers for all 24 blocks, no oneDNN reorder of any input) adds at least
    one ``[hidden, frames]`` tensor (8 MiB) less to the resident memory at the peak of a
    call than the module path (measured here: about 23 against 43 MiB)."""
    rises = {}
    for path in ("channels_last", "module"):
        env = {**subprocess_env(), "OMP_NUM_THREADS": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        result = subprocess.run(
            [sys.executable, "-c", FORWARD_PEAK_CHILD, path], capture_output=True, text=True, env=env, check=True
        )
        rises[path] = float(result.stdout.split()[-1])
    hidden_mib = 512 * 3999 * 4 / 2**20
    assert rises["channels_last"] <= rises["module"] - hidden_mib, rises


def test_decoder_at_inference_does_not_copy_its_input():
    """The decoder's inference form multiplies each frame by the filters without copying
    the masked representation, the call's largest tensor (torch.matmul did, because the
    weight requires grad: it folded the batch into one product through a copy)."""
    from sepkit.profiling import PeakMemoryMode

    decoder = ConvDecoder(256, 16, 8).double()
    masked = torch.randn(1, 2, 256, 2000, dtype=torch.float64)
    with torch.no_grad(), PeakMemoryMode() as memory:
        wav = decoder(masked)
    # PeakMemoryMode counts the input's storage once too (its first view is the first time
    # it sees it): one input's worth, and no second
    assert memory.peak < 1.5 * masked.nbytes, (memory.peak, masked.nbytes)
    with torch.no_grad():
        expected = decoder.deconv(masked.reshape(2, 256, 2000)).reshape(1, 2, -1)
    torch.testing.assert_close(wav, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_filterbanks_at_inference_equal_their_convolutions(bias):
    """On a CPU without autograd the encoder frames the signal as a strided view times the
    filters and the decoder overlap-adds (fold) each frame's product: in float64 the same
    outputs as the (transposed) convolutions they replace, to 1e-12, with a bias and the
    encoder's ReLU; the output shapes are the convolutions'."""
    torch.manual_seed(1)
    encoder = ConvEncoder(64, 16, 8, bias=bias, activation="relu").double()
    decoder = ConvDecoder(64, 16, 8, bias=bias).double()
    if bias:
        torch.nn.init.normal_(encoder.conv.bias)
        torch.nn.init.normal_(decoder.deconv.bias)
    wav = torch.randn(3, 4003, dtype=torch.float64)
    rep = encoder(wav)
    masked = torch.randn(3, 2, *rep.shape[1:], dtype=torch.float64)
    expected = decoder(masked)

    def not_at_inference(*args):
        raise AssertionError("the convolution ran at inference")

    encoder.conv.forward = decoder.deconv.forward = not_at_inference
    with torch.no_grad():
        lean_rep, lean_wav = encoder(wav), decoder(masked)
    assert lean_rep.shape == rep.shape and lean_wav.shape == expected.shape
    torch.testing.assert_close(lean_rep, rep.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(lean_wav, expected.detach(), rtol=0, atol=1e-12)
