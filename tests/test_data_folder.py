"""Bring-your-own-corpus recipe: speaker-disjoint splits, the documented gain law
against a float64 reference, written files equal to on-the-fly rendering."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
from fixtures.fake_corpora import make_speaker_folders
from scipy.signal import resample_poly

from data_prep.cli import main
from sepkit.data.mixtures import read_table, render


def test_folder_recipe(tmp_path):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=8, per_speaker=3)
    out = tmp_path / "out"
    argv = ["folder", "--sources", str(sources), "--n-src", "2", "--splits", "train", "valid", "test"]
    argv += ["--fractions", "0.5", "0.25", "0.25", "--n-mixtures", "6", "2", "2", "--sample-rate", "8000"]
    argv += ["--mode", "min", "max", "--out", str(out), "--write", "--no-progress"]
    assert main(argv) == 0
    speakers_by_split = {}
    for split, count in (("train", 6), ("valid", 2), ("test", 2)):
        for mode in ("min", "max"):
            base = out / "2speakers" / "wav8000" / mode
            specs = read_table(base / f"{split}.csv")
            assert len(specs) == count
            for spec in specs:
                spk = [spec.extra["s1_speaker"], spec.extra["s2_speaker"]]
                assert spk[0] != spk[1]
                speakers_by_split.setdefault(split, set()).update(spk)
                # gain law: 10**(level/20) / rms(whole file), level in [-2.5, 2.5] dB and in the name
                levels = [float(t) for t in re.findall(r"_(-?\d+\.\d{4})(?=_|$)", spec.mixture_id)]
                assert len(levels) == 2
                sigs = []
                for src, level in zip(spec.sources, levels):
                    x, fs = sf.read(src.path, dtype="float64")
                    rms = np.sqrt(np.mean(x**2))
                    assert abs(level) <= 2.5
                    assert abs(20 * np.log10(src.gain * rms) - level) < 1e-3
                    assert Path(src.path).parent.name == spk[len(sigs)]
                    sigs.append(resample_poly(x, 8000, fs) * src.gain)
                n = min(map(len, sigs)) if mode == "min" else max(map(len, sigs))
                sigs = [s[:n] if mode == "min" else np.pad(s, (0, n - len(s))) for s in sigs]
                mix = sigs[0] + sigs[1]
                g = 0.9 / max(np.abs(mix).max(), *(np.abs(s).max() for s in sigs))
                want = [np.clip(np.round(x * g * 32768), -32768, 32767).astype(np.int16) for x in (mix, *sigs)]
                got = [
                    sf.read(str(base / split / f / f"{spec.mixture_id}.wav"), dtype="int16")[0]
                    for f in ("mix", "s1", "s2")
                ]
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b)
                rendered_mix, rendered_targets = render(spec)
                np.testing.assert_array_equal(rendered_mix, got[0].astype(np.float32) / 32768)
                np.testing.assert_array_equal(rendered_targets[1], got[2].astype(np.float32) / 32768)
    assert not speakers_by_split["train"] & speakers_by_split["valid"]
    assert not speakers_by_split["train"] & speakers_by_split["test"]
    assert not speakers_by_split["valid"] & speakers_by_split["test"]
    assert main(["verify", str(out)]) == 0


def test_too_few_speakers_for_a_split(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=3, per_speaker=1)
    argv = ["folder", "--sources", str(sources), "--n-src", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "distinct speakers" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["folder", "--sources", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no speaker sub-folders" in capsys.readouterr().err


def test_rms_pass_reports_progress_as_plain_lines_in_a_log(tmp_path, capsys):
    """stderr is not a terminal here (as when redirected to a log file): the RMS pass
    prints plain ``<phase>: done/total (pct%)`` lines, one per split at the end, and
    nothing with --no-progress."""
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=8, per_speaker=3)
    out = tmp_path / "out"
    argv = ["folder", "--sources", str(sources), "--splits", "train", "test", "--fractions", "0.5", "0.5"]
    argv += ["--n-mixtures", "5", "3", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    for split in ("train", "test"):
        specs = read_table(out / "2speakers" / "wav8000" / "min" / f"{split}.csv")
        files = len({src.path for spec in specs for src in spec.sources})
        assert f"RMS levels ({split}): {files}/{files} (100%)\n" in err
    assert main(argv + ["--no-progress"]) == 0
    assert "RMS levels" not in capsys.readouterr().err


def test_progress_lines_are_periodic(capsys):
    from data_prep.progress import track

    assert list(track(range(4), 4, "phase", interval=0.0)) == [0, 1, 2, 3]
    assert capsys.readouterr().err.splitlines() == [
        "phase: 1/4 (25%)",
        "phase: 2/4 (50%)",
        "phase: 3/4 (75%)",
        "phase: 4/4 (100%)",
    ]


def _speakers_in_tables(base: Path, splits: tuple[str, ...]) -> dict[str, set[str]]:
    """The speakers each split's mixtures actually draw, read back from the written tables."""
    found = {}
    for split in splits:
        for spec in read_table(base / f"{split}.csv"):
            found.setdefault(split, set()).update(spec.extra[f"s{i + 1}_speaker"] for i in range(spec.n_src))
    return found


