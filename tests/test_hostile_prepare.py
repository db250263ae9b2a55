"""Issue #13, prepare / data side: ``sepkit prepare`` and the mixture tables used the way
a careless or hostile user would. Every test runs the real recipe on fabricated corpora
(tests/fixtures/fake_corpora.py) and checks what actually happened on disk: a payload's
marker file, checksums of the whole input corpus, files outside ``--out``, leftover
processes read from /proc."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import (
    make_librimix_metadata,
    make_librispeech,
    make_merl_lists,
    make_reverb_params,
    make_speaker_folders,
    make_wham_noise,
    make_wsj0,
)

from data_prep.cli import main
from sepkit.data.datasets import MixtureTableDataset, WrittenMixtureDataset
from sepkit.data.dynamic import DynamicMixingDataset
from sepkit.data.mixtures import MixtureSpec, SourceSpec, read_table, write_table

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file below ``root`` except those below ``skip``."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (skip is None or skip not in path.parents):
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


# --- 1. code execution through the WHAM! scaling npz ---------------------------------------------------


class _Payload:
    """Unpickling this runs ``exec`` on code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def wham_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_wham")
    wsj0 = root / "wsj0"
    paths = make_wsj0(wsj0)
    lists = root / "lists"
    make_merl_lists(lists, paths, 2, count=2)
    wham = root / "wham_noise"
    make_wham_noise(wham, wsj0, lists)
    make_reverb_params(root / "reverb", lists)
    return wsj0, lists, wham


def _wham_argv(command: str, wsj0: Path, noise: Path, lists: Path, out: Path, extra: list[str]) -> list[str]:
    argv = [command, "--wsj0", str(wsj0), "--wham-noise", str(noise), "--lists", str(lists), "--splits", "tt"]
    return argv + extra + ["--out", str(out), "--no-progress"]


def _copy_noise_with_scaling(wham: Path, target: Path, **replace: np.ndarray) -> Path:
    shutil.copytree(wham, target)
    scaling = dict(np.load(wham / "metadata" / "scaling_tt.npz"))
    scaling.update(replace)
    np.savez(target / "metadata" / "scaling_tt.npz", **scaling)
    return target


@pytest.mark.parametrize("command", ["wham", "whamr"])
def test_scaling_npz_pickle_payload_is_not_run(wham_corpus, tmp_path, capsys, command):
    wsj0, lists, wham = wham_corpus
    marker = tmp_path / "payload_ran"
    ids = np.load(wham / "metadata" / "scaling_tt.npz")["utterance_id"]
    payload = np.array([_Payload(marker)] + list(ids[1:]), dtype=object)
    noise = _copy_noise_with_scaling(wham, tmp_path / "wham_noise", utterance_id=payload)
    extra = ["--reverb-params", str(wsj0.parent / "reverb")] if command == "whamr" else []
    assert main(_wham_argv(command, wsj0, noise, lists, tmp_path / "out", extra)) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "scaling_tt.npz" in err and "builtins.exec" in err
    assert len(err.strip().splitlines()) == 1


def test_scaling_npz_with_object_array_ids_still_loads(wham_corpus, tmp_path):
    # guard, not a regression test: the official files hold utterance_id as an object array of str
    wsj0, lists, wham = wham_corpus
    ids = np.load(wham / "metadata" / "scaling_tt.npz")["utterance_id"]
    noise = _copy_noise_with_scaling(wham, tmp_path / "wham_noise", utterance_id=np.array(list(ids), dtype=object))
    out = tmp_path / "out"
    assert main(_wham_argv("wham", wsj0, noise, lists, out, [])) == 0
    assert sorted(s.mixture_id for s in read_table(out / "wav8k/min/tt_sep_clean.csv")) == sorted(
        Path(i).stem for i in ids
    )


# --- 2. writes outside --out, reads outside the corpora ------------------------------------------------


@pytest.fixture()
def libri_corpus(tmp_path):
    libri = tmp_path / "LibriSpeech"
    files = make_librispeech(libri, ("dev-clean",))
    wham = tmp_path / "wham_noise"
    meta = tmp_path / "metadata"
    make_librimix_metadata(meta, wham, files, 2)
    return libri, wham, meta


def _edit_librimix_row(meta: Path, row_index: int, **values: str) -> None:
    path = meta / "Libri2Mix" / "libri2mix_dev-clean.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[row_index].update(values)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _librimix(libri: Path, wham: Path, meta: Path, out: Path) -> int:
    argv = ["librimix", "--librispeech", str(libri), "--wham-noise", str(wham), "--metadata", str(meta)]
    argv += ["--types", "mix_clean", "mix_both", "--write", "--no-progress", "--out", str(out)]
    return main(argv)


def _assert_nothing_escaped(tmp_path: Path, out: Path, before: dict[str, str]) -> None:
    assert snapshot(tmp_path, skip=out) == before  # inputs unchanged, nothing new outside --out


