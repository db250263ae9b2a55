"""Separation quality: the one place where sepkit computes it.

Training's validation, ``sepkit evaluate``, ``sepkit score`` and the synthetic helpers
all call this module; :mod:`sepkit.losses` stays the differentiable training loss, and
SI-SDR here is built on it (same conventions: zero-mean signals, ``eps = 1e-8``).

Metrics (:data:`METRIC_NAMES`), each of the PIT-matched estimate ``ŝ_j`` against its
reference ``s_j``, averaged over the sources ``j``:

- ``si_sdr``: scale-invariant SDR (Le Roux et al. 2019), dB.
- ``sdr``, ``sir``, ``sar``: BSS-eval v3 ``bss_eval_sources`` (Vincent et al. 2006,
  512-tap distortion filters, as mir_eval and Asteroid report them), dB, computed by
  ``fast_bss_eval`` on its torch backend (its numpy backend fails on numpy >= 2), in
  float64. It agrees with mir_eval's ``bss_eval_sources`` to 1e-6 dB on the random and
  speech signals of tests/test_metrics.py (measured: 1e-13 dB); only values near the
  float floor (an artifact-free SAR of 100+ dB) differ more, by up to 1e-3 dB.
- ``pesq_nb``, ``pesq_wb``: PESQ (ITU-T P.862 narrow-band raw MOS, P.862.2 wide-band
  MOS-LQO) through the ``pesq`` package; narrow-band at 8 or 16 kHz, wide-band at 16 kHz.
- ``stoi``, ``estoi``: STOI (Taal et al. 2011) and extended STOI (Jensen & Taal 2016)
  through ``pystoi``.

Rules:

- **One permutation.** The estimates are matched to the references once, by PIT on
  SI-SDR (:func:`sepkit.losses.pit_si_sdr`); every metric is computed on that matching
  and the permutation is recorded (``permutation[j]`` is the estimate matched to
  reference ``j``).
- **Improvements** are measured against the unprocessed mixture: ``inputs`` holds each
  metric with the mixture ``x`` in place of every estimate, ``improvements`` the
  difference. The input SAR is always ``None``: the mixture is a sum of the references,
  so bss_eval finds no artifacts and its SAR is +inf up to rounding (mir_eval prints
  about 300 dB); an "SAR improvement" against it means nothing.
- **No mixture, no inputs.** With ``mixture=None`` (``sepkit score`` without
  ``--mixtures``) every input value and improvement is ``None`` and no input metric is
  computed (no flag: nothing is undefined, it was not asked for); the silent-reference
  rule then measures against the sum of the references.
- **Undefined is explicit.** A metric that is undefined for an utterance is ``None``
  (never NaN, never a crash) with the reason in ``flags[metric]``; a metric's
  utterance value is ``None`` when any of its sources is undefined (a mean over the
  remaining sources would be a different quantity). The cases:

  - a *silent reference*: energy (after removing its mean) at or below
    ``silent_reference_db`` (default -40 dB) relative to the mixture's, i.e.
    ``10 log10(||s_j||^2 / ||x||^2) <= -40``: every metric of the utterance is ``None``;
    matching an estimate to silence measures leakage or the float floor, not separation;
  - PESQ at a sample rate other than 8/16 kHz (wide-band: other than 16 kHz), on signals
    shorter than :data:`PESQ_MIN_SECONDS` (0.25 s), or where the ``pesq`` package finds
    no utterance (e.g. a silent estimate or reference);
  - STOI/ESTOI when fewer than 30 non-silent frames (about 0.4 s of speech) remain,
    where pystoi would return a meaningless ``1e-5``;
  - BSS-eval metrics when bss_eval gives a non-finite value (e.g. a silent estimate).
- Metrics whose package is missing raise :class:`MissingMetricPackage`, naming the
  ``sepkit[eval]`` extra.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch

from sepkit.losses import best_permutation, pairwise_si_sdr, si_sdr

METRIC_NAMES: tuple[str, ...] = ("si_sdr", "sdr", "sir", "sar", "pesq_nb", "pesq_wb", "stoi", "estoi")
CHEAP_METRICS: tuple[str, ...] = ("si_sdr", "sdr")
BSS_EVAL_METRICS: tuple[str, ...] = ("sdr", "sir", "sar")
# Metrics with no input value (see the module docstring): their improvement is None too.
NO_INPUT_VALUE: frozenset[str] = frozenset({"sar"})

SILENT_REFERENCE_DB = -40.0
PESQ_MIN_SECONDS = 0.25
PESQ_SAMPLE_RATES: dict[str, tuple[int, ...]] = {"pesq_nb": (8000, 16000), "pesq_wb": (16000,)}
# pip package that provides each optional metric, for the error message.
_PACKAGES: dict[str, str] = {
    "sdr": "fast_bss_eval",
    "sir": "fast_bss_eval",
    "sar": "fast_bss_eval",
    "pesq_nb": "pesq",
    "pesq_wb": "pesq",
    "stoi": "pystoi",
    "estoi": "pystoi",
}
# bss_eval distortion filter length in taps (BSS-eval v3 and mir_eval use 512).
BSS_EVAL_FILTER_LENGTH = 512


class MissingMetricPackage(ImportError):
    """A requested metric needs a package that is not installed."""


@dataclass
class UtteranceScores:
    """Every requested metric of one utterance.

    ``permutation[j]`` is the estimate index matched to reference ``j`` (PIT on SI-SDR).
    ``values``/``inputs``/``improvements`` map a metric to its mean over sources (``None``:
    undefined, reason in ``flags``); ``per_source`` maps a metric to the value of each
    matched estimate, in reference order.
    """

    permutation: tuple[int, ...]
    values: dict[str, float | None] = field(default_factory=dict)
    inputs: dict[str, float | None] = field(default_factory=dict)
    improvements: dict[str, float | None] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    per_source: dict[str, list[float | None]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- batched torch SI-SDR


def input_si_sdr(sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """SI-SDR of the unprocessed mixture against each source, averaged over sources.

    Args:
        sources: ``[batch, n_src, time]`` references ``s_j``.
        mixture: ``[batch, time]`` mixture ``x``.

    Returns:
        ``[batch]`` mean over ``j`` of SI-SDR(``x``, ``s_j``) in dB.
    """
    return si_sdr(mixture.unsqueeze(1).expand_as(sources), sources).mean(-1)


def si_sdr_improvement(
    estimates: torch.Tensor, sources: torch.Tensor, mixture: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Utterance-level PIT SI-SDR and its improvement over the mixture (SI-SDRi).

    Args:
        estimates: ``[batch, n_src, time]`` separated signals ``ŝ``.
        sources: ``[batch, n_src, time]`` references ``s``.
        mixture: ``[batch, time]`` mixture ``x``.

    Returns:
        ``(si_sdr, si_sdri)``, each ``[batch]`` in dB: the mean SI-SDR of the PIT-matched
        estimates, and that minus :func:`input_si_sdr`.
    """
    pairwise = pairwise_si_sdr(estimates, sources)
    perm = best_permutation(pairwise)
    score = torch.gather(pairwise, 1, perm.unsqueeze(1)).squeeze(1).mean(-1)
    return score, score - input_si_sdr(sources, mixture)


