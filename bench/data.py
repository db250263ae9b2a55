"""Data-preparation benchmarks.

Default: throughput, mixtures per second written to disk and rendered on the fly
(wsj0-2mix recipe: 2 speakers, 8 kHz, min, ~4 s mixtures on average), with 1 and 2
workers, against the time of one Conv-TasNet training step on this machine. The corpus
is fabricated (16 kHz int16 utterances of U(3, 6) s, so the shorter of two is 4 s on
average). Run: ``PYTHONPATH=. python bench/data.py [--mixtures 120]``; writes
``bench/results/data.json``.

``--recipes``: wall time and peak memory of ``sepkit prepare <recipe> --write`` (one
process, ``--jobs 1``; 8 kHz min, WHAMR! 8 and 16 kHz min and max as its script's
defaults) against a plain reimplementation of the official generator's loop for the same
files (pywsj0-mix's generate_wsjmix.py for wsj0-mix, LibriMix's
create_librimix_from_metadata.py, WHAM!'s create_wham_from_scratch.py, whamr_scripts'
create_wham_from_scratch.py; the loops live here, not in the package), run alternately
on the same fabricated corpus, ``--rounds`` times each, every run in its own child
process (peak RSS from ``wait4``, wall and CPU time measured inside the child after its
imports). Writes ``bench/results/data_recipes.json`` with the median wall and CPU times,
their ratios sepkit / official, the peak RSS of each side and the command line (on a
shared machine the wall time mixes in other processes' CPU and disk use; the CPU time
shows the work each side does); for WHAMR! also the
largest sample difference between the two sides' files. The official loops write with
``sf.write`` to the path, as the official scripts do, so libsndfile fsyncs each of their
files; sepkit encodes into an open temp file and renames it, without an fsync. sepkit's time includes what
the official loops do not write (mixture tables, manifest, RIR cache); with
``--no-official-extras`` sepkit skips its scaling.mat / LibriMix metrics pass
(``--label`` records which code was measured).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import wsj0mix  # noqa: E402
from data_prep.common import execute  # noqa: E402
from sepkit.data.mixtures import MixtureSpec, render  # noqa: E402
from sepkit.fileio import write_text_atomic  # noqa: E402

# torch is imported only by the throughput bench: a --recipes child process measures its
# peak memory, which should be the recipe's, not the deep-learning stack's


def _rows_dataset(specs: list[MixtureSpec]):
    """A torch Dataset rendering table rows on the fly: ``(mixture [time], sources [2, time])``."""
    import torch
    from torch.utils.data import Dataset

    class Rows(Dataset):
        def __len__(self) -> int:
            return len(specs)

        def __getitem__(self, index: int):
            mix, src = render(specs[index])
            return torch.from_numpy(mix), torch.from_numpy(src)

    return Rows()


def fabricate(root: Path, n_mixtures: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    wsj0, lists = root / "wsj0_root", root / "lists"
    utts = []
    for s in range(20):
        for u in range(4):
            spk = f"{s:03d}"
            rel = f"wsj0/si_tr_s/{spk}/{spk}o01{u}a.wav"
            path = wsj0 / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            n = int(rng.uniform(3.0, 6.0) * 16000)
            x = rng.standard_normal(n) * np.abs(np.sin(np.arange(n) / 1600.0))
            sf.write(path, np.round(0.3 * x / np.abs(x).max() * 32767).astype(np.int16), 16000, subtype="PCM_16")
            utts.append(rel)
    lists.mkdir()
    lines = []
    for _ in range(n_mixtures):
        a, b = rng.choice(len(utts), size=2, replace=False)
        snr = rng.uniform(0, 2.5)
        lines.append(f"{utts[a]} {snr:.5g} {utts[b]} {-snr:.5g} ")
    for split in ("tr", "cv", "tt"):
        (lists / f"mix_2_spk_{split}.txt").write_text("\n".join(lines) + "\n")
    (lists / "activlev").mkdir()
    (lists / "activlev" / "activlev_si_tr_s.txt").write_text("\n".join(f"{Path(u).stem} 0.01" for u in utts) + "\n")
    return wsj0, lists


def time_training_step(batch: int, seconds: float, steps: int) -> float:
    import torch

    from sepkit.losses import pit_si_sdr_loss
    from sepkit.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("conv_tasnet", n_src=2, sample_rate=8000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mix = torch.randn(batch, int(seconds * 8000))
    targets = torch.randn(batch, 2, int(seconds * 8000))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss, _ = pit_si_sdr_loss(model(mix), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------
# sepkit prepare against plain reimplementations of the official generators' loops
# ---------------------------------------------------------------------------------------


def fabricate_wham(root: Path, wsj0: Path, lists: Path, seed: int = 3) -> Path:
    """WHAM! inputs for the ``tt`` pairs of ``lists``: ``mix_2_spk_filenames_tt.csv``,
    2-channel float32 noise covering the longer utterance plus 0-0.25 s on each side,
    and ``metadata/scaling_tt.npz`` with factors drawn like WHAM!'s ranges."""
    rng = np.random.default_rng(seed)
    wham = root / "wham_noise"
    (wham / "tt").mkdir(parents=True)
    (wham / "metadata").mkdir()
    names, starts, factors = [], [], {}
    csv_lines = ["output_filename,s1_path,s2_path"]
    for line in (lists / "mix_2_spk_tt.txt").read_text().splitlines():
        p1, snr1, p2, snr2 = line.split()
        name = f"{Path(p1).stem}_{snr1}_{Path(p2).stem}_{snr2}"
        csv_lines.append(f"{name}.wav,{p1},{p2}")
        longest = max(sf.info(str(wsj0 / p)).frames for p in (p1, p2))
        pre, post = (int(v) for v in rng.integers(0, 4000, size=2))
        noise = (0.05 * rng.standard_normal((pre + longest + post, 2))).astype(np.float32)
        sf.write(wham / "tt" / f"{name}.wav", noise, 16000, subtype="FLOAT")
        names.append(f"{name}.wav")
        starts.append(pre)
        for tag in ("8k", "16k"):
            for mode in ("min", "max"):
                factors.setdefault(f"scaling_wsjmix_{tag}_{mode}", []).append(rng.uniform(0.5, 1.5, size=2))
                factors.setdefault(f"scaling_wham_speech_{tag}_{mode}", []).append(rng.uniform(0.2, 0.9))
                factors.setdefault(f"scaling_wham_noise_{tag}_{mode}", []).append(rng.uniform(0.2, 0.9))
    (lists / "mix_2_spk_filenames_tt.csv").write_text("\n".join(csv_lines) + "\n")
    np.savez(
        wham / "metadata" / "scaling_tt.npz",
        utterance_id=np.array(names),
        speech_start_sample_16k=np.array(starts),
        **{key: np.array(values) for key, values in factors.items()},
    )
    return wham


