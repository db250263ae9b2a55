"""WHAM! from WSJ0 and the WHAM! noise package (``wham_noise/``).

Inputs: ``wham_noise/{tr,cv,tt}/<name>.wav`` (16 kHz binaural noise, already cut per
mixture), ``wham_noise/metadata/scaling_{split}.npz`` (keys ``utterance_id``,
``speech_start_sample_16k``, ``scaling_wsjmix_{8k,16k}_{min,max}`` [n, 2],
``scaling_wham_speech_*``, ``scaling_wham_noise_*``) and the speaker pairs, either
WHAM's ``mix_2_spk_filenames_{split}.csv`` (``output_filename,s1_path,s2_path``) or the
MERL ``mix_2_spk_{split}.txt`` lists (``--lists DIR``).

Per utterance, rate and mode (``create_wham_from_scratch.py``), as one table row:

* ``s_i = quantize(resample_poly(wsj0 file) x scaling_wsjmix[i]) x scaling_wham_speech``
  (``s{i}_gain``, ``s{i}_quantize``, ``s{i}_post_gain``);
* ``noise = resample_poly(channel 0) x scaling_wham_noise``;
* ``min``: sources truncated to the shorter, noise cut from ``speech_start_sample_16k``
  (halved at 8 kHz); ``max``: sources zero-padded and placed at that offset inside the
  full noise length, so max files have noise-only lead-in and tail;
* outputs are 32-bit float, not quantised.

Tasks (tables ``.../{mode}/{split}_{task}.csv``): sep_clean (mix_clean -> s1, s2),
sep_noisy (mix_both -> s1, s2), enh_single (mix_single -> s1), enh_both (mix_both ->
mix_clean). Layout: ``<out>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix_clean,mix_single,
mix_both,s1,s2,noise}/<name>.wav``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.common import PrepareError, SplitPlan, load_npz, require_dir, require_file
from data_prep.wsj0 import resolve_utterances, utterance_key
from data_prep.wsj0mix import mixture_name, read_mix_list, resampled_length
from sepkit.data.mixtures import MixtureSpec, SourceSpec
from sepkit.data.paths import UnsafePathError, check_name

SPLITS = ("tr", "cv", "tt")
NOISE_RATE = 16000
TASKS = {
    "sep_clean": ("mix_clean", ""),
    "sep_noisy": ("mix_both", ""),
    "enh_single": ("mix_single", "s1"),
    "enh_both": ("mix_both", "mix_clean"),
}
FOLDERS = {name: name for name in ("s1", "s2", "noise", "mix_clean", "mix_both", "mix_single")}


def read_pairs(lists_dir: Path, split: str) -> dict[str, list[str]]:
    """``{output_filename (without .wav): [s1 wsj0 path, s2 wsj0 path]}`` for one split."""
    wham_csv = lists_dir / f"mix_2_spk_filenames_{split}.csv"
    merl_txt = lists_dir / f"mix_2_spk_{split}.txt"
    pairs: dict[str, list[str]] = {}
    if wham_csv.is_file():
        with open(wham_csv, newline="") as handle:
            for row in csv.DictReader(handle):
                pairs[Path(row["output_filename"]).stem] = [row["s1_path"], row["s2_path"]]
    elif merl_txt.is_file():
        for entry in read_mix_list(merl_txt, 2):
            pairs[mixture_name(entry)] = [path for path, _ in entry]
    else:
        raise PrepareError(f"no speaker list for split {split}: expected {wham_csv} or {merl_txt}")
    return pairs


def load_scaling(wham_noise: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of ``scaling_<split>.npz``, read without pickle (see :func:`data_prep.common.load_npz`)."""
    path = require_file(wham_noise / "metadata" / f"scaling_{split}.npz", "WHAM! scaling file")
    data = load_npz(path)
    for key in ("utterance_id", "speech_start_sample_16k"):
        if key not in data:
            raise PrepareError(f"{path}: missing key {key!r}")
    return data


