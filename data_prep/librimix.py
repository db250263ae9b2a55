"""Libri2Mix / Libri3Mix (JorisCos/LibriMix) from LibriSpeech, WHAM! noise and the
LibriMix metadata CSVs.

Inputs: ``metadata/Libri{N}Mix/libri{N}mix_{subset}.csv`` with columns
``mixture_ID, source_1_path, source_1_gain, .., noise_path, noise_gain`` (paths relative
to the LibriSpeech and wham_noise folders; gains are linear factors for the original
16 kHz files), downloaded pinned or given with ``--metadata DIR``.

Per row, sample rate and mode (``create_librimix_from_metadata.py``), as one table row:

* the noise is read from its start up to the longest source's length, channel 0, and
  if shorter extended by overlap-adding copies of itself with an 8001-sample Hann
  cross-fade (``noise_extend_to``);
* every gain is applied at 16 kHz, then ``resample_poly`` to the output rate
  (``gain_stage=before_resample``);
* ``min`` truncates everything (noise included) to the shortest, ``max`` zero-pads;
* ``mix_clean`` = sum of sources, ``mix_both`` = + noise, ``mix_single`` = s1 + noise;
  written as 16-bit PCM. The official script lets soundfile convert floats to PCM_16,
  so its rounding is whatever the user's libsndfile does. ``quantizer="libsndfile"``
  (default) reproduces libsndfile 1.2.2 (``quantize=int16_floor``: in effect
  ``floor(32768 x)``, clipped to [-32768, 32767], so +1.0 gives 32767);
  ``"round"`` writes ``round(32768 x)`` like the other recipes. The two differ by 1 LSB
  in about half of all samples.

train-360 uses speed-perturbed WHAM! noise (``<name>sp08.wav``/``<name>sp12.wav``, made
by LibriMix with SoX ``speed 0.8``/``1.2`` on channel 0). When those files are not in
the user's wham_noise folder they are generated into ``<out>/wham_noise_augmented``
with ``resample_poly`` (a speed change is a resampling played at the original rate).
SoX's resampler differs from ``resample_poly``, so train-360 ``mix_both``/``mix_single``/
``noise`` can never be bit-exact with the official files; ``mix_clean`` and the sources are
unaffected.

Layout: ``<out>/Libri{N}Mix/wav{8k,16k}/{min,max}/{train-360,train-100,dev,test}/
{s1,..,noise,mix_clean,mix_both,mix_single}/<mixture_ID>.wav`` plus, as the official
recipe writes them (LF line ends), ``.../{mode}/metadata/mixture_<subset>_<type>.csv``
(absolute paths) and ``metrics_<subset>_<type>.csv`` (per signal of the mixture, its SNR
against the rest of the mixture: ``10 log10(mean(x^2) / (mean((mix - x)^2) + 1e-10) +
1e-10)``; computed here on the written 16-bit signals, where the official script uses
its floats before writing: on fabricated corpora the two differ by under 1e-3 dB). Mixture tables:
``.../{mode}/<subset>_<type>.csv``.
"""

from __future__ import annotations

import csv
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from data_prep.common import PinnedFile, PrepareError, SplitPlan, require_file
from data_prep.progress import Progress, track
from sepkit.audio import write_audio_atomic
from sepkit.data.mixtures import MixtureSpec, SourceSpec, as_written
from sepkit.data.paths import UnsafePathError, check_name, resolve_source
from sepkit.fileio import atomic_output

LIBRI_RATE = 16000
SUBSETS = {"train-clean-360": "train-360", "train-clean-100": "train-100", "dev-clean": "dev", "test-clean": "test"}
TYPES = ("mix_clean", "mix_both", "mix_single")
LIBRIMIX_COMMIT = "47825cbdc131cdedb2a90610978cb30866eae521"
_RAW = f"https://raw.githubusercontent.com/JorisCos/LibriMix/{LIBRIMIX_COMMIT}/metadata"
_SPEED_SUFFIX = re.compile(r"^(?P<stem>.+)sp(?P<code>08|12)$")
METRIC_EPS = 1e-10  # in the official metrics: keeps log and division finite


def pinned_metadata(n_srcs: list[int]) -> list[PinnedFile]:
    return [
        PinnedFile(f"{_RAW}/Libri{n}Mix/libri{n}mix_{subset}.csv", f"Libri{n}Mix/libri{n}mix_{subset}.csv", None)
        for n in n_srcs
        for subset in SUBSETS
    ]


