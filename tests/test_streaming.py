"""Issue #18, item 3: streaming separation. The oracle is the offline model on the whole
signal: the stream must give its output, delayed by the documented latency, for block
sizes from one sample to a second, for causal Conv-TasNet and unidirectional DPRNN; the
latency itself is checked against the offline model's measured dependence on the input."""

import numpy as np
import pytest
import soundfile as sf
import torch

from sepkit.checkpoint import save_model
from sepkit.cli import main
from sepkit.models import build_model
from sepkit.streaming import StreamingError, StreamingSeparator, check_streamable, streaming_problem

RATE = 8000
# Small causal models with every code path of the streaming state: several dilations
# (ring buffers that wrap), the skip path, and for DPRNN several blocks and chunks
# that span blocks of input and blocks of input that span chunks.
CAUSAL_TCN = dict(
    n_filters=16,
    kernel_size=16,
    stride=8,
    bottleneck=8,
    hidden=16,
    skip_channels=8,
    n_blocks=4,
    n_repeats=2,
    norm="cLN",
    causal=True,
)
CAUSAL_DPRNN = dict(
    n_filters=16,
    kernel_size=16,
    stride=8,
    bottleneck=8,
    hidden_size=8,
    n_blocks=2,
    chunk_size=8,
    hop=4,
    norm="cLN",
    bidirectional=False,
    bidirectional_intra=False,
)
MODELS = {"conv_tasnet": CAUSAL_TCN, "dprnn": CAUSAL_DPRNN}


def causal_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **{**MODELS[name], **overrides}).eval()


def offline(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], model.n_src, x.shape[-1])


