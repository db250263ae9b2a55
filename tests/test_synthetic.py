"""The built-in synthetic corpus: determinism, disjoint speakers, overlap, levels,
and that written and on-the-fly rendering agree."""

import hashlib

import numpy as np
import pytest
import soundfile as sf
import torch

from sepkit.data.datamodule import SeparationDataModule
from sepkit.data.datasets import MixtureTableDataset, WrittenMixtureDataset
from sepkit.data.mixtures import read_table, render
from sepkit.data.synthetic import (
    RemixedSyntheticDataset,
    Speaker,
    SyntheticConfig,
    SyntheticMixtures,
    _voiced,
    generate_corpus,
    make_speakers,
    read_utterance_table,
    utterance_table_path,
)

SMALL = SyntheticConfig(seed=3, speakers=(6, 3, 3), utterances_per_speaker=3, mixtures=(12, 4, 4))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_corpus(root, SMALL, workers=2)


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "corpus.json":
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_reused(corpus, tmp_path):
    root, tables = corpus
    # The fixture's corpus came from parallel worker processes (one per CPU, spawned);
    # one process writes the same bytes.
    again = tmp_path / "again"
    generate_corpus(again, SMALL, workers=1)
    assert digest(root) == digest(again)
    # A finished corpus with the same config is reused, not rewritten.
    stamp_time = (root / "corpus.json").stat().st_mtime_ns
    generate_corpus(root, SMALL)
    assert (root / "corpus.json").stat().st_mtime_ns == stamp_time


def test_speakers_disjoint_across_splits(corpus):
    root, tables = corpus
    speakers = {}
    for split, table in tables.items():
        speakers[split] = {src.path.split("/")[2] for row in read_table(table) for src in row.sources}
        assert all(src.path.startswith(f"{split}/") for row in read_table(table) for src in row.sources)
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]


def test_pitch_ranges_of_speakers_overlap():
    speakers = make_speakers("train", 20, seed=0)
    overlapping = sum(
        1 for a in speakers for b in speakers if a is not b and a.f0_low < b.f0_high and b.f0_low < a.f0_high
    )
    # Most pairs share part of their pitch range: pitch alone cannot tell them apart.
    assert overlapping > 0.5 * len(speakers) * (len(speakers) - 1)


def test_mixtures_overlap_in_time_and_levels_within_5_db(corpus):
    root, tables = corpus
    for row in read_table(tables["train"]):
        _assert_mixture_contract(row, root)


def _assert_mixture_contract(row, root):
    """Distinct speakers, active spans sharing half the mixture, relative level within
    5 dB, mixture = sum of sources, no clipping."""
    speakers = [src.path.split("/")[2] for src in row.sources]
    assert len(set(speakers)) == len(speakers), row.mixture_id
    mixture, sources = render(row, root)
    # Each source's span: from its offset for the rest of its file (read from start).
    spans = []
    for src, placed in zip(row.sources, sources):
        frames = sf.info(str(root / src.path)).frames - src.start
        begin, end = src.offset, min(src.offset + frames, row.length)
        spans.append((begin, end))
        assert not placed[:begin].any() and not placed[end:].any()
    common = min(e for _, e in spans) - max(b for b, _ in spans)
    assert common >= 0.5 * row.length, row.mixture_id
    # Relative level: utterance gains in the table are unit-RMS levels in [-5, 5] dB.
    level = 20 * np.log10(
        row.sources[1].gain
        * _stored_rms(root, row.sources[1])
        / (row.sources[0].gain * _stored_rms(root, row.sources[0]))
    )
    assert -5.0 - 1e-6 <= level <= 5.0 + 1e-6
    np.testing.assert_allclose(mixture, sources.sum(0), atol=1e-6)
    assert np.abs(mixture).max() < 1.0


def _stored_rms(root, src) -> float:
    # Files store a unit-RMS utterance times a storage scale; gain * stored RMS is the
    # level the utterance enters the mixture with.
    wav, _ = sf.read(root / src.path)
    return float(np.sqrt(np.mean(wav**2)))


def test_sources_overlap_in_frequency(corpus):
    # The two speakers of a mixture put their energy in the same bands: compare their
    # long-term spectra in 125 Hz bands (Welch, 8 ms windows); individual harmonics
    # differ, the occupied band does not.
    from scipy.signal import welch

    root, tables = corpus
    shared = []
    for row in read_table(tables["train"]) + read_table(tables["test"]):
        _, sources = render(row, root)
        bands = [welch(s, fs=8000, nperseg=64)[1] for s in sources]
        bands = [b / b.sum() for b in bands]
        shared.append(np.minimum(bands[0], bands[1]).sum())
    # Fraction of band energy the two sources share (1 = identical long-term spectra).
    assert min(shared) > 0.3 and np.mean(shared) > 0.6, shared


def test_written_folder_and_table_give_identical_batches(corpus, tmp_path):
    root, tables = corpus
    written = tmp_path / "written"
    for row in read_table(tables["valid"]):
        mixture, sources = render(row, root)
        for folder, signal in [("mix", mixture)] + [(f"s{i + 1}", src) for i, src in enumerate(sources)]:
            (written / folder).mkdir(parents=True, exist_ok=True)
            sf.write(written / folder / f"{row.mixture_id}.wav", signal, 8000, subtype="FLOAT")
    on_the_fly = MixtureTableDataset(tables["valid"], segment_samples=4000, seed=5)
    from_disk = WrittenMixtureDataset(written, n_src=2, segment_samples=4000, seed=5)
    for ds in (on_the_fly, from_disk):
        ds.set_epoch(2)
    assert len(on_the_fly) == len(from_disk)
    for i in range(len(on_the_fly)):
        a, b = on_the_fly[i], from_disk[i]
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_in_memory_dataset_is_deterministic():
    ds = SyntheticMixtures(SMALL, "valid")
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert a[1].shape == (2, 16000)
    torch.testing.assert_close(a[0], a[1].sum(0))