def test_librimix_dotdot_mixture_id_cannot_write_outside_out(libri_corpus, tmp_path, capsys):
    libri, wham, meta = libri_corpus
    out = tmp_path / "out"
    # out/Libri2Mix/wav8k/min/dev/s1/<id>.wav: six levels up is tmp_path
    _edit_librimix_row(meta, 0, mixture_ID="../" * 6 + "escaped")
    before = snapshot(tmp_path, skip=out)
    assert _librimix(libri, wham, meta, out) == 2
    _assert_nothing_escaped(tmp_path, out, before)
    err = capsys.readouterr().err
    assert "libri2mix_dev-clean.csv: row 1" in err and "mixture_ID" in err


def test_librimix_mixture_id_cannot_overwrite_the_noise_corpus(libri_corpus, tmp_path, capsys):
    libri, wham, meta = libri_corpus
    out = tmp_path / "out"
    _edit_librimix_row(meta, 1, mixture_ID="../" * 6 + "wham_noise/cv/ndev0")
    before = snapshot(tmp_path, skip=out)
    assert _librimix(libri, wham, meta, out) == 2
    _assert_nothing_escaped(tmp_path, out, before)
    assert "row 2" in capsys.readouterr().err


def test_librimix_speed_noise_path_cannot_write_into_the_noise_corpus(libri_corpus, tmp_path, capsys):
    libri, wham, meta = libri_corpus
    out = tmp_path / "out"
    # <out>/wham_noise_augmented/../../<tmp>/wham_noise/cv/ndev0sp08.wav is inside the input corpus
    _edit_librimix_row(meta, 0, noise_path=f"../../{tmp_path.name}/wham_noise/cv/ndev0sp08.wav")
    before = snapshot(tmp_path, skip=out)
    assert _librimix(libri, wham, meta, out) == 2
    _assert_nothing_escaped(tmp_path, out, before)
    err = capsys.readouterr().err
    assert "row 1" in err and "noise_path" in err


def test_librimix_absolute_source_outside_librispeech_is_refused(libri_corpus, tmp_path, capsys):
    libri, wham, meta = libri_corpus
    secret = tmp_path / "private" / "secret.flac"
    secret.parent.mkdir()
    shutil.copy(next(libri.rglob("*.flac")), secret)
    _edit_librimix_row(meta, 2, source_1_path=str(secret))
    out = tmp_path / "out"
    assert _librimix(libri, wham, meta, out) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "source_1_path" in err and "outside" in err
    assert not list(out.rglob("*.wav"))


def _table_with_source(tmp_path: Path, source: str) -> Path:
    inside = tmp_path / "tables" / "utt.wav"
    inside.parent.mkdir(parents=True)
    sf.write(inside, np.full(800, 0.1), 8000, subtype="FLOAT")
    specs = [
        MixtureSpec(f"m{k}", 8000, 800, [SourceSpec("utt.wav"), SourceSpec(source if k == 1 else "utt.wav")])
        for k in range(2)
    ]
    write_table(inside.parent / "table.csv", specs)
    return inside.parent / "table.csv"


@pytest.mark.parametrize("relative", [False, True])
def test_table_source_outside_its_root_is_refused_at_load(tmp_path, relative):
    secret = tmp_path / "private" / "secret.wav"
    secret.parent.mkdir()
    sf.write(secret, np.full(800, 0.5), 8000, subtype="FLOAT")
    table = _table_with_source(tmp_path, "../private/secret.wav" if relative else str(secret))
    pattern = f"{table}: row 2 \\(line 3\\): s2_path .*outside"
    with pytest.raises(ValueError, match=pattern):
        MixtureTableDataset(table)
    with pytest.raises(ValueError, match=pattern):
        DynamicMixingDataset(str(table), segment_seconds=0.05, epoch_size=2, gain_law="asteroid")
    # declared explicitly, the same folder is accepted
    assert len(MixtureTableDataset(table, allowed_roots=[secret.parent])) == 2


# --- 7. stale files in a re-prepared folder ------------------------------------------------------------


def _folder_argv(sources: Path, out: Path, seed: int, *extra: str) -> list[str]:
    argv = ["folder", "--sources", str(sources), "--splits", "train", "test", "--fractions", "0.5", "0.5"]
    argv += ["--n-mixtures", "4", "2", "--seed", str(seed), "--write", "--no-progress", "--out", str(out), *extra]
    return argv


def _written_ids(split_dir: Path, folder: str) -> set[str]:
    return {p.stem for p in (split_dir / folder).glob("*.wav")}


