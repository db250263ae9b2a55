"""Issue #18: `sepkit separate` on real recordings of any length. Block-wise resampling
against whole-signal scipy, bounded peak memory measured in a child process, stitching
through pauses with a separator whose output order is random on every call, and the
output options (normalisation, format, device, batched chunks) on real files."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_MODEL, sepkit_command, subprocess_env
from scipy.signal import resample_poly

from sepkit.checkpoint import save_model
from sepkit.cli import main
from sepkit.inference import (
    MAX_AUTO_CHUNK_SECONDS,
    MIN_AUTO_CHUNK_SECONDS,
    NORMALIZED_PEAK,
    auto_chunk_seconds,
    separate,
    separate_file,
)
from sepkit.models import build_model
from sepkit.resample import StreamingResampler

RATE = 8000


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("conv_tasnet", **{**TINY_MODEL, **overrides}).eval()


def stream(resampler: StreamingResampler, x: np.ndarray, block: int) -> np.ndarray:
    pieces = [resampler.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)]
    return np.concatenate([*pieces, resampler.finish()], axis=1)


RATE_PAIRS = [(8000, 16000), (16000, 8000), (44100, 8000), (48000, 16000), (22050, 16000), (8000, 8000)]
# Signal lengths x block sizes, tiny and odd ones included (one-sample blocks only over short signals).
SHAPES = [(length, block) for length in (1, 2, 37, 4999) for block in (1, 3, 256, 100_003) if length // block <= 400]


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
@pytest.mark.parametrize("length, block", SHAPES)
def test_streaming_resampler_equals_whole_file_resample_poly(orig, new, length, block):
    x = np.random.default_rng(length + block).standard_normal((2, length))
    ratio = Fraction(new, orig)
    expected = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    got = stream(StreamingResampler(orig, new, channels=2), x, block)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    # First and last samples explicitly: the alignment and length rule of resample_poly.
    np.testing.assert_allclose(got[:, [0, -1]], expected[:, [0, -1]], rtol=0, atol=1e-12)


def test_streaming_resampler_memory_does_not_grow():
    resampler = StreamingResampler(44100, 8000)
    for _ in range(50):
        resampler.push(np.ones((1, 44100)))
        assert resampler.buffer.shape[1] <= resampler.taps + 44100


class SignSplitter(torch.nn.Module):
    """A pointwise 'separator' (positive / negative part) whose output order is drawn at
    random on every call, optionally with a random gain per call: a fake model that
    makes stitching decide the order of every chunk on its own."""

    sample_rate = RATE
    n_src = 2

    def __init__(self, seed: int, random_gain: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.generator = torch.Generator().manual_seed(seed)
        self.random_gain = random_gain
        self.lengths: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lengths.append(x.shape[-1])
        out = torch.stack([x.clamp(min=0), x.clamp(max=0)], dim=1) * self.weight
        if self.random_gain:
            out = out * (0.2 + 5 * torch.rand(x.shape[0], 1, 1, generator=self.generator))
        flips = torch.rand(x.shape[0], generator=self.generator) < 0.5
        return torch.where(flips[:, None, None], out.flip(1), out)


def talk_and_pause(seed: int, seconds: float = 30.0, pause: float = 1.5) -> torch.Tensor:
    """Sources ``[2, time]``: speaker 1 positive on even samples, speaker 2 negative on odd
    ones (so the sign splits them exactly); both talk in 1 s bursts separated by pauses
    of ``pause`` s in which both are silent."""
    rng = np.random.default_rng(seed)
    length = int(seconds * RATE)
    sources = np.zeros((2, length), dtype=np.float32)
    activity = np.zeros(length, dtype=bool)
    period = int((1.0 + pause) * RATE)
    for start in range(0, length, period):
        activity[start : start + RATE] = True
    sources[0, 0::2] = np.abs(rng.standard_normal(len(sources[0, 0::2])))
    sources[1, 1::2] = -np.abs(rng.standard_normal(len(sources[1, 1::2])))
    return torch.from_numpy(sources * activity)


@pytest.mark.parametrize("seed", range(6))
def test_stitching_keeps_the_order_through_pauses_longer_than_the_overlap(seed):
    """Chunks of 2 s share 0.5 s; pauses of 1.5 s leave overlaps without any signal, so
    the order after each pause can only come from the energetic context before it."""
    sources = talk_and_pause(seed)
    mixture = sources.sum(0)
    stitched = separate(SignSplitter(seed), mixture, chunk_seconds=2.0, overlap=0.25)
    if torch.allclose(stitched[0], sources[1]):  # the first chunk's order is free
        stitched = stitched.flip(0)
    torch.testing.assert_close(stitched, sources, rtol=0, atol=1e-6)


def test_stitching_without_any_context_keeps_the_model_order():
    """Silence from the start: no context yet, nothing to decide; nothing breaks."""
    mixture = torch.zeros(RATE * 5)
    assert torch.equal(separate(SignSplitter(0), mixture, chunk_seconds=1.0), torch.zeros(2, RATE * 5))


def test_match_gain_undoes_a_random_gain_per_chunk():
    """The splitter's sources sum to the mixture, so one gain per chunk that gives their
    sum the mixture's energy restores them exactly; without it the chunks keep their
    random gains."""
    sources = talk_and_pause(3, seconds=12.0, pause=0.3)
    mixture = sources.sum(0)
    matched = separate(SignSplitter(1, random_gain=True), mixture, chunk_seconds=2.0, match_gain=True)
    if torch.allclose(matched[0], sources[1], atol=1e-5):
        matched = matched.flip(0)
    torch.testing.assert_close(matched, sources, rtol=1e-5, atol=1e-5)
    plain = separate(SignSplitter(1, random_gain=True), mixture, chunk_seconds=2.0)
    assert not torch.allclose(plain, sources, atol=1e-3) and not torch.allclose(plain.flip(0), sources, atol=1e-3)


def test_batched_chunks_equal_unbatched():
    model = tiny_model()
    mixture = torch.randn(RATE * 7 + 321) * 0.1
    one = separate(model, mixture, chunk_seconds=1.0)
    for batch in (2, 5, 64):
        torch.testing.assert_close(separate(model, mixture, chunk_seconds=1.0, batch_chunks=batch), one)


def test_automatic_chunking_bounds_every_model_call():
    """Without --chunk-seconds a file longer than the automatic chunk length is chunked:
    no model call sees more than MAX_AUTO_CHUNK_SECONDS of input."""
    model = SignSplitter(0)
    seconds = auto_chunk_seconds(model)
    assert MIN_AUTO_CHUNK_SECONDS <= seconds <= MAX_AUTO_CHUNK_SECONDS
    assert auto_chunk_seconds(tiny_model()) <= MAX_AUTO_CHUNK_SECONDS


def test_automatic_chunking_of_a_long_file(tmp_path):
    model = SignSplitter(0)
    sources = talk_and_pause(0, seconds=MAX_AUTO_CHUNK_SECONDS * 2.5, pause=0.2)
    sf.write(tmp_path / "long.wav", sources.sum(0).numpy(), RATE, subtype="FLOAT")
    targets = [tmp_path / "out" / f"s{i}.wav" for i in (1, 2)]
    separate_file(model, tmp_path / "long.wav", targets)
    assert max(model.lengths) <= MAX_AUTO_CHUNK_SECONDS * RATE and len(model.lengths) >= 3
    out = np.stack([sf.read(t, dtype="float32")[0] for t in targets])
    if np.allclose(out[0], sources[1].numpy()):
        out = out[::-1]
    np.testing.assert_allclose(out, sources.numpy(), atol=1e-6)


def test_block_wise_file_equals_whole_signal_pipeline(tmp_path, monkeypatch):
    """A 16 kHz file through blocks of 0.37 s (many blocks, none aligned with chunks)
    equals the whole-signal oracle: resample_poly, in-memory chunked separation,
    resample_poly back, trimmed to the input's length."""
    import sepkit.inference

    monkeypatch.setattr(sepkit.inference, "BLOCK_SECONDS", 0.37)
    model = tiny_model()
    samples = (np.random.default_rng(5).standard_normal(16000 * 6 + 77) * 0.1).astype(np.float32)
    sf.write(tmp_path / "in.wav", samples, 16000, subtype="FLOAT")
    targets = [tmp_path / "out" / f"s{i}.wav" for i in (1, 2)]
    separate_file(model, tmp_path / "in.wav", targets, chunk_seconds=1.5)
    at_model_rate = resample_poly(samples.astype(np.float64), 1, 2)
    estimate = separate(model, torch.from_numpy(at_model_rate).float(), chunk_seconds=1.5)
    expected = resample_poly(estimate.double().numpy(), 2, 1, axis=-1)[:, : len(samples)]
    for target, source in zip(targets, expected):
        data, rate = sf.read(target, dtype="float64")
        assert rate == 16000 and len(data) == len(samples)
        np.testing.assert_allclose(data, source, rtol=0, atol=1e-5)


