"""Issue #13, separate side: `sepkit separate`, checkpoint loading, audio I/O and atomic
output under careless or hostile input. Real files (soundfile, torch.save), real
`sepkit separate` runs, a tiny real checkpoint; each test is named after its defect."""

import fractions
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_MODEL, sepkit_command, subprocess_env

from sepkit.audio import AUDIO_SUFFIXES, MAX_RESAMPLED_SAMPLES, AudioError, AudioWarning, resample, write_audio_atomic
from sepkit.checkpoint import CheckpointError, load_model, save_model
from sepkit.cli import main
from sepkit.fileio import atomic_output, write_text_atomic
from sepkit.models import build_model

RATE = 8000


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("conv_tasnet", **TINY_MODEL).eval()


@pytest.fixture
def model_file(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.pt"
    save_model(model, path)
    return model, path


def noise(seed: int, frames: int = 4000, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(frames) * scale).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Write FLOAT wav (lossless for float32) and return what is on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype="FLOAT")
    return sf.read(path, dtype="float32")[0]


def model_sources(model: torch.nn.Module, samples: np.ndarray) -> np.ndarray:
    """The oracle: the model applied directly to the samples at its own rate."""
    with torch.no_grad():
        return model(torch.from_numpy(samples)[None])[0].numpy()


def assert_separated(model: torch.nn.Module, samples: np.ndarray, outputs: list[Path]) -> None:
    expected = model_sources(model, samples)
    for i, output in enumerate(outputs):
        data, rate = sf.read(output, dtype="float32")
        assert rate == RATE
        np.testing.assert_allclose(data, expected[i], atol=1e-5, err_msg=str(output))


