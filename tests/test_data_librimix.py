"""LibriMix recipe on fabricated LibriSpeech / WHAM! noise / metadata CSVs, against a
float64 reimplementation of create_librimix_from_metadata.py (bit-exact after int16
quantisation), including noise extension and train-360's speed-perturbed noise."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import make_librimix_metadata, make_librispeech
from scipy.signal import resample_poly

from data_prep.cli import main
from sepkit.data.mixtures import hann_crossfade_extend, quantize_int16, read_table, render, render_outputs


def reference_extend(noise: np.ndarray, target: int) -> np.ndarray:
    """LibriMix's extend_noise: 16001-point Hann window split into rising / falling halves."""
    window = np.hanning(16001)
    rising, falling = window[:8001], window[8000::-1]
    out = noise
    while len(out) < target:
        out = np.concatenate([out[:-8001], out[-8001:] * falling + noise[:8001] * rising, noise[8001:]])
    return out[:target]


def reference_librimix_float(row: dict, n_src: int, libri: Path, noise_file: Path, rate: int, mode: str) -> dict:
    """create_librimix_from_metadata.py in float64, before writing."""
    sources = [sf.read(str(libri / row[f"source_{i + 1}_path"]), dtype="float64")[0] for i in range(n_src)]
    longest = max(map(len, sources))
    noise = sf.read(str(noise_file), dtype="float64", stop=longest, always_2d=True)[0][:, 0]
    if len(noise) < longest:
        noise = reference_extend(noise, longest)
    gains = [float(row[f"source_{i + 1}_gain"]) for i in range(n_src)] + [float(row["noise_gain"])]
    signals = [resample_poly(x * g, rate, 16000) for x, g in zip([*sources, noise], gains)]
    n = min(map(len, signals)) if mode == "min" else max(map(len, signals))
    signals = [s[:n] if mode == "min" else np.pad(s, (0, n - len(s))) for s in signals]
    clean = signals[0]
    for s in signals[1:n_src]:
        clean = clean + s
    out = {f"s{i + 1}": s for i, s in enumerate(signals[:n_src])}
    out.update(noise=signals[-1], mix_clean=clean, mix_both=clean + signals[-1], mix_single=signals[0] + signals[-1])
    return out


def official_write(x: np.ndarray, rate: int, scratch: Path) -> np.ndarray:
    """What the official script stores for float samples ``x``: ``sf.write`` with
    soundfile's defaults (16-bit PCM, libsndfile decides the rounding), read back."""
    sf.write(scratch, x, rate)
    return sf.read(str(scratch), dtype="int16")[0]


def reference_librimix(
    row: dict, n_src: int, libri: Path, noise_file: Path, rate: int, mode: str, scratch: Path
) -> dict:
    out = reference_librimix_float(row, n_src, libri, noise_file, rate, mode)
    return {k: official_write(v, rate, scratch) for k, v in out.items()}


def reference_snr(signal: np.ndarray, rest: np.ndarray) -> float:
    """LibriMix's metrics formula, written out on sums."""
    n = len(signal)
    return 10 * np.log10((np.sum(signal * signal) / n) / (np.sum(rest * rest) / n + 1e-10) + 1e-10)


@pytest.fixture()
def corpus(tmp_path):
    libri = tmp_path / "LibriSpeech"
    files = make_librispeech(libri, ("train-clean-100", "dev-clean", "train-clean-360"))
    wham = tmp_path / "wham_noise"
    meta = tmp_path / "metadata"
    for n in (2, 3):
        make_librimix_metadata(meta, wham, files, n)
    return libri, wham, meta


def test_hann_extension_matches_librimix_definition():
    noise = np.random.default_rng(0).standard_normal(9000)
    extended = hann_crossfade_extend(noise, 30000)
    np.testing.assert_array_equal(extended, reference_extend(noise, 30000))
    np.testing.assert_array_equal(extended[: 9000 - 8001], noise[: 9000 - 8001])
    with pytest.raises(ValueError, match="too short"):
        hann_crossfade_extend(noise[:8000], 20000)