@pytest.fixture
def model_file(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.pt"
    save_model(model, path)
    return model, path


def run_separate(*args) -> int:
    return main(["separate", *map(str, args)])


def test_normalize_options(model_file, tmp_path):
    _, path = model_file
    mixture = (np.random.default_rng(2).standard_normal(RATE * 3) * 0.05).astype(np.float32)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "m.wav", mixture, RATE, subtype="FLOAT")
    outputs = {}
    for mode in ("none", "peak", "mixture-loudness"):
        out = tmp_path / mode
        assert run_separate(path, tmp_path / "in", "-o", out, "--normalize", mode) == 0
        outputs[mode] = np.stack([sf.read(out / f"m_s{i}.wav", dtype="float64")[0] for i in (1, 2)])
    raw = outputs["none"]
    for source, peaked, loud in zip(raw, outputs["peak"], outputs["mixture-loudness"]):
        assert np.abs(peaked).max() == pytest.approx(NORMALIZED_PEAK, rel=1e-6)
        np.testing.assert_allclose(peaked, source * (NORMALIZED_PEAK / np.abs(source).max()), rtol=1e-5, atol=1e-7)
        mixture_rms = np.sqrt(np.mean(mixture.astype(np.float64) ** 2))
        assert np.sqrt(np.mean(loud**2)) == pytest.approx(mixture_rms, rel=1e-5)
        np.testing.assert_allclose(loud / source, loud[0] / source[0], rtol=1e-4)
    manifest = json.loads((tmp_path / "peak" / ".sepkit-separate.json").read_text())
    assert next(iter(manifest["inputs"].values()))["normalize"] == "peak"
    assert not [p for p in (tmp_path / "peak").iterdir() if p.name.startswith(".sepkit-") and p.suffix == ".tmp"]


