"""A built-in, deterministic, speech-like corpus that needs no download.

Each synthetic "speaker" has a pitch range and a timbre (formant scaling, spectral
tilt, breathiness). Pitch ranges of different speakers overlap, so pitch alone does
not tell them apart. An utterance is a sequence of

- voiced segments: a harmonic series on a moving pitch contour, shaped by a
  formant-like spectral envelope that glides between vowel targets,
- unvoiced segments: noise bursts with a fricative-like (high-pass or band) spectrum,
- pauses.

Mixtures take two (or more) utterances of different speakers at a random relative
level in [-5, 5] dB, placed so that their active spans overlap for at least half of
the mixture. Train, valid and test speakers are disjoint. Everything is derived from
one seed, so a corpus is reproducible bit for bit.

The corpus is written as wav files plus mixture tables (:mod:`sepkit.data.mixtures`),
the same format data_prep/ produces for real corpora, or rendered on the fly with
:class:`SyntheticMixtures`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sepkit.audio import write_audio_atomic
from sepkit.data.datasets import SegmentedDataset
from sepkit.data.mixtures import MixtureSpec, SourceSpec, read_table, render, write_table
from sepkit.fileio import atomic_output

log = logging.getLogger(__name__)

# Vowel-like formant targets (F1, F2, F3 in Hz) of an adult voice; speakers scale them.
VOWEL_FORMANTS = np.array(
    [
        [730, 1090, 2440],
        [530, 1840, 2480],
        [270, 2290, 3010],
        [570, 840, 2410],
        [300, 870, 2240],
        [660, 1720, 2410],
        [490, 1350, 1690],
        [440, 1020, 2240],
    ],
    dtype=np.float64,
)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
# Samples between evaluations of the spectral envelope (interpolated in between).
ENVELOPE_HOP = 32
SPLITS = ("train", "valid", "test")
# A split's utterances: {speaker: [(path relative to the corpus root, length, storage scale)]}.
Utterances = dict[str, list[tuple[str, int, float]]]


@dataclass
class SyntheticConfig:
    """Sizes and seed of a synthetic corpus.

    Attributes:
        seed: master seed; every speaker, utterance and mixture derives from it.
        sample_rate: output rate in Hz.
        n_src: speakers per mixture.
        mixture_seconds: mixture length.
        speakers: number of speakers per split (train, valid, test), disjoint.
        utterances_per_speaker: utterances synthesised per speaker.
        mixtures: number of mixtures per split (train, valid, test).
        min_overlap: minimum fraction of the mixture in which all sources are active.
        max_level_db: relative levels are uniform in [-max_level_db, max_level_db].
    """

    seed: int = 0
    sample_rate: int = 8000
    n_src: int = 2
    mixture_seconds: float = 2.0
    speakers: tuple[int, int, int] = (40, 8, 8)
    utterances_per_speaker: int = 12
    mixtures: tuple[int, int, int] = (4000, 200, 200)
    min_overlap: float = 0.5
    max_level_db: float = 5.0

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Speaker:
    """Voice parameters of one synthetic speaker."""

    name: str
    f0_low: float
    f0_high: float
    formant_scale: float
    tilt_db_per_octave: float
    breathiness: float


def make_speakers(split: str, count: int, seed: int) -> list[Speaker]:
    """Draw ``count`` speakers for ``split``. Each voice has a characteristic register
    (centre 100-240 Hz) and a range of 1.3-1.6x around it, so the ranges of most
    pairs of speakers overlap (about two thirds, for uniform log-centres)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    speakers = []
    for index in range(count):
        centre = np.exp(rng.uniform(np.log(100.0), np.log(240.0)))
        width = rng.uniform(1.3, 1.6)  # ratio between top and bottom of the range
        speakers.append(
            Speaker(
                name=f"{split}{index:03d}",
                f0_low=centre / np.sqrt(width),
                f0_high=centre * np.sqrt(width),
                formant_scale=rng.uniform(0.85, 1.2),
                tilt_db_per_octave=rng.uniform(-9.0, -4.0),
                breathiness=rng.uniform(0.0, 0.08),
            )
        )
    return speakers


