"""`sepkit separate`, chunked inference and `sepkit profile` on real files."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_MODEL

from sepkit.audio import resample
from sepkit.checkpoint import save_model
from sepkit.cli import main
from sepkit.inference import separate
from sepkit.models import build_model
from sepkit.profiling import PeakMemoryMode, profile_model


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("conv_tasnet", **TINY_MODEL).eval()
    path = tmp_path / "model.pt"
    save_model(model, path)
    return model, path


def test_separate_batch_with_bad_files(model_file, tmp_path, capsys):
    model, path = model_file
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    mono8k = rng.standard_normal(8000).astype(np.float32) * 0.1
    sf.write(inputs / "mono8k.flac", mono8k, 8000)
    mono8k = sf.read(inputs / "mono8k.flac", dtype="float32")[0]  # as quantised on disk
    stereo16k = rng.standard_normal((12000, 2)).astype(np.float32) * 0.1
    sf.write(inputs / "stereo16k.wav", stereo16k, 16000, subtype="FLOAT")
    sf.write(inputs / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    sf.write(inputs / "short.wav", np.zeros(20, dtype=np.float32), 8000)
    (inputs / "corrupt.wav").write_bytes(b"RIFF....not really a wav")
    out = tmp_path / "out"
    code = main(["separate", str(path), str(inputs), "-o", str(out)])
    captured = capsys.readouterr()
    assert code != 0
    for bad, reason in [("empty.wav", "no samples"), ("short.wav", "too short"), ("corrupt.wav", "cannot read")]:
        assert bad in captured.err and reason in captured.err
    # Good files were separated at their own rate and length.
    with torch.no_grad():
        expected = model(torch.from_numpy(mono8k)[None])[0].numpy()
    for i in range(2):
        data, rate = sf.read(out / f"mono8k_s{i + 1}.wav", dtype="float32")
        assert rate == 8000 and data.shape == (8000,)
        np.testing.assert_allclose(data, expected[i], atol=1e-5)
        data, rate = sf.read(out / f"stereo16k_s{i + 1}.wav", dtype="float32")
        assert rate == 16000 and data.shape == (12000,)
    # The stereo file was mixed down, resampled to the model's 8 kHz and back.
    down = resample(stereo16k.mean(1).astype(np.float64), 16000, 8000)
    with torch.no_grad():
        est = model(torch.from_numpy(down).float()[None])[0].double().numpy()
    np.testing.assert_allclose(sf.read(out / "stereo16k_s1.wav")[0], resample(est, 8000, 16000)[0, :12000], atol=1e-5)
    # No temp files left; the only hidden file is the manifest of what was written.
    assert sorted(p.name for p in out.glob(".*")) == [".sepkit-separate.json"]
    # A second run skips finished outputs and still reports the bad files.
    before = (out / "mono8k_s1.wav").stat().st_mtime_ns
    assert main(["separate", str(path), str(inputs), "-o", str(out)]) != 0
    assert (out / "mono8k_s1.wav").stat().st_mtime_ns == before
    assert "skipped 2" in capsys.readouterr().out


def test_first_channel_policy(model_file, tmp_path):
    model, path = model_file
    stereo = np.random.default_rng(1).standard_normal((4000, 2)).astype(np.float32) * 0.1
    sf.write(tmp_path / "st.wav", stereo, 8000, subtype="FLOAT")
    assert (
        main(["separate", str(path), str(tmp_path / "st.wav"), "-o", str(tmp_path / "o"), "--channels", "first"]) == 0
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(stereo[:, 0].copy())[None])[0, 0].numpy()
    np.testing.assert_allclose(sf.read(tmp_path / "o" / "st_s1.wav")[0], expected, atol=1e-5)


class SignSplitter(torch.nn.Module):
    """A pointwise 'separator' (positive / negative half) whose output order flips on
    every call, so chunked inference must stitch permutations to be correct."""

    sample_rate = 8000
    n_src = 2

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = torch.stack([x.clamp(min=0), x.clamp(max=0)], dim=1)
        return out.flip(1) if self.calls % 2 else out


def test_chunked_separation_stitches_permutations():
    x = torch.randn(8000 * 3 + 123)
    full = torch.stack([x.clamp(min=0), x.clamp(max=0)])
    chunked = separate(SignSplitter(), x, chunk_seconds=0.5, overlap=0.25)
    if torch.allclose(chunked[0], full[1]):
        chunked = chunked.flip(0)
    torch.testing.assert_close(chunked, full)


def test_profile_reports_paper_count(capsys):
    assert main(["profile", "conv_tasnet", "--seconds", "0.5"]) == 0
    assert "5,050,545" in capsys.readouterr().out


def test_profile_macs_match_analytic_count():
    model = build_model("conv_tasnet", **TINY_MODEL)
    stats = profile_model(model, seconds=0.5)
    frames = (model.padded_length(4000) - 16) // 8 + 1
    N, B, H, Sc, P, L = 16, 8, 16, 8, 3, 16
    per_frame = N * L  # encoder
    per_frame += N * B + 2 * (B * H + H * P + H * B + H * Sc) + Sc * 2 * N  # 1x1s, depthwise, mask head
    per_frame += 2 * N * L  # decoder, one per source
    assert stats["macs"] == pytest.approx(per_frame * frames, rel=0.01)
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())


def test_peak_memory_mode_tracks_allocations_and_frees():
    with PeakMemoryMode() as mode:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000 more
        del a, b
        c = torch.ones(250)  # 1000
    assert mode.peak == 8000
    assert mode.current == 1000
    del c


def test_macs_count_recurrent_layers():
    # FlopCounterMode does not see aten::lstm; count_macs adds it from the shapes.
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.lstm(x.unsqueeze(-1).expand(-1, -1, 8))[0]

    from sepkit.profiling import count_macs

    steps = 50
    expected = 2 * steps * 4 * 16 * (8 + 16)  # directions x steps x gates x (input + hidden)
    assert count_macs(Wrapper(), torch.randn(1, steps)) == expected


def test_atomic_output_keeps_old_content_on_failure(tmp_path):
    from sepkit.fileio import atomic_output, write_text_atomic

    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
