"""Dynamic mixing: pool restricted to training utterances, gain laws, speed
perturbation, seeding per index / epoch / rank independent of the worker count."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_MODEL
from fixtures.fake_corpora import make_speaker_folders
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from data_prep.common import execute, update_manifest
from data_prep.folder import build_plans
from sepkit.audio import AudioError
from sepkit.data.dynamic import DynamicMixingDataset
from sepkit.training import SeparationModule


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    make_speaker_folders(root / "speakers", n_speakers=8, per_speaker=3)
    plans = build_plans(root / "speakers", root / "out", 2, [8000], ["min"], ["train", "valid"], [0.75, 0.25], [8, 2])
    execute(plans, write=False, progress=False)
    # the manifest declares the corpus the tables read from (absolute paths elsewhere are refused)
    update_manifest(root / "out", plans, written=False, parameters={})
    base = root / "out" / "2speakers" / "wav8000" / "min"
    return base / "train.csv", base / "valid.csv", root / "speakers"


def test_pool_is_training_utterances_only(tables):
    train, valid, speakers = tables
    ds = DynamicMixingDataset(str(train), exclude=[str(valid)], segment_seconds=0.25, epoch_size=4)
    from sepkit.data.mixtures import read_table

    train_paths = {s.path for spec in read_table(train) for s in spec.sources}
    valid_speakers = {spec.extra[f"s{i}_speaker"] for spec in read_table(valid) for i in (1, 2)}
    assert {u.path for u in ds.pool} == train_paths
    assert not {u.speaker for u in ds.pool} & valid_speakers
    # a folder pool minus the validation table loses the validation speakers entirely
    folder_ds = DynamicMixingDataset(str(speakers), exclude=[str(valid)], segment_seconds=0.25, epoch_size=4)
    assert not {u.speaker for u in folder_ds.pool} & valid_speakers
    assert len(folder_ds.pool) > len(ds.pool) - 1


@pytest.mark.parametrize("law", ["speechbrain", "asteroid"])
def test_gain_laws_and_shapes(tables, law):
    train, _, speakers = tables
    ds = DynamicMixingDataset(str(train), gain_law=law, segment_seconds=0.25, epoch_size=50, noise=None)
    peaks = []
    for index in range(50):
        mix, src = ds[index]
        assert mix.shape == (2000,) and src.shape == (2, 2000)
        assert torch.equal(mix, src.sum(0)) or torch.allclose(mix, src.sum(0), atol=1e-6)
        peaks.append(float(max(mix.abs().max(), src.abs().max())))
    if law == "speechbrain":
        assert np.allclose(peaks, 0.9, atol=1e-6)  # always rescaled to a 0.9 peak
    else:
        assert max(peaks) <= 1.0 + 1e-6 and min(peaks) < 0.9  # only rescaled when clipping


def test_speechbrain_levels_follow_the_law(tables):
    train, _, _ = tables
    ds = DynamicMixingDataset(str(train), gain_law="speechbrain", segment_seconds=0.25, epoch_size=400)
    ratios = []
    for index in range(400):
        _, src = ds[index]
        s = src.double().numpy()
        n = int(np.max(np.nonzero(np.abs(s).sum(0))[0])) + 1  # cropped length before zero-padding
        mean_abs = np.abs(s[:, :n]).mean(axis=1)
        ratios.append(20 * np.log10(mean_abs[1] / mean_abs[0]))
    # second source relative to the first: N(-2.51, 2.66) dB (clipping at -45/0 dB is rare)
    assert abs(np.mean(ratios) + 2.51) < 0.5
    assert abs(np.std(ratios) - 2.66) < 0.5


def test_speed_perturbation_changes_pitch_and_tempo(tables):
    train, _, _ = tables
    ds = DynamicMixingDataset(
        str(train), gain_law="asteroid", speed_perturb=(1.25, 1.25), segment_seconds=10.0, epoch_size=1
    )
    utt = ds.pool[0]
    piece = ds._segment(utt, np.random.default_rng(0), 10**9, 1.25)
    assert len(piece) == int(utt.frames * 8000 / 16000 / 1.25)
    x = sf.read(utt.path)[0]
    assert abs(len(piece) - len(x) / 2 / 1.25) <= 1


def test_seeding_is_per_index_epoch_rank_and_worker_independent(tables):
    train, _, _ = tables
    ds = DynamicMixingDataset(str(train), segment_seconds=0.25, epoch_size=8, seed=3)
    serial = torch.cat([b[0] for b in DataLoader(ds, batch_size=4, num_workers=0)])
    parallel = torch.cat([b[0] for b in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)
    assert len({tuple(x[:50].tolist()) for x in serial}) == 8  # no two workers/items repeat
    ds.set_epoch(1)
    assert not torch.equal(torch.stack([ds[i][0] for i in range(8)]), serial)
    ds.set_epoch(0)
    ds.rank = 1
    assert not torch.equal(torch.stack([ds[i][0] for i in range(8)]), serial)
    ds.rank = 0
    assert torch.equal(torch.stack([ds[i][0] for i in range(8)]), serial)


class _BatchRecorder(L.Callback):
    """Keeps every training mixture batch, by epoch."""

    def __init__(self) -> None:
        self.seen: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).append(batch[0].clone())


def test_training_module_tells_dataloader_workers_the_epoch(tables, tmp_path):
    train, _, _ = tables
    ds = DynamicMixingDataset(str(train), segment_seconds=0.125, epoch_size=4, seed=5)
    # Cosine: a schedule that needs no validation metric (no validation data here).
    model = SeparationModule(model_config=TINY_MODEL, lr_schedule="cosine")
    recorder = _BatchRecorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(ds, batch_size=4, num_workers=1))
    for epoch in (0, 1):
        reference = DynamicMixingDataset(str(train), segment_seconds=0.125, epoch_size=4, seed=5)
        reference.set_epoch(epoch)
        expected = torch.stack([reference[i][0] for i in range(4)])
        assert torch.equal(recorder.seen[epoch][0], expected)
    assert not torch.equal(recorder.seen[0][0], recorder.seen[1][0])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_state_carries_the_epoch_into_a_fresh_dataset(tables, num_workers):
    # What a mid-epoch resume relies on: no epoch-start hook runs, the checkpointed loader
    # state alone must bring a freshly built dataset (epoch 0) back to the saved epoch.
    train, _, _ = tables

    def loader() -> StatefulDataLoader:
        ds = DynamicMixingDataset(str(train), segment_seconds=0.125, epoch_size=8, seed=5)
        return StatefulDataLoader(ds, batch_size=2, shuffle=True, num_workers=num_workers)

    torch.manual_seed(0)
    original = loader()
    original.dataset.set_epoch(3)
    batches = iter(original)
    next(batches)
    state = original.state_dict()
    expected = [batch[0] for batch in batches]
    resumed = loader()
    resumed.load_state_dict(state)
    got = [batch[0] for batch in resumed]
    assert len(got) == len(expected) == 3
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_unreadable_utterances_raise_audio_error_naming_the_file(tmp_path):
    make_speaker_folders(tmp_path / "speakers", n_speakers=3, per_speaker=2)
    files = sorted((tmp_path / "speakers").rglob("*.wav"))
    # Broken while the pool is built: the header cannot be read.
    files[0].write_bytes(b"RIFF-not-really-a-wave-file")
    with pytest.raises(AudioError, match=re.escape(f"{files[0]}: cannot read audio")):
        DynamicMixingDataset(str(tmp_path / "speakers"), segment_seconds=0.125, epoch_size=4)
    # Broken after the pool was built: the samples cannot be decoded when an item is drawn.
    files[0].unlink()
    ds = DynamicMixingDataset(str(tmp_path / "speakers"), segment_seconds=0.125, epoch_size=64)
    broken = ds.pool[0].path
    Path(broken).write_bytes(b"RIFF-not-really-a-wave-file")
    with pytest.raises(AudioError, match=re.escape(f"{broken}: cannot read audio")):
        for index in range(len(ds)):
            ds[index]


@pytest.mark.parametrize("utterances", [None, []])
def test_dynamic_mixing_without_utterances_is_a_one_line_error(utterances) -> None:
    # A recipe run without --data.train_dataset.init_args.utterances used to end in a raw TypeError.
    with pytest.raises(ValueError, match="dynamic mixing needs source utterances") as error:
        DynamicMixingDataset(utterances)
    assert "\n" not in str(error.value)