def wham_rows(
    wsj0: Path,
    wham_noise: Path,
    lists_dir: Path,
    out: Path,
    split: str,
    sample_rates: list[int],
    modes: list[str],
    jobs: int = 1,
    dry_run: bool = False,
) -> dict[tuple[int, str], list[MixtureSpec]]:
    """The WHAM! rows of one split for every (rate, mode), in npz order."""
    require_dir(wham_noise / split, f"WHAM! noise split {split}", "--wham-noise")
    scaling = load_scaling(wham_noise, split)
    pairs = read_pairs(lists_dir, split)
    names = [Path(str(u)).stem for u in scaling["utterance_id"]]
    for number, name in enumerate(names):
        try:
            check_name(name, "utterance_id")
        except UnsafePathError as err:
            raise PrepareError(f"scaling_{split}.npz: entry {number}: {err}") from None
    absent = [n for n in names if n not in pairs]
    if absent:
        raise PrepareError(f"{len(absent)} WHAM! utterance(s) of {split} are not in the speaker list, e.g. {absent[0]}")
    keys = [utterance_key(p) for n in names for p in pairs[n]]
    utterances = resolve_utterances(keys, wsj0, out / "wsj0_wav", jobs=jobs, dry_run=dry_run)
    rows: dict[tuple[int, str], list[MixtureSpec]] = {(r, m): [] for r in sample_rates for m in modes}
    for index, name in enumerate(names):
        noise_path = wham_noise / split / f"{name}.wav"
        if not noise_path.is_file():
            raise PrepareError(f"WHAM! noise file not found: {noise_path}")
        noise_frames = int(sf.info(str(noise_path)).frames)
        start16 = int(scaling["speech_start_sample_16k"][index])
        speech = [utterances[utterance_key(p)] for p in pairs[name]]
        for rate in sample_rates:
            tag = f"{rate // 1000}k"
            for mode in modes:
                try:
                    wsjmix = scaling[f"scaling_wsjmix_{tag}_{mode}"][index]
                    speech_gain = float(scaling[f"scaling_wham_speech_{tag}_{mode}"][index])
                    noise_gain = float(scaling[f"scaling_wham_noise_{tag}_{mode}"][index])
                except KeyError as err:
                    raise PrepareError(f"scaling_{split}.npz has no factors for {tag} {mode} ({err})") from err
                offset = start16 * rate // NOISE_RATE
                lengths = [resampled_length(frames, file_rate, rate) for _, frames, file_rate in speech]
                if mode == "min":
                    length, src_offset, noise_start = min(lengths), 0, start16
                else:
                    length, src_offset, noise_start = resampled_length(noise_frames, NOISE_RATE, rate), offset, 0
                sources = [
                    SourceSpec(
                        path=str(wav), gain=float(wsjmix[i]), quantize=True, post_gain=speech_gain, offset=src_offset
                    )
                    for i, (wav, _, _) in enumerate(speech)
                ]
                noise = SourceSpec(path=str(noise_path), gain=noise_gain, start=noise_start)
                extra = {f"s{i + 1}_speaker": Path(p).stem[:3].lower() for i, p in enumerate(pairs[name])}
                extra.update({f"s{i + 1}_utterance": utterance_key(p) for i, p in enumerate(pairs[name])})
                extra["speech_start_sample_16k"] = str(start16)
                rows[(rate, mode)].append(
                    MixtureSpec(
                        mixture_id=name, sample_rate=rate, length=length, sources=sources, noise=noise, extra=extra
                    )
                )
    return rows


def wham_roots(wsj0: Path, wham_noise: Path, out: Path) -> tuple[Path, ...]:
    """Where WHAM! rows may read: WSJ0, the noise package, the decoded-WSJ0 cache."""
    return (wsj0, wham_noise, out / "wsj0_wav")


def task_tables(base: Path, split: str, specs: list[MixtureSpec], tasks: list[str]) -> dict[Path, list[MixtureSpec]]:
    tables = {}
    for task in tasks:
        mixture, targets = TASKS[task]
        tables[base / f"{split}_{task}.csv"] = [replace(s, mixture=mixture, targets=targets) for s in specs]
    return tables


def build_plans(
    wsj0: Path,
    wham_noise: Path,
    lists_dir: Path,
    out: Path,
    sample_rates: list[int],
    modes: list[str],
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = tuple(TASKS),
    jobs: int = 1,
    dry_run: bool = False,
) -> list[SplitPlan]:
    plans = []
    for split in splits:
        rows = wham_rows(wsj0, wham_noise, lists_dir, out, split, sample_rates, modes, jobs, dry_run)
        for (rate, mode), specs in rows.items():
            base = out / f"wav{rate // 1000}k" / mode
            plans.append(
                SplitPlan(
                    name=f"WHAM! {rate // 1000}k {mode} {split}",
                    directory=base / split,
                    specs=specs,
                    folders=dict(FOLDERS),
                    tables=task_tables(base, split, specs, tasks),
                    out=out,
                    roots=wham_roots(wsj0, wham_noise, out),
                )
            )
    return plans
