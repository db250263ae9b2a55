"""SI-SDR, SNR, SA-SDR and PIT against independent oracles: float64 numpy formulas, brute force over
permutations, and torchmetrics' implementation."""

import functools
import itertools

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import permutation_invariant_training, scale_invariant_signal_distortion_ratio

from sepkit.losses import (
    best_permutation,
    pairwise_si_sdr,
    pit_objective,
    pit_sa_sdr,
    pit_si_sdr,
    pit_si_sdr_loss,
    pit_snr,
    si_sdr,
)


def numpy_si_sdr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-8) -> float:
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    target = (est @ ref) / (ref @ ref + eps) * ref
    noise = est - target
    return 10 * np.log10((target @ target) / (noise @ noise + eps) + eps)


def brute_force_pit(est: np.ndarray, ref: np.ndarray) -> tuple[float, tuple[int, ...]]:
    n = est.shape[0]
    best = max(
        itertools.permutations(range(n)),
        key=lambda p: np.mean([numpy_si_sdr(est[p[j]], ref[j]) for j in range(n)]),
    )
    return float(np.mean([numpy_si_sdr(est[best[j]], ref[j]) for j in range(n)])), best


def test_si_sdr_matches_float64_formula():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 3000, generator=gen)
    est = ref * 0.7 + 0.3 * torch.randn(5, 3000, generator=gen) + 0.2
    ours = si_sdr(est, ref)
    expected = [numpy_si_sdr(e.numpy(), r.numpy()) for e, r in zip(est, ref)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)
    # Scale invariance: rescaling the estimate leaves SI-SDR unchanged.
    np.testing.assert_allclose(si_sdr(3.7 * est, ref).numpy(), ours.numpy(), atol=1e-4)


def test_pairwise_matrix_entries():
    est, ref = torch.randn(2, 3, 800), torch.randn(2, 3, 800)
    matrix = pairwise_si_sdr(est, ref)
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        assert matrix[b, i, j].item() == pytest.approx(numpy_si_sdr(est[b, i].numpy(), ref[b, j].numpy()), abs=1e-4)


@pytest.mark.parametrize("n_src", [1, 2, 3, 4, 5, 6])
def test_pit_equals_brute_force(n_src):
    gen = torch.Generator().manual_seed(n_src)
    ref = torch.randn(3, n_src, 400, generator=gen)
    # Estimates: a shuffled, noisy copy of the references so the best permutation is not identity.
    shuffle = torch.randperm(n_src, generator=gen)
    est = ref[:, shuffle] + 0.8 * torch.randn(3, n_src, 400, generator=gen)
    score, perm = pit_si_sdr(est, ref)
    for b in range(3):
        expected, best = brute_force_pit(est[b].numpy(), ref[b].numpy())
        assert score[b].item() == pytest.approx(expected, abs=1e-4)
        assert tuple(perm[b].tolist()) == best
    # Reordering the estimates by the permutation aligns them with the targets.
    # Estimate perm[b, j] is the one matched to target j.
    aligned = torch.stack([est[b, perm[b]] for b in range(3)])
    np.testing.assert_allclose(si_sdr(aligned, ref).mean(-1).numpy(), score.numpy(), atol=1e-4)


@pytest.mark.parametrize("n_src", [7, 8])
def test_hungarian_matches_exhaustive_search_for_many_sources(n_src):
    # For many sources the exhaustive search runs on the pairwise matrix (n! sums),
    # independent of the Hungarian solver used inside pit_si_sdr.
    gen = torch.Generator().manual_seed(n_src)
    ref = torch.randn(2, n_src, 300, generator=gen)
    est = ref[:, torch.randperm(n_src, generator=gen)] + torch.randn(2, n_src, 300, generator=gen)
    score, perm = pit_si_sdr(est, ref)
    pairwise = pairwise_si_sdr(est, ref).double()
    perms = torch.tensor(list(itertools.permutations(range(n_src))))
    sums = pairwise[:, perms, torch.arange(n_src)].sum(-1)  # [batch, n_perm]
    np.testing.assert_allclose(score.double().numpy(), (sums.max(-1).values / n_src).numpy(), atol=1e-4)
    np.testing.assert_array_equal(perm.numpy(), perms[sums.argmax(-1)].numpy())


@pytest.mark.parametrize("n_src", [2, 3])
def test_pit_matches_torchmetrics(n_src):
    gen = torch.Generator().manual_seed(10 + n_src)
    ref = torch.randn(4, n_src, 1000, generator=gen)
    est = ref.flip(1) + 0.5 * torch.randn(4, n_src, 1000, generator=gen)
    ours, perm = pit_si_sdr(est, ref)
    # Zero-mean SI-SDR as in the spec (torchmetrics defaults to zero_mean=False).
    metric = functools.partial(scale_invariant_signal_distortion_ratio, zero_mean=True)
    theirs, their_perm = permutation_invariant_training(est, ref, metric, mode="speaker-wise", eval_func="max")
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-3)
    # torchmetrics returns, per target position, the estimate index too.
    np.testing.assert_array_equal(perm.numpy(), their_perm.numpy())