def fabricate_librimix(root: Path, n_mixtures: int, seed: int = 4) -> tuple[Path, Path, Path]:
    """LibriSpeech ``dev-clean`` FLAC utterances of U(3, 6) s, WHAM! ``cv`` noises (2-channel
    float32, 7 s: longer than any pair, so never extended) and ``libri2mix_dev-clean.csv``."""
    rng = np.random.default_rng(seed)
    libri, wham, meta = root / "LibriSpeech", root / "wham_noise", root / "librimix_metadata"
    utterances = []
    for speaker in range(20):
        for index in range(4):
            rel = f"dev-clean/{speaker + 100}/7/{speaker + 100}-7-{index:04d}.flac"
            (libri / rel).parent.mkdir(parents=True, exist_ok=True)
            n = int(rng.uniform(3.0, 6.0) * 16000)
            x = rng.standard_normal(n) * np.abs(np.sin(np.arange(n) / 1600.0))
            sf.write(libri / rel, np.round(0.3 * x / np.abs(x).max() * 32767).astype(np.int16), 16000, subtype="PCM_16")
            utterances.append(rel)
    (wham / "cv").mkdir(parents=True)
    lines = ["mixture_ID,source_1_path,source_1_gain,source_2_path,source_2_gain,noise_path,noise_gain"]
    for index in range(n_mixtures):
        noise_rel = f"cv/noise{index:05d}.wav"
        sf.write(wham / noise_rel, (0.05 * rng.standard_normal((7 * 16000, 2))).astype(np.float32), 16000, "FLOAT")
        a, b = rng.choice(len(utterances), size=2, replace=False)
        mixture_id = f"{Path(utterances[a]).stem}_{Path(utterances[b]).stem}"
        gains = [float(g) for g in rng.uniform(0.3, 1.0, size=2)]
        lines.append(
            f"{mixture_id},{utterances[a]},{gains[0]!r},{utterances[b]},{gains[1]!r},{noise_rel},{float(rng.uniform(0.1, 0.5))!r}"
        )
    (meta / "Libri2Mix").mkdir(parents=True)
    (meta / "Libri2Mix" / "libri2mix_dev-clean.csv").write_text("\n".join(lines) + "\n")
    return libri, wham, meta


