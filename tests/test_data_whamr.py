"""WHAMR! against the official generator's rules: the pyroomacoustics 0.3.1 room responses
(data_prep.image_source) against a per-image float64 loop written here from 0.3.1's
formula, the energy-matching gain against whamr_scripts' whole-utterance rule on sources
of different lengths, and the reverberant-target tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import make_merl_lists, make_reverb_params, make_wham_noise, make_wsj0
from scipy.signal import fftconvolve

from data_prep.cli import main
from data_prep.common import execute
from data_prep.image_source import max_reflection_order, room_response, sabine_absorption
from data_prep.whamr import build_plans, rir_directory
from sepkit.audio import convolve
from sepkit.data.mixtures import read_table, render, render_outputs

C = 343.0
FS = 16000


def reference_rir(room, source, mic, absorption, order, fs=FS, max_length=None) -> np.ndarray:
    """pyroomacoustics 0.3.1's shoebox response, one image and one tap at a time.

    0.3.1 stores room, source, image positions and attenuations in float32 and rounds
    ``fs t`` and the sinc-table offset to float32; those roundings are part of its
    formula and are applied here with scalar float32 arithmetic. The sinc table (1/20
    sample steps on [-41, 41], linear interpolation) and the Hann window are evaluated
    with ``math``; everything else is float64."""
    f32 = np.float32
    room32 = [f32(v) for v in room]
    src32 = [f32(v) for v in source]
    reflect = f32(1.0 - float(f32(absorption)))
    # powers (1 - a)^k, each product rounded to float32 as 0.3.1's table held them
    powers = [f32(1.0)]
    for _ in range(order):
        powers.append(f32(float(reflect) * float(powers[-1])))

    def sinc(x: float) -> float:
        return 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)

    def table(j: int) -> float:
        return sinc(-41 + j / 20)

    window = [0.5 - 0.5 * math.cos(2 * math.pi * k / 80) for k in range(81)]
    images = []
    for nz in range(-order, order + 1):
        for ny in range(-(order - abs(nz)), order - abs(nz) + 1):
            rest = order - abs(nz) - abs(ny)
            for nx in range(-rest, rest + 1):
                position, gain = [], f32(1.0)
                for n, size, s in zip((nx, ny, nz), room32, src32):
                    # an odd number of reflections mirrors the source inside its cell
                    inside = f32(size - s) if n % 2 else s
                    position.append(float(f32(f32(n) * size) + inside))
                    hits_low = (abs(n) + (n < 0)) // 2
                    hits_high = (abs(n) + (n > 0)) // 2
                    gain = f32(gain * powers[hits_low])
                    gain = f32(gain * powers[hits_high])
                d = math.sqrt(sum((p - m) ** 2 for p, m in zip(position, mic)))
                images.append((d / C, float(gain) / (4 * math.pi * d)))
    length = math.ceil(1.05 * max(t for t, _ in images) * fs) + 81
    if max_length is not None:
        length = min(length, max_length)
    h = np.zeros(length + 200)
    for t, amplitude in images:
        sample = float(f32(fs * t))
        whole = math.floor(sample)
        offset = float(f32((1.0 - (sample - whole)) * 20))
        start = math.floor(offset)
        slope = offset - start
        for k in range(81):
            index = whole - 40 + k
            if index >= len(h):
                break
            j = start + 20 * k
            h[index] += amplitude * window[k] * (table(j) + slope * (table(j + 1) - table(j)))
    return h[:length]


ROOM = [4.1, 4.6, 3.05]
SOURCE = [1.3, 3.2, 1.55]
MIC = [2.6, 2.2, 1.25]


def test_room_response_matches_031_formula():
    t60 = 0.15
    absorption = sabine_absorption(ROOM, t60)
    order = max_reflection_order(ROOM, t60)
    assert absorption < 1 and order == math.ceil(t60 * C / 3.05)
    length = math.ceil(t60 * FS)
    got = room_response(ROOM, SOURCE, MIC, absorption, order, FS, length)
    expected = reference_rir(ROOM, SOURCE, MIC, absorption, order, max_length=length)
    assert got.shape == (length,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # no high-pass filter: the reflections keep their low-frequency build-up (all positive here)
    assert got.sum() > 0.5 * np.abs(got).sum()
    # direct path: amplitude 1 / (4 pi d) at delay d / c (the sinc peak is the tap at floor(fs t))
    distance = math.dist(SOURCE, MIC)
    anechoic = room_response(ROOM, SOURCE, MIC, absorption, 0, FS)
    assert len(anechoic) == math.ceil(1.05 * distance / C * FS) + 81
    peak = int(np.argmax(np.abs(anechoic)))
    assert peak == math.floor(distance / C * FS) or peak == math.ceil(distance / C * FS)
    # the windowed sinc sums to about one whatever the fraction: the taps carry 1 / (4 pi d)
    np.testing.assert_allclose(anechoic.sum(), 1 / (4 * math.pi * distance), rtol=0.02)
    np.testing.assert_allclose(anechoic, reference_rir(ROOM, SOURCE, MIC, absorption, 0), rtol=0, atol=1e-15)


def test_room_response_with_absorption_above_one_flips_reflections():
    # a large room with a very short T60: Sabine's absorption exceeds 1, 0.3.1 scales each
    # reflection by 1 - a < 0
    room, source, mic, t60 = [8.0, 9.0, 3.5], [3.0, 4.0, 1.7], [4.1, 4.6, 1.2], 0.12
    absorption = sabine_absorption(room, t60)
    assert absorption > 1
    order = max_reflection_order(room, t60)
    got = room_response(room, source, mic, absorption, order, FS, math.ceil(t60 * FS))
    expected = reference_rir(room, source, mic, absorption, order, max_length=math.ceil(t60 * FS))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # the floor reflection (one bounce, image at z = -z_source) arrives inverted
    floor_image = [source[0], source[1], -source[2]]
    arrival = math.dist(floor_image, mic) / C * FS
    direct = math.dist(source, mic) / C * FS
    assert arrival - direct > 10
    assert got[round(arrival)] < 0 < got[round(direct)]


def test_room_response_refuses_positions_outside():
    with pytest.raises(ValueError, match="outside the room"):
        room_response(ROOM, [5.0, 1.0, 1.0], MIC, 0.3, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("whamr")
    wsj0 = root / "corpus"
    paths = make_wsj0(wsj0)
    lists = root / "lists"
    make_merl_lists(lists, paths, 2, count=3)
    wham = root / "wham_noise"
    make_wham_noise(wham, wsj0, lists)
    reverb = root / "whamr_data"
    make_reverb_params(reverb, lists)
    return root, wsj0, lists, wham, reverb


def _official_gain(wsj0: Path, path: str, anechoic_rir: np.ndarray, noise_frames: int, wsjmix: float, speech: float):
    """whamr_scripts at 16 kHz: sqrt(sum(s^2) / sum(anechoic^2)) with s the WHAM! source of
    the WHOLE utterance (read, scaled, quantised, scaled) and anechoic the whole convolution
    of the unscaled 16 kHz utterance padded to the noise length."""
    x, _ = sf.read(str(wsj0 / path), dtype="float64")
    dry = np.round(x * wsjmix * 32768) / 32768 * speech
    anechoic = fftconvolve(np.pad(x, (0, noise_frames - len(x))), anechoic_rir)
    return math.sqrt(np.sum(dry**2) / np.sum(anechoic**2))


def test_16k_min_gain_measures_whole_utterance(corpus):
    root, wsj0, lists, wham, reverb = corpus
    out = root / "out_gain"
    plans = build_plans(wsj0, wham, lists, reverb, out, [16000], ["min"], splits=["tt"], progress=False)
    execute(plans, write=False, progress=False)  # the gains are computed where the rows are written
    (table,) = [path for path in plans[0].tables if path.name == "tt_sep_noisy_reverb.csv"]
    rows = read_table(table)
    scaling = dict(np.load(wham / "metadata" / "scaling_tt.npz"))
    names = [Path(str(u)).stem for u in scaling["utterance_id"]]
    pairs = {}
    for line in (lists / "mix_2_spk_filenames_tt.csv").read_text().splitlines()[1:]:
        name, s1, s2 = line.split(",")
        pairs[Path(name).stem] = [s1, s2]
    rir_dir = rir_directory(out, "tt", "pra031", "legacy")
    unequal = 0
    assert len(rows) == len(plans[0].specs)
    for spec in rows:
        index = names.index(spec.mixture_id)
        noise_frames = sf.info(str(wham / "tt" / f"{spec.mixture_id}.wav")).frames
        lengths = [sf.info(str(wsj0 / p)).frames for p in pairs[spec.mixture_id]]
        unequal += lengths[0] != lengths[1]
        assert spec.length == min(lengths)
        for i, source in enumerate(spec.sources):
            rir = np.load(rir_dir / f"{spec.mixture_id}_s{i + 1}_anechoic.npy")
            expected = _official_gain(
                wsj0,
                pairs[spec.mixture_id][i],
                rir,
                noise_frames,
                scaling["scaling_wsjmix_16k_min"][index][i],
                scaling["scaling_wham_speech_16k_min"][index],
            )
            assert source.gain == pytest.approx(expected, rel=1e-12), (spec.mixture_id, i, lengths)
    # the longer source of each pair is the one the cut measurement got wrong
    assert unequal == len(rows)


def test_reverberant_targets_keep_the_reverberation(corpus, capsys):
    root, wsj0, lists, wham, reverb = corpus
    out = root / "out_targets"
    argv = ["whamr", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists)]
    argv += ["--reverb-params", str(reverb), "--splits", "tt", "--sample-rate", "8000", "--mode", "min"]
    argv += ["--out", str(out), "--reverberant-targets"]
    assert main(argv) == 0
    # stderr is not a terminal here (as with a log file): progress comes as whole lines
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "WHAMR! rooms tt: 3/3 rooms (100%)" in err and "WHAMR! gains: 3/3 (100%)" in err
    base = out / "wav8k" / "min"
    noisy = read_table(base / "tt_sep_noisy_reverb.csv")
    clean = read_table(base / "tt_sep_clean_anechoic.csv")
    assert all(row.target_names == ["s1", "s2"] for row in noisy)
    assert all(row.target_names == ["s1_anechoic", "s2_anechoic"] for row in clean)
    row = noisy[0]
    mixture, targets = render(row)
    outputs = render_outputs(row)
    np.testing.assert_array_equal(targets[0], outputs["s1"].astype(np.float32))
    np.testing.assert_array_equal(mixture, outputs["mix_both"].astype(np.float32))
    # reverberant and anechoic targets differ: the tails are kept
    assert np.abs(outputs["s1"] - outputs["s1_anechoic"]).max() > 1e-3 * np.abs(outputs["s1_anechoic"]).max()


def test_source_outside_room_is_a_one_line_error(corpus, tmp_path, capsys):
    root, wsj0, lists, wham, reverb = corpus
    bad = tmp_path / "whamr_data"
    bad.mkdir()
    lines = (reverb / "reverb_params_tt.csv").read_text().splitlines()
    header = lines[0].split(",")
    first = lines[1].split(",")
    first[header.index("s1_x")] = str(float(first[header.index("room_x")]) + 1.0)
    (bad / "reverb_params_tt.csv").write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    argv = ["whamr", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists)]
    argv += ["--reverb-params", str(bad), "--splits", "tt", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "reverb_params_tt.csv" in err and first[0].removesuffix(".wav") in err and "outside the room" in err
    assert len(err.splitlines()) == 1


def test_writing_convolves_each_source_once_per_utterance(corpus, monkeypatch, capsys):
    """The official loop convolves each source with each RIR once per utterance and derives
    every rate and length mode from that; so does writing (one convolution per source and
    RIR kind, not one per row, the energy-matching gains included), with files equal to
    the uncached renderer's, and the 'writing mixtures' progress comes as whole lines in a
    log (no carriage returns)."""
    import sepkit.data.mixtures as mixtures

    root, wsj0, lists, wham, reverb = corpus
    out = root / "out_once"
    plans = build_plans(wsj0, wham, lists, reverb, out, [8000, 16000], ["min", "max"], splits=["tt"], progress=False)
    assert len(plans) == 4
    utterances = len(plans[0].specs)
    calls = []

    def counting_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return convolve(x, h)

    monkeypatch.setattr(mixtures, "convolve", counting_convolve)
    summary = execute(plans, write=True, progress=True)
    monkeypatch.undo()
    assert summary["written"] == 4 * utterances * len(plans[0].folders)
    # 2 sources x (reverberant, anechoic) per utterance, whatever the number of rates and modes
    assert len(calls) == utterances * 2 * 2
    err = capsys.readouterr().err
    assert "\r" not in err and f"writing mixtures: {utterances}/{utterances} (100%)" not in err
    assert f"writing mixtures: {4 * utterances}/{4 * utterances} (100%)\n" in err
    for plan in plans:
        # the table rows, with the gains computed while writing
        for spec in read_table(next(iter(plan.tables))):
            expected = render_outputs(spec)
            for name, folder in plan.folders.items():
                got = sf.read(str(plan.directory / folder / f"{spec.mixture_id}.wav"), dtype="float32")[0]
                np.testing.assert_array_equal(got, expected[name].astype(np.float32), err_msg=f"{plan.name} {name}")


def test_convolve_equals_float64_reference_for_sparse_and_dense_responses():
    """sepkit.audio.convolve against numpy's direct float64 convolution: responses with a
    short non-zero span (taken directly) and long ones (FFT), at the span limit on both sides."""
    from sepkit.audio import DIRECT_CONVOLUTION_SPAN

    rng = np.random.default_rng(3)
    x = rng.standard_normal(4001)
    for first, span in ((0, 1), (0, 81), (37, 81), (500, DIRECT_CONVOLUTION_SPAN), (9, DIRECT_CONVOLUTION_SPAN + 1)):
        h = np.zeros(3000)
        h[first : first + span] = rng.standard_normal(span)
        h[first] = h[first + span - 1] = 1.0  # the span is exactly first .. first + span - 1
        got = convolve(x, h)
        expected = np.convolve(x, h)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
        if span <= DIRECT_CONVOLUTION_SPAN:  # direct: exact zeros outside the span
            assert not got[:first].any() and not got[first + len(x) + span - 1 :].any()


def test_anechoic_responses_are_convolved_directly(corpus, monkeypatch):
    """An anechoic response is one 81-tap sinc inside ceil(T60 fs) taps: writing (and the
    gains computed with it) convolves it directly over that span instead of by an FFT over the whole
    response (six times the work on a 6 s source); only the reverberant responses, two per
    utterance, go through fftconvolve. The gains still follow the official FFT rule to
    1e-12 (test_16k_min_gain_measures_whole_utterance)."""
    import scipy.signal

    root, wsj0, lists, wham, reverb = corpus
    fft_calls = []

    def counting_fftconvolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        fft_calls.append(len(h))
        return fftconvolve(x, h)

    # sepkit.audio.convolve imports fftconvolve from scipy.signal when it needs it
    monkeypatch.setattr(scipy.signal, "fftconvolve", counting_fftconvolve)
    out = root / "out_direct"
    plans = build_plans(wsj0, wham, lists, reverb, out, [8000], ["min"], splits=["tt"], progress=False)
    assert fft_calls == []
    execute(plans, write=True, progress=False)
    assert len(fft_calls) == 2 * len(plans[0].specs)


def test_plan_digest_is_the_sha256_of_every_field_of_every_row(corpus):
    """The manifest's digest of a split (what decides whether a re-run may reuse its
    folder) against the plain formulation: sha256 of the JSON of the folders and of
    ``dataclasses.asdict`` of every row, sorted by id; and it moves with any one field."""
    import dataclasses
    import hashlib
    import json

    from data_prep.common import plan_digest

    root, wsj0, lists, wham, reverb = corpus
    plans = build_plans(wsj0, wham, lists, reverb, root / "out_digest", [8000], ["max"], splits=["tt"], dry_run=True)
    (plan,) = plans
    rows = sorted((dataclasses.asdict(spec) for spec in plan.specs), key=lambda row: row["mixture_id"])
    text = json.dumps({"folders": plan.folders, "rows": rows}, sort_keys=True, default=str)
    assert plan_digest(plan) == hashlib.sha256(text.encode()).hexdigest()
    before = plan_digest(plan)
    plan.specs[-1].sources[1].offset += 1
    assert plan_digest(plan) != before
    plan.specs[-1].sources[1].offset -= 1
    plan.specs[0].extra["speaker"] = "x"
    assert plan_digest(plan) != before


def test_rerun_resumes_a_finished_whamr_folder(corpus, capsys):
    """The gains are computed while writing, so the rows the manifest identifies are the
    plan's (with placeholder gains) on every run: a second identical run finds every
    file complete instead of refusing the folder, and writes the same tables."""
    root, wsj0, lists, wham, reverb = corpus
    out = root / "out_rerun"
    argv = ["whamr", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists), "--reverb-params"]
    argv += [str(reverb), "--splits", "tt", "--sample-rate", "8000", "--mode", "min", "--out", str(out), "--write"]
    argv += ["--no-progress"]
    assert main(argv) == 0
    table = out / "wav8k" / "min" / "tt_sep_noisy_reverb.csv"
    first = table.read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    assert "files written 0, already complete 33" in capsys.readouterr().out
    assert table.read_bytes() == first
    assert all(source.gain != 1.0 for row in read_table(table) for source in row.sources)