def test_datamodule_generates_and_loads(tmp_path):
    dm = SeparationDataModule(synthetic=SMALL, synthetic_root=str(tmp_path / "syn"), segment_seconds=0.5, batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    mixture, sources = next(iter(dm.train_dataloader()))
    assert mixture.shape == (3, 4000) and sources.shape == (3, 2, 4000)
    mixture, sources = next(iter(dm.val_dataloader()))
    assert mixture.shape == (1, 16000)
    with pytest.raises(ValueError, match="16000 Hz"):
        SeparationDataModule(synthetic=SMALL, sample_rate=16000)


def test_utterance_table_lists_every_written_utterance(corpus):
    root, _ = corpus
    for split, count in zip(("train", "valid", "test"), SMALL.speakers):
        utterances = read_utterance_table(utterance_table_path(root, split))
        assert len(utterances) == count
        listed = {path for rows in utterances.values() for path, _, _ in rows}
        on_disk = {p.relative_to(root).as_posix() for p in (root / split / "utterances").rglob("*.wav")}
        assert listed == on_disk
        for rows in utterances.values():
            for path, length, scale in rows:
                wav, _ = sf.read(root / path)
                assert len(wav) == length
                # Stored as scale * (unit-RMS utterance): the RMS read back is the scale.
                assert np.sqrt(np.mean(wav**2)) == pytest.approx(scale, rel=1e-3)


def test_remixed_training_mixtures_are_fresh_each_epoch_and_follow_the_contract(corpus):
    root, tables = corpus
    ds = RemixedSyntheticDataset(root, SMALL, "train")
    assert len(ds) == SMALL.mixtures[0]

    def pairing(spec):
        return [(src.path, src.gain, src.start, src.offset) for src in spec.sources]

    by_epoch = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        specs = [ds.spec(i) for i in range(len(ds))]
        for spec in specs:
            assert all(src.path.startswith("train/") for src in spec.sources)
            _assert_mixture_contract(spec, root)
        mixture, sources = ds[3]
        expected_mixture, expected_sources = render(specs[3], root)
        np.testing.assert_array_equal(mixture.numpy(), expected_mixture.astype(np.float32))
        np.testing.assert_array_equal(sources.numpy(), expected_sources.astype(np.float32))
        by_epoch[epoch] = [pairing(spec) for spec in specs]
    # New pairings, levels and alignments every epoch, none of them the fixed table's.
    fixed = [pairing(row) for row in read_table(tables["train"])]
    assert by_epoch[0] != by_epoch[1]
    assert not any(p in fixed for p in by_epoch[0] + by_epoch[1])
    # A pure function of (seed, epoch, index): another instance (a worker, a resumed
    # run) draws the same mixtures.
    again = RemixedSyntheticDataset(root, SMALL, "train")
    again.set_epoch(1)
    assert [pairing(again.spec(i)) for i in range(len(again))] == by_epoch[1]


def test_datamodule_remixes_the_synthetic_train_split(corpus):
    root, _ = corpus
    dm = SeparationDataModule(
        synthetic=SMALL, synthetic_root=str(root), synthetic_remix=True, segment_seconds=None, batch_size=4
    )
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], RemixedSyntheticDataset)
    mixture, sources = next(iter(dm.train_dataloader()))
    assert mixture.shape == (4, 16000) and sources.shape == (4, 2, 16000)
    torch.testing.assert_close(mixture, sources.sum(1))
    with pytest.raises(ValueError, match="synthetic_remix"):
        SeparationDataModule(train=str(root / "train.csv"), synthetic_remix=True)


def test_voiced_segment_is_harmonic_without_aliasing():
    # A high voice whose range reaches the top of the band: every component must sit on
    # a harmonic of the pitch track (within its 1% vibrato), none folded back from
    # above Nyquist, and the interpolated envelope must not add sidebands.
    sr, n = 8000, 8000
    voice = Speaker("hi", f0_low=230.0, f0_high=330.0, formant_scale=1.1, tilt_db_per_octave=-4.0, breathiness=0.0)
    f0 = np.full(n, 310.0)
    segment = _voiced(np.random.default_rng(0), voice, f0, sr)
    power = np.abs(np.fft.rfft(segment * np.hanning(n))) ** 2
    freqs = np.fft.rfftfreq(n, 1 / sr)
    k = np.maximum(np.round(freqs / 310.0), 1)
    # Carson's rule for the 1% vibrato at up to 7 Hz, plus the window's main lobe.
    near_harmonic = np.abs(freqs - k * 310.0) <= 0.01 * k * 310.0 + 7.0 + 3.0
    assert power[near_harmonic].sum() > 0.999 * power.sum()
    # The highest harmonic below Nyquist is present, nothing above it.
    top = int((sr / 2) / (310.0 * 1.01))
    assert power[np.abs(freqs - top * 310.0) < 10].sum() > 1e-6 * power.sum()
    assert power[freqs > top * 310.0 * 1.02 + 6].sum() < 1e-9 * power.sum()
