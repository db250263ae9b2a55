"""Whole-command inference speed and memory: ``sepkit separate`` against Asteroid 0.7.0.

Both sides separate the same long 8 kHz two-talker mixture with a Conv-TasNet of the
paper's configuration (Asteroid's ``ConvTasNet(n_src=2)`` defaults: N=512, L=16, B=Sc=128,
H=512, P=3, X=8, R=3, gLN, sigmoid mask) holding the same weights: Asteroid builds the
model with ``torch.manual_seed(0)`` and saves ``model.serialize()``; sepkit reads that
very file (``sepkit separate`` recognises an Asteroid model file and converts it with
``sepkit.models.from_asteroid``), Asteroid's side loads it with ``from_pretrained``.

What is timed is each tool's whole command as a user runs it, interpreter start and
imports included: read the file, separate it in chunks, stitch, write one file per
source.

- sepkit: ``python -m sepkit.cli separate model.pth mix.wav -o OUT`` with its defaults
  (automatic chunk length, 25 % overlap, block-wise read/resample/write, float wav out),
  or ``--chunk-seconds`` when ``--sepkit-chunk-seconds`` is given.
- Asteroid: ``asteroid.separate.separate`` (``file_separate``'s read / separate / write) on
  ``LambdaOverlapAdd(model, n_src=2, window_size=W, hop_size=W // 2, window="hann",
  reorder_chunks=True)``, the chunked inference of its documentation (whose example
  uses W = 64000 samples, 8 s at 8 kHz: ``--asteroid-window-seconds``); it reads the
  whole file, runs the windows one by one and writes 16-bit wav.

Every run is its own child process with ``OMP_NUM_THREADS=MKL_NUM_THREADS=--threads``;
the two tools alternate (sepkit first in odd rounds, Asteroid first in even ones) so
that a change of machine load hits both. Wall time is measured by the parent around the
child, CPU time and peak RSS come from ``wait4`` (that child alone). One import-only
child per tool gives its interpreter's baseline RSS, so the memory a separation adds
on top is reported too (the parent stays small until every child has run: Linux
counts a parent's memory high-water mark in its children's ``ru_maxrss``). The two
tools' forward passes on one identical 2 s window must agree to float rounding (same
weights, same computation); their outputs of the last round are compared: SI-SDR
of sepkit's sources against Asteroid's (best permutation) over the whole file and per
10 s segment (the tools stitch chunks differently, so a segment may pair the sources
the other way round; that count is reported).

The mixture is synthetic (two harmonic talkers with syllable-rate envelopes and pauses,
seed 0), generated in a temporary folder and removed afterwards; the weights are
untrained, which changes nothing for speed or memory. Conv-TasNet's gLN normalises over
a whole chunk, so an output depends on where its chunk begins and ends: the two tools'
files agree only as far as their chunk layouts (sepkit: 25 % overlap, linear
cross-fade; Asteroid: 50 % overlap, Hann window, zero-padded ends) allow, which the
same-window check separates from the computation itself.

Run from the repository root: ``PYTHONPATH=. python bench/inference.py [--minutes 10]
[--rounds 3] [--threads 2]``; writes ``bench/results/inference.json`` with the
medians, the ratios sepkit / Asteroid, the targets (RTF <= 0.15, time <= 0.7x and
peak memory <= 0.5x Asteroid's) and the machine's load average before and after. The
machine's load matters: on a shared machine the absolute times are not the tools'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

RATE = 8000
SEGMENT_SECONDS = 10.0
TARGETS = {"rtf": 0.15, "time_ratio": 0.7, "peak_rss_ratio": 0.5}
# What each tool's command imports before it separates anything: the import-only
# children that give each interpreter's baseline memory import the same.
IMPORTS = {
    "sepkit": "import sepkit.cli, sepkit.inference, sepkit.checkpoint, sepkit.hub, rich.progress",
    "asteroid": "import torch, soundfile, asteroid.models, asteroid.separate, asteroid.dsp.overlap_add",
}


def talker(rng: np.random.Generator, samples: int, f0_range: tuple[float, float]) -> np.ndarray:
    """One synthetic talker ``[time]``: a harmonic complex (f0 wandering in ``f0_range``,
    harmonics up to 3.6 kHz with a falling spectrum) under a 3-6 Hz syllable envelope,
    in utterances of 1.5-8 s separated by 0.3-2.5 s pauses."""
    t = np.arange(samples) / RATE
    knots = np.linspace(0, samples / RATE, max(2, samples // (RATE // 4)))
    f0 = np.interp(t, knots, rng.uniform(*f0_range, size=knots.size))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = np.zeros(samples)
    for harmonic in range(1, int(3600 / f0_range[0]) + 1):
        audible = harmonic * f0 < 3600
        voice += audible * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi)) / harmonic
    syllables = np.interp(t, knots, rng.uniform(3, 6, size=knots.size))
    envelope = np.maximum(0.0, np.sin(2 * np.pi * np.cumsum(syllables) / RATE)) ** 2
    talking = np.zeros(samples)
    position = int(rng.uniform(0, 1.0) * RATE)
    while position < samples:
        length = int(rng.uniform(1.5, 8.0) * RATE)
        talking[position : position + length] = 1.0
        position += length + int(rng.uniform(0.3, 2.5) * RATE)
    return voice * envelope * talking


def write_mixture(path: Path, minutes: float) -> float:
    """Write a two-talker 0 dB mixture of ``minutes`` (16-bit wav, 8 kHz, peak 0.9);
    return its duration in seconds."""
    rng = np.random.default_rng(0)
    samples = int(minutes * 60 * RATE)
    sources = [talker(rng, samples, (95.0, 140.0)), talker(rng, samples, (170.0, 260.0))]
    sources = [s / np.sqrt(np.mean(s**2)) for s in sources]
    mixture = sources[0] + sources[1]
    sf.write(str(path), 0.9 * mixture / np.abs(mixture).max(), RATE, subtype="PCM_16")
    return samples / RATE


def write_model(path: Path) -> None:
    """Asteroid's paper Conv-TasNet with seed-0 weights, saved as Asteroid saves models."""
    import torch
    from asteroid.models import ConvTasNet

    torch.manual_seed(0)
    torch.save(ConvTasNet(n_src=2, sample_rate=RATE).serialize(), path)


