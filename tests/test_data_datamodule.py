"""Acceptance: training on a prepared corpus with mixtures rendered on the fly from its
tables (--metadata-only) and with the written folders gives identical batches and
identical trained weights for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from conftest import TINY_MODEL, subprocess_env
from fixtures.fake_corpora import make_merl_lists, make_speaker_folders, make_wsj0
from torch.utils.data import DistributedSampler

from data_prep.cli import main
from sepkit.cli import main as cli_main
from sepkit.data.datamodule import DEFAULT_SEGMENT_SECONDS, SeparationDataModule
from sepkit.data.datasets import LengthGroupedBatchSampler
from sepkit.data.dynamic import DynamicMixingDataset
from sepkit.data.mixtures import read_table
from sepkit.data.synthetic import SyntheticConfig
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


def _folder_tables(tmp_path: Path, n_speakers: int = 8, mixtures: tuple[int, int, int] = (4, 12, 2)) -> Path:
    """``sepkit prepare folder`` tables (``min`` mixtures of 0.3-0.6 s utterances: lengths differ)."""
    speakers = tmp_path / "speakers"
    make_speaker_folders(speakers, n_speakers=n_speakers, per_speaker=3)
    out = tmp_path / "prepared"
    argv = ["folder", "--sources", str(speakers), "--fractions", "0.5", "0.25", "0.25", "--n-mixtures"]
    assert main([*argv, *map(str, mixtures), "--out", str(out), "--no-progress"]) == 0
    return out / "2speakers" / "wav8000" / "min"


def test_synthetic_recipe_trains_on_prepared_tables_given_only_the_split_paths(tmp_path, monkeypatch):
    # The researcher's case of issue #19: recipes/synthetic/convtasnet.yaml (synthetic corpus,
    # remixing, whole mixtures, eval_batch_size 10) pointed at `sepkit prepare folder` tables
    # with --data.train/valid/test alone; the 12 validation mixtures differ in length.
    base = _folder_tables(tmp_path)
    lengths = [spec.length for spec in read_table(base / "valid.csv")]
    assert len(set(lengths)) > 1
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "convtasnet.yaml"
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI rewrites sys.argv
    monkeypatch.chdir(tmp_path)  # the recipe's relative data/synthetic must stay unwritten
    argv = ["train", "--config", str(recipe)]
    argv += [f"--data.{split}={base / f'{split}.csv'}" for split in ("train", "valid", "test")]
    argv += ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.default_root_dir", str(tmp_path)]
    argv += ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--name=own", "--data.batch_size=2"]
    assert cli_main(argv) == 0
    assert not (tmp_path / "data").exists()
    last = torch.load(tmp_path / "own" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    # the run's recorded data configuration: the user's tables, no synthetic corpus, 4 s crops
    data = last["sepkit"]["training"]["data"]
    assert data["train"] == str(base / "train.csv") and data["synthetic"] is None
    assert data["segment_seconds"] == DEFAULT_SEGMENT_SECONDS and data["eval_batch_size"] == 10


def test_whole_mixture_evaluation_batches_group_equal_lengths_only(tmp_path):
    base = _folder_tables(tmp_path)
    specs = read_table(base / "valid.csv")
    datamodule = SeparationDataModule(valid=str(base / "valid.csv"), test=str(base / "test.csv"), eval_batch_size=10)
    dataset = datamodule.build_dataset("valid")
    seen = []
    for mixture, sources in datamodule.val_dataloader():
        assert mixture.shape[0] <= 10 and sources.shape[:2] == (mixture.shape[0], 2)
        for row_mixture, row_sources in zip(mixture, sources):
            # Unpadded: each item's tensors are exactly what the dataset gives for it.
            index = next(i for i in range(len(dataset)) if i not in seen and torch.equal(dataset[i][0], row_mixture))
            assert torch.equal(dataset[index][1], row_sources)
            assert row_mixture.shape[-1] == specs[index].length
            seen.append(index)
    assert sorted(seen) == list(range(len(specs)))
    # Mixtures that share a length share a batch (up to eval_batch_size); the count of
    # batches follows from the lengths alone.
    counts = Counter(spec.length for spec in specs)
    assert len(datamodule.val_dataloader()) == sum(-(-n // 10) for n in counts.values())


def test_length_grouped_batches_cover_each_rank_share_once():
    lengths = [5, 7, 5, 5, 9, 7, 5, 5, 9, 5, 7]
    sampler = LengthGroupedBatchSampler(range(len(lengths)), 2, False, lengths)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in batch}) == 1 and len(batch) <= 2 for batch in batches)
    # what Lightning does under DDP: the same class around each rank's DistributedSampler
    dataset = list(range(len(lengths)))
    shares = []
    for rank in (0, 1):
        ranked = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        shares.append([i for batch in LengthGroupedBatchSampler(ranked, 2, False, lengths) for i in batch])
        assert sorted(shares[-1]) == sorted(ranked)
    # 11 items on 2 ranks: DistributedSampler repeats the first index to make 12
    assert sorted(shares[0] + shares[1]) == sorted([*range(len(lengths)), 0])


def test_training_data_turns_the_synthetic_corpus_off_and_crops_whole_mixtures(tmp_path):
    synthetic = SyntheticConfig(speakers=(4, 2, 2), utterances_per_speaker=2, mixtures=(4, 2, 2))
    table = str(tmp_path / "train.csv")
    user = SeparationDataModule(train=table, synthetic=synthetic, synthetic_remix=True, segment_seconds=None)
    assert user.synthetic is None and not user.synthetic_remix
    assert user.paths == {"train": table, "valid": None, "test": None}
    assert user.segment_seconds == DEFAULT_SEGMENT_SECONDS
    # one mixture per batch: whole utterances stay whole (SepFormer's full-length training)
    whole = SeparationDataModule(train=table, synthetic=synthetic, segment_seconds=None, batch_size=1)
    assert whole.segment_seconds is None
    # the synthetic corpus itself keeps its whole (equal-length) mixtures
    corpus = SeparationDataModule(synthetic=synthetic, synthetic_root=str(tmp_path / "syn"), segment_seconds=None)
    assert corpus.synthetic is synthetic and corpus.segment_seconds is None
    # a valid split alone replaces only that split (tests do this with the tiny recipe)
    only_valid = SeparationDataModule(valid=table, synthetic=synthetic, synthetic_root=str(tmp_path / "syn"))
    assert only_valid.synthetic is synthetic and only_valid.paths["valid"] == table


_PREPARE_ON_A_NODE = """
import sys
from sepkit.data.datamodule import SeparationDataModule
from sepkit.data.synthetic import SyntheticConfig, generate_corpus
synthetic = SyntheticConfig(speakers=(4, 2, 2), utterances_per_speaker=3, mixtures=(8, 4, 4))
generate_corpus(sys.argv[1], synthetic, workers=1)  # what prepare_data runs, without a process pool
datamodule = SeparationDataModule(synthetic=synthetic, synthetic_root=sys.argv[1], segment_seconds=0.5)
datamodule.prepare_data()
datamodule.setup("fit")
print("train mixtures", len(datamodule.datasets["train"]))
"""


def test_two_nodes_preparing_at_once_write_the_synthetic_corpus_once(tmp_path):
    # Lightning calls prepare_data on local rank 0 of every node; on a shared filesystem
    # the two "nodes" of a job write one folder at the same moment.
    root = tmp_path / "synthetic"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE_ON_A_NODE, str(root)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
        assert "train mixtures 8" in output
    # one node synthesised the speakers (its progress bar), the other waited and reused them
    assert sum("synthesising train speakers" in output for output in outputs) == 1, outputs
    assert json.loads((root / "corpus.json").read_text())["config"]["mixtures"] == [8, 4, 4]
    assert not [p.name for p in root.iterdir() if p.name.startswith(".") and p.name != ".generate.lock"]
