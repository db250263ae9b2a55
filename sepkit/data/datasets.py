"""Datasets yielding ``(mixture [time], sources [n_src, time])`` float32 tensors.

Two sources of the same data, interchangeable in the datamodule:

- :class:`MixtureTableDataset` renders each row of a mixture table on the fly (no
  dataset dump on disk);
- :class:`WrittenMixtureDataset` reads a written folder layout
  (``<root>/<mixture_folder>/<id>.wav`` and ``<root>/s1 .. sN/<id>.wav``).

Both crop training segments the same way: the window start is a pure function of
``(seed, epoch, index)``, so on-the-fly and written data give identical batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from sepkit.audio import audio_info, read_audio
from sepkit.data.mixtures import MixtureSpec, render
from sepkit.data.paths import MANIFEST, read_checked_table


class SegmentedDataset(Dataset):
    """Base class: subclasses implement ``load(index) -> (mixture, sources)`` arrays;
    this class crops or pads them to ``segment_samples`` (``None`` keeps full length).

    Args:
        segment_samples: training window length; shorter items are zero-padded.
        random_crop: draw the window start at random (training); otherwise start at 0.
        seed: crop seed.
    """

    def __init__(self, segment_samples: int | None = None, random_crop: bool = True, seed: int = 0) -> None:
        self.segment_samples = segment_samples
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New crop positions each epoch (called by the training module)."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """The epoch, saved with the loader state in a mid-epoch checkpoint."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Back to the checkpoint's epoch on resume (no epoch-start hook runs mid-epoch)."""
        self.epoch = int(state["epoch"])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def item_id(self, index: int) -> str:
        raise NotImplementedError

    def full_length(self, index: int) -> int:
        """Samples of item ``index`` before cropping, known without rendering it."""
        raise NotImplementedError

    def item_length(self, index: int) -> int:
        """Samples of the tensors ``self[index]`` returns (the segment when cropping)."""
        return self.segment_samples if self.segment_samples is not None else self.full_length(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mixture, sources = self.load(index)
        if self.segment_samples is not None:
            mixture, sources = self._crop(index, mixture, sources)
        return torch.from_numpy(np.ascontiguousarray(mixture)), torch.from_numpy(np.ascontiguousarray(sources))

    def _crop(self, index: int, mixture: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.segment_samples
        length = mixture.shape[-1]
        if length <= size:
            pad = size - length
            return np.pad(mixture, (0, pad)), np.pad(sources, ((0, 0), (0, pad)))
        start = 0
        if self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start = int(rng.integers(0, length - size + 1))
        return mixture[start : start + size], sources[:, start : start + size]


class MixtureTableDataset(SegmentedDataset):
    """Mixtures rendered on the fly from a mixture table (see :mod:`sepkit.data.mixtures`).

    Every row is checked when the table is read (see :func:`sepkit.data.paths.read_checked_table`):
    source paths must resolve inside ``root``, the corpora recorded by the ``sepkit
    prepare`` run that wrote the table, or ``allowed_roots``.

    Args:
        table: mixture-table CSV.
        root: folder that relative source paths start from (default: the table's folder).
        sample_rate: expected rate; a row with another rate is an error.
        n_src: expected number of sources.
        allowed_roots: further folders absolute source paths may point into.
    """

    def __init__(
        self,
        table: str | Path,
        root: str | Path | None = None,
        sample_rate: int | None = None,
        n_src: int | None = None,
        allowed_roots: Sequence[str | Path] = (),
        **segment_args,
    ) -> None:
        super().__init__(**segment_args)
        self.table = Path(table)
        self.root = Path(root) if root is not None else self.table.parent
        self.rows: list[MixtureSpec] = read_checked_table(self.table, self.root, allowed_roots)
        for row in self.rows:
            if sample_rate is not None and row.sample_rate != sample_rate:
                raise ValueError(
                    f"{self.table}: mixture {row.mixture_id} is at {row.sample_rate} Hz, expected {sample_rate}"
                )
            if n_src is not None and row.n_src != n_src:
                raise ValueError(f"{self.table}: mixture {row.mixture_id} has {row.n_src} sources, expected {n_src}")

    def __len__(self) -> int:
        return len(self.rows)

    def item_id(self, index: int) -> str:
        return self.rows[index].mixture_id

    def full_length(self, index: int) -> int:
        return self.rows[index].length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render(self.rows[index], self.root)


class WrittenMixtureDataset(SegmentedDataset):
    """Mixtures read from a written folder: ``<root>/<mixture_folder>/<id>.wav`` with the
    matching ``<root>/s1 .. s<n_src>/<id>.wav``.

    The ids are the rows of the split's mixture table when the folder was written by
    ``sepkit prepare`` (found through its ``prepare_manifest.json``), so files left by
    another run are never read; folders from elsewhere (the official scripts) are listed.

    Args:
        root: the split's folder (e.g. ``wav8k/min/tt``).
        n_src: number of source folders.
        mixture_folder: ``mix`` (wsj0-mix), ``mix_clean`` / ``mix_both`` (LibriMix), ...
        sample_rate: expected rate; a file with another rate is an error.
        source_suffix: the sources are ``s1<suffix> .. s<n_src><suffix>`` (WHAMR!'s
            anechoic targets: ``_anechoic``).
    """

    def __init__(
        self,
        root: str | Path,
        n_src: int,
        mixture_folder: str = "mix",
        sample_rate: int | None = None,
        source_suffix: str = "",
        **segment_args,
    ) -> None:
        super().__init__(**segment_args)
        self.root = Path(root)
        self.n_src = n_src
        self.sample_rate = sample_rate
        self.source_dirs = [self.root / f"s{i}{source_suffix}" for i in range(1, n_src + 1)]
        self.mixture_dir = self.root / mixture_folder
        if not self.mixture_dir.is_dir():
            raise FileNotFoundError(f"{self.mixture_dir}: mixture folder not found")
        table = split_table(self.root)
        if table is not None:
            self.names = sorted(f"{spec.mixture_id}.wav" for spec in read_checked_table(table))
            missing = [n for n in self.names if not (self.mixture_dir / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{self.mixture_dir}: {len(missing)} mixture(s) of {table} not written, e.g. {missing[0]}"
                )
        else:
            self.names = sorted(p.name for p in self.mixture_dir.glob("*.wav"))
        if not self.names:
            raise FileNotFoundError(f"{self.mixture_dir}: no .wav mixtures")
        for source_dir in self.source_dirs:
            missing = [n for n in self.names if not (source_dir / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{source_dir}: {len(missing)} source files missing, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.names)

    def item_id(self, index: int) -> str:
        return Path(self.names[index]).stem

    def full_length(self, index: int) -> int:
        return audio_info(self.mixture_dir / self.names[index])[0]

    def _read(self, path: Path) -> np.ndarray:
        samples, rate = read_audio(path, channel_policy="first")
        if self.sample_rate is not None and rate != self.sample_rate:
            raise ValueError(f"{path}: sample rate {rate} Hz, expected {self.sample_rate}")
        return samples

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.names[index]
        mixture = self._read(self.mixture_dir / name)
        sources = np.stack([self._read(source_dir / name) for source_dir in self.source_dirs])
        lengths = {len(mixture), *(len(source) for source in sources)}
        if len(lengths) > 1:
            raise ValueError(f"{self.mixture_dir / name}: mixture and sources differ in length ({sorted(lengths)})")
        return mixture, sources


def whamr_source_suffix(mixture_folder: str) -> str:
    """``_anechoic`` for a WHAMR! mixture folder (``mix_*_reverb`` / ``mix_*_anechoic``),
    whose separation tasks target the anechoic sources; ``""`` for any other layout."""
    return "_anechoic" if mixture_folder.endswith(("_reverb", "_anechoic")) else ""


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of indices whose items have equal length, for whole-mixture evaluation.

    Indices are taken in ``sampler`` order; each joins the open batch of its length, and a
    batch is yielded when it holds ``batch_size`` indices; unfinished batches follow at
    the end, in the order their first index came. Mixtures that share a length are
    batched, every other mixture is scored alone, on its own samples (no padding).
    Lightning rebuilds it around a ``DistributedSampler`` under DDP (its arguments
    match :class:`~torch.utils.data.BatchSampler`'s), so each rank groups its own share.

    Args:
        sampler: the indices to batch.
        batch_size: most indices per batch.
        drop_last: drop unfinished batches.
        lengths: ``lengths[index]``: samples of item ``index``.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, lengths: Sequence[int]) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = list(lengths)

    def __iter__(self) -> Iterator[list[int]]:
        open_batches: dict[int, list[int]] = {}
        for index in self.sampler:
            batch = open_batches.setdefault(self.lengths[index], [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                del open_batches[self.lengths[index]]
        if not self.drop_last:
            yield from (batch for batch in open_batches.values() if batch)

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for index in self.sampler:
            counts[self.lengths[index]] = counts.get(self.lengths[index], 0) + 1
        full = sum(count // self.batch_size for count in counts.values())
        return full + (0 if self.drop_last else sum(1 for count in counts.values() if count % self.batch_size))


def split_table(split_dir: str | Path) -> Path | None:
    """The mixture table of a split folder written by ``sepkit prepare``, from the
    ``prepare_manifest.json`` above it; ``None`` for folders it did not write."""
    split_dir = Path(split_dir).resolve()
    for folder in split_dir.parents:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        try:
            entry = json.loads(manifest.read_text())["splits"].get(str(split_dir.relative_to(folder)))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f"{manifest}: not a readable prepare manifest ({err})") from None
        return folder / entry["tables"][0] if entry and entry.get("tables") else None
    return None