# ----------------------------------------------------------------------------- one utterance


def _import(package: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise MissingMetricPackage(
            f"metric {metric!r} needs the {package!r} package: pip install 'sepkit[eval]'"
        ) from err


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """Validate metric names and that their packages import; returns them without duplicates.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        MissingMetricPackage: a metric whose package is not installed.
    """
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
    for metric in metrics:
        if metric in _PACKAGES:
            _import(_PACKAGES[metric], metric)
    return tuple(dict.fromkeys(metrics))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _bss_eval(references: np.ndarray, candidates: np.ndarray, metric: str) -> dict[str, np.ndarray]:
    """bss_eval_sources (no permutation) of ``candidates`` ``[k, n_src, time]`` against ``references``.

    Returns ``{"sdr", "sir", "sar"}`` each ``[k, n_src]`` (may hold inf/NaN).
    """
    fast_bss_eval = _import("fast_bss_eval", metric)
    refs = torch.from_numpy(references).expand(candidates.shape[0], -1, -1)
    sdr, sir, sar = fast_bss_eval.bss_eval_sources(
        refs, torch.from_numpy(candidates), filter_length=BSS_EVAL_FILTER_LENGTH, compute_permutation=False
    )
    return {"sdr": sdr.numpy(), "sir": sir.numpy(), "sar": sar.numpy()}


def _pesq(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, metric: str) -> tuple[float | None, str]:
    """PESQ of one signal pair: ``(score, "")`` or ``(None, reason)``."""
    pesq = _import("pesq", metric)
    if not np.any(degraded) or not np.any(reference):
        return None, "silent signal"
    try:
        score = pesq.pesq(sample_rate, reference, degraded, "nb" if metric == "pesq_nb" else "wb")
    except pesq.PesqError as err:  # NoUtterancesError, BufferTooShortError, ...
        return None, f"{type(err).__name__}: {err}".rstrip(": ")
    return (None, "not finite") if not math.isfinite(score) else (float(score), "")


def _stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, metric: str) -> tuple[float | None, str]:
    """STOI or ESTOI of one signal pair: ``(score, "")`` or ``(None, reason)``."""
    pystoi = _import("pystoi", metric)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = pystoi.stoi(reference, degraded, sample_rate, extended=metric == "estoi")
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return None, "fewer than 30 non-silent frames (about 0.4 s of speech)"
    return (None, "not finite") if not math.isfinite(score) else (float(score), "")


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _add_flag(flags: dict[str, str], metric: str, reason: str) -> None:
    flags[metric] = f"{flags[metric]}; {reason}" if metric in flags else reason


