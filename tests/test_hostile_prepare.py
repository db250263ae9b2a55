"""Issue #13, prepare / data side: ``sepkit prepare`` and the mixture tables used the way
a careless or hostile user would. Every test runs the real recipe on fabricated corpora
(tests/fixtures/fake_corpora.py) and checks what actually happened on disk: a payload's
marker file, checksums of the whole input corpus, files outside ``--out``, leftover
processes read from /proc."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sepkit.data.mixtures import MixtureSpec, SourceSpec, read_table, write_table

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file below ``root`` except those below ``skip``."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (skip is None or skip not in path.parents):
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


# --- 11. errors a person can act on: values of a mixture table -------------------------------------


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