def read_metadata(path: Path, n_src: int) -> list[dict[str, str]]:
    require_file(path, "LibriMix metadata CSV")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = ["mixture_ID", "noise_path", "noise_gain"]
    needed += [f"source_{i + 1}_{k}" for i in range(n_src) for k in ("path", "gain")]
    if rows:
        absent = [c for c in needed if c not in rows[0]]
        if absent:
            raise PrepareError(f"{path}: missing column(s) {absent}")
    return rows


def speed_perturb(x: np.ndarray, speed: float) -> np.ndarray:
    """Play ``x`` ``speed`` times faster (pitch and tempo, like SoX ``speed``) by
    polyphase resampling to ``len(x) / speed`` samples."""
    ratio = Fraction(speed).limit_denominator(100)
    return resample_poly(x, ratio.denominator, ratio.numerator)


def augmented_noise(noise_root: Path, relative: str, aug_root: Path, pending: dict[Path, tuple[Path, float]]) -> Path:
    """Path of a speed-perturbed WHAM! noise for train-360 under ``aug_root``; when it is
    not there yet, ``pending[path] = (original noise, speed)`` records it to be made
    by :func:`make_augmented_noise`."""
    target = aug_root / relative
    stem = Path(relative).stem
    match = _SPEED_SUFFIX.match(stem)
    if match is None:
        raise PrepareError(f"WHAM! noise file not found: {noise_root / relative}")
    base = noise_root / Path(relative).parent / f"{match['stem']}.wav"
    if not base.is_file():
        raise PrepareError(f"WHAM! noise file not found: {base} (needed to make {Path(relative).name})")
    if not target.is_file():
        pending[target] = (base, 0.8 if match["code"] == "08" else 1.2)
    return target


def make_augmented_noise(pending: dict[Path, tuple[Path, float]], progress: bool = True) -> None:
    """Write every pending speed-perturbed noise (channel 0 of the original, float32)."""
    for target, (base, speed) in track(sorted(pending.items()), len(pending), "speed-perturbing noise", progress):
        data, rate = sf.read(str(base), dtype="float64", always_2d=True)
        write_audio_atomic(target, speed_perturb(data[:, 0], speed).astype(np.float32), rate, subtype="FLOAT")


def _frames(path: Path, cache: dict[Path, int], estimate: int | None = None) -> int:
    if path not in cache:
        if not path.is_file():
            if estimate is not None:
                return estimate
            raise PrepareError(f"file not found: {path}")
        cache[path] = int(sf.info(str(path)).frames)
    return cache[path]