def one_line_error(err: str, *needles: str) -> str:
    """stderr is a single line holding every needle, with no traceback and no advice
    to load checkpoints unsafely."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def separate(*args: str) -> int:
    return main(["separate", *map(str, args)])


# ---------------------------------------------------------------------------------
# 3. Resource exhaustion from tiny inputs


def test_one_hertz_header_is_refused_not_upsampled(model_file, tmp_path, capsys):
    model, path = model_file
    inputs = tmp_path / "in"
    write_wav(inputs / "one_hz.wav", noise(0, 2000), rate=1)
    good = write_wav(inputs / "good.wav", noise(1))
    assert separate(path, inputs, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "one_hz.wav" in err and "sample rate 1 Hz" in err
    assert not list((tmp_path / "out").glob("one_hz*"))
    assert_separated(model, good, [tmp_path / "out" / f"good_s{i}.wav" for i in (1, 2)])


def test_resampled_length_is_bounded():
    # 1e6 samples at 1 kHz -> 384 kHz would be 384e6 samples (3 GB as float64).
    with pytest.raises(AudioError, match=r"^clip\.wav: resampling .* more than the limit"):
        resample(np.zeros(10**6), 1000, 384000, source="clip.wav")
    # Just under the limit is allowed (checked on the length arithmetic, cheaply).
    assert MAX_RESAMPLED_SAMPLES >= 9 * 3600 * 8000


@pytest.mark.parametrize(
    "name, config, inflate, message",
    [
        # ~17 GB of weights if built: 64 blocks of 8 -> 2**20 -> 8 channel 1x1 convolutions.
        # Built on the meta device, compared with the file's weights.
        (
            "conv_tasnet",
            TINY_MODEL,
            dict(hidden=2**20, n_blocks=8, n_repeats=8),
            "do not match the stored model config",
        ),
        # GC3 builds its group index from tensor values; it too is built on the meta
        # device first, so its multi-GB codec is refused before allocating it.
        (
            "gc3",
            dict(n_filters=32, codec_hidden=16, n_groups=4, context_size=4, backbone_hidden=16, n_layers=1),
            dict(codec_hidden=2**26),
            "do not match the stored model config",
        ),
    ],
)
def test_huge_model_config_is_refused_before_allocating(tmp_path, name, config, inflate, message):
    path = tmp_path / "small.pt"
    save_model(build_model(name, **config), path)
    payload = torch.load(path, weights_only=True)
    payload["sepkit"]["model_config"].update(inflate)
    hostile = tmp_path / "hostile.pt"
    torch.save(payload, hostile)
    assert hostile.stat().st_size < 200_000
    limit = 6 * 2**30  # address space: enough for torch, far below the config's weights

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        sepkit_command("separate", str(hostile), str(tmp_path), "-o", str(tmp_path / "out")),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap_memory,
    )
    assert result.returncode == 2, result.stderr
    one_line_error(result.stderr, str(hostile), message)


# ---------------------------------------------------------------------------------
# 4. Output names


def test_same_stem_in_subfolders_both_separated_into_mirrored_folders(model_file, tmp_path, capsys):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    top = write_wav(inputs / "a.wav", noise(0))
    nested = write_wav(inputs / "sub" / "a.wav", noise(1))
    assert separate(path, inputs, "-o", out) == 0
    assert_separated(model, top, [out / "a_s1.wav", out / "a_s2.wav"])
    assert_separated(model, nested, [out / "sub" / "a_s1.wav", out / "sub" / "a_s2.wav"])
    # --overwrite redoes both, and neither replaces the other's outputs.
    assert separate(path, inputs, "-o", out, "--overwrite") == 0
    assert "separated 2 file(s)" in capsys.readouterr().out
    assert_separated(model, top, [out / "a_s1.wav", out / "a_s2.wav"])
    assert_separated(model, nested, [out / "sub" / "a_s1.wav", out / "sub" / "a_s2.wav"])


def test_same_stem_different_suffix_both_separated(model_file, tmp_path):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sf.write(inputs / "clip.flac", noise(0), RATE)
    sf.write(inputs / "clip.ogg", noise(1), RATE)
    assert separate(path, inputs, "-o", out) == 0
    for name in ("clip.flac", "clip.ogg"):
        on_disk = sf.read(inputs / name, dtype="float32")[0]
        assert_separated(model, on_disk, [out / f"{name}_s1.wav", out / f"{name}_s2.wav"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "clip.flac_s1.wav",
        "clip.flac_s2.wav",
        "clip.ogg_s1.wav",
        "clip.ogg_s2.wav",
    ]


def test_output_folder_equal_to_input_keeps_user_files_and_reruns_add_nothing(model_file, tmp_path, capsys):
    model, path = model_file
    folder = tmp_path / "takes"
    write_wav(folder / "take.wav", noise(0))
    own = write_wav(folder / "take_s1.wav", noise(1))  # the user's own recording
    own_bytes = (folder / "take_s1.wav").read_bytes()
    assert separate(path, folder, "-o", folder) == 1
    err = capsys.readouterr().err
    assert "take.wav" in err and "would overwrite the input" in err
    assert (folder / "take_s1.wav").read_bytes() == own_bytes
    # The user's take_s1.wav is an input like any other.
    assert_separated(model, own, [folder / "take_s1_s1.wav", folder / "take_s1_s2.wav"])
    audio_files = sorted(p.name for p in folder.glob("*.wav"))
    for _ in range(2):  # reruns neither separate earlier outputs nor redo finished work
        assert separate(path, folder, "-o", folder) == 1
        assert "separated 0 file(s), skipped 1" in capsys.readouterr().out
        assert sorted(p.name for p in folder.glob("*.wav")) == audio_files


def test_rerun_with_other_checkpoint_or_options_redoes_outputs(model_file, tmp_path, capsys):
    first, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    stereo = np.stack([noise(0), noise(1)], axis=1)
    write_wav(inputs / "x.wav", stereo)
    outputs = [out / "x_s1.wav", out / "x_s2.wav"]
    assert separate(path, inputs, "-o", out) == 0
    assert_separated(first, stereo.mean(1), outputs)
    assert separate(path, inputs, "-o", out) == 0
    assert "skipped 1" in capsys.readouterr().out
    second = tiny_model(seed=1)
    save_model(second, path)  # same path, new weights
    assert separate(path, inputs, "-o", out) == 0
    assert_separated(second, stereo.mean(1), outputs)
    assert separate(path, inputs, "-o", out, "--channels", "first") == 0
    assert_separated(second, stereo[:, 0].copy(), outputs)
    assert "separated 1 file(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------
# 5. NaN and infinity


def test_nan_input_is_an_error_and_nothing_written(model_file, tmp_path, capsys):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    poisoned = noise(0)
    poisoned[1000:1100] = np.nan
    write_wav(inputs / "poisoned.wav", poisoned)
    good = write_wav(inputs / "good.wav", noise(1))
    assert separate(path, inputs, "-o", out) == 1
    captured = capsys.readouterr()
    assert "poisoned.wav" in captured.err and "100 non-finite" in captured.err
    assert "1 failed" in captured.out
    assert not list(out.glob("poisoned*"))
    assert_separated(model, good, [out / "good_s1.wav", out / "good_s2.wav"])


def test_non_finite_model_output_is_an_error_and_nothing_written(model_file, tmp_path, capsys):
    _, path = model_file
    loud = np.full(4000, 1e38, dtype=np.float32)  # finite, but overflows inside the model
    loud[::2] *= -1
    write_wav(tmp_path / "in" / "loud.wav", loud)
    out = tmp_path / "out"
    assert separate(path, tmp_path / "in", "-o", out) == 1
    assert "loud.wav: the model output holds NaN or infinity" in capsys.readouterr().err
    assert not list(out.glob("*.wav"))


def test_checkpoint_with_nan_weights_is_refused(model_file, tmp_path, capsys):
    model, _ = model_file
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    broken = tmp_path / "nan.pt"
    save_model(model, broken)
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(broken, tmp_path / "in", "-o", tmp_path / "out") == 2
    one_line_error(capsys.readouterr().err, str(broken), "NaN or infinity")
    assert not list((tmp_path / "out").glob("*.wav"))


def test_non_finite_audio_is_never_written(tmp_path):
    target = tmp_path / "out" / "x_s1.wav"
    write_wav(target, noise(0))
    before = target.read_bytes()
    samples = noise(1)
    samples[7] = np.inf
    with pytest.raises(AudioError, match=r"x_s1\.wav: output has 1 non-finite sample"):
        write_audio_atomic(target, samples, RATE, subtype="FLOAT")
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["x_s1.wav"]


# ---------------------------------------------------------------------------------
# 8. One bad item never aborts a batch; bad options stop it before any work


def test_unwritable_output_folder_is_a_usage_error(model_file, tmp_path, capsys):
    _, path = model_file
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    (tmp_path / "a_file").write_text("not a folder")
    assert separate(path, tmp_path / "in", "-o", tmp_path / "a_file" / "out") == 2
    one_line_error(capsys.readouterr().err, "output folder", "not writable")


@pytest.mark.parametrize("subtype", ["PCM_99", "VORBIS"])
def test_bad_subtype_is_a_usage_error(model_file, tmp_path, capsys, subtype):
    _, path = model_file
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(path, tmp_path / "in", "-o", tmp_path / "out", "--subtype", subtype) == 2
    one_line_error(capsys.readouterr().err, f"--subtype {subtype}")
    assert not list((tmp_path / "out").glob("*.wav"))


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "0.0001"])
def test_bad_chunk_seconds_is_a_usage_error(model_file, tmp_path, capsys, value):
    _, path = model_file
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(path, tmp_path / "in", "-o", tmp_path / "out", "--chunk-seconds", value) == 2
    one_line_error(capsys.readouterr().err, "--chunk-seconds")


def test_long_file_names_within_the_limit_work_and_too_long_fail_alone(model_file, tmp_path, capsys):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    fits = "f" * 247  # fits_s1.wav is 254 bytes: legal, but a temp name built from it was not
    too_long = "t" * 250  # t..._s1.wav would be 257 bytes
    fits_samples = write_wav(inputs / f"{fits}.wav", noise(0))
    write_wav(inputs / f"{too_long}.wav", noise(1))
    assert separate(path, inputs, "-o", out) == 1
    captured = capsys.readouterr()
    assert "exceed 255 bytes" in captured.err and too_long in captured.err
    assert "separated 1 file(s), skipped 0 already done, 1 failed" in captured.out
    assert_separated(model, fits_samples, [out / f"{fits}_s1.wav", out / f"{fits}_s2.wav"])


def test_any_per_file_exception_is_reported_and_the_batch_continues(model_file, tmp_path, capsys):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_wav(inputs / "sub" / "a.wav", noise(0))
    b = write_wav(inputs / "z.wav", noise(1))
    out.mkdir()
    (out / "sub").write_text("a file where sub/a.wav's output folder would go")
    assert separate(path, inputs, "-o", out) == 1
    captured = capsys.readouterr()
    assert "separated 1 file(s), skipped 0 already done, 1 failed" in captured.out
    assert str(inputs / "sub" / "a.wav") in captured.err and "Traceback" not in captured.err
    assert_separated(model, b, [out / "z_s1.wav", out / "z_s2.wav"])


# ---------------------------------------------------------------------------------
# 9. File mode


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_output_honours_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "table.csv", "a,b\n")
        with atomic_output(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(previous)
    for name in ("table.csv", "model.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---------------------------------------------------------------------------------
# 10. Leftovers of a killed run


def test_rerun_removes_temp_file_left_by_sigkill(model_file, tmp_path, capsys):
    model, path = model_file
    inputs, out = tmp_path / "in", tmp_path / "out"
    samples = write_wav(inputs / "x.wav", noise(0))
    # A real process killed by SIGKILL in the middle of writing x's first output.
    script = (
        "import os, signal, sys\n"
        "from sepkit.fileio import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a wav' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(out / "x_s1.wav")], env=subprocess_env(), capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    # A user's own hidden .tmp file and the temp file of a live writer stay.
    (out / ".notes.tmp").write_text("mine")
    live = out / f".sepkit-{os.getpid()}-abcdefgh.tmp"
    live.write_text("being written")
    assert separate(path, inputs, "-o", out) == 0
    assert not leftovers[0].exists()
    assert (out / ".notes.tmp").read_text() == "mine" and live.exists()
    assert_separated(model, samples, [out / "x_s1.wav", out / "x_s2.wav"])


# ---------------------------------------------------------------------------------
# 11. Errors a person can act on


def _cuda_tagged_copy(source: Path, target: Path) -> None:
    """Rewrite a CPU checkpoint's storage location tags to 'cuda:0', exactly what
    torch.save writes for a model saved from a GPU."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_cuda_checkpoint_loads_on_a_cpu_only_machine(model_file, tmp_path, capsys):
    model, path = model_file
    cuda_file = tmp_path / "cuda.pt"
    _cuda_tagged_copy(path, cuda_file)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(cuda_file, weights_only=True)  # really a CUDA checkpoint
    samples = write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(cuda_file, tmp_path / "in", "-o", tmp_path / "out") == 0
    assert_separated(model, samples, [tmp_path / "out" / "x_s1.wav", tmp_path / "out" / "x_s2.wav"])
    # Asking for a GPU that is not there is a usage error, not a traceback.
    assert separate(cuda_file, tmp_path / "in", "-o", tmp_path / "out", "--device", "cuda") == 2
    one_line_error(capsys.readouterr().err, "--device cuda", "no such CUDA device")


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _broken_checkpoints(good: Path) -> dict[str, tuple[bytes | dict, str]]:
    """name -> (file content or payload to torch.save, expected message fragment)."""
    raw = good.read_bytes()
    no_sepkit = _payload(good)
    del no_sepkit["sepkit"]
    no_state = _payload(good)
    del no_state["state_dict"]
    pickled_object = _payload(good)
    pickled_object["sepkit"]["note"] = fractions.Fraction(1, 3)
    cases: dict[str, tuple[bytes | dict, str]] = {
        "empty": (b"", "empty file"),
        "truncated": (raw[: len(raw) // 2], "truncated or corrupt"),
        "text": (b"model: conv_tasnet\nweights: see attached\n", "not a torch checkpoint"),
        "pickled_object": (pickled_object, "refused, the file holds a Python object (fractions.Fraction)"),
        "no_sepkit_entry": (no_sepkit, "no 'sepkit' entry"),
        "no_state_dict": (no_state, "no 'state_dict'"),
    }
    for rate in (0, -8000, 10**9):
        payload = _payload(good)
        payload["sepkit"]["sample_rate"] = rate
        payload["sepkit"]["model_config"]["sample_rate"] = rate
        cases[f"sample_rate_{rate}"] = (payload, f"sample rate {rate} is not an integer in 1000..384000 Hz")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "truncated",
        "text",
        "pickled_object",
        "no_sepkit_entry",
        "no_state_dict",
        "sample_rate_0",
        "sample_rate_-8000",
        "sample_rate_1000000000",
    ],
)
def test_checkpoint_problem_is_one_line_naming_the_file(model_file, tmp_path, capsys, case):
    _, good = model_file
    content, message = _broken_checkpoints(good)[case]
    broken = tmp_path / f"{case}.ckpt"
    if isinstance(content, bytes):
        broken.write_bytes(content)
    else:
        torch.save(content, broken)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(broken)
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(broken, tmp_path / "in", "-o", tmp_path / "out") == 2
    one_line_error(capsys.readouterr().err, str(broken), message)