def test_written_files_match_reference(corpus, tmp_path):
    libri, wham, meta = corpus
    out = tmp_path / "out"
    argv = ["librimix", "--librispeech", str(libri), "--wham-noise", str(wham), "--metadata", str(meta)]
    argv += ["--n-src", "2", "3", "--sample-rate", "8000", "16000", "--mode", "min", "max"]
    argv += [
        "--types",
        "mix_clean",
        "mix_both",
        "mix_single",
        "--out",
        str(out),
        "--write",
        "--no-progress",
        "--jobs",
        "2",
    ]
    assert main(argv) == 0
    checked = 0
    for n in (2, 3):
        for subset, short in (("train-clean-100", "train-100"), ("dev-clean", "dev"), ("train-clean-360", "train-360")):
            with open(meta / f"Libri{n}Mix" / f"libri{n}mix_{subset}.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            for rate in (8000, 16000):
                for mode in ("min", "max"):
                    base = out / f"Libri{n}Mix" / f"wav{rate // 1000}k" / mode
                    tables = {
                        t: {s.mixture_id: s for s in read_table(base / f"{short}_{t}.csv")}
                        for t in ("mix_clean", "mix_both", "mix_single")
                    }
                    for row in rows:
                        noise_file = wham / row["noise_path"]
                        if subset == "train-clean-360":
                            noise_file = out / "wham_noise_augmented" / row["noise_path"]
                        want = reference_librimix(row, n, libri, noise_file, rate, mode, tmp_path / "official.wav")
                        for name, expected in want.items():
                            got = sf.read(str(base / short / name / f"{row['mixture_ID']}.wav"), dtype="int16")[0]
                            np.testing.assert_array_equal(got, expected, err_msg=f"{base}/{short}/{name}")
                        for t, table in tables.items():
                            mix, targets = render(table[row["mixture_ID"]])
                            np.testing.assert_array_equal(mix, want[t].astype(np.float32) / 32768)
                            names = ["s1"] if t == "mix_single" else [f"s{i + 1}" for i in range(n)]
                            np.testing.assert_array_equal(
                                targets, np.stack([want[k] for k in names]).astype(np.float32) / 32768
                            )
                        checked += 1
                    check_official_csvs(base, short, n, rows)
    assert checked == 2 * 3 * 2 * 2 * 3
    assert main(["verify", str(out)]) == 0


def check_official_csvs(base: Path, short: str, n_src: int, rows: list[dict]) -> None:
    """metadata/mixture_*.csv and metrics_*.csv: official columns, LF line ends, paths of
    the written files, and SNRs recomputed here from those files."""
    for t in ("mix_clean", "mix_both", "mix_single"):
        parts = ["s1"] if t == "mix_single" else [f"s{i + 1}" for i in range(n_src)]
        stems = [f"source_{p[1:]}" for p in parts]
        if t != "mix_clean":
            parts, stems = [*parts, "noise"], [*stems, "noise"]
        mixture_csv = base / "metadata" / f"mixture_{short}_{t}.csv"
        metrics_csv = base / "metadata" / f"metrics_{short}_{t}.csv"
        for path in (mixture_csv, metrics_csv):
            raw = path.read_bytes()
            assert b"\r" not in raw and raw.endswith(b"\n"), f"{path}: not LF line ends"
        with open(mixture_csv, newline="") as handle:
            reader = csv.DictReader(handle)
            lines = list(reader)
        assert reader.fieldnames == ["mixture_ID", "mixture_path", *[f"{c}_path" for c in stems], "length"]
        assert [line["mixture_ID"] for line in lines] == [r["mixture_ID"] for r in rows]
        with open(metrics_csv, newline="") as handle:
            reader = csv.DictReader(handle)
            metrics = list(reader)
        assert reader.fieldnames == ["mixture_ID", *[f"{c}_SNR" for c in stems]]
        assert [line["mixture_ID"] for line in metrics] == [r["mixture_ID"] for r in rows]
        for line, metric in zip(lines, metrics):
            mixture_path = Path(line["mixture_path"])
            assert mixture_path.is_absolute() and mixture_path == (base / short / t / f"{line['mixture_ID']}.wav")
            mixture = sf.read(str(mixture_path), dtype="float64")[0]
            assert int(line["length"]) == len(mixture)
            for part, stem in zip(parts, stems):
                assert Path(line[f"{stem}_path"]) == base / short / part / f"{line['mixture_ID']}.wav"
                signal = sf.read(line[f"{stem}_path"], dtype="float64")[0]
                expected = reference_snr(signal, mixture - signal)
                assert float(metric[f"{stem}_SNR"]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_speed_perturbed_noise_is_generated_outside_the_corpus(corpus, tmp_path):
    libri, wham, meta = corpus
    out = tmp_path / "out"
    argv = ["librimix", "--librispeech", str(libri), "--wham-noise", str(wham), "--metadata", str(meta)]
    argv += ["--subsets", "train-360", "--types", "mix_both", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    made = sorted((out / "wham_noise_augmented" / "tr").glob("*.wav"))
    assert made and not list(wham.rglob("*sp08.wav")) and not list(wham.rglob("*sp12.wav"))
    for path in made:
        base = wham / "tr" / (path.stem[:-4] + ".wav")
        original = sf.read(str(base), dtype="float64", always_2d=True)[0][:, 0]
        up, down = (5, 4) if path.stem.endswith("sp08") else (5, 6)
        expected = resample_poly(original, up, down).astype(np.float32)
        np.testing.assert_array_equal(sf.read(str(path), dtype="float32")[0], expected)


def test_missing_inputs_are_named(corpus, tmp_path, capsys):
    libri, wham, meta = corpus
    argv = [
        "librimix",
        "--librispeech",
        str(libri),
        "--metadata",
        str(meta),
        "--types",
        "mix_both",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "--wham-noise" in capsys.readouterr().err
    with open(meta / "Libri2Mix" / "libri2mix_dev-clean.csv", newline="") as handle:
        victim = libri / next(csv.DictReader(handle))["source_1_path"]
    victim.unlink()
    argv = [
        "librimix",
        "--librispeech",
        str(libri),
        "--metadata",
        str(meta),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert victim.name in capsys.readouterr().err


def test_clean_only_ignores_noise(corpus, tmp_path):
    libri, _, meta = corpus
    out = tmp_path / "out"
    argv = ["librimix", "--librispeech", str(libri), "--metadata", str(meta), "--subsets", "dev", "--out", str(out)]
    assert main(argv + ["--write", "--no-progress"]) == 0
    base = out / "Libri2Mix" / "wav8k" / "min" / "dev"
    assert sorted(p.name for p in base.iterdir()) == ["mix_clean", "s1", "s2"]
    spec = read_table(out / "Libri2Mix" / "wav8k" / "min" / "dev_mix_clean.csv")[0]
    outputs = render_outputs(spec)
    np.testing.assert_array_equal(outputs["mix_clean"], sf.read(str(base / "mix_clean" / f"{spec.mixture_id}.wav"))[0])


def test_round_quantizer_option(corpus, tmp_path):
    """--quantizer round writes round(32768 x), clipped, instead of the official writer's rule
    (and --no-official-extras leaves out the metrics CSVs, not the mixture CSVs)."""
    libri, wham, meta = corpus
    out = tmp_path / "out"
    argv = ["librimix", "--librispeech", str(libri), "--wham-noise", str(wham), "--metadata", str(meta)]
    argv += ["--subsets", "dev", "--types", "mix_both", "--quantizer", "round", "--out", str(out), "--write"]
    assert main(argv + ["--no-progress", "--no-official-extras"]) == 0
    meta_out = out / "Libri2Mix" / "wav8k" / "min" / "metadata"
    assert (meta_out / "mixture_dev_mix_both.csv").is_file() and not (meta_out / "metrics_dev_mix_both.csv").exists()
    with open(meta / "Libri2Mix" / "libri2mix_dev-clean.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    base = out / "Libri2Mix" / "wav8k" / "min" / "dev"
    differing = 0
    for row in rows:
        want = reference_librimix_float(row, 2, libri, wham / row["noise_path"], 8000, "min")
        for name in ("s1", "s2", "noise", "mix_both"):
            got = sf.read(str(base / name / f"{row['mixture_ID']}.wav"), dtype="int16")[0]
            np.testing.assert_array_equal(got, np.clip(np.round(want[name] * 32768), -32768, 32767))
            differing += int(np.sum(got != official_write(want[name], 8000, tmp_path / "official.wav")))
    assert differing > 0


def test_default_quantizer_is_libsndfile_exactly(tmp_path):
    """The default rule (int16_floor) equals libsndfile's float -> PCM_16 conversion on
    values where a plain floor(32768 x) or round(32768 x) would not: just below an
    integer, halves, both signs, full scale (+1.0 -> 32767) and beyond (clipped)."""
    if not sf.__libsndfile_version__.startswith("1.2."):
        pytest.skip(f"rule measured on libsndfile 1.2.x, this is {sf.__libsndfile_version__}")
    rng = np.random.default_rng(0)
    ints = rng.integers(-32768, 32768, 20000).astype(np.float64)
    below = np.array([0.0, 0.5, 1e-9, 3e-6, 7.6e-6, 1e-5, 0.25, 1e-12])
    x = np.concatenate(
        [
            (ints[:, None] - below[None, :]).ravel() / 32768,
            rng.uniform(-1, 1, 20000),
            [1.0, -1.0, 1.5, -1.5, 32767.5 / 32768, -32768.5 / 32768],
        ]
    )
    written = official_write(x, 8000, tmp_path / "q.wav")
    ours = quantize_int16(x, "int16_floor") * 32768
    np.testing.assert_array_equal(written, ours)
    assert written[-6] == 32767 and written[-5] == -32768
    assert not np.array_equal(written, np.clip(np.floor(x * 32768), -32768, 32767))
    assert not np.array_equal(written, np.clip(np.round(x * 32768), -32768, 32767))


def test_metrics_come_from_the_writing_pass(corpus, tmp_path, monkeypatch):
    """The metrics CSVs are computed from the signals as they are written, without reading
    the written files back; a resumed run (files complete, metrics read back from them)
    writes the same CSVs."""
    libri, wham, meta = corpus
    out = tmp_path / "out"
    argv = ["librimix", "--librispeech", str(libri), "--wham-noise", str(wham), "--metadata", str(meta)]
    argv += ["--subsets", "dev", "--types", "mix_clean", "mix_both", "mix_single", "--out", str(out)]
    argv += ["--write", "--no-progress"]
    real = sf.read
    reads_of_outputs = []

    def counting_read(file, *args, **kwargs):
        if str(file).startswith(str(out)):
            reads_of_outputs.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(sf, "read", counting_read)
    assert main(argv) == 0
    monkeypatch.undo()
    assert reads_of_outputs == []
    meta_out = out / "Libri2Mix" / "wav8k" / "min" / "metadata"
    names = [f"metrics_dev_{t}.csv" for t in ("mix_clean", "mix_both", "mix_single")]
    first = {name: (meta_out / name).read_bytes() for name in names}
    for name in names:
        (meta_out / name).unlink()
    assert main(argv) == 0  # every file complete: the metrics are read back from them
    assert {name: (meta_out / name).read_bytes() for name in names} == first
