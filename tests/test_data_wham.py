"""WHAM! and WHAMR! recipes on a fabricated WSJ0 + wham_noise (scaling npz, binaural
float noise) + WHAMR room parameters, against float64 reimplementations of
create_wham_from_scratch.py (WHAM!: bit-exact float32; WHAMR!: same formula with a
direct-form convolution, to float tolerance) and checks of the simulated rooms."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import make_merl_lists, make_reverb_params, make_wham_noise, make_wsj0
from scipy.signal import resample_poly

from data_prep.cli import main
from sepkit.data.mixtures import read_table, render


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32768) / 32768


def reference_wham(wsj0: Path, noise_file: Path, paths, scaling, index: int, rate: int, mode: str) -> dict:
    tag = f"{rate // 1000}k"
    speech = []
    for i, p in enumerate(paths):
        x, fs = sf.read(str(wsj0 / p), dtype="float64")
        if rate != fs:
            x = resample_poly(x, rate, fs)
        speech.append(
            _quantize(x * scaling[f"scaling_wsjmix_{tag}_{mode}"][index][i])
            * scaling[f"scaling_wham_speech_{tag}_{mode}"][index]
        )
    noise = sf.read(str(noise_file), dtype="float64")[0][:, 0]
    if rate != 16000:
        noise = resample_poly(noise, rate, 16000)
    noise = noise * scaling[f"scaling_wham_noise_{tag}_{mode}"][index]
    start = int(scaling["speech_start_sample_16k"][index]) * rate // 16000
    if mode == "min":
        n = min(map(len, speech))
        speech = [s[:n] for s in speech]
        noise = noise[start : start + n]
    else:
        n = max(map(len, speech))
        placed = []
        for s in speech:
            full = np.zeros(len(noise))
            full[start : start + len(s)] = s
            placed.append(full)
        speech = placed
    s1, s2 = speech
    return {
        "s1": s1,
        "s2": s2,
        "noise": noise,
        "mix_clean": s1 + s2,
        "mix_single": s1 + noise,
        "mix_both": s1 + s2 + noise,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("wham")
    wsj0 = root / "corpus"
    paths = make_wsj0(wsj0)
    lists = root / "lists"
    make_merl_lists(lists, paths, 2, count=3)
    wham = root / "wham_noise"
    make_wham_noise(wham, wsj0, lists)
    reverb = root / "whamr_data"
    make_reverb_params(reverb, lists)
    return root, wsj0, lists, wham, reverb


def _pairs(lists: Path, split: str) -> dict[str, list[str]]:
    with open(lists / f"mix_2_spk_filenames_{split}.csv", newline="") as handle:
        return {Path(r["output_filename"]).stem: [r["s1_path"], r["s2_path"]] for r in csv.DictReader(handle)}


def test_wham_matches_reference_and_tasks(corpus):
    root, wsj0, lists, wham, _ = corpus
    out = root / "out_wham"
    argv = ["wham", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists)]
    argv += ["--sample-rate", "8000", "16000", "--mode", "min", "max", "--out", str(out), "--write", "--no-progress"]
    assert main(argv) == 0
    checked = 0
    for split in ("tr", "cv", "tt"):
        scaling = dict(np.load(wham / "metadata" / f"scaling_{split}.npz"))
        pairs = _pairs(lists, split)
        for rate in (8000, 16000):
            for mode in ("min", "max"):
                base = out / f"wav{rate // 1000}k" / mode
                tables = {
                    t: {s.mixture_id: s for s in read_table(base / f"{split}_{t}.csv")}
                    for t in ("sep_clean", "sep_noisy", "enh_single", "enh_both")
                }
                for index, utt in enumerate(scaling["utterance_id"]):
                    name = Path(str(utt)).stem
                    want = reference_wham(wsj0, wham / split / f"{name}.wav", pairs[name], scaling, index, rate, mode)
                    for key, expected in want.items():
                        got, got_rate = sf.read(str(base / split / key / f"{name}.wav"), dtype="float32")
                        assert got_rate == rate
                        np.testing.assert_array_equal(
                            got, expected.astype(np.float32), err_msg=f"{split} {rate} {mode} {key}"
                        )
                    for task, (mix_key, target_keys) in {
                        "sep_clean": ("mix_clean", ["s1", "s2"]),
                        "sep_noisy": ("mix_both", ["s1", "s2"]),
                        "enh_single": ("mix_single", ["s1"]),
                        "enh_both": ("mix_both", ["mix_clean"]),
                    }.items():
                        mix, targets = render(tables[task][name])
                        np.testing.assert_array_equal(mix, want[mix_key].astype(np.float32))
                        np.testing.assert_array_equal(
                            targets, np.stack([want[k] for k in target_keys]).astype(np.float32)
                        )
                    checked += 1
    assert checked == 3 * 2 * 2 * 3
    # max files are longer than min ones: noise-only lead-in and tail
    spec_min = read_table(out / "wav8k/min/tt_sep_clean.csv")[0]
    spec_max = read_table(out / "wav8k/max/tt_sep_clean.csv")[0]
    assert spec_max.length > spec_min.length
    assert main(["verify", str(out)]) == 0


def test_missing_scaling_file_is_named(corpus, tmp_path, capsys):
    root, wsj0, lists, wham, _ = corpus
    empty_noise = tmp_path / "wham_noise"
    (empty_noise / "tr").mkdir(parents=True)
    argv = [
        "wham",
        "--wsj0",
        str(wsj0),
        "--wham-noise",
        str(empty_noise),
        "--lists",
        str(lists),
        "--splits",
        "tr",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "scaling_tr.npz" in capsys.readouterr().err


def test_whamr_reverberant_rendering(corpus):
    root, wsj0, lists, wham, reverb = corpus
    out = root / "out_whamr"
    argv = [
        "whamr",
        "--wsj0",
        str(wsj0),
        "--wham-noise",
        str(wham),
        "--lists",
        str(lists),
        "--reverb-params",
        str(reverb),
    ]
    argv += [
        "--splits",
        "tt",
        "--sample-rate",
        "8000",
        "16000",
        "--mode",
        "min",
        "max",
        "--out",
        str(out),
        "--write",
        "--no-progress",
    ]
    assert main(argv) == 0
    scaling = dict(np.load(wham / "metadata" / "scaling_tt.npz"))
    pairs = _pairs(lists, "tt")
    with open(reverb / "reverb_params_tt.csv", newline="") as handle:
        params = {
            Path(r["utterance_id"]).stem: {k: float(v) for k, v in r.items() if k != "utterance_id"}
            for r in csv.DictReader(handle)
        }
    for rate, mode in ((r, m) for r in (8000, 16000) for m in ("min", "max")):
        base = out / f"wav{rate // 1000}k" / mode
        table = {s.mixture_id: s for s in read_table(base / "tt_sep_noisy_reverb.csv")}
        for index, utt in enumerate(scaling["utterance_id"]):
            name = Path(str(utt)).stem
            noise_file = wham / "tt" / f"{name}.wav"
            dry = reference_wham(wsj0, noise_file, pairs[name], scaling, index, rate, mode)
            noise16 = sf.info(str(noise_file)).frames
            start = int(scaling["speech_start_sample_16k"][index]) * rate // 16000
            # the WHAM! dry sources of this rate and mode, whole utterances
            tag = f"{rate // 1000}k"
            whole_dry = []
            for i, p in enumerate(pairs[name]):
                x = resample_poly(sf.read(str(wsj0 / p), dtype="float64")[0], rate, 16000)
                whole_dry.append(
                    _quantize(x * scaling[f"scaling_wsjmix_{tag}_{mode}"][index][i])
                    * scaling[f"scaling_wham_speech_{tag}_{mode}"][index]
                )
            outputs = {}
            for i, p in enumerate(pairs[name]):
                x16 = sf.read(str(wsj0 / p), dtype="float64")[0]
                x16 = np.pad(x16, (0, noise16 - len(x16)))
                rirs = {
                    k: np.load(out / "rirs" / "pra031_legacy" / "tt" / f"{name}_s{i + 1}_{k}.npy")
                    for k in ("reverb", "anechoic")
                }
                wet = {k: resample_poly(np.convolve(x16, h), rate, 16000) for k, h in rirs.items()}
                gain = math.sqrt(np.sum(whole_dry[i] ** 2) / np.sum(wet["anechoic"] ** 2))
                n = len(dry["s1"])
                for k, w in wet.items():
                    w = w * gain
                    if mode == "min":
                        placed = w[:n]
                    else:
                        placed = np.zeros(n)
                        placed[start:] = w[: n - start]
                    outputs[f"s{i + 1}_{k}"] = placed
            for k in ("reverb", "anechoic"):
                outputs[f"mix_both_{k}"] = outputs[f"s1_{k}"] + outputs[f"s2_{k}"] + dry["noise"]
            for key, expected in outputs.items():
                got = sf.read(str(base / "tt" / key / f"{name}.wav"), dtype="float32")[0]
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{rate} {mode} {key}")
            # the anechoic targets keep the dry energy of WHAM! (whole signals)
            mix, targets = render(table[name])
            np.testing.assert_array_equal(
                mix, sf.read(str(base / "tt" / "mix_both_reverb" / f"{name}.wav"), dtype="float32")[0]
            )
            np.testing.assert_array_equal(
                targets[0], sf.read(str(base / "tt" / "s1_anechoic" / f"{name}.wav"), dtype="float32")[0]
            )
            # rooms: the direct path arrives at distance / c (0.3.1 centres its sinc on the delay itself)
            room = params[name]
            distance = math.dist(
                [room["s1_x"], room["s1_y"], room["s1_z"]], [room["micL_x"], room["micL_y"], room["mic_z"]]
            )
            anechoic = np.load(out / "rirs" / "pra031_legacy" / "tt" / f"{name}_s1_anechoic.npy")
            assert abs(int(np.argmax(np.abs(anechoic))) - distance / 343.0 * 16000) <= 1
            assert len(anechoic) == math.ceil(room["T60"] * 16000)


@pytest.mark.parametrize("engine", ["pra031", "pyroomacoustics"])
def test_whamr_t60_is_achieved(engine):
    if engine == "pyroomacoustics":
        pytest.importorskip("pyroomacoustics")
    from data_prep.whamr import energy_absorption, room_rirs, sabine_t60

    room = dict(room_x=4.5, room_y=4.2, room_z=3.1, micL_x=2.2, micL_y=2.1, micR_x=2.3, micR_y=2.1, mic_z=1.2)
    room.update(s1_x=3.0, s1_y=2.5, s1_z=1.5, s2_x=1.5, s2_y=1.5, s2_z=1.5, T60=0.3)
    dims = [4.5, 4.2, 3.1]
    sabine = room_rirs(room, "sabine", engine)
    assert abs(sabine["t60_measured"] - 0.3) / 0.3 < 0.25
    legacy = room_rirs(room, "legacy", engine)
    # pyroomacoustics 0.3.1 read Sabine's coefficient as an amplitude factor: shorter rooms
    assert legacy["t60_expected"] == pytest.approx(sabine_t60(dims, energy_absorption(dims, 0.3, "legacy")))
    assert legacy["t60_expected"] < 0.25
    assert abs(legacy["t60_measured"] - legacy["t60_expected"]) / legacy["t60_expected"] < 0.25


def test_wham_writes_without_a_disk_flush_or_a_mkdir_per_file(corpus, tmp_path, monkeypatch):
    """Writing hands libsndfile an open file, never a path: given a path, libsndfile forces
    each file to the disk when it closes it (fsync, milliseconds per file: most of WHAM!'s
    writing time on a busy disk). Each output folder is created once, not once per file.
    The bytes are those of a write to the path (PCM_16 here; a float file written through a
    path would carry libsndfile's time-stamped PEAK chunk, which sepkit leaves out)."""
    import sepkit.audio as audio

    root, wsj0, lists, wham, _ = corpus
    encoded_into = []
    made = []
    real_open, real_mkdir = sf.SoundFile, Path.mkdir

    def recording_open(file, mode="r", *args, **kwargs):
        if "w" in mode:
            encoded_into.append(file)
        return real_open(file, mode, *args, **kwargs)

    def recording_mkdir(self, *args, **kwargs):
        made.append(Path(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(audio.sf, "SoundFile", recording_open)
    monkeypatch.setattr(Path, "mkdir", recording_mkdir)
    out = tmp_path / "out"
    argv = ["wham", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists), "--splits", "tt"]
    argv += ["--sample-rate", "8000", "--mode", "min", "--out", str(out), "--write", "--no-progress"]
    assert main(argv) == 0
    monkeypatch.undo()
    written = sorted(out.rglob("*.wav"))
    assert len(written) == 3 * 6 and len(encoded_into) == len(written)
    assert not any(isinstance(target, (str, Path)) for target in encoded_into)
    folders = {path.parent for path in written}
    assert all(made.count(folder) <= 1 for folder in folders), sorted(map(str, made))

    samples = np.round(np.sin(np.arange(4000) / 7.0) * 20000).astype(np.int16)
    audio.write_audio_atomic(tmp_path / "atomic.wav", samples, 8000, subtype="PCM_16")
    sf.write(str(tmp_path / "direct.wav"), samples, 8000, subtype="PCM_16")
    assert (tmp_path / "atomic.wav").read_bytes() == (tmp_path / "direct.wav").read_bytes()


def test_a_failed_write_stops_prepare_and_the_rerun_completes(corpus, tmp_path, monkeypatch):
    """Files are written by a second thread while the next rows render: a write that fails
    (here the disk filling up at the 8th file) still stops the run with its error, leaves
    no temp file and no partial output, and a second run writes exactly what is missing."""
    import sepkit.audio as audio

    root, wsj0, lists, wham, _ = corpus
    real_write = audio.write_audio_atomic
    calls = []

    def filling_disk(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 8:
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(audio, "write_audio_atomic", filling_disk)
    out = tmp_path / "out"
    argv = ["wham", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists), "--splits", "tt"]
    argv += ["--sample-rate", "8000", "--mode", "min", "--out", str(out), "--write", "--no-progress"]
    with pytest.raises(OSError, match="No space left on device"):
        main(argv)
    monkeypatch.undo()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    first = sorted(out.rglob("*.wav"))
    assert 7 <= len(first) < 18  # the ones before the failure, perhaps a few queued after it
    assert all(sf.info(str(path)).frames > 0 for path in first)
    reference = tmp_path / "reference"
    assert main([*argv[:-4], "--out", str(reference), "--write", "--no-progress"]) == 0
    assert main(argv) == 0
    files = sorted(out.rglob("*.wav"))
    assert len(files) == 18
    for path in files:
        assert path.read_bytes() == (reference / path.relative_to(out)).read_bytes(), path


def test_a_group_is_reported_done_only_when_every_file_of_it_is_written(monkeypatch):
    """The background writer finishes writes in order, and a group (the rows of one
    mixture) counts as written, for the progress bar and the side-file values, only when
    all of its writes succeeded: here the first of group 2's two writes fails while the
    second succeeds, and only group 1 is reported before the error is raised."""
    from concurrent.futures import wait

    import data_prep.common as common

    def slow_finish(group, row_hook, write):
        writes = []
        for rendered in group:
            write(rendered)
            writes.append(write.last)
        wait(writes)  # rendering outlasts the writes: they are all done when checked
        return common.GroupResult(len(group), [], [])

    def failing_write(rendered):
        if rendered == "g2-a":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(common, "_finish_group", slow_finish)
    monkeypatch.setattr(common, "_write_rendered", failing_write)
    reported = []
    with pytest.raises(OSError, match="No space left"):
        for result in common._render_while_writing([["g1-a", "g1-b"], ["g2-a", "g2-b"], ["g3-a"]], None):
            reported.append(result.rows)
    assert reported == [2]
