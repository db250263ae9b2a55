"""wsj0-mix recipe on a fabricated WSJ0: every written file against a float64
reimplementation of MERL's formula (bit-exact after int16 quantisation), on-the-fly
rendering against the written files, SPHERE decoding, bad inputs, resume."""

from __future__ import annotations

import hashlib
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import make_merl_lists, make_wsj0, read_levels, read_merl_list, speech_like, write_sphere
from scipy.io import loadmat
from scipy.signal import resample_poly

from data_prep import common, wsj0mix
from data_prep.cli import main
from data_prep.common import PinnedFile, PrepareError, download_pinned
from sepkit.data.mixtures import read_table, render


def reference_wsj0mix(pairs, levels, wsj0_root: Path, rate: int, mode: str) -> list[np.ndarray]:
    """MERL create_wav_2speakers.m as ported by pywsj0-mix: int16 [mix, s1, s2, ...]."""
    sources = []
    for path, snr in pairs:
        x, fs = sf.read(str(wsj0_root / path), dtype="float64")
        if rate != fs:
            x = resample_poly(x, rate, fs)
        sources.append(x / np.sqrt(levels[Path(path).stem]) * 10 ** (float(snr) / 20))
    n = min(map(len, sources)) if mode == "min" else max(map(len, sources))
    sources = [s[:n] if mode == "min" else np.pad(s, (0, n - len(s))) for s in sources]
    mix = sources[0].copy()
    for s in sources[1:]:
        mix = mix + s
    gain = 0.9 / max(np.max(np.abs(mix)), *(np.max(np.abs(s)) for s in sources))
    return [np.clip(np.round(x * gain * 32768), -32768, 32767).astype(np.int16) for x in [mix, *sources]]


def reference_scaling(pairs, levels, wsj0_root: Path, rate: int, mode: str) -> tuple[np.ndarray, float]:
    """MERL's scaling.mat entries of one list line, in float64: (``w_i g / sqrt(lev_i)``
    per source, ``g = 0.9 / peak``) with the peak over the unquantised mixture and sources."""
    weights, sources = [], []
    for path, snr in pairs:
        x, fs = sf.read(str(wsj0_root / path), dtype="float64")
        weights.append(10 ** (float(snr) / 20) / np.sqrt(levels[Path(path).stem]))
        sources.append(resample_poly(x, rate, fs) * weights[-1] if rate != fs else x * weights[-1])
    n = min(map(len, sources)) if mode == "min" else max(map(len, sources))
    sources = [s[:n] if mode == "min" else np.pad(s, (0, n - len(s))) for s in sources]
    gain = 0.9 / max(np.max(np.abs(np.sum(sources, axis=0))), *(np.max(np.abs(s)) for s in sources))
    return np.array(weights) * gain, gain


@pytest.fixture()
def corpus(tmp_path):
    wsj0 = tmp_path / "corpus"
    paths = make_wsj0(wsj0)
    lists = tmp_path / "lists"
    for n in (2, 3):
        make_merl_lists(lists, paths, n, count=3)
    return wsj0, lists