def official_wsj0mix(inputs: dict[str, Path], out: Path) -> None:
    """pywsj0-mix's loop for 2 speakers, tt, 8 kHz, min: float32 reads, resample_poly,
    10^(snr/20)/sqrt(lev), peak gain 0.9, int16(round(32768 x)) written as PCM_16."""
    levels = {}
    for path in (inputs["lists"] / "activlev").glob("*.txt"):
        for line in path.read_text().splitlines():
            utt, level = line.split()
            levels[utt] = float(level)
    folders = {name: out / name for name in ("mix", "s1", "s2")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for line in (inputs["lists"] / "mix_2_spk_tt.txt").read_text().splitlines():
        fields = line.split()
        paths, snrs = fields[0::2], fields[1::2]
        sources = []
        for path, snr in zip(paths, snrs):
            x = resample_poly(sf.read(str(inputs["wsj0"] / path), dtype="float32")[0], 8000, 16000)
            sources.append(x / np.sqrt(levels[Path(path).stem]) * 10 ** (float(snr) / 20))
        n = min(len(x) for x in sources)
        sources = [x[:n] for x in sources]
        mix = np.sum(sources, axis=0)
        gain = max(1.0, np.max(np.abs(mix)), *(np.max(np.abs(x)) for x in sources)) / 0.9
        name = "_".join(f"{Path(p).stem}_{s}" for p, s in zip(paths, snrs)) + ".wav"
        for folder, signal in zip(("mix", "s1", "s2"), [mix, *sources]):
            sf.write(folders[folder] / name, np.int16(np.round(32768 * signal / gain)), 8000, subtype="PCM_16")


def official_librimix(inputs: dict[str, Path], out: Path) -> None:
    """create_librimix_from_metadata.py's loop for dev, 8 kHz, min, all three types:
    float32 reads, noise channel 0 up to the longest source, gains, resample_poly,
    truncation, sources/noise/mixtures through sf.write's default PCM_16, per-signal
    SNRs, then the mixture and metrics CSVs."""
    eps = 1e-10
    types = {"mix_clean": [0, 1], "mix_both": [0, 1, 2], "mix_single": [0, 2]}
    for folder in ("s1", "s2", "noise", *types):
        (out / "dev" / folder).mkdir(parents=True)
    (out / "metadata").mkdir()
    with open(inputs["metadata"] / "Libri2Mix" / "libri2mix_dev-clean.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    mixture_lines: dict[str, list[list[str]]] = {t: [] for t in types}
    metric_lines: dict[str, list[list[str]]] = {t: [] for t in types}
    for row in rows:
        sources = [sf.read(str(inputs["librispeech"] / row[f"source_{i}_path"]), dtype="float32")[0] for i in (1, 2)]
        longest = max(len(x) for x in sources)
        noise = sf.read(str(inputs["wham_noise"] / row["noise_path"]), dtype="float32", stop=longest)[0][:, 0]
        # pandas hands the gains over as numpy float64 scalars: the products are float64
        gains = [np.float64(row[key]) for key in ("source_1_gain", "source_2_gain", "noise_gain")]
        signals = [resample_poly(x * g, 8000, 16000) for x, g in zip([*sources, noise], gains)]
        n = min(len(x) for x in signals)
        signals = [x[:n] for x in signals]
        name = f"{row['mixture_ID']}.wav"
        paths = [str((out / "dev" / folder / name).resolve()) for folder in ("s1", "s2", "noise")]
        for path, signal in zip(paths, signals):
            sf.write(path, signal, 8000)
        for mixture_type, parts in types.items():
            mixture = np.sum([signals[i] for i in parts], axis=0)
            mixture_path = str((out / "dev" / mixture_type / name).resolve())
            sf.write(mixture_path, mixture, 8000)
            snrs = []
            for i in parts:
                rest = mixture - signals[i]
                snrs.append(10 * np.log10(np.mean(signals[i] ** 2) / (np.mean(rest**2) + eps) + eps))
            mixture_lines[mixture_type].append([row["mixture_ID"], mixture_path, *[paths[i] for i in parts], str(n)])
            metric_lines[mixture_type].append([row["mixture_ID"], *(repr(float(snr)) for snr in snrs)])
    for mixture_type in types:
        for kind, lines in (("mixture", mixture_lines), ("metrics", metric_lines)):
            with open(out / "metadata" / f"{kind}_dev_{mixture_type}.csv", "w", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerows(lines[mixture_type])


def official_wham(inputs: dict[str, Path], out: Path) -> None:
    """create_wham_from_scratch.py's loop for tt, 8 kHz, min: s_i = round-to-int16
    (resample_poly(wsj0) x scaling_wsjmix) x scaling_wham_speech, noise channel 0
    resampled x scaling_wham_noise and cut at the speech start, six float32 files."""
    with np.load(inputs["wham_noise"] / "metadata" / "scaling_tt.npz") as npz:
        scaling = {key: npz[key] for key in npz.files}
    with open(inputs["lists"] / "mix_2_spk_filenames_tt.csv", newline="") as handle:
        pairs = {row["output_filename"]: (row["s1_path"], row["s2_path"]) for row in csv.DictReader(handle)}
    folders = ("s1", "s2", "noise", "mix_clean", "mix_single", "mix_both")
    for folder in folders:
        (out / folder).mkdir(parents=True)
    for index, name in enumerate(scaling["utterance_id"]):
        speech = []
        for i, path in enumerate(pairs[str(name)]):
            x = resample_poly(sf.read(str(inputs["wsj0"] / path), dtype="float64")[0], 8000, 16000)
            x = np.round(x * scaling["scaling_wsjmix_8k_min"][index][i] * 32768) / 32768
            speech.append(x * scaling["scaling_wham_speech_8k_min"][index])
        n = min(len(x) for x in speech)
        s1, s2 = (x[:n] for x in speech)
        noise = sf.read(str(inputs["wham_noise"] / "tt" / str(name)), dtype="float64")[0][:, 0]
        start = int(scaling["speech_start_sample_16k"][index]) // 2
        noise = resample_poly(noise, 8000, 16000)[start : start + n] * scaling["scaling_wham_noise_8k_min"][index]
        outputs = (s1, s2, noise, s1 + s2, s1 + noise, s1 + s2 + noise)
        for folder, signal in zip(folders, outputs):
            sf.write(out / folder / str(name), signal.astype(np.float32), 8000, subtype="FLOAT")


def fabricate_reverb_params(root: Path, lists: Path, seed: int = 5) -> Path:
    """``reverb_params_tt.csv`` for the ``tt`` pairs of ``lists``, drawn like WHAMR's
    sample_reverb.py (room U[5, 10] x U[5, 10] x U[3, 4] m, array at the centre +-0.2 m and
    U[0.9, 1.8] m high, speakers at a random azimuth) except two draws: speakers U[1, 2] m
    from the centre (not U[0.66, 2]: sepkit's 0.3.1 port refuses a source within 0.858 m
    of the microphone, as 0.3.1's response would lose its direct path) and T60 in WHAMR's
    low range U[0.1, 0.3] s, so the room simulation (the same code on both sides) does not
    drown the loops being compared."""
    rng = np.random.default_rng(seed)
    folder = root / "whamr_params"
    folder.mkdir()
    with open(lists / "mix_2_spk_filenames_tt.csv", newline="") as handle:
        names = [row["output_filename"] for row in csv.DictReader(handle)]
    header = ["utterance_id", "room_x", "room_y", "room_z", "micL_x", "micL_y", "micR_x", "micR_y", "mic_z"]
    header += [f"s{s}_{a}" for s in (1, 2) for a in "xyz"] + ["T60"]
    lines = [header]
    for name in names:
        x, y, z = rng.uniform(5, 10), rng.uniform(5, 10), rng.uniform(3, 4)
        cx, cy = x / 2 + rng.uniform(-0.2, 0.2), y / 2 + rng.uniform(-0.2, 0.2)
        spacing, turn = rng.uniform(0.15, 0.2), rng.uniform(0, np.pi)
        dx, dy = spacing / 2 * np.cos(turn), spacing / 2 * np.sin(turn)
        row = [name, x, y, z, cx - dx, cy - dy, cx + dx, cy + dy, rng.uniform(0.9, 1.8)]
        for _ in (1, 2):
            distance, angle = rng.uniform(1.0, 2.0), rng.uniform(0, 2 * np.pi)
            row += [cx + distance * np.cos(angle), cy + distance * np.sin(angle), rng.uniform(0.9, 1.8)]
        lines.append([*row, rng.uniform(0.1, 0.3)])
    with open(folder / "reverb_params_tt.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(lines)
    return folder


WHAMR_RATES = (8000, 16000)
WHAMR_MODES = ("min", "max")


def official_whamr(inputs: dict[str, Path], out: Path) -> None:
    """whamr_scripts' create_wham_from_scratch.py loop for tt at 8 and 16 kHz, min and max
    (its defaults), mono: per utterance, simulate the room (sepkit's port of
    pyroomacoustics 0.3.1, data_prep.image_source, on both sides: pyroomacoustics 0.3.1
    itself does not build here, and the comparison is about the loop), convolve each
    16 kHz source padded to the noise length with its reverberant and anechoic RIR once,
    then per rate resample, and per mode scale both by sqrt(E[dry WHAM! s_i^2] /
    E[anechoic s_i^2]) over whole signals, cut (min) or place at the speech start (max),
    add the WHAM! noise and write eleven float32 files."""
    from data_prep.whamr import FOLDERS, read_reverb_params, room_rirs

    rooms = read_reverb_params(inputs["reverb_params"] / "reverb_params_tt.csv")
    with np.load(inputs["wham_noise"] / "metadata" / "scaling_tt.npz") as npz:
        scaling = {key: npz[key] for key in npz.files}
    with open(inputs["lists"] / "mix_2_spk_filenames_tt.csv", newline="") as handle:
        pairs = {row["output_filename"]: (row["s1_path"], row["s2_path"]) for row in csv.DictReader(handle)}
    for rate in WHAMR_RATES:
        for mode in WHAMR_MODES:
            for folder in FOLDERS.values():
                (out / f"wav{rate // 1000}k" / mode / "tt" / folder).mkdir(parents=True)
    for index, name in enumerate(str(n) for n in scaling["utterance_id"]):
        speech16 = [sf.read(str(inputs["wsj0"] / path), dtype="float64")[0] for path in pairs[name]]
        noise16 = sf.read(str(inputs["wham_noise"] / "tt" / name), dtype="float64")[0][:, 0]
        rirs = room_rirs(rooms[Path(name).stem], "legacy", "pra031")
        padded = [np.concatenate([x, np.zeros(len(noise16) - len(x))]) for x in speech16]
        wet16 = {kind: [fftconvolve(x, rirs[kind][i]) for i, x in enumerate(padded)] for kind in ("reverb", "anechoic")}
        for rate in WHAMR_RATES:
            tag = f"{rate // 1000}k"

            def at_rate(x: np.ndarray, rate: int = rate) -> np.ndarray:
                return x if rate == 16000 else resample_poly(x, rate, 16000)

            wet = {kind: [at_rate(x) for x in signals] for kind, signals in wet16.items()}
            speech = [at_rate(x) for x in speech16]
            noise_at_rate = at_rate(noise16)
            start = int(scaling["speech_start_sample_16k"][index]) * rate // 16000
            for mode in WHAMR_MODES:
                dry = [
                    np.round(x * scaling[f"scaling_wsjmix_{tag}_{mode}"][index][i] * 32768)
                    / 32768
                    * scaling[f"scaling_wham_speech_{tag}_{mode}"][index]
                    for i, x in enumerate(speech)
                ]
                gains = [np.sqrt(np.sum(d**2) / np.sum(a**2)) for d, a in zip(dry, wet["anechoic"])]
                noise = noise_at_rate * scaling[f"scaling_wham_noise_{tag}_{mode}"][index]
                outputs: dict[str, np.ndarray] = {}
                if mode == "min":
                    n = min(len(d) for d in dry)
                    noise = noise[start : start + n]
                else:
                    n = len(noise)
                outputs["noise"] = noise
                for kind, suffix in (("reverb", ""), ("anechoic", "_anechoic")):
                    placed = []
                    for signal, gain in zip(wet[kind], gains):
                        if mode == "min":
                            placed.append(signal[:n] * gain)
                        else:
                            full = np.zeros(n)
                            full[start:] = signal[: n - start] * gain
                            placed.append(full)
                    outputs[f"s1{suffix}"], outputs[f"s2{suffix}"] = placed
                    outputs[f"mix_clean{suffix}"] = placed[0] + placed[1]
                    outputs[f"mix_both{suffix}"] = placed[0] + placed[1] + noise
                    outputs[f"mix_single{suffix}"] = placed[0] + noise
                base = out / f"wav{tag}" / mode / "tt"
                for key, folder in FOLDERS.items():
                    sf.write(base / folder / name, outputs[key].astype(np.float32), rate, subtype="FLOAT")


@dataclass
class RecipeBench:
    """One comparison: the official loop writing into a folder, and sepkit's argv for it."""

    official: Callable[[dict[str, Path], Path], None]
    sepkit_argv: Callable[[dict[str, Path], Path], list[str]]


RECIPES: dict[str, RecipeBench] = {
    "wsj0-mix": RecipeBench(
        official_wsj0mix,
        lambda i, out: (
            ["wsj0-mix", "--wsj0", str(i["wsj0"]), "--lists", str(i["lists"]), "--splits", "tt"] + ["--out", str(out)]
        ),
    ),
    "librimix": RecipeBench(
        official_librimix,
        lambda i, out: (
            ["librimix", "--librispeech", str(i["librispeech"]), "--wham-noise", str(i["wham_noise"])]
            + ["--metadata", str(i["metadata"]), "--subsets", "dev", "--types", "mix_clean", "mix_both", "mix_single"]
            + ["--out", str(out)]
        ),
    ),
    "wham": RecipeBench(
        official_wham,
        lambda i, out: (
            ["wham", "--wsj0", str(i["wsj0"]), "--wham-noise", str(i["wham_noise"])]
            + ["--lists", str(i["lists"]), "--splits", "tt", "--out", str(out)]
        ),
    ),
    "whamr": RecipeBench(
        official_whamr,
        lambda i, out: (
            ["whamr", "--wsj0", str(i["wsj0"]), "--wham-noise", str(i["wham_noise"]), "--lists", str(i["lists"])]
            + ["--reverb-params", str(i["reverb_params"]), "--splits", "tt", "--out", str(out)]
            + ["--sample-rate", *map(str, WHAMR_RATES), "--mode", *WHAMR_MODES]
        ),
    ),
}


def run_side(name: str, side: str, inputs: dict[str, str], out: Path, no_extras: bool) -> None:
    """One run of one side, in this (child) process; prints its wall and CPU time as JSON."""
    paths = {key: Path(value) for key, value in inputs.items()}
    bench = RECIPES[name]
    start, start_cpu = time.perf_counter(), time.process_time()
    if side == "official":
        bench.official(paths, out)
    else:
        from data_prep.cli import main as prepare

        argv = bench.sepkit_argv(paths, out) + ["--write", "--no-progress", "--jobs", "1"]
        if no_extras and name in ("wsj0-mix", "librimix"):
            argv.append("--no-official-extras")
        with contextlib.redirect_stdout(io.StringIO()):
            assert prepare(argv) == 0, argv
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}))


def _child(name: str, side: str, inputs: dict[str, Path], out: Path, no_extras: bool) -> tuple[float, float, float]:
    """Run one side in a fresh Python process: (its wall time in s, its CPU time in s, both
    measured after its imports, and its peak RSS in MiB, from the kernel's accounting of
    that process alone via wait4)."""
    command = [sys.executable, __file__, "--child", name, side, json.dumps({k: str(v) for k, v in inputs.items()})]
    command += [str(out)] + (["--no-official-extras"] if no_extras else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{name} {side}: exit status {process.returncode}")
    timing = json.loads(stdout.decode().strip().splitlines()[-1])
    return timing["seconds"], timing["cpu_seconds"], usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _max_difference(official: Path, ours: Path) -> float:
    """Largest absolute sample difference between the files the official loop wrote under
    ``official`` and sepkit's files at the same relative paths (the layouts match)."""
    worst = 0.0
    files = sorted(official.rglob("*.wav"))
    assert files, official
    for path in files:
        a = sf.read(str(path), dtype="float64")[0]
        b = sf.read(str(ours / path.relative_to(official)), dtype="float64")[0]
        assert a.shape == b.shape, path
        worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def time_recipes(names: list[str], n_mixtures: int, rounds: int, no_extras: bool = False) -> dict:
    """Median wall time and peak RSS of the official loop and of ``sepkit prepare ... --write``
    per recipe, the two run alternately ``rounds`` times each, each run in its own child
    process writing into a fresh folder; ``no_extras`` passes ``--no-official-extras`` to
    the recipes that have it. WHAMR!'s first round also checks that both sides wrote the
    same files (largest sample difference)."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wsj0, lists = fabricate(root, n_mixtures)
        libri, libri_noise, libri_meta = fabricate_librimix(root, n_mixtures)
        inputs = {
            "wsj0-mix": {"wsj0": wsj0, "lists": lists},
            "librimix": {"librispeech": libri, "wham_noise": libri_noise, "metadata": libri_meta},
            "wham": {"wsj0": wsj0, "lists": lists, "wham_noise": fabricate_wham(root, wsj0, lists)},
        }
        inputs["whamr"] = {**inputs["wham"], "reverb_params": fabricate_reverb_params(root, lists)}
        for name in names:
            times: dict[str, list[float]] = {"official": [], "sepkit": []}
            cpu: dict[str, list[float]] = {"official": [], "sepkit": []}
            memory: dict[str, list[float]] = {"official": [], "sepkit": []}
            difference = None
            for index in range(rounds):
                outs = {side: root / f"{name}_{side}_{index}" for side in ("official", "sepkit")}
                for side, out in outs.items():
                    seconds, cpu_seconds, peak = _child(name, side, inputs[name], out, no_extras)
                    times[side].append(seconds)
                    cpu[side].append(cpu_seconds)
                    memory[side].append(peak)
                if name == "whamr" and index == 0:
                    difference = _max_difference(outs["official"], outs["sepkit"])
                for out in outs.values():
                    shutil.rmtree(out)
            official, ours = float(np.median(times["official"])), float(np.median(times["sepkit"]))
            official_cpu, ours_cpu = float(np.median(cpu["official"])), float(np.median(cpu["sepkit"]))
            results[name] = {
                "official_s": official,
                "sepkit_s": ours,
                "sepkit_over_official": ours / official,
                "official_cpu_s": official_cpu,
                "sepkit_cpu_s": ours_cpu,
                "sepkit_over_official_cpu": ours_cpu / official_cpu,
                "official_peak_rss_mib": max(memory["official"]),
                "sepkit_peak_rss_mib": max(memory["sepkit"]),
                "rounds_s": times,
                "rounds_cpu_s": cpu,
                "rounds_peak_rss_mib": memory,
            }
            if difference is not None:
                results[name]["max_abs_difference_official_vs_sepkit"] = difference
            print(
                f"{name:10s} official {official:7.2f} s {max(memory['official']):6.0f} MiB  "
                f"sepkit {ours:7.2f} s {max(memory['sepkit']):6.0f} MiB  ratio {ours / official:5.2f}  "
                f"CPU ratio {ours_cpu / official_cpu:5.2f}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mixtures", type=int, default=120)
    # batch 4 x 4 s of the paper-size model needs ~18 GB of activations on CPU; one
    # 4 s mixture per step gives the per-mixture cost without exhausting a shared machine
    parser.add_argument("--batch", type=int, default=1, help="Conv-TasNet batch size (4 s segments)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, help="default bench/results/data.json (data_recipes.json with --recipes)")
    parser.add_argument("--recipes", nargs="*", choices=sorted(RECIPES), help="compare with the official loops instead")
    parser.add_argument("--rounds", type=int, default=5, help="--recipes: alternate runs per side")
    parser.add_argument("--label", default="", help="--recipes: what code was measured (e.g. a commit)")
    parser.add_argument(
        "--no-official-extras",
        action="store_true",
        help="--recipes: run sepkit without the scaling.mat / metrics pass (the same work as before they existed)",
    )
    parser.add_argument("--child", nargs=4, metavar=("RECIPE", "SIDE", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        name, side, inputs, out = args.child
        run_side(name, side, json.loads(inputs), Path(out), args.no_official_extras)
        return
    if args.recipes is not None:
        results = {
            "command": "PYTHONPATH=. python bench/data.py " + shlex.join(sys.argv[1:]),
            "code": args.label,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_at_start": os.getloadavg()[0],  # the machine is shared: figures are noisy
            "mixtures": args.mixtures,
            "rounds": args.rounds,
            "recipes": time_recipes(
                args.recipes or sorted(RECIPES), args.mixtures, args.rounds, args.no_official_extras
            ),
        }
        out = args.out or Path(__file__).parent / "results" / "data_recipes.json"
        write_text_atomic(out, json.dumps(results, indent=1) + "\n")
        return
    import torch
    from torch.utils.data import DataLoader

    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "load_average_at_start": os.getloadavg()[0],  # the machine is shared: figures are noisy
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wsj0, lists = fabricate(root, args.mixtures)
        specs = None
        for jobs in (1, 2):
            out = root / f"out{jobs}"
            plans = wsj0mix.build_plans(wsj0, lists, out, [2], [8000], ["min"], ["tr"])
            specs = plans[0].specs
            start = time.perf_counter()
            execute(plans, write=True, jobs=jobs, progress=False)
            elapsed = time.perf_counter() - start
            results[f"write_jobs{jobs}_mix_per_s"] = len(specs) / elapsed
            print(f"write, {jobs} job(s): {len(specs) / elapsed:.1f} mixtures/s", flush=True)
        assert specs is not None
        results["mean_mixture_seconds"] = float(np.mean([s.length for s in specs]) / 8000)
        for workers in (0, 1, 2):
            loader = DataLoader(_rows_dataset(specs), batch_size=1, num_workers=workers)
            start = time.perf_counter()
            for _ in loader:
                pass
            elapsed = time.perf_counter() - start
            results[f"on_the_fly_workers{workers}_mix_per_s"] = len(specs) / elapsed
            print(f"on the fly, {workers} worker(s): {len(specs) / elapsed:.1f} mixtures/s", flush=True)
    step = time_training_step(args.batch, 4.0, args.steps)
    results["conv_tasnet_step_s"] = step
    results["conv_tasnet_batch"] = args.batch
    results["training_consumes_mix_per_s"] = args.batch / step
    results["on_the_fly_headroom_1_worker"] = (
        results["on_the_fly_workers1_mix_per_s"] / results["training_consumes_mix_per_s"]
    )
    print(f"{'measurement':44s} {'value':>10s}")
    for key, value in results.items():
        print(f"{key:44s} {value:>10.3f}" if isinstance(value, float) else f"{key:44s} {value}")
    write_text_atomic(args.out or Path(__file__).parent / "results" / "data.json", json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