def test_pcm16_output_that_clips_warns_naming_the_file(model_file, tmp_path, capsys):
    model, path = model_file
    loud = noise(0, scale=100.0)
    write_wav(tmp_path / "in" / "loud.wav", loud)
    assert np.abs(model_sources(model, loud)).max() > 1  # the outputs really exceed [-1, 1)
    out = tmp_path / "out"
    assert separate(path, tmp_path / "in", "-o", out, "--subtype", "PCM_16") == 0
    text = capsys.readouterr().out
    assert f"warning: {out / 'loud_s1.wav'}: " in text and "clipped by subtype PCM_16" in text
    assert sf.info(out / "loud_s1.wav").subtype == "PCM_16"
    # FLOAT keeps the peaks and has nothing to warn about.
    assert separate(path, tmp_path / "in", "-o", tmp_path / "float") == 0
    assert "clipped" not in capsys.readouterr().out


def test_mp3_files_are_found_in_folders(model_file, tmp_path):
    _, path = model_file
    assert all(suffix[1:].upper() in sf.available_formats() or suffix in (".aif", ".opus") for suffix in AUDIO_SUFFIXES)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "talk.mp3", noise(0, frames=8000), RATE)
    assert separate(path, inputs, "-o", tmp_path / "out") == 0
    for i in (1, 2):
        data, rate = sf.read(tmp_path / "out" / f"talk_s{i}.wav")
        assert rate == RATE and len(data) == sf.info(inputs / "talk.mp3").frames