def test_reprepare_with_other_parameters_is_refused_and_force_replaces(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=3)
    out = tmp_path / "out"
    base = out / "2speakers" / "wav8000" / "min"
    assert main(_folder_argv(sources, out, seed=0)) == 0
    first = snapshot(out)
    capsys.readouterr()
    assert main(_folder_argv(sources, out, seed=1)) == 2
    assert "other parameters" in capsys.readouterr().err
    assert snapshot(out) == first  # refused before anything was touched
    assert main(_folder_argv(sources, out, 1, "--force")) == 0
    for split in ("train", "test"):
        ids = {spec.mixture_id for spec in read_table(base / f"{split}.csv")}
        for folder in ("mix", "s1", "s2"):
            assert _written_ids(base / split, folder) == ids
        assert len(WrittenMixtureDataset(base / split, 2)) == len(ids)
    # the same parameters again: a resume, not a conflict
    assert main(_folder_argv(sources, out, seed=1)) == 0


def test_reprepare_refusal_names_the_changed_option(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=3)
    out = tmp_path / "out"
    assert main(_folder_argv(sources, out, seed=0)) == 0
    capsys.readouterr()
    assert main(_folder_argv(sources, out, seed=3)) == 2
    err = capsys.readouterr().err
    assert "other parameters" in err and "seed: 0 -> 3" in err and "--force" in err


def test_written_dataset_reads_the_table_not_a_glob(tmp_path):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=3)
    out = tmp_path / "out"
    assert main(_folder_argv(sources, out, seed=0)) == 0
    split = out / "2speakers" / "wav8000" / "min" / "train"
    table_ids = sorted(spec.mixture_id for spec in read_table(split.parent / "train.csv"))
    for folder in ("mix", "s1", "s2"):  # a file no table row names, e.g. from another run
        shutil.copy(next((split / folder).glob("*.wav")), split / folder / "zz_foreign.wav")
    dataset = WrittenMixtureDataset(split, 2)
    assert sorted(dataset.item_id(i) for i in range(len(dataset))) == table_ids


def test_stray_audio_in_a_split_folder_is_refused_without_force(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=3)
    out = tmp_path / "out"
    assert main(_folder_argv(sources, out, seed=0)) == 0
    stray = out / "2speakers" / "wav8000" / "min" / "test" / "mix" / "old_run.wav"
    shutil.copy(next(stray.parent.glob("*.wav")), stray)
    capsys.readouterr()
    assert main(_folder_argv(sources, out, seed=0)) == 2
    assert "old_run.wav" in capsys.readouterr().err and stray.is_file()
    assert main(_folder_argv(sources, out, 0, "--force")) == 0
    assert not stray.exists()


# --- 10. leftovers: killing the parent of a --jobs run ------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_killed_prepare_leaves_no_worker_processes(tmp_path):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=4)
    argv = ["folder", "--sources", str(sources), "--splits", "train", "--fractions", "1", "--n-mixtures", "3000"]
    argv += ["--write", "--jobs", "2", "--no-progress", "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-m", "data_prep.cli", *argv], env=env, cwd=REPO)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        mix = tmp_path / "out" / "2speakers" / "wav8000" / "min" / "train" / "mix"
        while time.monotonic() < deadline and parent.poll() is None:
            workers |= _children(parent.pid)
            if len(workers) >= 2 and mix.is_dir() and any(mix.glob("*.wav")):
                break
            time.sleep(0.05)
        assert parent.poll() is None and len(workers) >= 2, "the run ended before its workers could be seen"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)]
    finally:
        for pid in workers:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


# --- 11. errors a person can act on --------------------------------------------------------------------


def test_corrupt_utterance_in_folder_is_named_in_one_line(tmp_path, capsys):
    sources = tmp_path / "speakers"
    make_speaker_folders(sources, n_speakers=6, per_speaker=3)
    corrupt = sources / "spk02" / "spk02_u1.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage that is no audio")
    before = snapshot(sources)
    assert main(_folder_argv(sources, tmp_path / "out", seed=0)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(corrupt) in err[0] and "cannot read audio" in err[0]
    assert snapshot(sources) == before


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("length", "-5"),
        ("length", str(10**12)),
        ("s1_offset", "-3"),
        ("s2_offset", "999999"),
        ("s1_gain", "nan"),
        ("s2_gain", "inf"),
        ("s1_start", "-1"),
        ("sample_rate", "0"),
        ("n_src", "100"),
        ("s1_start", "1.5"),
    ],
)
def test_bad_row_values_name_table_row_and_column(tmp_path, column, value):
    table = _table_with_source(tmp_path, "utt.wav")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[1][column] = value
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=f"{table}: row 2 \\(line 3\\): column {column}: "):
        read_table(table)


def test_librimix_non_finite_gain_is_refused_before_writing(libri_corpus, tmp_path, capsys):
    libri, wham, meta = libri_corpus
    _edit_librimix_row(meta, 1, noise_gain="nan")
    out = tmp_path / "out"
    assert _librimix(libri, wham, meta, out) == 2
    err = capsys.readouterr().err
    assert "noise_gain" in err and "not finite" in err
    assert not list(out.rglob("*.wav"))
