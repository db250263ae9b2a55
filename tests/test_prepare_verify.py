"""``sepkit prepare verify --official`` on a WHAM! tree (32-bit float files) against
"official" files written independently by a float64 reimplementation of WHAM!'s
create_wham_from_scratch.py: identical files must be counted identical, a changed
sample or a wrong length must show."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.fake_corpora import make_merl_lists, make_wham_noise, make_wsj0
from test_data_wham import _pairs, reference_wham

from data_prep.cli import main

SPLIT = Path("wav8k/min/tt")
OUTPUTS = ("s1", "s2", "noise", "mix_clean", "mix_single", "mix_both")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """(sepkit's written WHAM! tt 8k min folder, an official tree written by the reference)."""
    root = tmp_path_factory.mktemp("verify")
    wsj0 = root / "corpus"
    lists = root / "lists"
    wham = root / "wham_noise"
    make_merl_lists(lists, make_wsj0(wsj0), 2, count=3)
    make_wham_noise(wham, wsj0, lists)
    out = root / "out"
    argv = ["wham", "--wsj0", str(wsj0), "--wham-noise", str(wham), "--lists", str(lists), "--splits", "tt"]
    assert main(argv + ["--out", str(out), "--write", "--no-progress"]) == 0
    official = root / "official"
    scaling = dict(np.load(wham / "metadata" / "scaling_tt.npz"))
    pairs = _pairs(lists, "tt")
    for index, utt in enumerate(scaling["utterance_id"]):
        name = Path(str(utt)).stem
        signals = reference_wham(wsj0, wham / "tt" / f"{name}.wav", pairs[name], scaling, index, 8000, "min")
        for key in OUTPUTS:
            target = official / SPLIT / key / f"{name}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, signals[key].astype(np.float32), 8000, subtype="FLOAT")
    return out, official


def _report(capsys, out: Path, official: Path) -> tuple[int, int, int, str]:
    capsys.readouterr()
    status = main(["verify", str(out), "--official", str(official)])
    text = capsys.readouterr().out
    match = re.search(r"vs official: (\d+) files, (\d+) identical", text)
    assert match, text
    return status, int(match[1]), int(match[2]), text


def test_identical_float_files_are_counted_identical(trees, capsys):
    out, official = trees
    status, compared, identical, text = _report(capsys, out, official)
    assert status == 0
    assert compared == 3 * len(OUTPUTS)
    assert identical == compared, text
    assert "worst SNR inf dB" in text


def test_a_changed_sample_and_a_wrong_length_are_reported(trees, capsys, tmp_path):
    out, official = trees
    changed = tmp_path / "official"
    for key in OUTPUTS:
        for path in sorted((official / SPLIT / key).glob("*.wav")):
            target = changed / SPLIT / key / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    victim = sorted((changed / SPLIT / "mix_both").glob("*.wav"))[0]
    data, rate = sf.read(str(victim), dtype="float32")
    data[10] += np.float32(1e-3)
    sf.write(victim, data, rate, subtype="FLOAT")
    status, compared, identical, text = _report(capsys, out, changed)
    assert status == 0 and identical == compared - 1
    worst = float(re.search(r"worst SNR (\S+) dB", text)[1])
    expected = 10 * np.log10(np.sum(data.astype(np.float64) ** 2) / 1e-6)
    assert worst == pytest.approx(expected, abs=0.1)
    sf.write(victim, data[:-5], rate, subtype="FLOAT")
    status, _, _, text = _report(capsys, out, changed)
    assert status == 1
    assert f"{victim}: official length {len(data) - 5}, ours {len(data)}" in text
