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
from sepkit.data.synthetic import SyntheticConfig, SyntheticMixtures, generate_corpus, make_speakers

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
            row.sources[1].gain * _stored_rms(root, row.sources[1])
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
