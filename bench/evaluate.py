"""Scoring throughput: sepkit's scoring path against a plain loop of the same library calls.

Scores ``--mixtures`` (default 200) fabricated four-second 8 kHz two-speaker mixtures
with every metric of :data:`sepkit.metrics.METRIC_NAMES` (at 8 kHz wide-band PESQ is
flagged undefined, so both sides skip it):

- ``plain``: one process, a hand-written loop: SI-SDR and PIT in numpy, then
  ``fast_bss_eval.bss_eval_sources``, ``pesq.pesq`` and ``pystoi.stoi`` called directly
  on the matched estimates and on the mixture (the inputs of the improvements);
- ``sepkit_jobs1``: :func:`sepkit.evaluation.score_all` with ``jobs=1``, the code that
  ``sepkit evaluate`` / ``sepkit score --jobs 1`` run after reading the audio;
- ``sepkit_jobs2``: the same with ``jobs=2``: two worker processes, started cold in each
  round as in one ``sepkit evaluate --jobs 2`` run (the fork server is stopped after each
  round, so every round pays its start-up).

Every process uses one thread for torch (fast_bss_eval runs on it) and for the BLAS
behind numpy, so two workers do not oversubscribe two cores (a multi-threaded BLAS
spinning on a loaded machine made a 32000-sample dot product take 80 ms). Each of
``--rounds`` (3) rounds scores all mixtures with each side, in an order that rotates per
round, so a change of load from other processes hits every side alike; the JSON holds
every round's times, the ratios of the summed times, and their spread over the rounds.
Targets: ``sepkit_jobs1 / plain <= 1.05`` and ``sepkit_jobs2 / plain < 0.6``. The load
average before and after is recorded: on a machine whose cores are busy with other work,
two workers cannot run at twice the speed, and the jobs-2 ratio says nothing.

The signals are speech-like (noise through a formant-like resonator, with a 4 Hz
syllabic envelope and pauses) so PESQ and STOI find speech; the estimates are the
references in swapped order plus leakage and noise.

Run: ``PYTHONPATH=. python bench/evaluate.py [--mixtures 200] [--rounds 3]``.
Writes ``bench/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing.forkserver
import os
import platform
import sys
import time
from pathlib import Path

# before numpy loads its BLAS; spawned workers inherit the environment
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.signal import lfilter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepkit.evaluation import ScoringJob, score_all  # noqa: E402
from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.metrics import METRIC_NAMES, SILENT_REFERENCE_DB  # noqa: E402

SAMPLE_RATE = 8000
SECONDS = 4.0
N_SRC = 2
RESULTS = Path(__file__).resolve().parent / "results" / "evaluate.json"

Utterance = tuple[
    np.ndarray, np.ndarray, np.ndarray
]  # estimates [n_src, time], references [n_src, time], mixture [time]


def speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n]`` noise through a resonator at a random formant-like frequency, with a syllabic envelope."""
    radius, frequency = 0.97, rng.uniform(300, 1500)
    pole = 2 * radius * np.cos(2 * np.pi * frequency / SAMPLE_RATE)
    voiced = lfilter([1.0], [1.0, -pole, radius**2], rng.standard_normal(n))
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    envelope *= (np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 2 * np.pi)) > -0.6).astype(float)  # pauses
    return voiced * envelope / (np.std(voiced * envelope) + 1e-12)


def make_utterance(index: int) -> Utterance:
    rng = np.random.default_rng(index)
    n = int(SECONDS * SAMPLE_RATE)
    references = np.stack([speech_like(rng, n) for _ in range(N_SRC)])
    mixture = references.sum(0)
    leakage = rng.uniform(0.05, 0.4)
    estimates = references[::-1] + leakage * references + 0.1 * rng.standard_normal(references.shape)
    return estimates, references, mixture


# ----------------------------------------------------------------------------- the plain loop


def _si_sdr(estimate: np.ndarray, target: np.ndarray, eps: float = 1e-8) -> float:
    estimate, target = estimate - estimate.mean(), target - target.mean()
    projection = (estimate @ target) / (target @ target + eps) * target
    noise = estimate - projection
    return float(10 * np.log10((projection @ projection) / (noise @ noise + eps) + eps))