def build_plans(
    librispeech: Path,
    wham_noise: Path | None,
    metadata_dir: Path,
    out: Path,
    n_srcs: list[int],
    sample_rates: list[int],
    modes: list[str],
    types: list[str],
    subsets: list[str] | None = None,
    dry_run: bool = False,
    quantizer: str = "libsndfile",
    progress: bool = True,
) -> list[SplitPlan]:
    if quantizer not in ("round", "libsndfile"):
        raise PrepareError(f"quantizer must be 'round' or 'libsndfile', got {quantizer!r}")
    noisy = any(t != "mix_clean" for t in types)
    if noisy and wham_noise is None:
        raise PrepareError("mix_both/mix_single need the WHAM! noise: pass --wham-noise DIR")
    frames_cache: dict[Path, int] = {}
    pending: dict[Path, tuple[Path, float]] = {}
    plans = []
    for n_src in n_srcs:
        for subset, short in SUBSETS.items():
            if subsets is not None and short not in subsets and subset not in subsets:
                continue
            csv_path = metadata_dir / f"Libri{n_src}Mix" / f"libri{n_src}mix_{subset}.csv"
            if not csv_path.is_file():
                if subsets is None:
                    continue  # only the subsets the user has metadata for
                require_file(csv_path, "LibriMix metadata CSV")
            rows = read_metadata(csv_path, n_src)
            # lengths at 16 kHz, read once per subset
            prepared = []
            aug_root = out / "wham_noise_augmented"
            for line, row in enumerate(rows, start=2):
                try:
                    check_name(row["mixture_ID"], "mixture_ID")
                    paths = [
                        resolve_source(row[f"source_{i + 1}_path"], librispeech, [librispeech], f"source_{i + 1}_path")
                        for i in range(n_src)
                    ]
                    if noisy:
                        # a missing speed-perturbed noise is generated below aug_root: that path must stay there too
                        resolve_source(row["noise_path"], wham_noise, [wham_noise], "noise_path")
                        resolve_source(row["noise_path"], aug_root, [aug_root], "noise_path")
                except UnsafePathError as err:
                    raise PrepareError(f"{csv_path}: row {line - 1} (line {line}): {err}") from None
                for path in paths:
                    if not path.is_file():
                        raise PrepareError(f"LibriSpeech file not found: {path} (--librispeech {librispeech})")
                lengths16 = [_frames(p, frames_cache) for p in paths]
                noise_path = None
                if noisy:
                    noise_path = wham_noise / row["noise_path"]
                    if not noise_path.is_file():
                        noise_path = augmented_noise(wham_noise, row["noise_path"], aug_root, pending)
                prepared.append((row, paths, lengths16, noise_path))
            if not dry_run:
                make_augmented_noise(pending, progress)
            pending.clear()
            for rate in sample_rates:
                if not 0 < rate <= LIBRI_RATE:
                    raise PrepareError(f"LibriMix sample rates must be at most 16000 Hz, got {rate}")
                for mode in modes:
                    specs = []
                    for row, paths, lengths16, noise_path in prepared:
                        longest = max(lengths16)
                        resampled = [-(-n * rate // LIBRI_RATE) for n in lengths16]
                        sources = [
                            SourceSpec(path=str(p), gain=float(row[f"source_{i + 1}_gain"]))
                            for i, p in enumerate(paths)
                        ]
                        noise = None
                        if noise_path is not None:
                            noise = SourceSpec(
                                path=str(noise_path), gain=float(row["noise_gain"]), stop=longest, extend_to=longest
                            )
                        specs.append(
                            MixtureSpec(
                                mixture_id=row["mixture_ID"],
                                sample_rate=rate,
                                length=min(resampled) if mode == "min" else max(resampled),
                                sources=sources,
                                noise=noise,
                                gain_stage="before_resample",
                                quantize="int16" if quantizer == "round" else "int16_floor",
                                extra={
                                    f"s{i + 1}_speaker": Path(row[f"source_{i + 1}_path"]).parts[-3]
                                    for i in range(n_src)
                                },
                            )
                        )
                    base = out / f"Libri{n_src}Mix" / f"wav{rate // 1000}k" / mode
                    folders = {f"s{i + 1}": f"s{i + 1}" for i in range(n_src)}
                    if noisy:
                        folders["noise"] = "noise"
                    folders.update({t: t for t in types})
                    tables = {}
                    for t in types:
                        targets = "s1" if t == "mix_single" else ""
                        tables[base / f"{short}_{t}.csv"] = [_with_task(s, t, targets) for s in specs]
                    plans.append(
                        SplitPlan(
                            name=f"Libri{n_src}Mix {rate // 1000}k {mode} {short}",
                            directory=base / short,
                            specs=specs,
                            folders=folders,
                            tables=tables,
                            out=out,
                            roots=tuple(r for r in (librispeech, wham_noise, aug_root) if r is not None),
                        )
                    )
    if not plans:
        raise PrepareError(
            f"no LibriMix metadata CSVs found under {metadata_dir} (expected Libri{{N}}Mix/libri{{N}}mix_<subset>.csv)"
        )
    return plans


def _with_task(spec: MixtureSpec, mixture: str, targets: str) -> MixtureSpec:
    from dataclasses import replace

    return replace(spec, mixture=mixture, targets=targets)


def snr_db(signal: np.ndarray, rest: np.ndarray) -> float:
    """LibriMix's per-signal metric: ``10 log10(mean(x^2) / (mean(r^2) + 1e-10) + 1e-10)``
    for a signal ``x [time]`` and the rest ``r [time]`` of its mixture."""
    return float(10 * np.log10(np.mean(signal**2) / (np.mean(rest**2) + METRIC_EPS) + METRIC_EPS))


def _components(mixture_type: str, n_src: int) -> tuple[list[str], list[str]]:
    """(output folders summed into ``mixture_type``, their column stems in the official CSVs)."""
    sources = ["s1"] if mixture_type == "mix_single" else [f"s{i}" for i in range(1, n_src + 1)]
    columns = [f"source_{name[1:]}" for name in sources]
    if mixture_type != "mix_clean":
        sources, columns = [*sources, "noise"], [*columns, "noise"]
    return sources, columns


def _write_csv(path: Path, header: list[str], lines: list[list[str]]) -> None:
    # LF line ends like pandas' to_csv in the official script (the csv module defaults to CRLF)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)


def _metric_line(mixture_id: str, signals: dict[str, np.ndarray], mixture_type: str, n_src: int) -> list[str]:
    """One line of ``metrics_<subset>_<type>.csv``: the id and each component's SNR in the mixture."""
    folders, _ = _components(mixture_type, n_src)
    mixture = signals[mixture_type]
    return [mixture_id] + [repr(snr_db(signals[f], mixture - signals[f])) for f in folders]


def row_metrics(
    spec: MixtureSpec, outputs: dict[str, np.ndarray], details: dict[str, float], types: tuple[str, ...]
) -> dict[str, list[str]] | None:
    """:func:`data_prep.common.execute`'s row hook for the metrics CSVs (bind ``types`` with
    functools.partial): per mixture type its metrics line, from the signals just rendered
    as their files hold them (:func:`sepkit.data.mixtures.as_written`, so the values are
    those a read-back gives); ``None`` when this run did not render every signal needed
    (a resumed row), which then is read from its files."""
    needed = {f for t in types for f in (t, *_components(t, spec.n_src)[0])}
    if not needed <= outputs.keys():
        return None
    signals = {name: as_written(spec, outputs[name]) for name in needed}
    return {t: _metric_line(spec.mixture_id, signals, t, spec.n_src) for t in types}


def write_official_csvs(
    plans: list[SplitPlan],
    types: list[str],
    metrics: bool = True,
    progress: bool = True,
    computed: dict[tuple[str, str], object] | None = None,
) -> None:
    """``{mode}/metadata/mixture_<subset>_<type>.csv`` and (with ``metrics``)
    ``metrics_<subset>_<type>.csv`` as the official recipe writes them (after
    :func:`execute`). ``computed``: :func:`row_metrics`' values from :func:`execute`
    (``summary["row_values"]``); the metrics of the other rows are computed from their
    written files, read once more."""
    computed = computed or {}
    total = sum(len(plan.specs) for plan in plans)
    done = Progress(total, "LibriMix metrics", progress and metrics)
    for plan in plans:
        n_src = plan.specs[0].n_src if plan.specs else 0
        meta = plan.directory.parent / "metadata"
        meta.mkdir(parents=True, exist_ok=True)
        mixture_lines: dict[str, list[list[str]]] = {t: [] for t in types}
        metric_lines: dict[str, list[list[str]]] = {t: [] for t in types}
        for spec in plan.specs:
            name = f"{spec.mixture_id}.wav"
            lines = computed.get((str(plan.directory), spec.mixture_id)) if metrics else None
            if metrics and not isinstance(lines, dict):
                # each written signal read once, as float64 k / 32768
                needed = {f for t in types for f in (t, *_components(t, n_src)[0])}
                signals = {f: sf.read(str(plan.directory / f / name), dtype="float64")[0] for f in needed}
                lines = {t: _metric_line(spec.mixture_id, signals, t, n_src) for t in types}
            for t in types:
                folders, _ = _components(t, n_src)
                line = [spec.mixture_id, str((plan.directory / t / name).resolve())]
                line += [str((plan.directory / folder / name).resolve()) for folder in folders]
                mixture_lines[t].append(line + [str(spec.length)])
                if lines is not None:
                    metric_lines[t].append(lines[t])
            done.update()
        for t in types:
            _, columns = _components(t, n_src)
            paths = [f"{c}_path" for c in columns]
            _write_csv(
                meta / f"mixture_{plan.directory.name}_{t}.csv",
                ["mixture_ID", "mixture_path", *paths, "length"],
                mixture_lines[t],
            )
            if metrics:
                _write_csv(
                    meta / f"metrics_{plan.directory.name}_{t}.csv",
                    ["mixture_ID", *[f"{c}_SNR" for c in columns]],
                    metric_lines[t],
                )
    done.close()
