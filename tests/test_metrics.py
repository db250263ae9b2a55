"""sepkit.metrics against independent oracles.

- SDR/SIR/SAR: mir_eval's ``bss_eval_sources`` (the reference BSS-eval v3
  implementation, a different code path from fast_bss_eval), to 1e-6 dB.
- PESQ: direct ``pesq.pesq`` calls on the same signals at 16 kHz (wide- and narrow-band)
  and 8 kHz, as a file would hold them (int16), plus the ordering a listener would expect.
  (The pesq package's own reference values need its test recordings, which are not
  redistributed here: bench/pesq_reference.py scores them from a checkout of that
  repository; bench/results/pesq_reference.json holds the result, an exact match.)
- STOI/ESTOI: ``pystoi.stoi`` called directly.
- SI-SDR: a numpy float64 formula written here.
- Bootstrap: the closed-form CI of a normal mean, and coverage over repeated samples.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pesq
import pystoi
import pytest
import soundfile as sf
import torch
from scipy.signal import lfilter, resample_poly

from sepkit.data.synthetic import make_speakers, synthesize_utterance
from sepkit.metrics import (
    METRIC_NAMES,
    MissingMetricPackage,
    UtteranceScores,
    input_si_sdr,
    paired_bootstrap,
    score_utterance,
    si_sdr_improvement,
    summarize_metric,
)

BSS_EVAL_TOLERANCE_DB = 1e-6


def mir_eval_bss(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mir_eval's bss_eval_sources in the given order: ``(sdr, sir, sar)`` each ``[n_src]``."""
    import mir_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in mir_eval 0.8, still the reference
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)
    return sdr, sir, sar


def numpy_si_sdr(estimate: np.ndarray, target: np.ndarray) -> float:
    """SI-SDR (Le Roux et al. 2019) in float64, without eps: the textbook formula."""
    estimate, target = estimate - estimate.mean(), target - target.mean()
    projection = (estimate @ target) / (target @ target) * target
    return 10 * math.log10(np.sum(projection**2) / np.sum((estimate - projection) ** 2))


def load_speech() -> tuple[np.ndarray, np.ndarray, int]:
    """``(clean speech, speech in babble at 0 dB, 16000)``, float64 in [-1, 1): 4 s of the
    synthetic corpus's voiced/unvoiced speech, and four other synthetic talkers as babble."""
    rate = 16000
    rng = np.random.default_rng(2026)
    speakers = make_speakers("test", 5, seed=11)
    clean = synthesize_utterance(speakers[0], 4.0, rate, rng).astype(np.float64)
    babble = sum(synthesize_utterance(spk, 4.0, rate, rng).astype(np.float64) for spk in speakers[1:])
    clean = 0.05 * clean / np.sqrt(np.mean(clean**2))
    babble = 0.05 * babble / np.sqrt(np.mean(babble**2))  # 0 dB speech-to-babble ratio
    return clean, clean + babble, rate


def assert_no_nan(scores: UtteranceScores) -> None:
    for table in (scores.values, scores.inputs, scores.improvements):
        assert all(v is None or math.isfinite(v) for v in table.values()), table
    assert all(v is None or math.isfinite(v) for vs in scores.per_source.values() for v in vs)


# ----------------------------------------------------------------------------- BSS-eval


