"""LightningDataModule for separation: tables (on the fly), written folders, or the
built-in synthetic corpus."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from sepkit.data.datasets import (
    LengthGroupedBatchSampler,
    MixtureTableDataset,
    SegmentedDataset,
    WrittenMixtureDataset,
    whamr_source_suffix,
)
from sepkit.data.synthetic import RemixedSyntheticDataset, SyntheticConfig, generate_corpus, table_path

log = logging.getLogger(__name__)

# Training crop used with the user's data when a recipe asks for whole mixtures in
# batches of more than one (segment_seconds: null, as the synthetic recipes do): real
# corpora differ in length from one mixture to the next, so whole mixtures cannot be
# stacked, and the paper recipes that crop use 4 s. With batch_size 1 whole utterances
# stay whole (SepFormer's full-length training).
DEFAULT_SEGMENT_SECONDS = 4.0


class SeparationDataModule(L.LightningDataModule):
    """Train / valid / test data for a separation model.

    Each split is a mixture-table CSV (mixtures rendered on the fly, nothing dumped to
    disk) or a written folder (``<split>/<mixture_folder>/*.wav`` + ``s1..sN``). With
    ``synthetic`` set and no paths given, the built-in synthetic corpus is generated
    under ``synthetic_root`` (once; later runs reuse it) and its tables are used.

    The user's data takes over any recipe: a ``train`` path (or ``train_dataset``) turns
    the synthetic corpus and its remixing off for every split, and a ``null`` training
    crop then becomes :data:`DEFAULT_SEGMENT_SECONDS` when batches hold more than one
    mixture. Validation and test batches of whole mixtures only group mixtures of equal length
    (:class:`~sepkit.data.datasets.LengthGroupedBatchSampler`), so every metric is
    computed on an utterance's own, unpadded length.

    Args:
        train, valid, test: table CSV or folder for each split.
        table_root: folder relative source paths in tables start from (default: the
            table's own folder).
        synthetic: synthetic corpus configuration, used when no split paths are given.
        synthetic_root: where the synthetic corpus is written.
        synthetic_remix: train on fresh mixtures of the synthetic train utterances
            every epoch (dynamic mixing, :class:`RemixedSyntheticDataset`) instead of
            the fixed train table; valid and test stay fixed.
        sample_rate: data sample rate; ``sepkit train`` links it from the model block.
        n_src: sources per mixture; ``sepkit train`` links it from the model block.
        segment_seconds: training crop length (``None``: whole mixtures; with the user's
            data and ``batch_size > 1``, :data:`DEFAULT_SEGMENT_SECONDS`).
        valid_segment_seconds: validation crop length (``None``: whole mixtures).
        batch_size: training batch size.
        eval_batch_size: validation / test batch size; whole mixtures of different
            lengths go into separate batches (fewer than ``eval_batch_size`` each).
        num_workers: dataloader workers.
        mixture_folder: folder name of mixtures in written layouts.
        source_suffix: source folders of written layouts are ``s1<suffix> .. sN<suffix>``;
            ``None``: ``_anechoic`` for WHAMR!'s mixture folders (``mix_*_reverb``,
            ``mix_*_anechoic``: the targets of its separation tasks are the anechoic
            sources), none otherwise.
        seed: crop seed (shuffling follows ``seed_everything``).
        train_dataset: any ``Dataset`` (e.g. dynamic mixing) replacing ``train``.
    """

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        test: str | None = None,
        table_root: str | None = None,
        synthetic: SyntheticConfig | None = None,
        synthetic_root: str = "data/synthetic",
        synthetic_remix: bool = False,
        sample_rate: int = 8000,
        n_src: int = 2,
        segment_seconds: float | None = 4.0,
        valid_segment_seconds: float | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        mixture_folder: str = "mix",
        source_suffix: str | None = None,
        seed: int = 0,
        train_dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        if synthetic_remix and synthetic is None:
            raise ValueError("synthetic_remix needs the synthetic corpus as training data (set synthetic, not train)")
        if synthetic is not None and (train is not None or train_dataset is not None):
            log.info("training data given: the recipe's synthetic corpus is not used (valid and test neither)")
            synthetic, synthetic_remix = None, False
        if segment_seconds is None and synthetic is None and batch_size > 1:
            segment_seconds = DEFAULT_SEGMENT_SECONDS
        self.paths = {"train": train, "valid": valid, "test": test}
        self.table_root = table_root
        self.synthetic = synthetic
        self.synthetic_root = synthetic_root
        self.synthetic_remix = synthetic_remix
        self.sample_rate = sample_rate
        self.n_src = n_src
        self.segment_seconds = segment_seconds
        self.valid_segment_seconds = valid_segment_seconds
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.mixture_folder = mixture_folder
        self.source_suffix = whamr_source_suffix(mixture_folder) if source_suffix is None else source_suffix
        self.seed = seed
        self.train_dataset_override = train_dataset
        self.datasets: dict[str, Dataset] = {}
        if synthetic is not None:
            if synthetic.sample_rate != sample_rate or synthetic.n_src != n_src:
                raise ValueError(
                    f"synthetic corpus is {synthetic.sample_rate} Hz / {synthetic.n_src} sources but the "
                    f"datamodule expects {sample_rate} Hz / {n_src} sources"
                )
            for split in self.paths:
                if self.paths[split] is None:
                    self.paths[split] = str(table_path(synthetic_root, split))

    def prepare_data(self) -> None:
        # Runs once per node before setup(): the only place that writes data.
        if self.synthetic is not None:
            generate_corpus(self.synthetic_root, self.synthetic)

    def _segment(self, seconds: float | None) -> int | None:
        return None if seconds is None else int(round(seconds * self.sample_rate))

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` ("train", "valid" or "test")."""
        if split == "train" and self.train_dataset_override is not None:
            return self.train_dataset_override
        path = self.paths[split]
        if path is None:
            raise ValueError(f"no {split} data configured (set data.{split})")
        segment = self._segment(self.segment_seconds if split == "train" else self.valid_segment_seconds)
        segment_args = dict(segment_samples=segment, random_crop=split == "train", seed=self.seed)
        if split == "train" and self.synthetic_remix:
            return RemixedSyntheticDataset(self.synthetic_root, self.synthetic, "train", **segment_args)
        if Path(path).is_dir():
            return WrittenMixtureDataset(
                path,
                self.n_src,
                self.mixture_folder,
                sample_rate=self.sample_rate,
                source_suffix=self.source_suffix,
                **segment_args,
            )
        return MixtureTableDataset(
            path, root=self.table_root, sample_rate=self.sample_rate, n_src=self.n_src, **segment_args
        )

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "valid"], "validate": ["valid"], "test": ["test"], "predict": ["test"]}
        for split in wanted.get(stage, ["train", "valid", "test"]):
            configured = self.paths[split] is not None or (split == "train" and self.train_dataset_override is not None)
            if configured and split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        dataset = self.datasets[split]
        if not shuffle and batch_size > 1 and isinstance(dataset, SegmentedDataset):
            lengths = [dataset.item_length(index) for index in range(len(dataset))]
            if len(set(lengths)) > 1:
                # Whole mixtures of different lengths cannot be stacked (the default
                # collate fails inside a worker); batching equal lengths only keeps each
                # utterance's metric on its own samples, with no padding to mask.
                sampler = LengthGroupedBatchSampler(SequentialSampler(dataset), batch_size, False, lengths)
                return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers)
        # The training loader is stateful: a mid-epoch checkpoint records the shuffle
        # order and position, so a resumed run continues with exactly the next batch.
        loader_class = StatefulDataLoader if shuffle else DataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)


__all__ = ["SeparationDataModule", "SegmentedDataset"]