def prepare_child(work_dir: str, minutes: str) -> None:
    """Write the mixture and the model in a child process: a parent that held them (or
    torch) would lend its memory high-water mark to every child it starts, since Linux
    counts the pre-exec image in a child's ``ru_maxrss``."""
    write_mixture(Path(work_dir) / "mix.wav", float(minutes))
    write_model(Path(work_dir) / "model.pth")


def asteroid_child(model_path: str, mixture: str, out_dir: str, window: int) -> None:
    """Asteroid's side of the comparison, in the process the parent measures: what
    ``asteroid.separate.file_separate`` does for a file at the model's rate (its
    resampling step imports ``julius`` even when the rates match, which Asteroid
    installed with ``--no-deps`` lacks, so the read and write are spelled out here)."""
    import torch
    from asteroid.dsp.overlap_add import LambdaOverlapAdd
    from asteroid.models import ConvTasNet
    from asteroid.separate import separate

    # Asteroid's own loader would unpickle without weights_only; the dict is plain
    # tensors and numbers apart from torch's version string class.
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        package = torch.load(model_path, map_location="cpu", weights_only=True)
    model = ConvTasNet.from_pretrained(package).eval()
    chunked = LambdaOverlapAdd(
        model, n_src=2, window_size=window, hop_size=window // 2, window="hann", reorder_chunks=True, enable_grad=False
    ).eval()
    wav, rate = sf.read(mixture, dtype="float32", always_2d=True)
    assert rate == model.sample_rate, (rate, model.sample_rate)
    (sources,) = separate(chunked, wav.T[None])  # [batch=1, channels=1, time] -> [n_src, time]
    for index, source in enumerate(sources, 1):
        sf.write(str(Path(out_dir) / f"{Path(mixture).stem}_est{index}.wav"), source, rate)


def run_child(command: list[str], threads: int) -> dict[str, float]:
    """Run ``command`` in a fresh process: its wall time, CPU time (s) and peak RSS
    (MiB, that process alone, from ``wait4``)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR (dB) of ``estimate`` against ``reference``, both ``[time]``, float64."""
    estimate = estimate - estimate.mean()
    reference = reference - reference.mean()
    target = (estimate @ reference) / max(reference @ reference, 1e-30) * reference
    noise = estimate - target
    return float(10 * np.log10(max(target @ target, 1e-30) / max(noise @ noise, 1e-30)))