def test_folder_recipe_takes_the_speakers_of_each_split_by_name(tmp_path):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=8, per_speaker=2)  # spk00 .. spk07
    common = ["folder", "--sources", str(sources), "--n-mixtures", "30", "6", "6", "--no-progress"]
    named = ["--speakers", "valid=spk01,spk06", "test=spk02", "test=spk05"]  # a split may be named twice
    assert main([*common, *named, "--out", str(tmp_path / "a")]) == 0
    base = tmp_path / "a" / "2speakers" / "wav8000" / "min"
    found = _speakers_in_tables(base, ("train", "valid", "test"))
    assert found["valid"] == {"spk01", "spk06"} and found["test"] == {"spk02", "spk05"}
    # the unnamed split has every other speaker (30 mixtures of 2 out of 4 draw them all)
    assert found["train"] == {"spk00", "spk03", "spk04", "spk07"}

    # the same choice from a file, with a comment and a blank line
    listing = tmp_path / "speakers.txt"
    listing.write_text("# split speaker\nvalid spk01\nvalid,spk06\n\ntest spk02\ntest\tspk05  # held out\n")
    assert main([*common, "--speakers-file", str(listing), "--out", str(tmp_path / "b")]) == 0
    for split in ("train", "valid", "test"):
        file_base = tmp_path / "b" / "2speakers" / "wav8000" / "min"
        assert (file_base / f"{split}.csv").read_bytes() == (base / f"{split}.csv").read_bytes()

    # every split named: each holds exactly its list, the rest of the folders are unused
    listing.write_text("train spk00\ntrain spk01\ntrain spk02\nvalid spk03\nvalid spk04\ntest spk05\ntest spk06\n")
    assert main([*common, "--speakers-file", str(listing), "--out", str(tmp_path / "c")]) == 0
    found = _speakers_in_tables(tmp_path / "c" / "2speakers" / "wav8000" / "min", ("train", "valid", "test"))
    assert found == {"train": {"spk00", "spk01", "spk02"}, "valid": {"spk03", "spk04"}, "test": {"spk05", "spk06"}}


def test_folder_recipe_refuses_bad_speaker_names_in_one_line(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=1)
    common = ["folder", "--sources", str(sources), "--n-mixtures", "2", "1", "1", "--out", str(tmp_path / "o")]
    cases = [
        (["--speakers", "test=spk99"], "speaker 'spk99' named for split test has no folder under --sources"),
        (["--speakers", "test=spk01", "valid=spk01"], "speaker 'spk01' is named for both split test and split valid"),
        (
            ["--speakers", "eval=spk01"],
            "speakers named for split 'eval', which is not one of --splits train valid test",
        ),
        (["--speakers", "test"], "--speakers 'test': expected SPLIT=SPEAKER[,SPEAKER...]"),
        (["--speakers-file", str(tmp_path / "missing.txt")], "missing.txt: cannot read the speaker file"),
    ]
    for flags, message in cases:
        assert main([*common, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