def test_truncated_wav_warns_naming_the_file(model_file, tmp_path, capsys):
    model, path = model_file
    whole = tmp_path / "whole.wav"
    samples = write_wav(whole, noise(0))
    truncated = tmp_path / "in" / "cut.wav"
    truncated.parent.mkdir()
    # The data chunk comes last: cutting 1000 float frames leaves a header promising 4000 bytes more.
    truncated.write_bytes(whole.read_bytes()[: -4 * 1000])
    assert separate(path, tmp_path / "in", "-o", tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert f"warning: {truncated}: truncated file" in text and "promises 4000 more byte(s)" in text
    assert_separated(model, samples[:3000], [tmp_path / "out" / "cut_s1.wav", tmp_path / "out" / "cut_s2.wav"])


def test_manifest_records_what_was_written(model_file, tmp_path):
    """The skip check's own data: input identity, content stamp, checkpoint digest, options."""
    _, path = model_file
    write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(path, tmp_path / "in", "-o", tmp_path / "out", "--subtype", "pcm_24") == 0
    entries = json.loads((tmp_path / "out" / ".sepkit-separate.json").read_text())["inputs"]
    (key, entry), *rest = entries.items()
    assert not rest and key == os.path.realpath(tmp_path / "in" / "x.wav")
    assert entry["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["subtype"] == "PCM_24" and entry["outputs"] == ["x_s1.wav", "x_s2.wav"]
    assert entry["size"] == (tmp_path / "in" / "x.wav").stat().st_size
    assert sf.info(tmp_path / "out" / "x_s1.wav").subtype == "PCM_24"


def test_already_quantised_int16_samples_do_not_warn_of_clipping(tmp_path):
    """Data preparation writes int16 arrays: they cannot clip, so no warning (the float
    check once read every nonzero int16 value as 'outside [-1, 1)')."""
    samples = (np.sin(np.arange(800) / 5.0) * 30000).astype(np.int16)
    path = tmp_path / "quantised.wav"
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioWarning)
        write_audio_atomic(path, samples, 8000, subtype="PCM_16")
    read, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(read, samples)


# ---------------------------------------------------------------------------------
# Reproducible outputs


def riff_chunk_ids(path: Path) -> list[bytes]:
    """The ids of a RIFF/WAVE file's top-level chunks, read from its bytes."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", path
    ids, offset = [], 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        ids.append(data[offset : offset + 4])
        offset += 8 + size + (size & 1)
    return ids


def wait_for_the_next_second() -> None:
    """Sleep past the next change of the wall clock's second (what C's time() returns)."""
    time.sleep(1.0 - time.time() % 1.0 + 0.05)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_wav_bytes_do_not_depend_on_the_clock(tmp_path, subtype):
    """libsndfile gives float WAV files a PEAK chunk stamped with the second of writing, so
    the same samples written a second apart differed in their bytes (the WHAM! re-run test,
    which compares a resumed folder with a clean one byte for byte, failed in CI when its two
    runs straddled a second). Outputs are reproducible: no clock in the file."""
    samples = np.stack([noise(0), noise(1)], axis=1)
    write_audio_atomic(tmp_path / "first.wav", samples, RATE, subtype=subtype)
    wait_for_the_next_second()
    write_audio_atomic(tmp_path / "second.wav", samples, RATE, subtype=subtype)
    assert (tmp_path / "first.wav").read_bytes() == (tmp_path / "second.wav").read_bytes()
    assert b"PEAK" not in riff_chunk_ids(tmp_path / "first.wav")
    read, rate = sf.read(tmp_path / "first.wav", dtype="float64")
    assert rate == RATE and sf.info(tmp_path / "first.wav").subtype == subtype
    np.testing.assert_array_equal(read, samples.astype(np.float64))


def test_separated_files_do_not_depend_on_the_clock(model_file, tmp_path):
    """`sepkit separate` writes float WAV by default, block by block: the same input and
    checkpoint give the same bytes a second later."""
    model, path = model_file
    samples = write_wav(tmp_path / "in" / "x.wav", noise(0))
    assert separate(path, tmp_path / "in", "-o", tmp_path / "first") == 0
    wait_for_the_next_second()
    assert separate(path, tmp_path / "in", "-o", tmp_path / "second") == 0
    for name in ("x_s1.wav", "x_s2.wav"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
        assert b"PEAK" not in riff_chunk_ids(tmp_path / "first" / name)
    assert_separated(model, samples, [tmp_path / "first" / "x_s1.wav", tmp_path / "first" / "x_s2.wav"])
