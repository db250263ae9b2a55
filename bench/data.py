"""Data-preparation benchmarks.

Default: throughput, mixtures per second written to disk and rendered on the fly
(wsj0-2mix recipe: 2 speakers, 8 kHz, min, ~4 s mixtures on average), with 1 and 2
workers, against the time of one Conv-TasNet training step on this machine. The corpus
is fabricated (16 kHz int16 utterances of U(3, 6) s, so the shorter of two is 4 s on
average). Run: ``PYTHONPATH=. python bench/data.py [--mixtures 120]``; writes
``bench/results/data.json``.

``--recipes``: wall time of ``sepkit prepare <recipe> --write`` (one process, 8 kHz,
min) against a plain reimplementation of the official generator's loop for the same
files (pywsj0-mix's generate_wsjmix.py for wsj0-mix, LibriMix's
create_librimix_from_metadata.py, WHAM!'s create_wham_from_scratch.py; the loops live
here, not in the package), run alternately on the same fabricated corpus, ``--rounds``
times each. Writes ``bench/results/data_recipes.json`` with the median times, the ratio
sepkit / official and the command line. sepkit's time includes what the official
loops do not write (mixture tables, manifest, wsj0-mix's scaling.mat pass); with
``--no-official-extras`` sepkit skips its scaling.mat / LibriMix metrics pass, which is
the work sepkit did before those files were written (compare with a run of the older
code: ``--label`` records which code was measured).
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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import wsj0mix  # noqa: E402
from data_prep.common import execute  # noqa: E402
from sepkit.data.mixtures import MixtureSpec, render  # noqa: E402
from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.losses import pit_si_sdr_loss  # noqa: E402
from sepkit.models.registry import build_model  # noqa: E402


class _Rows(Dataset):
    """Renders table rows on the fly: ``(mixture [time], sources [2, time])``."""

    def __init__(self, specs: list[MixtureSpec]) -> None:
        self.specs = specs

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int):
        mix, src = render(self.specs[index])
        return torch.from_numpy(mix), torch.from_numpy(src)


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
    # WHAMR! hook: once the WHAMR! rewrite (data_prep/whamr.py) lands, add
    # "whamr": RecipeBench(official_whamr, whamr_argv), where official_whamr reimplements
    # whamr_scripts' create_wham_from_scratch.py loop (WhamRoom RIRs) for tt, 8 kHz, min,
    # and the corpus gets reverb_params_tt.csv next to fabricate_wham's inputs.
}


def time_recipes(names: list[str], n_mixtures: int, rounds: int, no_extras: bool = False) -> dict:
    """Median wall time of the official loop and of ``sepkit prepare ... --write`` per recipe,
    the two run alternately ``rounds`` times each, every run into a fresh folder;
    ``no_extras`` passes ``--no-official-extras`` to the recipes that have it."""
    from data_prep.cli import main as prepare

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
        for name in names:
            bench = RECIPES[name]
            times: dict[str, list[float]] = {"official": [], "sepkit": []}
            for index in range(rounds):
                for side in ("official", "sepkit"):
                    out = root / f"{name}_{side}_{index}"
                    start = time.perf_counter()
                    if side == "official":
                        bench.official(inputs[name], out)
                    else:
                        argv = bench.sepkit_argv(inputs[name], out) + ["--write", "--no-progress", "--jobs", "1"]
                        if no_extras and name in ("wsj0-mix", "librimix"):
                            argv.append("--no-official-extras")
                        with contextlib.redirect_stdout(io.StringIO()):
                            assert prepare(argv) == 0, argv
                    times[side].append(time.perf_counter() - start)
                    shutil.rmtree(out)
            official, ours = float(np.median(times["official"])), float(np.median(times["sepkit"]))
            results[name] = {
                "official_s": official,
                "sepkit_s": ours,
                "sepkit_over_official": ours / official,
                "rounds_s": times,
            }
            print(
                f"{name:10s} official {official:7.2f} s  sepkit {ours:7.2f} s  ratio {ours / official:5.2f}", flush=True
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
    args = parser.parse_args()
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
            loader = DataLoader(_Rows(specs), batch_size=1, num_workers=workers)
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