def score_utterance(
    estimates: np.ndarray,
    references: np.ndarray,
    mixture: np.ndarray | None,
    sample_rate: int,
    metrics: Sequence[str] = CHEAP_METRICS,
    silent_reference_db: float = SILENT_REFERENCE_DB,
) -> UtteranceScores:
    """Score one utterance's separated signals (see the module docstring for the rules).

    Args:
        estimates: ``[n_src, time]`` separated signals ``ŝ`` in any order.
        references: ``[n_src, time]`` references ``s``.
        mixture: ``[time]`` unprocessed mixture ``x``, or ``None``: then no input values
            and no improvements (all ``None``), which halves the work of BSS-eval, PESQ
            and STOI.
        sample_rate: Hz, of all three.
        metrics: names from :data:`METRIC_NAMES`.
        silent_reference_db: a reference at or below this energy relative to the mixture
            makes every metric undefined.

    Returns:
        The :class:`UtteranceScores`; metrics are computed in float64.

    Raises:
        ValueError: shapes that do not fit, non-finite samples, unknown metrics.
        MissingMetricPackage: a metric whose package is not installed.
    """
    metrics = check_metrics(metrics)
    # contiguous copies: torch.from_numpy refuses negative strides (e.g. estimates[::-1])
    estimates = np.ascontiguousarray(estimates, dtype=np.float64)
    references = np.ascontiguousarray(references, dtype=np.float64)
    has_mixture = mixture is not None
    mixture = np.ascontiguousarray(mixture if has_mixture else references.sum(0), dtype=np.float64)
    if references.ndim != 2 or estimates.shape != references.shape or mixture.shape != references.shape[1:]:
        raise ValueError(
            f"expected estimates and references [n_src, time] and mixture [time]; got estimates "
            f"{estimates.shape}, references {references.shape}, mixture {mixture.shape}"
        )
    for name, array in (("estimates", estimates), ("references", references), ("mixture", mixture)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain NaN or Inf samples")

    pairwise = pairwise_si_sdr(torch.from_numpy(estimates)[None], torch.from_numpy(references)[None])
    perm = best_permutation(pairwise)[0]
    scores = UtteranceScores(permutation=tuple(int(i) for i in perm))
    matched = estimates[perm.numpy()]
    n_src = references.shape[0]

    centred_refs = references - references.mean(-1, keepdims=True)
    mixture_energy = float(np.sum((mixture - mixture.mean()) ** 2))
    silent = [
        j for j in range(n_src) if np.sum(centred_refs[j] ** 2) <= mixture_energy * 10 ** (silent_reference_db / 10)
    ]
    if silent:
        reason = f"silent reference {', '.join(f's{j + 1}' for j in silent)} (at or below {silent_reference_db:g} dB of the mixture)"
        for metric in metrics:
            scores.values[metric] = scores.inputs[metric] = scores.improvements[metric] = None
            scores.per_source[metric] = [None] * n_src
            scores.flags[metric] = reason
        return scores

    per_source: dict[str, list[float | None]] = {}
    per_input: dict[str, list[float | None]] = {}
    if "si_sdr" in metrics:
        per_source["si_sdr"] = [float(pairwise[0, perm[j], j]) for j in range(n_src)]
        if has_mixture:
            mixtures = torch.from_numpy(mixture).expand_as(torch.from_numpy(references))
            per_input["si_sdr"] = [float(v) for v in si_sdr(mixtures, torch.from_numpy(references))]
    if any(m in metrics for m in BSS_EVAL_METRICS):
        # the mixture rides in the same batched call: one set of reference statistics for both
        candidates = np.stack([matched, np.broadcast_to(mixture, references.shape)]) if has_mixture else matched[None]
        bss = _bss_eval(references, candidates, next(m for m in metrics if m in BSS_EVAL_METRICS))
        for metric in (m for m in BSS_EVAL_METRICS if m in metrics):
            per_source[metric] = [_finite_or_none(v) for v in bss[metric][0]]
            if has_mixture and metric not in NO_INPUT_VALUE:
                per_input[metric] = [_finite_or_none(v) for v in bss[metric][1]]
            for what, values in (("estimate", per_source[metric]), ("input", per_input.get(metric, []))):
                bad = [f"s{j + 1}" for j, v in enumerate(values) if v is None]
                if bad:
                    _add_flag(
                        scores.flags,
                        metric,
                        f"{what} {', '.join(bad)}: bss_eval not finite (a silent or an exact estimate)",
                    )
    pair_metrics: dict[str, Callable[[np.ndarray, np.ndarray, int, str], tuple[float | None, str]]] = {
        "pesq_nb": _pesq,
        "pesq_wb": _pesq,
        "stoi": _stoi,
        "estoi": _stoi,
    }
    for metric in (m for m in metrics if m in pair_metrics):
        if metric in PESQ_SAMPLE_RATES and sample_rate not in PESQ_SAMPLE_RATES[metric]:
            rates = " or ".join(f"{r // 1000} kHz" for r in PESQ_SAMPLE_RATES[metric])
            _add_flag(scores.flags, metric, f"{metric} needs {rates} audio, got {sample_rate} Hz")
            per_source[metric] = [None] * n_src
            continue
        if metric in PESQ_SAMPLE_RATES and references.shape[1] < PESQ_MIN_SECONDS * sample_rate:
            _add_flag(scores.flags, metric, f"pesq: signals shorter than {PESQ_MIN_SECONDS} s")
            per_source[metric] = [None] * n_src
            continue
        compute = pair_metrics[metric]
        per_source[metric] = []
        if has_mixture:
            per_input[metric] = []
        failures: dict[str, list[str]] = {}  # reason -> the signals it applies to
        for j in range(n_src):
            signals = [("estimate", matched[j], per_source)] + ([("input", mixture, per_input)] if has_mixture else [])
            for what, degraded, out in signals:
                value, reason = compute(references[j], degraded, sample_rate, metric)
                out[metric].append(value)
                if value is None:
                    failures.setdefault(reason, []).append(f"{what} s{j + 1}")
        for reason, signals in failures.items():
            _add_flag(scores.flags, metric, f"{', '.join(signals)}: {reason}")

    for metric in metrics:
        scores.per_source[metric] = per_source[metric]
        scores.values[metric] = _mean_or_none(per_source[metric])
        # no input value: the mixture is unknown, or the metric has none (NO_INPUT_VALUE)
        scores.inputs[metric] = _mean_or_none(per_input[metric]) if metric in per_input else None
        value, baseline = scores.values[metric], scores.inputs[metric]
        scores.improvements[metric] = None if value is None or baseline is None else value - baseline
    return scores


# ----------------------------------------------------------------------------- summaries


def _defined(values: Sequence[float | None], what: str) -> np.ndarray:
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if not np.all(np.isfinite(kept)):
        raise ValueError(f"{what}: NaN or Inf among the values (undefined values must be None)")
    return kept


def _percentile_interval(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(statistics, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``, in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n = len(values)
    chunk = max(1, 2**22 // n)
    means = [
        values[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(1) for start in range(0, n_boot, chunk)
    ]
    return np.concatenate(means)


def summarize_metric(
    values: Sequence[float | None], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, float | int | None]:
    """Mean, median, sample standard deviation and percentile-bootstrap CI of the mean.

    Args:
        values: one value per utterance; ``None`` entries (undefined) are left out.
        confidence: coverage of the interval ``[ci_low, ci_high]``.
        n_boot: bootstrap resamples.
        seed: of the resampling, so a summary is reproducible.

    Returns:
        ``{"n", "mean", "median", "std", "ci_low", "ci_high"}``; statistics that need more
        values than there are (all of them for ``n = 0``, ``std`` and the CI for ``n = 1``)
        are ``None``, so the dict is strict-JSON-safe.

    Raises:
        ValueError: a NaN or Inf among the values.
    """
    kept = _defined(values, "summarize_metric")
    n = len(kept)
    summary: dict[str, float | int | None] = {
        "n": n,
        "mean": None,
        "median": None,
        "std": None,
        "ci_low": None,
        "ci_high": None,
    }
    if n == 0:
        return summary
    summary.update(mean=float(kept.mean()), median=float(np.median(kept)))
    if n > 1:
        low, high = _percentile_interval(_bootstrap_means(kept, n_boot, seed), confidence)
        summary.update(std=float(kept.std(ddof=1)), ci_low=low, ci_high=high)
    return summary


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Paired comparison of two systems on the same utterances: is ``b`` better than ``a``?

    Args:
        a, b: per-utterance values of one metric, same utterances in the same order;
            pairs where either is ``None`` are left out.

    Returns:
        ``{"n", "mean_difference", "ci_low", "ci_high", "fraction_improved",
        "fraction_worse"}``: the mean of ``b - a``, its percentile-bootstrap CI
        (resampling utterances, so the pairing is kept), and the fractions of utterances
        where ``b > a`` and ``b < a``. ``None`` where there are too few pairs.

    Raises:
        ValueError: ``a`` and ``b`` of different lengths, or NaN/Inf among them.
    """
    if len(a) != len(b):
        raise ValueError(
            f"paired_bootstrap: {len(a)} and {len(b)} values; a paired comparison needs the same utterances"
        )
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    first = _defined([x for x, _ in pairs], "paired_bootstrap a")
    second = _defined([y for _, y in pairs], "paired_bootstrap b")
    difference = second - first
    n = len(difference)
    result: dict[str, float | int | None] = {
        "n": n,
        "mean_difference": None,
        "ci_low": None,
        "ci_high": None,
        "fraction_improved": None,
        "fraction_worse": None,
    }
    if n == 0:
        return result
    result.update(
        mean_difference=float(difference.mean()),
        fraction_improved=float(np.mean(difference > 0)),
        fraction_worse=float(np.mean(difference < 0)),
    )
    if n > 1:
        low, high = _percentile_interval(_bootstrap_means(difference, n_boot, seed), confidence)
        result.update(ci_low=low, ci_high=high)
    return result