def test_written_files_match_reference_and_on_the_fly(corpus, tmp_path, capsys):
    wsj0, lists = corpus
    out = tmp_path / "out"
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--n-src", "2", "3"]
    argv += ["--sample-rate", "8000", "16000", "--mode", "min", "max", "--out", str(out), "--write", "--no-progress"]
    assert main(argv) == 0
    levels = read_levels(lists)
    checked = 0
    for n in (2, 3):
        for split in ("tr", "cv", "tt"):
            rows = read_merl_list(lists / f"mix_{n}_spk_{split}.txt")
            for rate in (8000, 16000):
                for mode in ("min", "max"):
                    base = out / f"{n}speakers" / f"wav{rate // 1000}k" / mode
                    table = {s.mixture_id: s for s in read_table(base / f"{split}.csv")}
                    assert len(table) == len(rows)
                    scaling = loadmat(str(base / split / "scaling.mat"))
                    tag = f"{rate // 1000}k"
                    assert scaling[f"scaling_{tag}"].shape == (len(rows), n)
                    assert scaling[f"scaling16bit_{tag}"].shape == (len(rows), 1)
                    for line, pairs in enumerate(rows):
                        factors, gain = reference_scaling(pairs, levels, wsj0, rate, mode)
                        np.testing.assert_allclose(scaling[f"scaling_{tag}"][line], factors, rtol=1e-12)
                        assert scaling[f"scaling16bit_{tag}"][line, 0] == pytest.approx(gain, rel=1e-12)
                    for pairs in rows:
                        name = "_".join(f"{Path(p).stem}_{s}" for p, s in pairs)
                        expected = reference_wsj0mix(pairs, levels, wsj0, rate, mode)
                        folders = ["mix"] + [f"s{i + 1}" for i in range(n)]
                        written = [sf.read(str(base / split / f / f"{name}.wav"), dtype="int16")[0] for f in folders]
                        for got, want in zip(written, expected):
                            np.testing.assert_array_equal(got, want)
                        mix, targets = render(table[name])
                        np.testing.assert_array_equal(mix, written[0].astype(np.float32) / 32768)
                        np.testing.assert_array_equal(targets, np.stack(written[1:]).astype(np.float32) / 32768)
                        checked += 1
    assert checked == 2 * 3 * 2 * 2 * 3
    assert main(["verify", str(out)]) == 0
    # comparison against "official" files: an exact copy, with one file perturbed by 1 LSB
    official = tmp_path / "official"
    split = Path("2speakers/wav8k/min/tt")
    shutil.copytree(out / split, official / split)
    victim = sorted((official / split / "mix").glob("*.wav"))[0]
    data, rate = sf.read(str(victim), dtype="int16")
    data[100] += 1
    sf.write(str(victim), data, rate, subtype="PCM_16")
    capsys.readouterr()
    assert main(["verify", str(out), "--official", str(official), "--samples", "3"]) == 0
    report = capsys.readouterr().out
    assert "vs official: 9 files, 8 identical" in report


