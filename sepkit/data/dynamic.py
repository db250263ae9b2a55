"""Dynamic mixing: a new random mixture for every item and epoch, from the training
utterances only.

The pool is the set of source utterances of the training mixture table(s) (or of
folders with one sub-folder per speaker). Utterances of the ``exclude`` tables (e.g. the
validation table) are always removed, and with ``exclude_speakers`` their speakers
too, so validation speech never leaks into training (SpeechBrain's and Asteroid's
recipes draw from all of ``si_tr_s``, which holds the cv utterances). wsj0-2mix's cv
shares its 101 speakers with tr by design; use ``exclude_speakers=False`` there.

Gain laws (levels in dB, ``N(mean, std)`` normal draws):

* ``speechbrain``: distinct speakers drawn with probability proportional to their
  utterance counts; all sources cropped to the shortest chosen one (at most one
  segment) at random offsets; source 1 at mean-|x| level ``N(-27.43, 2.57)``, others at
  that plus ``N(-2.51, 2.66)``, all clipped to [-45, 0]; sum (plus unscaled noise);
  everything scaled by ``0.9 / max |.|``; zero-padded to the segment length.
* ``asteroid``: speakers drawn uniformly with replacement; a random segment of each
  (zero-padded when shorter); peak level of source 1 ``N(-16.7, 7)``, others that minus
  ``N(2.52, 4)``, noise that minus ``N(5.1, 6.4)``, clipped to [-45, 0]; everything
  divided by the mixture peak if it exceeds 1.

``speed_perturb=(low, high)``: each source is played ``U(low, high)`` times faster
(resampling, pitch and tempo change, like SoX ``speed``) before cropping.
``speed_choices=[...]``: each source is played at a speed drawn uniformly from the list
instead. SpeechBrain's SepFormer recipes (``speedperturb: SpeedPerturb(orig_freq=8000,
speeds=[95, 100, 105], perturb_prob=1.0)``, each source perturbed independently, then all
cropped to the shortest) resample a source to 95, 100 or 105 % of its length, i.e. the
speed factors ``[100/95, 1.0, 100/105]``: ``SPEECHBRAIN_SPEEDS``. The factor is applied
as the rational ``Fraction(speed).limit_denominator(100)`` (20/19 and 20/21 exactly here).

Seeding: item ``index`` of epoch ``e`` on DDP rank ``r`` uses the generator
``numpy.random.default_rng([seed, e, r, index])``. Items therefore differ between
dataloader workers (they get different indices; no RNG state is shared by forked
workers), differ between ranks even if two ranks see the same index, change every
epoch, and are reproducible whatever the number of workers. Lightning does not tell
datasets the epoch: :class:`~sepkit.training.SeparationModule` calls
:meth:`DynamicMixingDataset.set_epoch` at every epoch start, and a mid-epoch checkpoint
carries the epoch in the dataset's ``state_dict``; with ``persistent_workers=True`` the
workers would keep the epoch they started with.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from sepkit.audio import AUDIO_SUFFIXES, audio_info, read_frames
from sepkit.data.paths import read_checked_table

# SpeechBrain's SpeedPerturb speeds [95, 100, 105] (% of the length) as speed factors.
SPEECHBRAIN_SPEEDS = (100 / 95, 1.0, 100 / 105)


@dataclass(frozen=True)
class Utterance:
    path: str
    speaker: str
    frames: int
    sample_rate: int


def _table_utterances(table: str | Path) -> list[tuple[str, str]]:
    found = []
    # paths checked against the table's roots like every table read (sepkit.data.paths)
    for spec in read_checked_table(table):
        for i, src in enumerate(spec.sources):
            path = src.path if Path(src.path).is_absolute() else str(Path(table).parent / src.path)
            speaker = spec.extra.get(f"s{i + 1}_speaker") or Path(path).parent.name
            found.append((path, speaker))
    return found


def _folder_utterances(folder: str | Path) -> list[tuple[str, str]]:
    found = []
    for speaker_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for f in sorted(speaker_dir.rglob("*")):
            if f.suffix.lower() in AUDIO_SUFFIXES:
                found.append((str(f), speaker_dir.name))
    return found


def collect_utterances(sources: list[str]) -> list[tuple[str, str]]:
    """``(path, speaker)`` pairs, de-duplicated, from tables (``.csv``) and folders."""
    seen: dict[str, str] = {}
    for item in sources:
        pairs = _table_utterances(item) if str(item).endswith(".csv") else _folder_utterances(item)
        for path, speaker in pairs:
            seen.setdefault(path, speaker)
    return sorted(seen.items())


class DynamicMixingDataset(Dataset):
    """Random mixtures drawn on the fly; items are ``(mixture [time], sources [n_src, time])``
    float32 tensors of ``segment_seconds * sample_rate`` samples.

    Args:
        utterances: training mixture table(s) (``.csv``) and/or speaker folders.
        n_src: sources per mixture.
        sample_rate: output rate (files are resampled with ``resample_poly``).
        segment_seconds: item length.
        epoch_size: items per epoch (``len(dataset)``).
        gain_law: ``"speechbrain"`` or ``"asteroid"`` (see the module docstring).
        speed_perturb: ``(low, high)`` speed factor range, or ``None``.
        speed_choices: speed factors to draw from uniformly per source (e.g.
            ``SPEECHBRAIN_SPEEDS``), or ``None``; exclusive with ``speed_perturb``.
        noise: optional folder of noise files (any layout) added to every mixture.
        exclude: tables whose utterances (and speakers, see ``exclude_speakers``) are removed.
        exclude_speakers: also remove every speaker of the ``exclude`` tables.
        seed: base seed.
    """

    def __init__(
        self,
        utterances: str | list[str],
        n_src: int = 2,
        sample_rate: int = 8000,
        segment_seconds: float = 4.0,
        epoch_size: int = 20000,
        gain_law: str = "speechbrain",
        speed_perturb: tuple[float, float] | None = None,
        speed_choices: list[float] | None = None,
        noise: str | None = None,
        exclude: list[str] | None = None,
        exclude_speakers: bool = True,
        seed: int = 0,
    ) -> None:
        if not utterances:
            raise ValueError(
                "dynamic mixing needs source utterances: give the mixture tables or utterance lists "
                "(e.g. --data.train_dataset.init_args.utterances tr.csv)"
            )
        if gain_law not in ("speechbrain", "asteroid"):
            raise ValueError(f"gain_law must be 'speechbrain' or 'asteroid', got {gain_law!r}")
        if speed_perturb and speed_choices:
            raise ValueError("speed_perturb and speed_choices exclude each other: set one")
        if speed_choices is not None and (not speed_choices or min(speed_choices) <= 0):
            raise ValueError(f"speed_choices must be a non-empty list of positive factors, got {speed_choices!r}")
        sources = [utterances] if isinstance(utterances, (str, Path)) else list(utterances)
        pairs = collect_utterances(sources)
        excluded = collect_utterances(exclude or [])
        banned_paths = {p for p, _ in excluded}
        banned_speakers = {s for _, s in excluded} if exclude_speakers else set()
        pairs = [(p, s) for p, s in pairs if p not in banned_paths and s not in banned_speakers]
        self.pool = [self._describe(p, s) for p, s in pairs]
        self.by_speaker: dict[str, list[Utterance]] = {}
        for utt in self.pool:
            self.by_speaker.setdefault(utt.speaker, []).append(utt)
        self.speakers = sorted(self.by_speaker)
        if gain_law == "speechbrain" and len(self.speakers) < n_src:
            raise ValueError(
                f"dynamic mixing pool has {len(self.speakers)} speaker(s) after exclusions, {n_src} needed"
                + (" (wsj0-2mix cv shares its speakers with tr: set exclude_speakers=False)" if banned_speakers else "")
            )
        if not self.pool:
            raise ValueError("dynamic mixing pool is empty")
        self.noise = (
            [self._describe(str(f), "") for f in sorted(Path(noise).rglob("*")) if f.suffix.lower() in AUDIO_SUFFIXES]
            if noise
            else []
        )
        if noise and not self.noise:
            raise ValueError(f"no noise files under {noise}")
        self.n_src = n_src
        self.sample_rate = sample_rate
        self.segment = int(round(segment_seconds * sample_rate))
        self.epoch_size = epoch_size
        self.gain_law = gain_law
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else None
        self.speed_choices = tuple(float(f) for f in speed_choices) if speed_choices else None
        self.seed = seed
        self.epoch = 0
        self.rank = _current_rank()

    @staticmethod
    def _describe(path: str, speaker: str) -> Utterance:
        frames, sample_rate = audio_info(path)
        return Utterance(path, speaker, frames, sample_rate)

    def set_epoch(self, epoch: int) -> None:
        """Mixtures of epoch ``epoch`` (called by the training module every epoch)."""
        self.epoch = int(epoch)
        self.rank = _current_rank()

    def state_dict(self) -> dict[str, int]:
        """The epoch, saved with the loader state in a mid-epoch checkpoint."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Back to the checkpoint's epoch on resume (no epoch-start hook runs mid-epoch);
        the rank is this process's own, not the saved one."""
        self.set_epoch(state["epoch"])

    def __len__(self) -> int:
        return self.epoch_size

    def _segment(self, utt: Utterance, rng: np.random.Generator, length: int, speed: float) -> np.ndarray:
        """A random piece of ``utt``: ``length`` samples at the output rate (fewer if
        the utterance is shorter), played ``speed`` times faster."""
        ratio = Fraction(self.sample_rate, utt.sample_rate) / Fraction(speed).limit_denominator(100)
        available = utt.frames * ratio
        need_out = min(length, math.floor(available))
        need_in = min(utt.frames, math.ceil(need_out / ratio) + 1)
        start = int(rng.integers(0, utt.frames - need_in + 1))
        x, _ = read_frames(utt.path, start=start, stop=start + need_in, dtype="float64")
        y = resample_poly(x[:, 0], ratio.numerator, ratio.denominator) if ratio != 1 else x[:, 0]
        return y[:need_out]

    def _out_length(self, utt: Utterance, speed: float) -> int:
        ratio = Fraction(self.sample_rate, utt.sample_rate) / Fraction(speed).limit_denominator(100)
        return math.floor(utt.frames * ratio)

    def _speed(self, rng: np.random.Generator) -> float:
        """One source's speed factor (no draw without perturbation, so seeds keep their mixtures)."""
        if self.speed_perturb:
            return float(rng.uniform(*self.speed_perturb))
        if self.speed_choices:
            return self.speed_choices[int(rng.integers(len(self.speed_choices)))]
        return 1.0

    def _pick(self, rng: np.random.Generator) -> list[Utterance]:
        if self.gain_law == "speechbrain":
            counts = np.array([len(self.by_speaker[s]) for s in self.speakers], dtype=np.float64)
            chosen = rng.choice(len(self.speakers), size=self.n_src, replace=False, p=counts / counts.sum())
        else:
            chosen = rng.choice(len(self.speakers), size=self.n_src, replace=True)
        picks = []
        for k in chosen:
            files = self.by_speaker[self.speakers[int(k)]]
            picks.append(files[int(rng.integers(len(files)))])
        return picks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, int(index)])
        picks = self._pick(rng)
        speeds = [self._speed(rng) for _ in picks]
        if self.gain_law == "speechbrain":
            length = min([self.segment] + [self._out_length(u, s) for u, s in zip(picks, speeds)])
        else:
            length = self.segment
        sources = np.zeros((self.n_src, self.segment))
        for i, (utt, speed) in enumerate(zip(picks, speeds)):
            piece = self._segment(utt, rng, length, speed)
            sources[i, : len(piece)] = piece
        noise = None
        if self.noise:
            utt = self.noise[int(rng.integers(len(self.noise)))]
            noise = np.zeros(self.segment)
            piece = self._segment(utt, rng, length, 1.0)
            noise[: len(piece)] = piece
        if self.gain_law == "speechbrain":
            mixture, sources, noise = self._speechbrain_levels(rng, sources, noise)
        else:
            mixture, sources, noise = self._asteroid_levels(rng, sources, noise)
        return torch.from_numpy(mixture.astype(np.float32)), torch.from_numpy(sources.astype(np.float32))

    @staticmethod
    def _scale_to(x: np.ndarray, level_db: float, measure: float) -> np.ndarray:
        return x * (10 ** (level_db / 20) / measure) if measure > 0 else x

    def _speechbrain_levels(self, rng, sources, noise):
        first = float(np.clip(rng.normal(-27.43, 2.57), -45, 0))
        levels = [first] + [float(np.clip(first + rng.normal(-2.51, 2.66), -45, 0)) for _ in range(self.n_src - 1)]
        sources = np.stack([self._scale_to(s, lv, float(np.mean(np.abs(s)))) for s, lv in zip(sources, levels)])
        mixture = sources.sum(axis=0) + (noise if noise is not None else 0.0)
        peak = max(float(np.max(np.abs(mixture))), float(np.max(np.abs(sources))))
        gain = 0.9 / peak if peak > 0 else 1.0
        return mixture * gain, sources * gain, None if noise is None else noise * gain

    def _asteroid_levels(self, rng, sources, noise):
        first = float(np.clip(rng.normal(-16.7, 7), -45, 0))
        levels = [first] + [float(np.clip(first - rng.normal(2.52, 4), -45, 0)) for _ in range(self.n_src - 1)]
        sources = np.stack([self._scale_to(s, lv, float(np.max(np.abs(s)))) for s, lv in zip(sources, levels)])
        mixture = sources.sum(axis=0)
        if noise is not None:
            noise = self._scale_to(
                noise, float(np.clip(first - rng.normal(5.1, 6.4), -45, 0)), float(np.max(np.abs(noise)))
            )
            mixture = mixture + noise
        peak = float(np.max(np.abs(mixture)))
        if peak > 1:
            mixture, sources = mixture / peak, sources / peak
            noise = None if noise is None else noise / peak
        return mixture, sources, noise


def _current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