def best_pairing(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, bool]:
    """Mean SI-SDR of ``ours`` ``[2, time]`` against ``theirs`` under the better of the two
    pairings, and whether that pairing swaps the sources."""
    straight = (si_sdr(ours[0], theirs[0]) + si_sdr(ours[1], theirs[1])) / 2
    swapped = (si_sdr(ours[0], theirs[1]) + si_sdr(ours[1], theirs[0])) / 2
    return max(straight, swapped), swapped > straight


def compare_outputs(sepkit_files: list[Path], asteroid_files: list[Path]) -> dict[str, Any]:
    """SI-SDR agreement of the two tools' sources, whole file and per segment."""
    ours = np.stack([sf.read(str(p), dtype="float64")[0] for p in sepkit_files])
    theirs = np.stack([sf.read(str(p), dtype="float64")[0] for p in asteroid_files])
    if ours.shape != theirs.shape:
        raise RuntimeError(f"output shapes differ: sepkit {ours.shape}, Asteroid {theirs.shape}")
    whole, whole_swapped = best_pairing(ours, theirs)
    step = int(SEGMENT_SECONDS * RATE)
    segments = [best_pairing(ours[:, i : i + step], theirs[:, i : i + step]) for i in range(0, ours.shape[1], step)]
    scores = [score for score, _ in segments]
    return {
        "si_sdr_whole_db": whole,
        "segment_seconds": SEGMENT_SECONDS,
        "si_sdr_segment_median_db": statistics.median(scores),
        "si_sdr_segment_min_db": min(scores),
        "segments": len(segments),
        "segments_paired_unlike_whole_file": sum(swapped != whole_swapped for _, swapped in segments),
        "max_abs_sepkit": float(np.abs(ours).max()),
        "max_abs_asteroid": float(np.abs(theirs).max()),
    }


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "asteroid": version("asteroid"),
        "numpy": np.__version__,
    }