@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_bss_eval_matches_mir_eval_on_random_signals(n_src: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    references = rng.standard_normal((n_src, 12000))
    mixture = references.sum(0)
    # leakage of the other sources, a short echo (allowed distortion) and noise (artifacts)
    estimates = references + 0.3 * np.roll(references, 1, axis=0) + 0.4 * rng.standard_normal(references.shape)
    estimates = lfilter([1.0, 0.0, 0.2], [1.0], estimates, axis=-1)
    order = rng.permutation(n_src)
    scores = score_utterance(estimates[order], references, mixture, 8000, ("sdr", "sir", "sar"))
    # the estimate given at position k is estimates[order[k]]; reference j must be matched to position argsort
    assert scores.permutation == tuple(int(k) for k in np.argsort(order))
    sdr, sir, sar = mir_eval_bss(references, estimates)
    for name, oracle in (("sdr", sdr), ("sir", sir), ("sar", sar)):
        np.testing.assert_allclose(scores.per_source[name], oracle, rtol=0, atol=BSS_EVAL_TOLERANCE_DB)
        assert scores.values[name] == pytest.approx(oracle.mean(), abs=BSS_EVAL_TOLERANCE_DB)
    input_sdr, input_sir, _ = mir_eval_bss(references, np.broadcast_to(mixture, references.shape).copy())
    assert scores.inputs["sdr"] == pytest.approx(input_sdr.mean(), abs=BSS_EVAL_TOLERANCE_DB)
    assert scores.inputs["sir"] == pytest.approx(input_sir.mean(), abs=BSS_EVAL_TOLERANCE_DB)
    assert scores.improvements["sdr"] == pytest.approx(sdr.mean() - input_sdr.mean(), abs=2 * BSS_EVAL_TOLERANCE_DB)
    # the mixture is artifact-free: no input SAR, so no SAR improvement (documented, not flagged)
    assert scores.inputs["sar"] is None and scores.improvements["sar"] is None and "sar" not in scores.flags


def test_bss_eval_matches_mir_eval_on_speech() -> None:
    clean, noisy, rate = load_speech()
    babble = noisy - clean
    references = np.stack([clean, babble])
    rng = np.random.default_rng(3)
    estimates = np.stack(
        [
            lfilter([0.9, 0.25, -0.1], [1.0], clean) + 0.15 * babble + 0.01 * rng.standard_normal(len(clean)),
            0.8 * babble + 0.1 * clean + 0.02 * rng.standard_normal(len(clean)),
        ]
    )
    scores = score_utterance(estimates[::-1], references, noisy, rate, ("si_sdr", "sdr", "sir", "sar"))
    assert scores.permutation == (1, 0)
    sdr, sir, sar = mir_eval_bss(references, estimates)
    for name, oracle in (("sdr", sdr), ("sir", sir), ("sar", sar)):
        np.testing.assert_allclose(scores.per_source[name], oracle, rtol=0, atol=BSS_EVAL_TOLERANCE_DB)
    for j in range(2):
        assert scores.per_source["si_sdr"][j] == pytest.approx(numpy_si_sdr(estimates[j], references[j]), abs=1e-6)


# ----------------------------------------------------------------------------- PESQ and STOI


def test_pesq_at_16_khz_matches_direct_calls() -> None:
    clean, noisy, rate = load_speech()
    enhanced = clean + 0.3 * (noisy - clean)
    scores = score_utterance(enhanced[None], clean[None], noisy, rate, ("pesq_nb", "pesq_wb"))
    as_pcm = [np.round(x * 2**15).astype(np.int16) for x in (clean, enhanced, noisy)]
    for name, mode in (("pesq_wb", "wb"), ("pesq_nb", "nb")):
        expected = pesq.pesq(rate, as_pcm[0], as_pcm[1], mode)
        expected_input = pesq.pesq(rate, as_pcm[0], as_pcm[2], mode)
        assert scores.values[name] == pytest.approx(expected, abs=0.01)
        assert scores.inputs[name] == pytest.approx(expected_input, abs=0.01)
        assert scores.improvements[name] > 0.2  # a third of the babble: clearly better
    assert scores.flags == {}


def test_pesq_narrow_band_at_8_khz_matches_a_direct_call() -> None:
    clean, noisy, _ = load_speech()
    clean8, noisy8 = resample_poly(clean, 1, 2), resample_poly(noisy, 1, 2)
    enhanced8 = clean8 + 0.3 * (noisy8 - clean8)
    scores = score_utterance(enhanced8[None], clean8[None], noisy8, 8000, ("pesq_nb", "pesq_wb"))
    # a direct call on int16 PCM, as a file would hold it (pesq normalises the level)
    as_pcm = [np.round(x * 2**15).astype(np.int16) for x in (clean8, enhanced8, noisy8)]
    expected = pesq.pesq(8000, as_pcm[0], as_pcm[1], "nb")
    expected_input = pesq.pesq(8000, as_pcm[0], as_pcm[2], "nb")
    assert scores.values["pesq_nb"] == pytest.approx(expected, abs=0.01)
    assert scores.improvements["pesq_nb"] == pytest.approx(expected - expected_input, abs=0.02)
    assert scores.improvements["pesq_nb"] > 0.3  # less babble: clearly better
    assert scores.values["pesq_wb"] is None and "16 kHz" in scores.flags["pesq_wb"]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_stoi_and_estoi_match_pystoi(rate: int) -> None:
    clean, noisy, _ = load_speech()
    if rate != 16000:
        clean, noisy = resample_poly(clean, rate, 16000), resample_poly(noisy, rate, 16000)
    babble = noisy - clean
    references = np.stack([clean, babble])
    estimates = np.stack([clean + 0.3 * babble, babble + 0.3 * clean])
    scores = score_utterance(estimates[::-1], references, noisy, rate, ("stoi", "estoi"))
    assert scores.permutation == (1, 0)
    for metric, extended in (("stoi", False), ("estoi", True)):
        direct = [pystoi.stoi(references[j], estimates[j], rate, extended=extended) for j in range(2)]
        direct_input = [pystoi.stoi(references[j], noisy, rate, extended=extended) for j in range(2)]
        np.testing.assert_allclose(scores.per_source[metric], direct, rtol=0, atol=1e-12)
        assert scores.inputs[metric] == pytest.approx(np.mean(direct_input), abs=1e-12)
        assert scores.improvements[metric] > 0.05


# ----------------------------------------------------------------------------- permutation, SI-SDR


def test_permutation_is_recorded_and_every_metric_uses_it() -> None:
    clean, noisy, rate = load_speech()
    babble = noisy - clean
    references = np.stack([clean, babble])
    noise = 0.01 * np.random.default_rng(9).standard_normal(references.shape)  # artifacts: SAR is finite
    estimates = np.stack([clean + 0.2 * babble, babble + 0.2 * clean]) + noise
    in_order = score_utterance(estimates, references, noisy, rate, METRIC_NAMES)
    swapped = score_utterance(estimates[::-1], references, noisy, rate, METRIC_NAMES)
    assert in_order.permutation == (0, 1) and swapped.permutation == (1, 0)
    assert swapped.values == pytest.approx(in_order.values, abs=1e-9)
    for metric in METRIC_NAMES:
        assert swapped.per_source[metric] == pytest.approx(in_order.per_source[metric], abs=1e-9), metric
    assert in_order.values["si_sdr"] > 5 and in_order.flags == {}
    assert_no_nan(swapped)


def test_without_a_mixture_the_values_stay_and_no_input_is_reported() -> None:
    clean, noisy, rate = load_speech()
    babble = noisy - clean
    references = np.stack([clean, babble])
    noise = 0.01 * np.random.default_rng(3).standard_normal(references.shape)
    estimates = np.stack([babble + 0.3 * clean, clean + 0.3 * babble]) + noise
    with_mixture = score_utterance(estimates, references, noisy, rate, METRIC_NAMES)
    without = score_utterance(estimates, references, None, rate, METRIC_NAMES)
    assert without.permutation == with_mixture.permutation == (1, 0)
    assert without.values == pytest.approx(with_mixture.values, abs=1e-9)
    for metric in METRIC_NAMES:
        assert without.per_source[metric] == pytest.approx(with_mixture.per_source[metric], abs=1e-9), metric
    assert set(without.inputs) == set(without.improvements) == set(METRIC_NAMES)
    assert all(value is None for value in [*without.inputs.values(), *without.improvements.values()])
    assert without.flags == with_mixture.flags  # nothing became undefined: inputs were not asked for
    # The sum of the references stands in for the silent-reference rule.
    silent = score_utterance(estimates, np.stack([clean, 1e-4 * babble]), None, rate, ("si_sdr",))
    assert silent.values["si_sdr"] is None and "silent reference s2" in silent.flags["si_sdr"]


def test_batched_si_sdr_improvement_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    sources = rng.standard_normal((3, 2, 4000))
    mixture = sources.sum(1)
    estimates = (sources + 0.5 * rng.standard_normal(sources.shape))[:, ::-1].copy()
    score, improvement = si_sdr_improvement(
        torch.from_numpy(estimates), torch.from_numpy(sources), torch.from_numpy(mixture)
    )
    baseline = input_si_sdr(torch.from_numpy(sources), torch.from_numpy(mixture))
    for b in range(3):
        expected = np.mean([numpy_si_sdr(estimates[b, 1 - j], sources[b, j]) for j in range(2)])
        expected_input = np.mean([numpy_si_sdr(mixture[b], sources[b, j]) for j in range(2)])
        assert float(score[b]) == pytest.approx(expected, abs=1e-6)
        assert float(baseline[b]) == pytest.approx(expected_input, abs=1e-6)
        assert float(improvement[b]) == pytest.approx(expected - expected_input, abs=1e-6)
        one = score_utterance(estimates[b], sources[b], mixture[b], 8000, ("si_sdr",))
        assert one.values["si_sdr"] == pytest.approx(expected, abs=1e-6)
        assert one.improvements["si_sdr"] == pytest.approx(expected - expected_input, abs=1e-6)


# ----------------------------------------------------------------------------- undefined cases


def test_silent_reference_makes_every_metric_undefined() -> None:
    clean, noisy, rate = load_speech()
    references = np.stack([clean, np.zeros_like(clean)])
    scores = score_utterance(np.stack([clean, noisy]), references, clean, rate, METRIC_NAMES)
    for metric in METRIC_NAMES:
        assert scores.values[metric] is None and scores.improvements[metric] is None
        assert "silent reference s2" in scores.flags[metric]
    assert_no_nan(scores)


def test_silent_estimate_gives_flags_not_nan() -> None:
    clean, noisy, rate = load_speech()
    references = np.stack([clean, noisy - clean])
    estimates = np.stack([clean + 0.1 * references[1], np.zeros_like(clean)])
    scores = score_utterance(estimates, references, noisy, rate, METRIC_NAMES)
    for metric in ("sdr", "sir", "sar", "pesq_nb", "pesq_wb"):
        assert scores.values[metric] is None, metric
        assert scores.flags[metric].startswith("estimate s2:"), scores.flags[metric]
        assert scores.per_source[metric][0] is not None  # the other source is still scored
    assert scores.values["si_sdr"] is not None  # finite by the loss's eps convention
    assert_no_nan(scores)


def test_short_and_unsupported_rate_inputs_are_flagged() -> None:
    rng = np.random.default_rng(5)
    short = rng.standard_normal((2, int(0.2 * 16000)))  # 0.2 s: below PESQ's 0.25 s
    estimates = short + 0.1 * rng.standard_normal(short.shape)
    scores = score_utterance(estimates, short, short.sum(0), 16000, METRIC_NAMES)
    for metric in ("pesq_nb", "pesq_wb"):
        assert scores.values[metric] is None and "shorter than 0.25 s" in scores.flags[metric]
    for metric in ("stoi", "estoi"):  # pystoi would return 1e-5 with a warning
        assert scores.values[metric] is None and "non-silent frames" in scores.flags[metric]
    assert scores.values["si_sdr"] is not None and scores.values["sdr"] is not None
    assert_no_nan(scores)
    long = rng.standard_normal((2, 44100))
    scores = score_utterance(long, long, long.sum(0), 44100, ("pesq_nb",))
    assert scores.values["pesq_nb"] is None and "44100 Hz" in scores.flags["pesq_nb"]


def test_bad_input_is_refused_clearly() -> None:
    x = np.ones((2, 100))
    with pytest.raises(ValueError, match="unknown metric"):
        score_utterance(x, x, x[0], 8000, ("si_sdr", "mos"))
    with pytest.raises(ValueError, match="estimates .* references"):
        score_utterance(x[:1], x, x[0], 8000)
    bad = x.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="estimates contain NaN"):
        score_utterance(bad, x, x[0], 8000)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pesq", None)  # what Python does for a module it cannot import
    x = np.random.default_rng(0).standard_normal((2, 8000))
    with pytest.raises(MissingMetricPackage, match=r"'pesq_nb' needs the 'pesq' package: pip install 'sepkit\[eval\]'"):
        score_utterance(x, x, x.sum(0), 8000, ("pesq_nb",))


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_the_normal_closed_form() -> None:
    values = np.random.default_rng(6).normal(10.0, 3.0, size=400)
    summary = summarize_metric(list(values), n_boot=20000)
    n, mean, std = len(values), values.mean(), values.std(ddof=1)
    # percentile bootstrap of a mean -> mean +- z * s_plugin / sqrt(n), s_plugin = s * sqrt((n-1)/n)
    half_width = 1.959964 * std * math.sqrt((n - 1) / n) / math.sqrt(n)
    assert summary["n"] == n and summary["mean"] == pytest.approx(mean)
    assert summary["median"] == pytest.approx(np.median(values)) and summary["std"] == pytest.approx(std)
    assert summary["ci_low"] == pytest.approx(mean - half_width, abs=0.05 * half_width)
    assert summary["ci_high"] == pytest.approx(mean + half_width, abs=0.05 * half_width)