def test_sphere_wv1_discs_are_decoded_and_checked(tmp_path):
    discs = tmp_path / "discs"
    paths = make_wsj0(discs, sphere=True)
    lists = tmp_path / "lists"
    make_merl_lists(lists, paths, 2, count=2)
    out = tmp_path / "out"
    argv = [
        "wsj0-mix",
        "--wsj0",
        str(discs),
        "--lists",
        str(lists),
        "--splits",
        "tr",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    # the cache holds exact WAV copies of the .wv1 samples
    for wav in (out / "wsj0_wav").rglob("*.wav"):
        key = wav.relative_to(out / "wsj0_wav" / "wsj0").with_suffix("")
        sph = next(discs.glob(f"*/wsj0/{key}.wv1"))
        raw = np.frombuffer(sph.read_bytes()[1024:], dtype="<i2")
        np.testing.assert_array_equal(sf.read(str(wav), dtype="int16")[0], raw)
    # the tables render to the same numbers as the reference from those samples
    wav_root = out / "wsj0_wav"
    levels = read_levels(lists)
    table = {spec.mixture_id: spec for spec in read_table(out / "2speakers/wav8k/min/tr.csv")}
    for pairs in read_merl_list(lists / "mix_2_spk_tr.txt"):
        mix, _ = render(table["_".join(f"{Path(p).stem}_{s}" for p, s in pairs)])
        want = reference_wsj0mix(pairs, levels, wav_root, 8000, "min")[0]
        np.testing.assert_array_equal(mix, want.astype(np.float32) / 32768)
    assert not list(discs.rglob("*.wav")), "nothing may be written inside the input corpus"


def test_wv2_only_is_refused_with_explanation(tmp_path):
    discs = tmp_path / "discs"
    paths = make_wsj0(discs, sphere=True)
    for f in discs.rglob("*.wv1"):
        f.rename(f.with_suffix(".wv2"))
    lists = tmp_path / "lists"
    make_merl_lists(lists, paths, 2, count=1)
    with pytest.raises(PrepareError, match=r"\.wv2 is WSJ0's second"):
        wsj0mix.build_plans(discs, lists, tmp_path / "out", [2], [8000], ["min"], ["tr"])


def test_shorten_decoding_is_checked_against_header(tmp_path, monkeypatch):
    from data_prep.wsj0 import decode_sphere

    sph = tmp_path / "a.wv1"
    samples = speech_like(np.random.default_rng(0), 1000)
    write_sphere(sph, samples, coding="pcm,embedded-shorten-v1.1")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr("data_prep.wsj0._pyav_available", lambda: False)
    with pytest.raises(PrepareError, match="sph2pipe"):
        decode_sphere(sph)
    # a decoder that returns one sample too few is caught by the sample count check
    fake = tmp_path / "bin" / "sph2pipe"
    fake.parent.mkdir()
    np.save(tmp_path / "short.npy", samples[:-1])
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, numpy, soundfile\n"
        f"soundfile.write(sys.argv[-1], numpy.load({str(tmp_path / 'short.npy')!r}), 16000, subtype='PCM_16')\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(PrepareError, match="header says 1000"):
        decode_sphere(sph)
    np.save(tmp_path / "short.npy", samples)  # a correct decoder passes
    decoded, rate = decode_sphere(sph)
    np.testing.assert_array_equal(decoded, samples)
    assert rate == 16000


def test_bad_inputs_give_clear_errors(corpus, tmp_path, capsys):
    wsj0, lists = corpus
    missing = next(wsj0.rglob("*.wav"))
    missing.unlink()
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    assert missing.stem in capsys.readouterr().err
    assert (
        main(["wsj0-mix", "--wsj0", str(tmp_path / "nope"), "--lists", str(lists), "--out", str(tmp_path / "o")]) == 2
    )
    assert "WSJ0 folder not found" in capsys.readouterr().err
    assert main(["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--out", str(wsj0 / "mixes")]) == 2
    assert "never writes inside the input corpora" in capsys.readouterr().err


def test_interrupted_write_resumes_without_partial_files(corpus, tmp_path, monkeypatch):
    wsj0, lists = corpus
    out = tmp_path / "out"
    argv = [
        "wsj0-mix",
        "--wsj0",
        str(wsj0),
        "--lists",
        str(lists),
        "--mode",
        "min",
        "max",
        "--out",
        str(out),
        "--write",
    ]
    argv += ["--no-progress"]
    real = common.write_rendered
    calls = {"n": 0}

    def crash_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "write_rendered", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(common, "write_rendered", real)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    first = sorted(out.rglob("*.wav"))
    assert len(first) == 4 * 3  # four mixtures, three files each
    victim = first[0]
    victim.write_bytes(victim.read_bytes()[:60])  # a damaged file is detected and rewritten
    stale = victim.parent / f".{victim.name}.abc123.tmp"  # what a SIGKILLed worker leaves
    stale.write_bytes(b"partial")
    stamp = {p: p.stat().st_mtime_ns for p in first[1:]}
    plans = wsj0mix.build_plans(wsj0, lists, out, [2], [8000], ["min", "max"])
    summary = common.execute(plans, write=True, progress=False)
    assert summary["skipped"] == len(first) - 1
    assert summary["written"] == 2 * 3 * 3 * 3 - (len(first) - 1)
    assert all(p.stat().st_mtime_ns == stamp[p] for p in first[1:])
    assert sf.info(str(victim)).frames > 0
    assert not stale.exists()
    assert main(argv) == 0 and main(["verify", str(out)]) == 0


def test_dry_run_writes_nothing_and_estimates(corpus, tmp_path, capsys):
    wsj0, lists = corpus
    out = tmp_path / "out"
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--out", str(out), "--write", "--dry-run"]
    assert main(argv + ["--no-progress"]) == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "dry run" in text and "9 mixtures" in text


def test_pinned_download(tmp_path, monkeypatch):
    source = tmp_path / "remote.txt"
    source.write_text("01ao010a 0.01\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "meta"
    download_pinned([PinnedFile(source.as_uri(), "activlev/activlev_tr.txt", digest)], dest)
    assert (dest / "activlev/activlev_tr.txt").read_text() == source.read_text()
    with pytest.raises(PrepareError, match="checksum mismatch"):
        download_pinned([PinnedFile(source.as_uri(), "other.txt", "0" * 64)], dest)
    assert not (dest / "other.txt").exists()
    with pytest.raises(PrepareError, match="no pinned checksum"):
        download_pinned([PinnedFile(source.as_uri(), "third.txt", None)], dest)
    download_pinned([PinnedFile(source.as_uri(), "third.txt", None)], dest, trust_unpinned=True)
    assert (dest / "third.txt").is_file()


def test_pyav_decoder_reads_sphere(tmp_path):
    """The FFmpeg (PyAV) fallback on a plain SPHERE file; Shorten payloads need real WSJ0 data."""
    pytest.importorskip("av")
    from data_prep.wsj0 import _decode_pyav

    samples = speech_like(np.random.default_rng(1), 5000)
    write_sphere(tmp_path / "a.sph", samples)
    np.testing.assert_array_equal(_decode_pyav(tmp_path / "a.sph"), samples)


def test_disk_space_is_checked_before_writing(corpus, tmp_path, monkeypatch, capsys):
    wsj0, lists = corpus
    out = tmp_path / "out"
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--out", str(out), "--write", "--no-progress"]
    assert main(argv) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert not list(out.rglob("*.wav"))


def test_scaling_mat_can_be_left_out(corpus, tmp_path):
    wsj0, lists = corpus
    out = tmp_path / "out"
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--splits", "tt", "--out", str(out), "--write"]
    assert main(argv + ["--no-progress", "--no-official-extras"]) == 0
    split = out / "2speakers" / "wav8k" / "min" / "tt"
    assert len(list((split / "mix").glob("*.wav"))) == 3 and not (split / "scaling.mat").exists()


def test_scaling_mat_comes_from_the_writing_pass(corpus, tmp_path, monkeypatch):
    """Each row is rendered once: scaling.mat's peak gains are recorded while the audio is
    written, equal to a fresh render's 0.9 / peak; on a resumed run the rows already
    complete are rendered again for it, giving the same file."""
    import sepkit.data.mixtures as mixtures

    wsj0, lists = corpus
    out = tmp_path / "out"
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--splits", "tt", "--out", str(out)]
    argv += ["--write", "--no-progress"]
    real = mixtures.render_signal
    calls = []

    def counting_render_signal(*args, **kwargs):
        calls.append(args[0].path)
        return real(*args, **kwargs)

    monkeypatch.setattr(mixtures, "render_signal", counting_render_signal)
    assert main(argv) == 0
    monkeypatch.undo()
    split = out / "2speakers" / "wav8k" / "min" / "tt"
    specs = read_table(split.parent / "tt.csv")
    assert len(calls) == sum(spec.n_src for spec in specs)  # one render per row
    order = {
        spec.mixture_id: spec for spec in wsj0mix.build_plans(wsj0, lists, out, [2], [8000], ["min"], ["tt"])[0].specs
    }
    first = loadmat(str(split / "scaling.mat"))
    expected = np.array([[wsj0mix.peak_gain(spec)] for spec in order.values()])
    np.testing.assert_array_equal(first["scaling16bit_8k"], expected)
    # resumed: one file rewritten, the other rows' peaks come from a second render
    (split / "scaling.mat").unlink()
    next(iter((split / "s1").glob("*.wav"))).unlink()
    assert main(argv) == 0
    again = loadmat(str(split / "scaling.mat"))
    for key in ("scaling_8k", "scaling16bit_8k"):
        np.testing.assert_array_equal(again[key], first[key])