def _smooth_contour(rng: np.random.Generator, n: int, low: float, high: float, points: int) -> np.ndarray:
    knots = rng.uniform(low, high, size=max(points, 2))
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(knots)), knots)


def _voiced(rng: np.random.Generator, spk: Speaker, f0: np.ndarray, sr: int) -> np.ndarray:
    """A voiced segment on the pitch track ``f0`` (Hz per sample)."""
    n = len(f0)
    t = np.arange(n) / sr
    f0 = f0 * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    start, end = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS), size=2)] * spk.formant_scale
    # Harmonics stay below Nyquist over the whole segment (no aliasing).
    n_harm = max(1, int(sr / 2 / f0.max()))
    k = np.arange(1, n_harm + 1)[:, None]
    # Pitch and formants move slowly, so the spectral envelope is evaluated every
    # ENVELOPE_HOP samples (the last point at or past the end, at the end's values)
    # and interpolated linearly in between.
    m = (n - 1) // ENVELOPE_HOP + 2
    coarse = np.minimum(np.arange(m) * ENVELOPE_HOP, n - 1)
    glide = (coarse / max(n - 1, 1))[:, None]
    formants = (1 - glide) * start + glide * end  # [m, 3]
    freqs = k * f0[coarse][None, :]  # [H, m]
    env = np.zeros_like(freqs)
    for i in range(3):
        env += (1.0 / (i + 1)) / (1 + ((freqs - formants[:, i][None, :]) / FORMANT_BANDWIDTHS[i]) ** 2)
    env *= 10 ** (spk.tilt_db_per_octave * np.log2(np.maximum(freqs, 50) / 100) / 20)
    position = np.arange(n) / ENVELOPE_HOP
    left = position.astype(np.int64)
    weight = position - left
    env = env[:, left] * (1 - weight) + env[:, left + 1] * weight  # [H, n]
    signal = (env * np.sin(k * phase[None, :] + rng.uniform(0, 2 * np.pi, size=(n_harm, 1)))).sum(0)
    signal += spk.breathiness * np.abs(signal).mean() * rng.standard_normal(n)
    return signal * np.hanning(n) ** 0.5