def test_bootstrap_ci_covers_the_true_mean_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    trials = 300
    covered = 0
    for trial in range(trials):
        sample = rng.exponential(2.0, size=200)  # skewed: true mean 2.0
        summary = summarize_metric(list(sample), n_boot=1000, seed=trial)
        covered += summary["ci_low"] <= 2.0 <= summary["ci_high"]
    # binomial sd of the coverage at 300 trials is 1.3 points
    assert 0.90 <= covered / trials <= 0.99


def test_summaries_ignore_none_and_stay_strict_json() -> None:
    summary = summarize_metric([1.0, None, 3.0])
    assert summary["n"] == 2 and summary["mean"] == 2.0 and summary["std"] == pytest.approx(math.sqrt(2))
    assert summarize_metric([]) == {"n": 0, "mean": None, "median": None, "std": None, "ci_low": None, "ci_high": None}
    single = summarize_metric([None, 4.0])
    assert single["mean"] == 4.0 and single["std"] is None and single["ci_low"] is None
    for result in (summary, single, summarize_metric([None]), paired_bootstrap([None], [1.0])):
        json.dumps(result, allow_nan=False)  # raises on NaN/Inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        summarize_metric([1.0, float("nan")])
    assert summarize_metric([1.0, 2.0, 5.0], seed=3) == summarize_metric([1.0, 2.0, 5.0], seed=3)


