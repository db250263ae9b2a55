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
    make_merl_lists,
    make_reverb_params,
    make_speaker_folders,
    make_wham_noise,
    make_wsj0,
)

from sepkit.data.mixtures import MixtureSpec, SourceSpec, read_table, write_table
from sepkit.prepare import main

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
    parent = subprocess.Popen([sys.executable, "-m", "sepkit.prepare", *argv], env=env, cwd=REPO)
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


# --- 11. errors a person can act on ---------------------------------------------------------------------


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
