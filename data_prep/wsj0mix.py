"""wsj0-2mix / wsj0-3mix (MERL) from WSJ0 and the MERL mix lists.

Inputs: the MERL lists ``mix_{N}_spk_{tr,cv,tt}.txt`` (one mixture per line:
``path1 snr1 path2 snr2 [path3 snr3]``) and MERL's precomputed active speech levels
(``activlev_*.txt``: ``utterance_id level``), as published in pywsj0-mix's
``metadata/`` folder, downloaded pinned or given with ``--lists DIR``.

Per mixture, sample rate and length mode (MERL ``create_wav_2speakers.m`` as ported
by pywsj0-mix), expressed as one table row:

* source ``i`` = resample_poly(16 kHz file) x ``10**(snr_i / 20) / sqrt(lev_i)``; the
  level was measured at 8 kHz and is reused at 16 kHz (``gain_stage=after_resample``);
* ``min`` truncates every source to the shortest, ``max`` zero-pads at the end;
* mixture = sum of sources; mixture and sources scaled by ``0.9 / max |.|`` over all of
  them (``peak_normalize=0.9``); written as ``int16(round(32768 x))`` (``quantize=int16``).

Layout: ``<out>/{N}speakers/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,..}/<name>.wav``
with ``<name>`` = ``<utt1>_<snr1>_<utt2>_<snr2>...`` using the SNR text of the list
verbatim; the mixture table of each folder is ``.../{min,max}/{tr,cv,tt}.csv``.
With ``--write``, each ``{tr,cv,tt}`` folder also gets MERL's ``scaling.mat`` (MATLAB
v5 file): ``scaling_{R}k`` ``[mixtures, N]``, the factor each 16 kHz source file was
multiplied by (``10**(snr_i / 20) / sqrt(lev_i)`` times the peak gain), and
``scaling16bit_{R}k`` ``[mixtures, 1]``, the peak gain ``0.9 / max |.|`` alone, one row
per list line in list order, ``R`` the rate in kHz. Not written: MERL's list files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from data_prep.common import PinnedFile, PrepareError, SplitPlan, require_file
from data_prep.progress import Progress
from data_prep.wsj0 import resolve_utterances, utterance_key
from sepkit.data.mixtures import MixtureSpec, SourceSpec, render_outputs
from sepkit.fileio import atomic_output

SPLITS = ("tr", "cv", "tt")
PEAK_LEVEL = 0.9  # MERL scales mixture and sources so that the largest |sample| is 0.9
WSJ0_RATE = 16000
# pywsj0-mix (MIT) at a fixed commit; checksums could not be computed without network.
PYWSJ0MIX_COMMIT = "1261845ec47fc8d56ee4575dba163f0aa6ddddb6"
_RAW = f"https://raw.githubusercontent.com/mpariente/pywsj0-mix/{PYWSJ0MIX_COMMIT}/metadata"


def pinned_lists(n_srcs: list[int]) -> list[PinnedFile]:
    files = [PinnedFile(f"{_RAW}/mix_{n}_spk_{s}.txt", f"mix_{n}_spk_{s}.txt", None) for n in n_srcs for s in SPLITS]
    for name in ("tr", "cv", "tt", "si_tr_s", "si_dt_05", "si_et_05"):
        files.append(PinnedFile(f"{_RAW}/activlev/activlev_{name}.txt", f"activlev/activlev_{name}.txt", None))
    return files


def read_mix_list(path: Path, n_src: int) -> list[list[tuple[str, str]]]:
    """Parse a MERL list into rows of ``(wsj0 path, snr token)`` pairs."""
    require_file(path, "MERL mix list")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2 * n_src:
            raise PrepareError(
                f"{path}:{number}: expected {2 * n_src} fields (path snr per speaker), got {len(tokens)}"
            )
        pairs = [(tokens[2 * i], tokens[2 * i + 1]) for i in range(n_src)]
        for _, snr in pairs:
            try:
                float(snr)
            except ValueError as err:
                raise PrepareError(f"{path}:{number}: SNR {snr!r} is not a number") from err
        rows.append(pairs)
    return rows


def read_activlev(lists_dir: Path) -> dict[str, float]:
    """Load every ``activlev_*.txt`` below ``lists_dir`` into ``{utterance_id: level}``."""
    files = sorted(lists_dir.rglob("activlev_*.txt"))
    if not files:
        raise PrepareError(f"no activlev_*.txt files (MERL speech levels) found under {lists_dir}")
    levels: dict[str, float] = {}
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2:
                raise PrepareError(f"{path}:{number}: expected 'utterance_id level'")
            levels.setdefault(tokens[0].lower(), float(tokens[1]))
    return levels


def mixture_name(pairs: list[tuple[str, str]]) -> str:
    return "_".join(f"{Path(path).stem}_{snr}" for path, snr in pairs)


def resampled_length(frames: int, file_rate: int, rate: int) -> int:
    """Length of ``resample_poly`` output: ``ceil(frames * rate / file_rate)``."""
    return -(-frames * rate // file_rate)


def build_plans(
    wsj0: Path,
    lists_dir: Path,
    out: Path,
    n_srcs: list[int],
    sample_rates: list[int],
    modes: list[str],
    splits: Sequence[str] = SPLITS,
    jobs: int = 1,
    dry_run: bool = False,
    progress: bool = True,
) -> list[SplitPlan]:
    levels = read_activlev(lists_dir)
    lists = {(n, s): read_mix_list(lists_dir / f"mix_{n}_spk_{s}.txt", n) for n in n_srcs for s in splits}
    keys = [utterance_key(path) for rows in lists.values() for pairs in rows for path, _ in pairs]
    utterances = resolve_utterances(keys, wsj0, out / "wsj0_wav", jobs=jobs, dry_run=dry_run, progress=progress)
    plans = []
    for (n_src, split), rows in lists.items():
        for rate in sample_rates:
            for mode in modes:
                specs = []
                for pairs in rows:
                    sources, lengths, extra = [], [], {}
                    for i, (path, snr) in enumerate(pairs):
                        key = utterance_key(path)
                        wav, frames, file_rate = utterances[key]
                        utt = Path(key).name
                        if utt not in levels:
                            raise PrepareError(f"no MERL speech level for utterance {utt} in {lists_dir}")
                        gain = 10 ** (float(snr) / 20) / math.sqrt(levels[utt])
                        sources.append(SourceSpec(path=str(wav), gain=gain))
                        lengths.append(resampled_length(frames, file_rate, rate))
                        extra[f"s{i + 1}_speaker"] = utt[:3]
                        extra[f"s{i + 1}_utterance"] = key
                    specs.append(
                        MixtureSpec(
                            mixture_id=mixture_name(pairs),
                            sample_rate=rate,
                            length=min(lengths) if mode == "min" else max(lengths),
                            sources=sources,
                            peak_normalize=PEAK_LEVEL,
                            quantize="int16",
                            extra=extra,
                        )
                    )
                base = out / f"{n_src}speakers" / f"wav{rate // 1000}k" / mode
                folders = {"mix_clean": "mix", **{f"s{i + 1}": f"s{i + 1}" for i in range(n_src)}}
                plans.append(
                    SplitPlan(
                        name=f"wsj0-{n_src}mix {rate // 1000}k {mode} {split}",
                        directory=base / split,
                        specs=specs,
                        folders=folders,
                        tables={base / f"{split}.csv": specs},
                        out=out,
                        roots=(wsj0, out / "wsj0_wav"),
                    )
                )
    return plans


def peak_gain(spec: MixtureSpec, peak: float | None = None) -> float:
    """MERL's ``mix_scaling``: ``0.9 / max |.|`` over the mixture and the sources of one
    row before normalisation and quantisation (the factor ``peak_normalize`` applies).
    ``peak``: that maximum as recorded while the row was written (see :func:`row_peak`);
    without it the row is rendered again."""
    if peak is None:
        raw = replace(spec, peak_normalize=None, quantize="")
        outputs = render_outputs(raw, None, ["mix_clean", *[f"s{i + 1}" for i in range(spec.n_src)]])
        peak = max(float(np.max(np.abs(x))) for x in outputs.values())
    if not peak > 0:
        raise PrepareError(f"mixture {spec.mixture_id}: silent sources, no peak gain (scaling.mat)")
    return PEAK_LEVEL / peak


def row_peak(spec: MixtureSpec, outputs: dict[str, np.ndarray], details: dict[str, float]) -> float | None:
    """:func:`data_prep.common.execute`'s row hook for ``scaling.mat``: the peak the
    renderer measured before normalising the row (``None`` for a row without it)."""
    return details.get("peak")


def write_scaling_mat(
    plans: list[SplitPlan], jobs: int = 1, progress: bool = True, peaks: dict[tuple[str, str], object] | None = None
) -> list[Path]:
    """Write ``scaling.mat`` into every split folder of ``plans`` (see the module doc);
    returns the written paths. ``peaks``: :func:`row_peak`'s values from
    :func:`data_prep.common.execute` (``summary["row_values"]``) for the rows it rendered;
    only the other rows (already complete from an earlier run) are rendered again here."""
    from scipy.io import savemat

    recorded_peaks = peaks or {}

    def recorded(plan: SplitPlan, spec: MixtureSpec) -> float | None:
        peak = recorded_peaks.get((str(plan.directory), spec.mixture_id))
        return peak if isinstance(peak, float) else None

    specs = [spec for plan in plans for spec in plan.specs if recorded(plan, spec) is None]
    bar = Progress(len(specs), "scaling.mat peak gains", progress)
    rendered: list[float] = []
    if jobs <= 1:
        for spec in specs:
            rendered.append(peak_gain(spec))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for gain in pool.map(peak_gain, specs, chunksize=max(1, len(specs) // (jobs * 8))):
                rendered.append(gain)
                bar.update()
    bar.close()
    again = iter(rendered)
    written = []
    for plan in plans:
        count = len(plan.specs)
        gains = [
            peak_gain(spec, peak) if (peak := recorded(plan, spec)) is not None else next(again) for spec in plan.specs
        ]
        mix_scaling = np.array(gains, dtype=np.float64).reshape(count, 1)
        n_src = plan.specs[0].n_src if plan.specs else 0
        source_gains = np.array([[src.gain for src in spec.sources] for spec in plan.specs], dtype=np.float64)
        source_gains = source_gains.reshape(count, n_src)
        rate = f"{plan.specs[0].sample_rate // 1000}k" if plan.specs else "8k"
        path = plan.directory / "scaling.mat"
        with atomic_output(path) as tmp, open(tmp, "wb") as handle:
            savemat(handle, {f"scaling_{rate}": source_gains * mix_scaling, f"scaling16bit_{rate}": mix_scaling})
        written.append(path)
    return written
