"""Scoring throughput: sepkit's scoring path against a plain loop of the same library calls.

Scores ``--mixtures`` (default 200) fabricated four-second 8 kHz two-speaker mixtures
with every metric of :data:`sepkit.metrics.METRIC_NAMES` (at 8 kHz wide-band PESQ is
flagged undefined, so both sides skip it):

- ``plain``: one process, a hand-written loop: SI-SDR and PIT in numpy, then
  ``fast_bss_eval.bss_eval_sources``, ``pesq.pesq`` and ``pystoi.stoi`` called directly
  on the matched estimates and on the mixture (the inputs of the improvements);
- ``sepkit_jobs1``: :func:`sepkit.metrics.score_utterance` in a loop;
- ``sepkit_jobs2``: the same in a pool of 2 worker processes, one utterance per task,
  as ``sepkit evaluate --jobs 2`` scores.

Every process uses one thread for torch (fast_bss_eval runs on it) and for the BLAS
behind numpy, so two workers do not oversubscribe two cores (a multi-threaded BLAS
spinning on a loaded machine made a 32000-sample dot product take 80 ms). The mixtures
are scored in blocks of ``--block`` (20), each block by the three sides in alternating
order, and each side's times are summed, so a change of load from other processes hits
all sides alike; the worker pool starts once and its start-up counts. Targets: ``sepkit_jobs1 / plain <= 1.05`` and
``sepkit_jobs2 / plain < 0.6``. The load average before and after is recorded.

The signals are speech-like (noise through a formant-like resonator, with a 4 Hz
syllabic envelope and pauses) so PESQ and STOI find speech; the estimates are the
references in swapped order plus leakage and noise.

Run: ``PYTHONPATH=. python bench/evaluate.py [--mixtures 200] [--block 20]``.
Writes ``bench/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
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

from sepkit.fileio import write_text_atomic  # noqa: E402
from sepkit.metrics import METRIC_NAMES, score_utterance  # noqa: E402

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


def sepkit_scores(utterance: Utterance) -> dict[str, float | None]:
    estimates, references, mixture = utterance
    return score_utterance(estimates, references, mixture, SAMPLE_RATE, METRIC_NAMES).values


def _one_thread() -> None:
    torch.set_num_threads(1)


def _one_thread_task(_: int) -> None:
    """A no-op task: returns once a worker is up."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixtures", type=int, default=200)
    parser.add_argument("--block", type=int, default=20, help="mixtures per block; the sides alternate per block")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    _one_thread()
    utterances = [make_utterance(i) for i in range(args.mixtures)]
    sides = ("plain", "sepkit_jobs1", "sepkit_jobs2")
    times = dict.fromkeys(sides, 0.0)
    outputs: dict[str, list[dict]] = {side: [] for side in sides}
    load_before = os.getloadavg()
    # The pool starts once, as in one `sepkit evaluate --jobs 2` run; its start-up counts.
    start = time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(2, initializer=_one_thread)
    pool.map(_one_thread_task, range(2))  # wait until both workers have imported sepkit
    times["sepkit_jobs2"] += time.perf_counter() - start
    score = {
        "plain": lambda block: [plain_scores(u) for u in block],
        "sepkit_jobs1": lambda block: [sepkit_scores(u) for u in block],
        "sepkit_jobs2": lambda block: list(pool.imap(sepkit_scores, block, chunksize=1)),
    }
    with pool:
        for block_index, first in enumerate(range(0, args.mixtures, args.block)):
            block = utterances[first : first + args.block]
            # short blocks in alternating order, so a load change hits every side alike
            for side in sides if block_index % 2 == 0 else sides[::-1]:
                start = time.perf_counter()
                outputs[side] += score[side](block)
                times[side] += time.perf_counter() - start
            print(
                f"{first + len(block)} mixtures: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
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
    result = {
        "command": "PYTHONPATH=. python bench/evaluate.py " + " ".join(sys.argv[1:]),
        "mixtures": args.mixtures,
        "seconds_per_mixture": SECONDS,
        "sample_rate": SAMPLE_RATE,
        "metrics": list(METRIC_NAMES),
        "block": args.block,
        "seconds": times,
        "ratio_jobs1_vs_plain": times["sepkit_jobs1"] / times["plain"],
        "ratio_jobs2_vs_plain": times["sepkit_jobs2"] / times["plain"],
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
    print(json.dumps({k: result[k] for k in ("seconds", "ratio_jobs1_vs_plain", "ratio_jobs2_vs_plain")}, indent=2))


if __name__ == "__main__":
    main()
