"""Mixtures from any folder of single-speaker utterances (bring your own corpus).

Input: ``--sources DIR`` with one sub-folder per speaker, audio files anywhere below it.

Splits are speaker-disjoint: the sorted speaker list is shuffled with ``seed`` and cut
by ``fractions`` (e.g. 0.8/0.1/0.1 for train/valid/test). Splits can instead be given
their speakers by name (``--speakers test=spk07,spk12``, or ``--speakers-file`` with one
``<split> <speaker>`` pair a line): a named split holds exactly those, and the splits
left unnamed share the other speakers by their fractions. Each mixture draws ``n_src``
distinct speakers of its split and one utterance of each, uniformly.

Gain law (wsj0-mix style, with RMS in place of the P.56 active level): source ``i``
gets ``10 ** (snr_i / 20) / rms_i``, where ``rms_i`` is the RMS of the whole utterance
at its own rate and ``snr_i ~ U[-2.5, 2.5]`` dB independently per source (so two
sources differ by at most 5 dB, as in wsj0-2mix). Sources are resampled with
``resample_poly``, cut (``min``) or zero-padded (``max``), summed, scaled by
``0.9 / max |.|`` over mixture and sources, and quantised to int16.

Layout: ``<out>/{N}speakers/wav{rate}/{mode}/{split}/{mix,s1,..}/<id>.wav`` and the
tables ``.../{mode}/{split}.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.common import PrepareError, SplitPlan
from data_prep.progress import track
from data_prep.wsj0mix import resampled_length
from sepkit.audio import AUDIO_SUFFIXES
from sepkit.data.mixtures import MixtureSpec, SourceSpec
from sepkit.data.paths import is_inside

LEVEL_SPREAD_DB = 2.5


def list_speakers(root: Path) -> dict[str, list[Path]]:
    """``{speaker folder name: sorted audio files below it}``; speakers without audio are ignored.

    Every file's header is read here, so a corrupt or unreadable utterance stops the
    run before anything is written, with one line naming it (the run refuses rather
    than skipping it: a skipped file would silently change which mixtures are drawn).
    Files that resolve outside ``root`` (symlinks) are refused too.
    """
    speakers = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        for path in files:
            if not is_inside(path, root):
                raise PrepareError(f"{path}: resolves to {path.resolve()}, outside --sources {root}")
            _frames_and_rate(path)
        if files:
            speakers[folder.name] = files
    if not speakers:
        raise PrepareError(f"no speaker sub-folders with audio files under {root} (expected DIR/<speaker>/<files>)")
    return speakers


def split_speakers(
    speakers: list[str],
    names: list[str],
    fractions: list[float],
    seed: int,
    named: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Speaker-disjoint split: the splits in ``named`` get exactly the speakers listed
    there; the others shuffle the remaining speakers with ``seed`` and cut them by their
    ``fractions`` (normalised over those splits).

    Raises:
        PrepareError: a named split is not one of ``names``, a named speaker has no
            folder, or a speaker is named for two splits.
    """
    named = named or {}
    owner: dict[str, str] = {}
    for split, chosen in named.items():
        if split not in names:
            raise PrepareError(f"speakers named for split {split!r}, which is not one of --splits {' '.join(names)}")
        for speaker in chosen:
            if speaker not in speakers:
                raise PrepareError(f"speaker {speaker!r} named for split {split} has no folder under --sources")
            if speaker in owner and owner[speaker] != split:
                raise PrepareError(f"speaker {speaker!r} is named for both split {owner[speaker]} and split {split}")
            owner[speaker] = split
    assignment = {split: sorted(set(named[split])) for split in names if split in named}
    rest = [(name, fraction) for name, fraction in zip(names, fractions) if name not in named]
    order = [speaker for speaker in speakers if speaker not in owner]
    np.random.default_rng(seed).shuffle(order)
    if rest:
        total = float(sum(fraction for _, fraction in rest))
        bounds = np.round(np.cumsum([0.0, *(fraction for _, fraction in rest)]) / total * len(order)).astype(int)
        for k, (name, _) in enumerate(rest):
            assignment[name] = sorted(order[bounds[k] : bounds[k + 1]])
    return {name: assignment[name] for name in names}