def test_silent_targets_and_estimates_are_finite():
    est = torch.zeros(2, 2, 500, requires_grad=True)
    ref = torch.zeros(2, 2, 500)
    ref[1, 0] = torch.randn(500)  # one utterance with a silent second source
    loss, _ = pit_si_sdr_loss(est, ref)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(est.grad).all()
    # All-zero signals sit at the eps floor: 10 log10(eps) = -80 dB.
    assert si_sdr(torch.zeros(1, 100), torch.zeros(1, 100)).item() == pytest.approx(-80.0, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_runs_in_float32_under_autocast(dtype):
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 2, 2000, generator=gen)
    est_param = (ref + 0.1 * torch.randn(2, 2, 2000, generator=gen)).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        est = est_param * 1.0
        loss, _ = pit_si_sdr_loss(est, ref)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(est_param.grad).all()
    exact, _ = pit_si_sdr_loss(est_param.detach().double(), ref.double())
    assert loss.item() == pytest.approx(exact.item(), abs=0.05)


def test_best_permutation_vectorised_and_hungarian_agree():
    pairwise = torch.randn(16, 4, 4)
    vectorised = best_permutation(pairwise)
    from sepkit import losses

    original = losses.MAX_EXHAUSTIVE_SOURCES
    losses.MAX_EXHAUSTIVE_SOURCES = 0
    try:
        hungarian = best_permutation(pairwise)
    finally:
        losses.MAX_EXHAUSTIVE_SOURCES = original
    np.testing.assert_array_equal(vectorised.numpy(), hungarian.numpy())


# --- SNR and SA-SDR: float64 formulas written out here, brute force over permutations ---


def numpy_snr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-8) -> float:
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    return 10 * np.log10((ref @ ref) / ((ref - est) @ (ref - est) + eps) + eps)


def numpy_sa_sdr(est: np.ndarray, ref: np.ndarray, order: tuple[int, ...], eps: float = 1e-8) -> float:
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    target_energy = sum(ref[j] @ ref[j] for j in range(len(order)))
    error_energy = sum((ref[j] - est[order[j]]) @ (ref[j] - est[order[j]]) for j in range(len(order)))
    return 10 * np.log10(target_energy / (error_energy + eps) + eps)


def _shuffled_estimates(n_src: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # sources of very different levels: SA-SDR weighs them by energy, mean SNR equally
    ref = torch.randn(3, n_src, 500, generator=gen) * torch.logspace(0, -1.5, n_src).view(1, n_src, 1)
    est = ref[:, torch.randperm(n_src, generator=gen)] + 0.05 * torch.randn(3, n_src, 500, generator=gen)
    return est, ref


@pytest.mark.parametrize("n_src", [2, 3, 5])
def test_pit_snr_equals_brute_force(n_src):
    est, ref = _shuffled_estimates(n_src, n_src)
    score, perm = pit_snr(est, ref)
    for b in range(3):
        e, r = est[b].numpy(), ref[b].numpy()
        best = max(
            itertools.permutations(range(n_src)),
            key=lambda p: np.mean([numpy_snr(e[p[j]], r[j]) for j in range(n_src)]),
        )
        assert score[b].item() == pytest.approx(np.mean([numpy_snr(e[best[j]], r[j]) for j in range(n_src)]), abs=1e-4)
        assert tuple(perm[b].tolist()) == best
    # not scale-invariant: halving the estimate costs SNR (SI-SDR would not move)
    assert (pit_snr(0.5 * est, ref)[0] < score - 1).all()


@pytest.mark.parametrize("n_src", [2, 3, 5])
def test_pit_sa_sdr_equals_brute_force(n_src):
    est, ref = _shuffled_estimates(n_src, 10 + n_src)
    score, perm = pit_sa_sdr(est, ref)
    for b in range(3):
        e, r = est[b].numpy(), ref[b].numpy()
        best = max(itertools.permutations(range(n_src)), key=lambda p: numpy_sa_sdr(e, r, p))
        assert score[b].item() == pytest.approx(numpy_sa_sdr(e, r, best), abs=1e-4)
        assert tuple(perm[b].tolist()) == best
        # aggregated over sources, not the mean of per-source SNRs
        per_source = np.mean([numpy_snr(e[best[j]], r[j]) for j in range(n_src)])
        assert abs(score[b].item() - per_source) > 1
    score64, _ = pit_sa_sdr(est.double(), ref.double())
    assert score64.dtype == torch.float64


def test_pit_objective_names():
    assert pit_objective("si_sdr") is pit_si_sdr
    assert pit_objective("snr") is pit_snr
    assert pit_objective("sa_sdr") is pit_sa_sdr
    with pytest.raises(ValueError, match="loss must be one of"):
        pit_objective("sdr")