def same_window_difference(model_path: Path, mixture: Path, seconds: float = 2.0) -> float:
    """Largest absolute difference between sepkit's and Asteroid's forward pass on the
    mixture's first ``seconds``: the same weights and the same computation, before the
    two tools' different chunking and stitching."""
    import torch
    from asteroid.models import ConvTasNet

    from sepkit.checkpoint import load_model

    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        package = torch.load(model_path, map_location="cpu", weights_only=True)
    theirs = ConvTasNet.from_pretrained(package).eval()
    ours = load_model(model_path)
    window = torch.from_numpy(sf.read(str(mixture), dtype="float32", frames=int(seconds * RATE))[0])[None]
    with torch.no_grad():
        return float((ours(window) - theirs(window)).abs().max())


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="mixture length (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of every child (default 2)")
    parser.add_argument(
        "--sepkit-chunk-seconds", type=float, default=None, help="sepkit's --chunk-seconds (default: its automatic one)"
    )
    parser.add_argument("--asteroid-window-seconds", type=float, default=8.0, help="LambdaOverlapAdd window (s)")
    parser.add_argument("--label", default="", help="what was measured (recorded in the JSON)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "inference.json")
    parser.add_argument("--asteroid-child", nargs=4, metavar=("MODEL", "MIX", "OUT", "WINDOW"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare-child", nargs=2, metavar=("DIR", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_child:
        prepare_child(*args.prepare_child)
        return
    if args.asteroid_child:
        model_path, mixture, out_dir, window = args.asteroid_child
        asteroid_child(model_path, mixture, out_dir, int(window))
        return

    from sepkit.fileio import write_text_atomic

    load_before = os.getloadavg()
    window = 2 * round(args.asteroid_window_seconds * RATE / 2)  # LambdaOverlapAdd wants it even
    with tempfile.TemporaryDirectory(prefix="sepkit-bench-inference-") as work:
        work_dir = Path(work)
        mixture, model_path = work_dir / "mix.wav", work_dir / "model.pth"
        run_child([sys.executable, __file__, "--prepare-child", str(work_dir), str(args.minutes)], args.threads)
        duration = int(args.minutes * 60 * RATE) / RATE
        commands = {
            "sepkit": lambda out: (
                [sys.executable, "-m", "sepkit.cli", "separate", str(model_path), str(mixture)]
                + ["-o", str(out)]
                + ([] if args.sepkit_chunk_seconds is None else ["--chunk-seconds", str(args.sepkit_chunk_seconds)])
            ),
            "asteroid": lambda out: (
                [sys.executable, __file__, "--asteroid-child", str(model_path), str(mixture)] + [str(out), str(window)]
            ),
        }
        baselines = {tool: run_child([sys.executable, "-c", IMPORTS[tool]], args.threads) for tool in IMPORTS}
        runs: dict[str, list[dict[str, float]]] = {"sepkit": [], "asteroid": []}
        for round_index in range(args.rounds):
            order = ["sepkit", "asteroid"] if round_index % 2 == 0 else ["asteroid", "sepkit"]
            for tool in order:
                out = work_dir / f"{tool}-{round_index}"
                out.mkdir()
                run = run_child(commands[tool](out), args.threads)
                run["rtf"] = run["seconds"] / duration
                # CPU seconds per second of audio: less sensitive than wall time to other
                # processes on a shared machine (on an idle one, about threads x RTF).
                run["cpu_per_audio_second"] = run["cpu_seconds"] / duration
                run["loadavg_1min_after"] = os.getloadavg()[0]
                runs[tool].append(run)
                print(
                    f"round {round_index + 1} {tool}: {run['seconds']:.1f} s, RTF {run['rtf']:.3f}, "
                    f"CPU {run['cpu_seconds']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        # Only now may this process grow: every measured child has run.
        last = args.rounds - 1
        agreement = compare_outputs(
            [work_dir / f"sepkit-{last}" / f"mix_s{i}.wav" for i in (1, 2)],
            [work_dir / f"asteroid-{last}" / f"mix_est{i}.wav" for i in (1, 2)],
        )
        agreement["same_window_max_abs_difference"] = same_window_difference(model_path, mixture)
    summary: dict[str, Any] = {}
    for tool, tool_runs in runs.items():
        peak = median_of(tool_runs, "peak_rss_mib")
        summary[tool] = {
            "seconds_median": median_of(tool_runs, "seconds"),
            "rtf_median": median_of(tool_runs, "rtf"),
            "cpu_seconds_median": median_of(tool_runs, "cpu_seconds"),
            "cpu_per_audio_second_median": median_of(tool_runs, "cpu_per_audio_second"),
            "peak_rss_mib_median": peak,
            "import_baseline_rss_mib": baselines[tool]["peak_rss_mib"],
            "import_baseline_seconds": baselines[tool]["seconds"],
            "peak_rss_above_baseline_mib": peak - baselines[tool]["peak_rss_mib"],
        }
    ratios = {
        "time": summary["sepkit"]["seconds_median"] / summary["asteroid"]["seconds_median"],
        "cpu_time": summary["sepkit"]["cpu_seconds_median"] / summary["asteroid"]["cpu_seconds_median"],
        "peak_rss": summary["sepkit"]["peak_rss_mib_median"] / summary["asteroid"]["peak_rss_mib_median"],
        "peak_rss_above_baseline": summary["sepkit"]["peak_rss_above_baseline_mib"]
        / summary["asteroid"]["peak_rss_above_baseline_mib"],
    }
    report = {
        "label": args.label,
        "command": shlex.join([sys.executable, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "mixture": {"minutes": args.minutes, "seconds": duration, "sample_rate": RATE, "subtype": "PCM_16"},
        "model": "Asteroid ConvTasNet(n_src=2, sample_rate=8000) defaults, torch.manual_seed(0) weights",
        "threads": args.threads,
        "sepkit_chunk_seconds": args.sepkit_chunk_seconds or "automatic",
        "asteroid_window_samples": window,
        "rounds": args.rounds,
        "summary": summary,
        "ratios_sepkit_over_asteroid": ratios,
        "targets": TARGETS,
        "targets_met": {
            "rtf": summary["sepkit"]["rtf_median"] <= TARGETS["rtf"],
            "time_ratio": ratios["time"] <= TARGETS["time_ratio"],
            "peak_rss_ratio": ratios["peak_rss"] <= TARGETS["peak_rss_ratio"],
        },
        "agreement": agreement,
        "runs": runs,
    }
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    for tool, stats in summary.items():
        print(
            f"{tool:>8}: {stats['seconds_median']:.1f} s (RTF {stats['rtf_median']:.3f}), "
            f"peak RSS {stats['peak_rss_mib_median']:.0f} MiB ({stats['peak_rss_above_baseline_mib']:.0f} above "
            f"its import baseline)"
        )
    print(
        f"sepkit / Asteroid: time {ratios['time']:.2f}x, peak RSS {ratios['peak_rss']:.2f}x "
        f"({ratios['peak_rss_above_baseline']:.2f}x above baseline); outputs agree to "
        f"{agreement['si_sdr_segment_median_db']:.1f} dB SI-SDR (median of {agreement['segments']} segments)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