def read_speaker_file(path: Path) -> dict[str, list[str]]:
    """``{split: [speaker, ...]}`` from a file of ``<split> <speaker>`` lines (spaces, tabs
    or a comma between them; blank lines and ``#`` comments are skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PrepareError(f"{path}: cannot read the speaker file ({err})") from None
    named: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 2:
            raise PrepareError(f"{path}:{number}: expected '<split> <speaker>', found {line.strip()!r}")
        named.setdefault(fields[0], []).append(fields[1])
    return named


def parse_speaker_option(values: list[str]) -> dict[str, list[str]]:
    """``{split: [speaker, ...]}`` from ``--speakers`` values such as ``test=spk07,spk12``."""
    named: dict[str, list[str]] = {}
    for value in values:
        split, sep, listed = value.partition("=")
        speakers = [name for name in listed.split(",") if name]
        if not sep or not split or not speakers:
            raise PrepareError(f"--speakers {value!r}: expected SPLIT=SPEAKER[,SPEAKER...]")
        named.setdefault(split, []).extend(speakers)
    return named


def _frames_and_rate(path: Path) -> tuple[int, int]:
    try:
        info = sf.info(str(path))
        return int(info.frames), int(info.samplerate)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise PrepareError(f"{path}: cannot read audio ({err})") from None


def _rms(path: Path) -> float:
    try:
        data, _ = sf.read(str(path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise PrepareError(f"{path}: cannot read audio ({err})") from None
    value = float(np.sqrt(np.mean(data[:, 0] ** 2))) if len(data) else 0.0
    if value == 0.0:
        raise PrepareError(f"{path}: silent or empty utterance (RMS 0) cannot be level-normalised")
    return value


def build_plans(
    sources: Path,
    out: Path,
    n_src: int,
    sample_rates: list[int],
    modes: list[str],
    split_names: list[str],
    fractions: list[float],
    n_mixtures: list[int],
    seed: int = 0,
    progress: bool = True,
    named_speakers: dict[str, list[str]] | None = None,
) -> list[SplitPlan]:
    if not (len(split_names) == len(fractions) == len(n_mixtures)):
        raise PrepareError("--splits, --fractions and --n-mixtures need the same number of values")
    speakers = list_speakers(sources)
    assignment = split_speakers(list(speakers), split_names, fractions, seed, named_speakers)
    rng = np.random.default_rng([seed, 1])
    rms_cache: dict[Path, float] = {}
    info_cache: dict[Path, tuple[int, int]] = {}
    plans = []
    for split, count in zip(split_names, n_mixtures):
        pool = assignment[split]
        if count > 0 and len(pool) < n_src:
            raise PrepareError(
                f"split {split} has {len(pool)} speaker(s) but mixtures need {n_src} distinct speakers; "
                "add speakers or change --fractions"
            )
        draws = []
        for index in range(count):
            chosen = rng.choice(len(pool), size=n_src, replace=False)
            files = [speakers[pool[k]][int(rng.integers(len(speakers[pool[k]])))] for k in chosen]
            levels = rng.uniform(-LEVEL_SPREAD_DB, LEVEL_SPREAD_DB, size=n_src)
            draws.append((index, [pool[k] for k in chosen], files, levels))
        new_files = sorted({f for _, _, files, _ in draws for f in files} - set(rms_cache))
        for path in track(new_files, len(new_files), f"RMS levels ({split})", progress):
            rms_cache[path] = _rms(path)
            info_cache[path] = _frames_and_rate(path)
        for rate in sample_rates:
            for mode in modes:
                specs = []
                for index, spk, files, levels in draws:
                    lengths = [resampled_length(*info_cache[f], rate) for f in files]
                    name = f"{split}{index:06d}_" + "_".join(f"{f.stem}_{lv:.4f}" for f, lv in zip(files, levels))
                    specs.append(
                        MixtureSpec(
                            mixture_id=name,
                            sample_rate=rate,
                            length=min(lengths) if mode == "min" else max(lengths),
                            sources=[
                                SourceSpec(path=str(f.resolve()), gain=10 ** (lv / 20) / rms_cache[f])
                                for f, lv in zip(files, levels)
                            ],
                            peak_normalize=0.9,
                            quantize="int16",
                            extra={f"s{i + 1}_speaker": s for i, s in enumerate(spk)},
                        )
                    )
                base = out / f"{n_src}speakers" / f"wav{rate}" / mode
                plans.append(
                    SplitPlan(
                        name=f"folder {n_src}spk {rate} {mode} {split}",
                        directory=base / split,
                        specs=specs,
                        folders={"mix_clean": "mix", **{f"s{i + 1}": f"s{i + 1}" for i in range(n_src)}},
                        tables={base / f"{split}.csv": specs},
                        out=out,
                        roots=(sources,),
                    )
                )
    return plans