def _unvoiced(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    centre = rng.uniform(0.25, 0.45) * sr
    spectrum *= 1 / (1 + ((freqs - centre) / (0.12 * sr)) ** 2)
    burst = np.fft.irfft(spectrum, n)
    return burst * np.hanning(n)


def _pitch_track(rng: np.random.Generator, spk: Speaker, total: int, sr: int) -> np.ndarray:
    """Utterance prosody: the speaker's register shifted by up to +-5%, a slow contour
    of +-12% around it (a knot every ~0.4 s) and a 10% declination, kept in range."""
    register = np.sqrt(spk.f0_low * spk.f0_high) * rng.uniform(0.95, 1.05)
    knots = max(2, int(total / sr / 0.4) + 1)
    contour = _smooth_contour(rng, total, 0.88, 1.12, points=knots)
    declination = np.linspace(1.05, 0.95, total)
    return np.clip(register * contour * declination, spk.f0_low, spk.f0_high)


def synthesize_utterance(spk: Speaker, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One utterance of ``spk``: voiced / unvoiced / pause segments on one prosodic
    pitch track, unit RMS."""
    total = int(round(seconds * sr))
    out = np.zeros(total)
    f0 = _pitch_track(rng, spk, total, sr)
    pos = int(rng.uniform(0.0, 0.05) * sr)
    while pos < total:
        kind = rng.choice(["voiced", "unvoiced", "pause"], p=[0.6, 0.2, 0.2])
        if kind == "voiced":
            n = min(int(rng.uniform(0.08, 0.35) * sr), total - pos)
            segment = _voiced(rng, spk, f0[pos : pos + n], sr)
        elif kind == "unvoiced":
            n = int(rng.uniform(0.03, 0.12) * sr)
            segment = _unvoiced(rng, n, sr)
        else:
            pos += int(rng.uniform(0.04, 0.2) * sr)
            continue
        n = min(n, total - pos)
        # Fricative-like bursts sit about 10 dB below voiced segments, as in speech.
        level = rng.uniform(0.6, 1.0) * (0.3 if kind == "unvoiced" else 1.0)
        out[pos : pos + n] += segment[:n] / (np.std(segment) + 1e-12) * level
        pos += n
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _overlapping_spans(rng: np.random.Generator, cfg: SyntheticConfig, total: int) -> list[tuple[int, int]]:
    # Each source is active over a span of 70-100% of the mixture; redraw offsets until
    # all spans share at least ``min_overlap`` of the mixture.
    while True:
        lengths = rng.integers(int(0.7 * total), total + 1, size=cfg.n_src)
        offsets = [int(rng.integers(0, total - length + 1)) for length in lengths]
        common = min(o + length for o, length in zip(offsets, lengths)) - max(offsets)
        if common >= cfg.min_overlap * total:
            return [(int(o), int(length)) for o, length in zip(offsets, lengths)]


def _relative_gains(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    # Levels in dB relative to the first source, uniform in [-max, max]; 0.05 keeps the
    # peaks of a sum of unit-RMS sources well inside [-1, 1] for int16 files.
    levels = np.concatenate([[0.0], rng.uniform(-cfg.max_level_db, cfg.max_level_db, cfg.n_src - 1)])
    return 0.05 * 10 ** (levels / 20)


def _synthesize_speaker(job: tuple[SyntheticConfig, str, int, Speaker, Path]) -> list[tuple[str, int, float]]:
    """Write one speaker's utterances; returns ``[(relative path, length, storage scale)]``.

    A pure function of its arguments (its own seeded generator), so speakers can be
    synthesised in any order or in parallel processes with identical results."""
    cfg, split, s, spk, out_dir = job
    sr = cfg.sample_rate
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 2, s])
    rows = []
    for u in range(cfg.utterances_per_speaker):
        seconds = rng.uniform(1.0, 1.6) * cfg.mixture_seconds
        wav = synthesize_utterance(spk, seconds, sr, rng)
        # Stored peak-normalised (int16 needs it); the mixing gain divides the
        # storage scale back out so levels refer to the unit-RMS utterance.
        scale = 0.9 / np.abs(wav).max()
        rel = Path(split) / "utterances" / spk.name / f"{spk.name}_{u:03d}.wav"
        write_audio_atomic(out_dir / rel, (scale * wav).astype(np.float32), sr, subtype="PCM_16")
        rows.append((rel.as_posix(), len(wav), float(scale)))
    return rows


def build_split(
    cfg: SyntheticConfig, split: str, out_dir: Path, pool: concurrent.futures.Executor | None = None
) -> tuple[list[MixtureSpec], Utterances]:
    """Synthesise one split's utterances to ``out_dir/<split>/utterances`` (int16 wav).
    Speakers are synthesised on ``pool`` when given (same files, in parallel).

    Returns:
        the split's mixture table rows (paths relative to ``out_dir``) and its
        utterances, ``{speaker: [(relative path, length, storage scale)]}``.
    """
    index = SPLITS.index(split)
    speakers = make_speakers(split, cfg.speakers[index], cfg.seed)
    jobs = [(cfg, split, s, spk, out_dir) for s, spk in enumerate(speakers)]
    results = pool.map(_synthesize_speaker, jobs) if pool is not None else map(_synthesize_speaker, jobs)
    utterances: Utterances = {}
    # Counted by hand: a tqdm-wrapped iterable zipped after `speakers` is never asked for
    # the item past its last, so the bar stopped at n-1 of n.
    with tqdm(total=len(jobs), desc=f"synthesising {split} speakers") as bar:
        for spk, rows in zip(speakers, results):
            utterances[spk.name] = rows
            bar.update()
    rng = np.random.default_rng([cfg.seed, index, 3])
    specs = [draw_mixture(rng, cfg, utterances, f"{split}_{m:05d}") for m in range(cfg.mixtures[index])]
    return specs, utterances


def draw_mixture(
    rng: np.random.Generator, cfg: SyntheticConfig, utterances: Utterances, mixture_id: str
) -> MixtureSpec:
    """One mixture of ``cfg.n_src`` distinct speakers drawn from ``utterances``
    (``{speaker: [(relative path, length, storage scale)]}``): random relative levels,
    active spans that overlap for at least ``cfg.min_overlap`` of the mixture."""
    total = int(round(cfg.mixture_seconds * cfg.sample_rate))
    names = sorted(utterances)
    chosen = rng.choice(len(names), size=cfg.n_src, replace=False)
    gains = _relative_gains(rng, cfg)
    sources = []
    spans = _overlapping_spans(rng, cfg, total)
    for (offset, span), c, gain in zip(spans, chosen, gains):
        path, length, scale = utterances[names[c]][int(rng.integers(len(utterances[names[c]])))]
        # Reading from ``length - span`` to the end of the file yields exactly
        # ``span`` active samples, which the renderer places at ``offset``.
        sources.append(SourceSpec(path=path, gain=float(gain / scale), start=length - span, offset=offset))
    return MixtureSpec(mixture_id=mixture_id, sample_rate=cfg.sample_rate, length=total, sources=sources)


def table_path(root: str | Path, split: str) -> Path:
    """Where :func:`generate_corpus` writes the mixture table of ``split``."""
    return Path(root) / f"{split}.csv"


def utterance_table_path(root: str | Path, split: str) -> Path:
    """Where :func:`generate_corpus` lists the utterances of ``split`` (for remixing)."""
    return Path(root) / f"{split}_utterances.csv"


UTTERANCE_COLUMNS = ("speaker", "path", "length", "storage_scale")


def write_utterance_table(path: Path, utterances: Utterances) -> None:
    """Write ``utterances`` as a CSV of :data:`UTTERANCE_COLUMNS`, atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(UTTERANCE_COLUMNS)
        for speaker in sorted(utterances):
            for rel, length, scale in utterances[speaker]:
                writer.writerow([speaker, rel, length, repr(scale)])


def read_utterance_table(path: str | Path) -> Utterances:
    """``{speaker: [(relative path, length, storage scale)]}`` from an utterance table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: synthetic utterance table not found (regenerate the corpus)")
    utterances: Utterances = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != UTTERANCE_COLUMNS:
            raise ValueError(f"{path}: expected columns {','.join(UTTERANCE_COLUMNS)}, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                entry = (row["path"], int(row["length"]), float(row["storage_scale"]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}:{line}: malformed utterance row ({err})") from err
            utterances.setdefault(row["speaker"], []).append(entry)
    return utterances


def generate_corpus(
    root: str | Path, cfg: SyntheticConfig | None = None, workers: int | None = None
) -> dict[str, Path]:
    """Write the corpus under ``root`` (utterance wavs + ``train/valid/test.csv`` mixture
    tables) unless a finished corpus with the same configuration is already there.

    ``workers`` processes synthesise speakers in parallel (default: the CPUs this
    process may use); the files are identical whatever the number.

    Returns:
        ``{split: table path}``.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root)
    stamp = root / "corpus.json"
    tables = {split: table_path(root, split) for split in SPLITS}
    outputs = list(tables.values()) + [utterance_table_path(root, split) for split in SPLITS]

    def finished() -> bool:
        if not stamp.is_file() or json.loads(stamp.read_text()).get("fingerprint") != cfg.fingerprint():
            return False
        return all(path.is_file() for path in outputs)

    if finished():
        return tables
    root.mkdir(parents=True, exist_ok=True)
    # Every node of a multi-node job (and every run started at once) may call this on one
    # shared folder: the first to take the lock writes the corpus, the others wait and
    # then find it finished. The lock file is never removed (removing it would let a
    # third process lock a new file while the second still holds the old one).
    with open(root / ".generate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if finished():
                return tables
            log.info("generating the synthetic corpus in %s", root)
            _write_corpus(root, cfg, tables, workers)
            # The stamp is written last: its presence means every file above is complete.
            with atomic_output(stamp) as tmp:
                tmp.write_text(json.dumps({"fingerprint": cfg.fingerprint(), "config": asdict(cfg)}, indent=2))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return tables


def _write_corpus(root: Path, cfg: SyntheticConfig, tables: dict[str, Path], workers: int | None) -> None:
    """Synthesise every split's utterances and write their utterance and mixture tables."""
    workers = workers or len(os.sched_getaffinity(0))
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            # spawn, not fork: the caller may be a process with torch's thread pools running.
            pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
        for split in SPLITS:
            specs, utterances = build_split(cfg, split, root, pool)
            write_utterance_table(utterance_table_path(root, split), utterances)
            write_table(tables[split], specs)


class SyntheticMixtures(Dataset):
    """Synthetic mixtures rendered in memory, nothing written to disk.

    Item ``i`` is ``(mixture [time], sources [n_src, time])`` float32, a pure function
    of ``(cfg.seed, split, i)``.
    """

    def __init__(self, cfg: SyntheticConfig | None = None, split: str = "train") -> None:
        self.cfg = cfg or SyntheticConfig()
        self.split = split
        self.speakers = make_speakers(split, self.cfg.speakers[SPLITS.index(split)], self.cfg.seed)

    def __len__(self) -> int:
        return self.cfg.mixtures[SPLITS.index(self.split)]

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, sr = self.cfg, self.cfg.sample_rate
        rng = np.random.default_rng([cfg.seed, SPLITS.index(self.split), 4, item])
        total = int(round(cfg.mixture_seconds * sr))
        chosen = rng.choice(len(self.speakers), size=cfg.n_src, replace=False)
        gains = _relative_gains(rng, cfg)
        sources = np.zeros((cfg.n_src, total))
        for i, ((offset, span), c, gain) in enumerate(zip(_overlapping_spans(rng, cfg, total), chosen, gains)):
            wav = synthesize_utterance(self.speakers[c], span / sr, sr, rng)
            sources[i, offset : offset + span] = gain * wav[:span]
        return torch.from_numpy(sources.sum(0)).float(), torch.from_numpy(sources).float()


class RemixedSyntheticDataset(SegmentedDataset):
    """Dynamic mixing for the synthetic corpus: fresh mixtures of a written split's
    utterances every epoch, drawn exactly as the split's fixed table was (distinct
    speakers, levels in [-max_level_db, max_level_db], overlapping active spans).

    The fixed table pairs each utterance with a handful of partners; remixing shows the
    model a new pairing, level and alignment at every step, with no new speakers and
    nothing written. Mixture ``index`` of epoch ``e`` is a pure function of
    ``(cfg.seed, split, e, index)``, so resumed and multi-process runs see the same data.

    Args:
        root: corpus folder written by :func:`generate_corpus` with ``cfg``.
        cfg: the corpus configuration; ``cfg.mixtures`` sets the epoch length.
        split: which split's utterances to remix (normally "train").
        **segment_args: crop arguments of :class:`SegmentedDataset`.
    """

    def __init__(self, root: str | Path, cfg: SyntheticConfig, split: str = "train", **segment_args) -> None:
        super().__init__(**segment_args)
        self.root = Path(root)
        self.cfg = cfg
        self.split = split
        self.utterances = read_utterance_table(utterance_table_path(root, split))
        if len(self.utterances) < cfg.n_src:
            raise ValueError(
                f"{utterance_table_path(root, split)}: {len(self.utterances)} speaker(s), "
                f"{cfg.n_src} needed per mixture"
            )

    def __len__(self) -> int:
        return self.cfg.mixtures[SPLITS.index(self.split)]

    def item_id(self, index: int) -> str:
        return f"{self.split}_epoch{self.epoch}_{index:05d}"

    def spec(self, index: int) -> MixtureSpec:
        """The mixture table row of item ``index`` in the current epoch."""
        rng = np.random.default_rng([self.cfg.seed, SPLITS.index(self.split), 5, self.epoch, index])
        return draw_mixture(rng, self.cfg, self.utterances, self.item_id(index))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render(self.spec(index), self.root)


def _export(table: Path, mixture_id: str, out_dir: Path) -> None:
    """Write one table row as ``<id>.wav`` plus ``references/<id>_s<i>.wav``."""
    rows = {row.mixture_id: row for row in read_table(table)}
    if mixture_id not in rows:
        raise SystemExit(f"{table}: no mixture {mixture_id!r}")
    row = rows[mixture_id]
    mixture, sources = render(row, table.parent)
    write_audio_atomic(out_dir / f"{mixture_id}.wav", mixture, row.sample_rate, subtype="FLOAT")
    for i, source in enumerate(sources):
        write_audio_atomic(
            out_dir / "references" / f"{mixture_id}_s{i + 1}.wav", source, row.sample_rate, subtype="FLOAT"
        )
    print(f"wrote {out_dir / f'{mixture_id}.wav'} and {len(sources)} references")


def _score(mixture_path: Path, separated_dir: Path, references_dir: Path) -> None:
    """Print SI-SDR of the mixture and of the separated files (best permutation)."""
    from sepkit.audio import read_audio
    from sepkit.metrics import score_utterance

    stem = mixture_path.stem
    mixture, sample_rate = read_audio(mixture_path)
    refs = sorted(references_dir.glob(f"{stem}_s*.wav"))
    references = np.stack([read_audio(p)[0] for p in refs])
    estimates = np.stack([read_audio(separated_dir / f"{stem}_s{i + 1}.wav")[0] for i in range(len(refs))])
    scores = score_utterance(estimates, references, mixture, sample_rate, ("si_sdr",))
    if scores.values["si_sdr"] is None:
        raise SystemExit(f"{stem}: SI-SDR undefined: {scores.flags['si_sdr']}")
    print(
        f"{stem}: mixture SI-SDR {scores.inputs['si_sdr']:.2f} dB -> separated {scores.values['si_sdr']:.2f} dB "
        f"(SI-SDR improvement {scores.improvements['si_sdr']:.2f} dB); files in {separated_dir}"
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sepkit.data.synthetic", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write the corpus (wavs + mixture tables)")
    generate.add_argument("root")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPUs)")
    export = commands.add_parser("export", help="write one mixture and its references as wav files")
    export.add_argument("table", type=Path)
    export.add_argument("mixture_id")
    export.add_argument("-o", "--out-dir", type=Path, required=True)
    score = commands.add_parser("score", help="SI-SDR(i) of separated files against references")
    score.add_argument("mixture", type=Path)
    score.add_argument("separated", type=Path)
    score.add_argument("references", type=Path)
    args = parser.parse_args(argv)
    if args.command == "generate":
        tables = generate_corpus(args.root, SyntheticConfig(seed=args.seed), workers=args.workers)
        print("\n".join(f"{split}: {path}" for split, path in tables.items()))
    elif args.command == "export":
        _export(args.table, args.mixture_id, args.out_dir)
    else:
        _score(args.mixture, args.separated, args.references)


if __name__ == "__main__":
    main()