def test_normalize_leaves_silent_outputs_silent(model_file, tmp_path):
    _, path = model_file
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "z.wav", np.zeros(RATE, dtype=np.float32), RATE, subtype="FLOAT")
    for mode in ("peak", "mixture-loudness"):
        assert run_separate(path, tmp_path / "in", "-o", tmp_path / mode, "--normalize", mode) == 0
        for i in (1, 2):
            data = sf.read(tmp_path / mode / f"z_s{i}.wav")[0]
            assert np.isfinite(data).all()


def test_format_flac(model_file, tmp_path):
    _, path = model_file
    (tmp_path / "in").mkdir()
    mixture = (np.random.default_rng(4).standard_normal(RATE * 2) * 0.05).astype(np.float32)
    sf.write(tmp_path / "in" / "m.wav", mixture, RATE, subtype="FLOAT")
    assert run_separate(path, tmp_path / "in", "-o", tmp_path / "wav") == 0
    assert run_separate(path, tmp_path / "in", "-o", tmp_path / "flac", "--format", "flac") == 0
    for i in (1, 2):
        info = sf.info(tmp_path / "flac" / f"m_s{i}.flac")
        assert info.format == "FLAC" and info.subtype == "PCM_16"
        reference = sf.read(tmp_path / "wav" / f"m_s{i}.wav")[0]
        np.testing.assert_allclose(sf.read(tmp_path / "flac" / f"m_s{i}.flac")[0], reference, atol=1 / 32768)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "flac", "--subtype", "FLOAT"], "--subtype FLOAT cannot be written to flac"),
        (["--batch-chunks", "0"], "--batch-chunks must be at least 1"),
    ],
)
def test_bad_output_options_are_usage_errors(model_file, tmp_path, capsys, args, needle):
    _, path = model_file
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "m.wav", np.zeros(RATE, dtype=np.float32), RATE)
    assert run_separate(path, tmp_path / "in", "-o", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not list((tmp_path / "out").glob("m_s*"))


def test_unknown_format_is_refused_by_the_parser(model_file, tmp_path, capsys):
    _, path = model_file
    with pytest.raises(SystemExit) as exit_info:
        run_separate(path, tmp_path, "-o", tmp_path / "out", "--format", "xyz")
    assert exit_info.value.code == 2 and "--format" in capsys.readouterr().err


def test_device_auto_equals_cpu_here(model_file, tmp_path):
    _, path = model_file
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "m.wav", np.random.default_rng(1).standard_normal(RATE).astype(np.float32) * 0.1, RATE)
    assert run_separate(path, tmp_path / "in", "-o", tmp_path / "auto", "--device", "auto") == 0
    assert run_separate(path, tmp_path / "in", "-o", tmp_path / "cpu", "--device", "cpu") == 0
    # On a CUDA machine auto picks the GPU, whose kernels round differently.
    tolerance = 1e-4 if torch.cuda.is_available() else 0.0
    for i in (1, 2):
        auto, cpu = (sf.read(tmp_path / name / f"m_s{i}.wav")[0] for name in ("auto", "cpu"))
        np.testing.assert_allclose(auto, cpu, rtol=0, atol=tolerance)


