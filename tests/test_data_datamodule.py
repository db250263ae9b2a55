"""Acceptance: training on a prepared corpus with mixtures rendered on the fly from its
tables (--metadata-only) and with the written folders gives identical batches and
identical trained weights for the same seed."""

from __future__ import annotations

import lightning as L
import torch
from conftest import TINY_MODEL
from fixtures.fake_corpora import make_merl_lists, make_wsj0

from data_prep.cli import main
from sepkit.data.datamodule import SeparationDataModule
from sepkit.data.dynamic import DynamicMixingDataset
from sepkit.training import SeparationModule


class _BatchRecorder(L.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch[0].clone(), batch[1].clone()))


def _fit(datamodule: SeparationDataModule, root) -> tuple[_BatchRecorder, dict]:
    L.seed_everything(7, workers=True)
    model = SeparationModule("conv_tasnet", dict(TINY_MODEL, sample_rate=8000), lr=0.003)
    recorder = _BatchRecorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=root,
        deterministic=True,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return recorder, {k: v.clone() for k, v in model.state_dict().items()}


def test_metadata_only_and_written_data_train_identically(tmp_path):
    wsj0 = tmp_path / "corpus"
    lists = tmp_path / "lists"
    make_merl_lists(lists, make_wsj0(wsj0), 2, count=6)
    out = tmp_path / "wsj0-mix"
    argv = ["wsj0-mix", "--wsj0", str(wsj0), "--lists", str(lists), "--splits", "tr", "cv", "--out", str(out)]
    assert main(argv + ["--write", "--no-progress"]) == 0
    base = out / "2speakers" / "wav8k" / "min"
    common = dict(sample_rate=8000, n_src=2, segment_seconds=0.25, batch_size=2, num_workers=0, seed=3)
    on_the_fly = SeparationDataModule(train=str(base / "tr.csv"), valid=str(base / "cv.csv"), **common)
    written = SeparationDataModule(train=str(base / "tr"), valid=str(base / "cv"), **common)
    fly, fly_weights = _fit(on_the_fly, tmp_path / "a")
    disk, disk_weights = _fit(written, tmp_path / "b")
    fly_batches, disk_batches = fly.batches, disk.batches
    assert len(fly_batches) == len(disk_batches) == 2 * 3
    for (epoch_a, mix_a, src_a), (epoch_b, mix_b, src_b) in zip(fly_batches, disk_batches):
        assert epoch_a == epoch_b
        assert torch.equal(mix_a, mix_b) and torch.equal(src_a, src_b)
    # crops move between epochs, so the two epochs differ
    assert not torch.equal(fly_batches[0][1], fly_batches[3][1])
    for name in fly_weights:
        assert torch.equal(fly_weights[name], disk_weights[name]), name


def test_dynamic_mixing_plugs_into_the_datamodule(tmp_path):
    wsj0 = tmp_path / "corpus"
    lists = tmp_path / "lists"
    make_merl_lists(lists, make_wsj0(wsj0), 2, count=6)
    out = tmp_path / "wsj0-mix"
    assert (
        main(
            [
                "wsj0-mix",
                "--wsj0",
                str(wsj0),
                "--lists",
                str(lists),
                "--splits",
                "tr",
                "cv",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    base = out / "2speakers" / "wav8k" / "min"
    dm_train = DynamicMixingDataset(str(base / "tr.csv"), segment_seconds=0.25, epoch_size=4)
    datamodule = SeparationDataModule(
        valid=str(base / "cv.csv"), train_dataset=dm_train, segment_seconds=0.25, batch_size=2
    )
    recorder, _ = _fit(datamodule, tmp_path / "c")
    assert len(recorder.batches) == 4
    assert dm_train.epoch == 1  # SeparationModule told the dataset the epoch
    assert not torch.equal(recorder.batches[0][1], recorder.batches[2][1])