def streamed(separator: StreamingSeparator, x: torch.Tensor, sizes) -> torch.Tensor:
    """Push ``x`` ``[..., time]`` in blocks of ``sizes`` (an int or a list), then flush;
    every push must return as many samples as it took."""
    if isinstance(sizes, int):
        sizes = [sizes] * -(-x.shape[-1] // sizes)
    outputs, start = [], 0
    for size in sizes:
        block = x[..., start : start + size]
        out = separator.push(block)
        assert out.shape == (*x.shape[:-1], separator.n_src, block.shape[-1])
        outputs.append(out)
        start += size
    assert start >= x.shape[-1]
    tail = separator.flush()
    assert tail.shape[-1] == separator.latency
    return torch.cat([*outputs, tail], dim=-1)


def assert_delayed_copy(stream: torch.Tensor, reference: torch.Tensor, latency: int, atol: float) -> None:
    """``stream`` is ``latency`` zeros followed by ``reference``."""
    assert stream.shape[-1] == reference.shape[-1] + latency
    assert torch.equal(stream[..., :latency], torch.zeros_like(stream[..., :latency]))
    torch.testing.assert_close(stream[..., latency:], reference, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def mixture() -> torch.Tensor:
    """Three seconds of a speech-like signal: noise through a slowly moving envelope."""
    generator = torch.Generator().manual_seed(7)
    time = torch.arange(3 * RATE) / RATE
    envelope = 0.3 + 0.2 * torch.sin(2 * torch.pi * 1.3 * time)
    return (envelope * torch.randn(3 * RATE, generator=generator)).float()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("block_ms", [1, 10, 100, 1000])
def test_stream_equals_offline_output_delayed_by_the_latency(name, block_ms, mixture):
    """Two seconds in blocks of 1 ms (8 samples, one frame) to 1 s, float32, 1e-5."""
    model = causal_model(name)
    x = mixture[: 2 * RATE]
    separator = StreamingSeparator(model)
    assert separator.latency == model.encoder.kernel_size - 1 == 15
    got = streamed(separator, x, RATE * block_ms // 1000)
    assert_delayed_copy(got, offline(model, x), separator.latency, atol=1e-5)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("conv_tasnet", {}),
        ("conv_tasnet", dict(kernel_size=12, stride=4, skip_channels=0)),  # framing "end", no skip path
        ("conv_tasnet", dict(framing="truncate")),  # Asteroid's framing: the zero-filled end
        ("conv_tasnet", dict(kernel_size=3, stride=1, framing="centered", conv_kernel_size=5)),
        ("dprnn", {}),  # chunk padding "pad_segment"
        ("dprnn", dict(chunk_size=7, hop=3, rnn_type="GRU", output_head="direct")),  # "overlap"
        ("dprnn", dict(chunk_padding="chunk", framing="truncate", rnn_type="RNN")),  # Asteroid's rules
        ("dprnn", dict(kernel_size=2, stride=1, chunk_size=12, hop=6)),  # the paper's geometry; nn.LSTM calls
    ],
)
def test_random_block_sizes_in_float64_match_to_rounding(name, overrides, mixture):
    """Blocks of 0 .. 300 samples, mostly not multiples of the hop, in float64; also a
    batch of two streams against the offline model on each."""
    model = causal_model(name, **overrides).double()
    x = torch.stack([mixture[:3000], mixture[3000:6000].flip(0)]).double()
    sizes = np.random.default_rng(3).integers(0, 300, size=40).tolist()
    sizes += [x.shape[-1] - sum(sizes)]
    separator = StreamingSeparator(model)
    assert separator.latency == model.encoder.kernel_size - 1
    assert_delayed_copy(streamed(separator, x, sizes), offline(model, x), separator.latency, atol=1e-10)
    single = streamed(separator, x[1], 97)
    assert_delayed_copy(single, offline(model, x[1]), separator.latency, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("length", [1, 9, 15, 16, 17, 100])
def test_flush_of_streams_shorter_than_or_near_the_latency(name, length, mixture):
    model = causal_model(name).double()
    x = mixture[:length].double()
    separator = StreamingSeparator(model)
    assert_delayed_copy(streamed(separator, x, 4), offline(model, x), separator.latency, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reset_and_flush_start_a_new_stream(name, mixture):
    model = causal_model(name)
    x, other = mixture[:3000], mixture[3000:5000]
    fresh = streamed(StreamingSeparator(model), x, 50)
    separator = StreamingSeparator(model)
    separator.push(other[:1234])
    separator.reset()
    assert torch.equal(streamed(separator, x, 50), fresh)  # reset mid-stream
    assert torch.equal(streamed(separator, x, 50), fresh)  # flush left it fresh
    assert torch.equal(separator.flush(), torch.zeros(model.n_src, separator.latency))  # nothing pushed
    with pytest.raises(ValueError, match="batch 1"):
        separator.push(x[:10])
        separator.push(torch.stack([x[:10], x[:10]]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_latency_is_what_the_offline_model_needs(name):
    """Independent of the streaming code: perturb one input sample of the offline model
    and find the earliest output sample that changes. No output earlier than ``j -
    latency`` may change (the stream could not have produced it yet), and at some phase
    against the hop exactly ``j - latency`` changes (a smaller fixed latency fails)."""
    model = causal_model(name).double()
    latency = StreamingSeparator(model).latency
    x = torch.randn(600, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = offline(model, x)
    lags = []
    for j in range(400, 400 + 2 * model.encoder.stride):
        bumped = x.clone()
        bumped[j] += 1.0
        changed = (offline(model, bumped) - reference).abs().amax(dim=0) > 1e-12
        earliest = int(changed.nonzero()[0])
        lags.append(j - earliest)
    assert max(lags) == latency, lags


@pytest.mark.parametrize(
    "name, config, reason",
    [
        ("conv_tasnet", dict(CAUSAL_TCN, norm="gLN"), "norm is GlobalLayerNorm, which uses statistics over time"),
        ("conv_tasnet", dict(CAUSAL_TCN, causal=False), "dilated convolutions are not causal"),
        ("conv_tasnet", dict(CAUSAL_TCN, norm="BN"), "norm is BatchNorm1d"),
        ("dprnn", dict(CAUSAL_DPRNN, bidirectional_intra=True), "intra-chunk RNN is bidirectional"),
        ("dprnn", dict(CAUSAL_DPRNN, bidirectional=True), "inter-chunk RNN is bidirectional"),
        ("dprnn", dict(CAUSAL_DPRNN, norm="gLN"), "norm is GlobalLayerNorm"),
        ("sepformer", None, "only causal Conv-TasNet and unidirectional DPRNN"),
    ],
)
def test_non_causal_models_are_refused_by_name_and_reason(name, config, reason):
    from sepkit.models.registry import small_config

    model = build_model(name, **(config if config is not None else small_config(name)))
    with pytest.raises(StreamingError) as error:
        StreamingSeparator(model)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"model {name} (") and reason in message, message


def test_a_model_with_ssc_layers_is_refused():
    model = build_model("conv_tasnet", ssc={"preset": "pointwise", "kernel_size": 3}, **CAUSAL_TCN)
    assert "SSC" in streaming_problem(model)
    with pytest.raises(StreamingError, match="cannot stream"):
        check_streamable(model)


def test_unidirectional_intra_rnn_drops_exactly_one_direction_and_half_the_projection():
    """The option is additive: the default is unchanged, and per block the streamable
    DPRNN lacks one LSTM direction (4H(C + H) weights + 8H biases) and H*C projection weights."""
    bidirectional = causal_model("dprnn", bidirectional_intra=True)
    unidirectional = causal_model("dprnn")
    channels, hidden, blocks = CAUSAL_DPRNN["bottleneck"], CAUSAL_DPRNN["hidden_size"], CAUSAL_DPRNN["n_blocks"]

    def count(model):
        return sum(p.numel() for p in model.parameters())

    per_block = 4 * hidden * (channels + hidden) + 8 * hidden + hidden * channels
    assert count(bidirectional) - count(unidirectional) == blocks * per_block
    assert build_model("dprnn").masker.blocks[0].intra_rnn.bidirectional  # the paper default


# ------------------------------------------------------------------- sepkit separate --stream


def run_separate(*args) -> int:
    return main(["separate", *map(str, args)])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_separate_stream_writes_the_offline_output(name, tmp_path, mixture):
    model = causal_model(name)
    save_model(model, tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    x = mixture[: 2 * RATE + 37].numpy()
    sf.write(tmp_path / "in" / "m.wav", x, RATE, subtype="FLOAT")
    assert run_separate(tmp_path / "model.pt", tmp_path / "in", "-o", tmp_path / "out", "--stream") == 0
    expected = offline(model, torch.from_numpy(x)).numpy()
    for i, source in enumerate(expected, start=1):
        written, rate = sf.read(tmp_path / "out" / f"m_s{i}.wav", dtype="float32")
        assert rate == RATE and written.shape == source.shape
        np.testing.assert_allclose(written, source, rtol=0, atol=1e-5)


def test_separate_stream_at_another_rate_equals_the_one_pass_path(tmp_path, mixture):
    """A 16 kHz file: resampled to the model in, streamed, resampled back, as the
    default (one pass for a short file) does with the offline model."""
    model = causal_model("conv_tasnet")
    save_model(model, tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "m.wav", mixture[: 3 * RATE].numpy(), 2 * RATE, subtype="FLOAT")
    assert run_separate(tmp_path / "model.pt", tmp_path / "in", "-o", tmp_path / "stream", "--stream") == 0
    assert run_separate(tmp_path / "model.pt", tmp_path / "in", "-o", tmp_path / "whole") == 0
    for i in (1, 2):
        streamed_file = sf.read(tmp_path / "stream" / f"m_s{i}.wav")[0]
        np.testing.assert_allclose(streamed_file, sf.read(tmp_path / "whole" / f"m_s{i}.wav")[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "config, extra, needle",
    [
        (dict(CAUSAL_TCN, norm="gLN"), [], "--stream: model conv_tasnet (ConvTasNet) cannot stream: its norm is"),
        (CAUSAL_TCN, ["--chunk-seconds", "2"], "--stream separates without chunks"),
    ],
)
def test_separate_stream_refuses_in_one_line(config, extra, needle, tmp_path, capsys):
    torch.manual_seed(0)
    save_model(build_model("conv_tasnet", **config), tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "m.wav", np.zeros(RATE, dtype=np.float32), RATE)
    assert run_separate(tmp_path / "model.pt", tmp_path / "in", "-o", tmp_path / "out", "--stream", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not list((tmp_path / "out").glob("m_s*"))
