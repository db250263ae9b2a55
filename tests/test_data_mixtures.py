"""Mixture-table format: every recipe field survives a write/read round trip, old
tables (original columns only) still read, malformed rule values are named."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from sepkit.data.mixtures import MixtureSpec, SourceSpec, quantize_int16, read_table, render, write_table


def test_round_trip_of_every_field(tmp_path):
    full = SourceSpec(
        path="a.wav",
        gain=0.5,
        start=3,
        offset=7,
        stop=900,
        extend_to=1000,
        quantize=True,
        post_gain=0.25,
        channel=1,
        pad_to=1200,
        rir="r.npy",
        anechoic_rir="d.npy",
    )
    spec = MixtureSpec(
        mixture_id="m1",
        sample_rate=8000,
        length=400,
        sources=[full, SourceSpec(path="b.wav")],
        noise=SourceSpec(path="n.wav", gain=0.1, stop=50),
        gain_stage="before_resample",
        peak_normalize=0.9,
        quantize="int16",
        mixture="mix_single",
        targets="s1",
        extra={"s1_speaker": "abc"},
    )
    plain = MixtureSpec(
        mixture_id="m2", sample_rate=8000, length=10, sources=[SourceSpec("c.wav"), SourceSpec("d.wav")]
    )
    write_table(tmp_path / "t.csv", [spec, plain])
    assert read_table(tmp_path / "t.csv") == [spec, plain]


def test_old_tables_read_with_defaults(tmp_path):
    sf.write(tmp_path / "a.wav", np.full(20, 0.25, dtype=np.float32), 8000, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", np.full(30, 0.125, dtype=np.float32), 8000, subtype="FLOAT")
    with open(tmp_path / "old.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["mixture_id", "sample_rate", "length", "n_src"]
            + [f"s{i}_{k}" for i in (1, 2) for k in ("path", "gain", "start", "offset")]
        )
        writer.writerow(["x", 8000, 25, 2, "a.wav", 2.0, 0, 5, "b.wav", 1.0, 10, 0])
    (spec,) = read_table(tmp_path / "old.csv")
    assert spec.gain_stage == "after_resample" and spec.quantize == "" and spec.peak_normalize is None
    mix, sources = render(spec, tmp_path)
    expected_s1 = np.r_[np.zeros(5), np.full(20, 0.5)]
    expected_s2 = np.r_[np.full(20, 0.125), np.zeros(5)]
    np.testing.assert_array_equal(sources, np.stack([expected_s1, expected_s2]).astype(np.float32))
    np.testing.assert_array_equal(mix, (expected_s1 + expected_s2).astype(np.float32))


@pytest.mark.parametrize("column,value", [("gain_stage", "sideways"), ("quantize", "int8")])
def test_bad_rule_values_are_named(tmp_path, column, value):
    spec = MixtureSpec(mixture_id="m", sample_rate=8000, length=10, sources=[SourceSpec("a.wav")])
    write_table(tmp_path / "t.csv", [spec])
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    rows[0][column] = value
    with open(tmp_path / "t.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=rf"t.csv:2: .*{column}"):
        read_table(tmp_path / "t.csv")


def test_floor_quantiser_matches_this_libsndfile(tmp_path):
    """LibriMix's script lets soundfile quantise; libsndfile 1.2.2 floors 32768 x."""
    if not sf.__libsndfile_version__.startswith("1.2."):
        pytest.skip(f"rounding rule measured on libsndfile 1.2.x, this is {sf.__libsndfile_version__}")
    x = np.random.default_rng(0).uniform(-0.99, 0.99, 5000)
    sf.write(tmp_path / "q.wav", x, 8000, subtype="PCM_16")
    written = sf.read(tmp_path / "q.wav", dtype="float64")[0]
    np.testing.assert_array_equal(written, quantize_int16(x, "int16_floor"))
    assert not np.array_equal(written, quantize_int16(x, "int16"))