def test_paired_bootstrap_on_a_known_shift() -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(10.0, 4.0, size=500)  # large spread between utterances ...
    difference = rng.normal(0.5, 1.0, size=500)  # ... small, consistent gain of system b
    b = a + difference
    result = paired_bootstrap(list(a), list(b), n_boot=20000)
    n = len(difference)
    half_width = 1.959964 * difference.std(ddof=1) * math.sqrt((n - 1) / n) / math.sqrt(n)
    assert result["n"] == n and result["mean_difference"] == pytest.approx(difference.mean())
    assert result["ci_low"] == pytest.approx(difference.mean() - half_width, abs=0.05 * half_width)
    assert result["ci_high"] == pytest.approx(difference.mean() + half_width, abs=0.05 * half_width)
    assert result["ci_low"] > 0  # the pairing removes the between-utterance spread
    assert result["fraction_improved"] == pytest.approx(np.mean(difference > 0))
    assert result["fraction_worse"] == pytest.approx(np.mean(difference < 0))
    # an undefined value on either side drops the pair
    dropped = paired_bootstrap([1.0, None, 3.0], [2.0, 5.0, None])
    assert dropped["n"] == 1 and dropped["mean_difference"] == 1.0 and dropped["ci_low"] is None
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- the synthetic recipe's score