def plain_scores(utterance: Utterance) -> dict[str, float]:
    """The same library calls as sepkit.metrics, written out without sepkit."""
    import fast_bss_eval
    import pesq
    import pystoi

    estimates, references, mixture = utterance
    best = max(
        itertools.permutations(range(N_SRC)),
        key=lambda perm: sum(_si_sdr(estimates[perm[j]], references[j]) for j in range(N_SRC)),
    )
    matched = estimates[list(best)]
    scores = {
        "si_sdr": np.mean([_si_sdr(matched[j], references[j]) for j in range(N_SRC)]),
        "input_si_sdr": np.mean([_si_sdr(mixture, references[j]) for j in range(N_SRC)]),
    }
    candidates = torch.from_numpy(np.stack([matched, np.broadcast_to(mixture, references.shape)]))
    refs = torch.from_numpy(references).expand(2, -1, -1)
    sdr, sir, sar = fast_bss_eval.bss_eval_sources(refs, candidates, filter_length=512, compute_permutation=False)
    scores.update(sdr=float(sdr[0].mean()), sir=float(sir[0].mean()), sar=float(sar[0].mean()))
    scores.update(input_sdr=float(sdr[1].mean()), input_sir=float(sir[1].mean()))
    for name, signals in (("", matched), ("input_", [mixture] * N_SRC)):
        scores[f"{name}pesq_nb"] = np.mean(
            [pesq.pesq(SAMPLE_RATE, references[j], signals[j], "nb") for j in range(N_SRC)]
        )
        for extended, metric in ((False, "stoi"), (True, "estoi")):
            scores[f"{name}{metric}"] = np.mean(
                [pystoi.stoi(references[j], signals[j], SAMPLE_RATE, extended=extended) for j in range(N_SRC)]
            )
    return scores


# ----------------------------------------------------------------------------- sepkit's path


def sepkit_scores(utterances: list[Utterance], jobs: int) -> list[dict[str, float | None]]:
    """The values of every utterance, scored by :func:`sepkit.evaluation.score_all`."""
    items = (
        (
            {"id": str(index), "mixture": "", "index": index},
            ScoringJob(e, r, m, SAMPLE_RATE, METRIC_NAMES, SILENT_REFERENCE_DB),
        )
        for index, (e, r, m) in enumerate(utterances)
    )
    rows = score_all(items, len(utterances), jobs, "bench")
    failed = [row for row in rows if row["status"] != "scored"]
    if failed:
        raise SystemExit(f"sepkit failed to score {len(failed)} utterances: {failed[0]['reason']}")
    return [row["values"] for row in rows]


def stop_fork_server() -> None:
    """Stop the workers' fork server, so that the next jobs-2 run starts cold, as a CLI run does."""
    multiprocessing.forkserver._forkserver._stop()  # private, but the only way to stop it


def spread(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixtures", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="each side scores every mixture once per round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # once, never changed back (see sepkit.evaluation._single_threaded_worker)
    utterances = [make_utterance(i) for i in range(args.mixtures)]
    plain_scores(utterances[0])  # warm-up: this process imports the metric packages before any timing
    score = {
        "plain": lambda: [plain_scores(u) for u in utterances],
        "sepkit_jobs1": lambda: sepkit_scores(utterances, 1),
        "sepkit_jobs2": lambda: sepkit_scores(utterances, 2),
    }
    sides = list(score)
    rounds: list[dict[str, float]] = []
    outputs: dict[str, list[dict]] = {}
    load_before = os.getloadavg()
    for round_index in range(args.rounds):
        times: dict[str, float] = {}
        for side in sides[round_index % 3 :] + sides[: round_index % 3]:  # each side in each position
            start = time.perf_counter()
            outputs[side] = score[side]()
            times[side] = time.perf_counter() - start
            if side == "sepkit_jobs2":
                stop_fork_server()
        rounds.append(times)
        print(
            f"round {round_index + 1}: "
            + ", ".join(f"{k} {times[k]:.1f} s" for k in sides)
            + f" (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    load_after = os.getloadavg()
    # Both paths must compute the same numbers, or the timing compares different work.
    for metric in ("si_sdr", "sdr", "sir", "sar", "pesq_nb", "stoi", "estoi"):
        plain = np.array([r[metric] for r in outputs["plain"]])
        for side in ("sepkit_jobs1", "sepkit_jobs2"):
            ours = np.array([r[metric] for r in outputs[side]])
            if not np.allclose(plain, ours, atol=1e-6):
                raise SystemExit(f"{side} {metric} differs from the plain loop by {np.abs(plain - ours).max()}")
    totals = {side: sum(times[side] for times in rounds) for side in sides}
    result = {
        "command": "PYTHONPATH=. python bench/evaluate.py " + " ".join(sys.argv[1:]),
        "mixtures": args.mixtures,
        "seconds_per_mixture": SECONDS,
        "sample_rate": SAMPLE_RATE,
        "metrics": list(METRIC_NAMES),
        "rounds": rounds,
        "seconds": totals,
        "ratio_jobs1_vs_plain": totals["sepkit_jobs1"] / totals["plain"],
        "ratio_jobs2_vs_plain": totals["sepkit_jobs2"] / totals["plain"],
        "ratio_spread_over_rounds": {
            side: spread([times[side] / times["plain"] for times in rounds])
            for side in ("sepkit_jobs1", "sepkit_jobs2")
        },
        "targets": {"ratio_jobs1_vs_plain": "<= 1.05", "ratio_jobs2_vs_plain": "< 0.6"},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    summary = ("seconds", "ratio_jobs1_vs_plain", "ratio_jobs2_vs_plain", "ratio_spread_over_rounds")
    print(json.dumps({k: result[k] for k in summary}, indent=2))


if __name__ == "__main__":
    main()