PEAK_RSS_CHILD = """
import resource, sys
import torch
from sepkit.inference import separate_main
torch.set_num_threads(1)
def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
base = peak_mib()
code = separate_main(sys.argv[1:])
print(base, peak_mib(), code)
"""


def write_long_recording(path: Path, seconds: int, rate: int = 16000) -> None:
    """A sparse recording written block by block: noise bursts every 7 s, silence between."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for second in range(seconds):
            block = np.zeros(rate, dtype=np.float32)
            if second % 7 < 2:
                block[:] = rng.standard_normal(rate) * 0.05
            handle.write(block)


def peak_rss(checkpoint: Path, audio: Path, out: Path) -> tuple[float, float]:
    """(baseline after imports, peak) RSS in MiB of a child process separating ``audio``."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CHILD, str(checkpoint), str(audio), "-o", str(out), "--subtype", "PCM_16"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    base, peak, code = result.stdout.split()[-3:]
    assert code == "0", result.stdout + result.stderr
    return float(base), float(peak)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path):
    """A 2-hour 16 kHz recording (automatic chunking, block-wise resampling and writing)
    needs no more memory than a 2-minute one: the old whole-file path held ~1.4 GB of
    arrays for 30 minutes already."""
    model = tiny_model(n_filters=8, kernel_size=32, stride=16, hidden=8)
    save_model(model, tmp_path / "model.pt")
    runs = {}
    for seconds in (120, 7200):
        audio = tmp_path / f"rec{seconds}.wav"
        write_long_recording(audio, seconds)
        runs[seconds] = peak_rss(tmp_path / "model.pt", audio, tmp_path / f"out{seconds}")
        assert sf.info(tmp_path / f"out{seconds}" / f"rec{seconds}_s1.wav").frames == seconds * 16000
        audio.unlink()
    (_, peak_short), (base_long, peak_long) = runs[120], runs[7200]
    assert peak_long - base_long < 400, runs  # MiB: chunk activations, blocks, codec buffers
    assert abs(peak_long - peak_short) < 0.1 * peak_short, runs


def test_cli_help_documents_the_rules():
    out = subprocess.run(sepkit_command("separate", "--help"), capture_output=True, text=True, env=subprocess_env())
    text = " ".join(out.stdout.split())
    assert "mixture-loudness" in text and "peak of 0.9" in text and "RMS equals the mixture's" in text
    assert "auto (CUDA when present, else CPU)" in text and "--batch-chunks" in text and "flac" in text


def test_non_finite_input_in_a_late_block_writes_nothing(tmp_path, monkeypatch):
    """Outputs are streamed into temp files: a NaN found blocks after the start still
    leaves neither outputs nor temp files behind, and the error names the file."""
    import sepkit.inference
    from sepkit.audio import AudioError

    monkeypatch.setattr(sepkit.inference, "BLOCK_SECONDS", 0.25)
    samples = (np.random.default_rng(0).standard_normal(RATE * 3) * 0.1).astype(np.float32)
    samples[-5] = np.nan
    sf.write(tmp_path / "late.wav", samples, RATE, subtype="FLOAT")
    targets = [tmp_path / "out" / f"s{i}.wav" for i in (1, 2)]
    with pytest.raises(AudioError, match="late.wav: input audio has 1 non-finite sample"):
        separate_file(tiny_model(), tmp_path / "late.wav", targets, chunk_seconds=0.5)
    assert list((tmp_path / "out").iterdir()) == []