def test_synthetic_score_prints_si_sdr_of_the_matched_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sepkit.data.synthetic import main

    clean, noisy, rate = load_speech()
    babble = noisy - clean
    references = [clean, babble]
    separated = [babble + 0.1 * clean, clean + 0.2 * babble]  # in swapped order
    sf.write(tmp_path / "utt.wav", noisy, rate, subtype="DOUBLE")
    (tmp_path / "references").mkdir()
    (tmp_path / "separated").mkdir()
    for i in range(2):
        sf.write(tmp_path / "references" / f"utt_s{i + 1}.wav", references[i], rate, subtype="DOUBLE")
        sf.write(tmp_path / "separated" / f"utt_s{i + 1}.wav", separated[i], rate, subtype="DOUBLE")
    main(["score", str(tmp_path / "utt.wav"), str(tmp_path / "separated"), str(tmp_path / "references")])
    printed = capsys.readouterr().out
    expected = np.mean([numpy_si_sdr(separated[1], clean), numpy_si_sdr(separated[0], babble)])
    baseline = np.mean([numpy_si_sdr(noisy, clean), numpy_si_sdr(noisy, babble)])
    assert f"mixture SI-SDR {baseline:.2f} dB -> separated {expected:.2f} dB" in printed
    assert f"(SI-SDR improvement {expected - baseline:.2f} dB)" in printed
