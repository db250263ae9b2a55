"""SI-SDR, SNR, SA-SDR and permutation-invariant training (PIT).

Conventions follow Le Roux et al. 2019 and Conv-TasNet eq. (15) as the spec fixes them:
both signals are zero-meaned on the time axis and ``eps = 1e-8`` enters in three places
(target energy, error energy, inside the log), so all-silent signals give a finite
-80 dB instead of NaN. All math runs in float32 (or float64 if given float64), even
under bf16/fp16 autocast.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache

import numpy as np
import torch

EPS = 1e-8
# Above this many sources the n! permutations are too many to enumerate; use the
# Hungarian algorithm on the pairwise matrix instead (exact for a sum of pairwise terms).
MAX_EXHAUSTIVE_SOURCES = 4


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """SI-SDR in dB along the last axis: ``[..., time]`` x ``[..., time]`` -> ``[...]``."""
    with torch.autocast(device_type=estimate.device.type, enabled=False):
        estimate, target = _as_float(estimate), _as_float(target)
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
        target = target - target.mean(dim=-1, keepdim=True)
        scale = (estimate * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps)
        projection = scale * target
        noise = estimate - projection
        ratio = projection.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
        return 10 * torch.log10(ratio + eps)


def pairwise_si_sdr(estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pairwise SI-SDR matrix.

    Args:
        estimates: ``[batch, n_src, time]``.
        targets: ``[batch, n_src, time]``.

    Returns:
        ``[batch, n_src (estimate), n_src (target)]``: entry ``[b, i, j]`` is
        SI-SDR(estimate i, target j).
    """
    if estimates.shape != targets.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and targets {tuple(targets.shape)} differ")
    return si_sdr(estimates.unsqueeze(2), targets.unsqueeze(1), eps=eps)


@cache
def _permutations(n_src: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n_src))), dtype=torch.long)


def best_permutation(pairwise: torch.Tensor) -> torch.Tensor:
    """Assignment maximising the summed pairwise score.

    Args:
        pairwise: ``[batch, n_src (estimate), n_src (target)]`` scores (higher is better).

    Returns:
        ``[batch, n_src]`` long: ``perm[b, j]`` is the estimate assigned to target ``j``.
    """
    batch, n_src, _ = pairwise.shape
    if n_src <= MAX_EXHAUSTIVE_SOURCES:
        perms = _permutations(n_src).to(pairwise.device)  # [n_perm, n_src]
        targets = torch.arange(n_src, device=pairwise.device)
        # score[b, p] = sum_j pairwise[b, perms[p, j], j], all permutations at once
        scores = pairwise[:, perms, targets].sum(-1)
        return perms[scores.argmax(dim=-1)]
    # Imported here: scipy.optimize adds ~40 MiB to every process that imports sepkit.losses.
    from scipy.optimize import linear_sum_assignment

    cost = -pairwise.detach().float().cpu().numpy()
    perm = np.empty((batch, n_src), dtype=np.int64)
    for b in range(batch):
        est_idx, tgt_idx = linear_sum_assignment(cost[b])
        perm[b, tgt_idx] = est_idx
    return torch.from_numpy(perm).to(pairwise.device)


def pit_si_sdr(estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Utterance-level PIT SI-SDR.

    Args:
        estimates, targets: ``[batch, n_src, time]``.

    Returns:
        ``(si_sdr, perm)``: ``[batch]`` mean SI-SDR (dB) over sources under the best
        permutation, and ``[batch, n_src]`` that permutation (see :func:`best_permutation`).
    """
    pairwise = pairwise_si_sdr(estimates, targets, eps=eps)
    perm = best_permutation(pairwise)
    chosen = torch.gather(pairwise, 1, perm.unsqueeze(1)).squeeze(1)  # [batch, n_src]
    return chosen.mean(dim=-1), perm


def pit_si_sdr_loss(
    estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative PIT SI-SDR averaged over the batch: ``(loss scalar, perm [batch, n_src])``."""
    score, perm = pit_si_sdr(estimates, targets, eps=eps)
    return -score.mean(), perm


def snr(estimate: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Plain SNR in dB along the last axis, ``10 log10(|s|^2 / |s - s_hat|^2)``: no mean
    removal and no rescaling, so a wrong gain or offset costs SNR (unlike SI-SDR).
    ``[..., time]`` x ``[..., time]`` -> ``[...]``; ``eps`` as in :func:`si_sdr`."""
    with torch.autocast(device_type=estimate.device.type, enabled=False):
        estimate, target = _as_float(estimate), _as_float(target)
        ratio = target.pow(2).sum(-1) / ((target - estimate).pow(2).sum(-1) + eps)
        return 10 * torch.log10(ratio + eps)


def pairwise_snr(estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pairwise SNR matrix ``[batch, n_src (estimate), n_src (target)]`` of
    ``[batch, n_src, time]`` inputs (see :func:`pairwise_si_sdr`)."""
    if estimates.shape != targets.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and targets {tuple(targets.shape)} differ")
    return snr(estimates.unsqueeze(2), targets.unsqueeze(1), eps=eps)


def pit_snr(estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Utterance-level PIT SNR: ``([batch]`` mean SNR over sources under the best
    permutation, ``[batch, n_src]`` that permutation); inputs ``[batch, n_src, time]``."""
    pairwise = pairwise_snr(estimates, targets, eps=eps)
    perm = best_permutation(pairwise)
    chosen = torch.gather(pairwise, 1, perm.unsqueeze(1)).squeeze(1)
    return chosen.mean(dim=-1), perm


def pit_sa_sdr(estimates: torch.Tensor, targets: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Source-aggregated SDR (von Neumann et al. 2022) under PIT.

    ``SA-SDR = 10 log10(sum_j |s_j|^2 / sum_j |s_j - s_hat_pi(j)|^2)``: the energies are
    summed over all sources before the ratio, so a quiet source weighs by its energy
    instead of equally (no per-source log). The best permutation ``pi`` minimises the
    summed error energy, which is a sum of pairwise terms, so :func:`best_permutation`
    (exhaustive or Hungarian) finds it exactly.

    Args:
        estimates, targets: ``[batch, n_src, time]``.

    Returns:
        ``(sa_sdr [batch] in dB, perm [batch, n_src])`` (``perm[b, j]``: estimate of target ``j``).
    """
    if estimates.shape != targets.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and targets {tuple(targets.shape)} differ")
    with torch.autocast(device_type=estimates.device.type, enabled=False):
        estimates, targets = _as_float(estimates), _as_float(targets)
        # error[b, i, j] = |s_j - s_hat_i|^2; the assignment maximises its negative
        error = (targets.unsqueeze(1) - estimates.unsqueeze(2)).pow(2).sum(-1)
        perm = best_permutation(-error)
        chosen_error = torch.gather(error, 1, perm.unsqueeze(1)).squeeze(1).sum(-1)
        ratio = targets.pow(2).sum((-1, -2)) / (chosen_error + eps)
        return 10 * torch.log10(ratio + eps), perm


# Training objectives by name: each maps ([batch, n_src, time] x2) -> (score [batch] in dB, perm).
PIT_OBJECTIVES = {"si_sdr": pit_si_sdr, "snr": pit_snr, "sa_sdr": pit_sa_sdr}


def pit_objective(name: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The PIT score function called ``name`` (``si_sdr``, ``snr`` or ``sa_sdr``)."""
    if name not in PIT_OBJECTIVES:
        raise ValueError(f"loss must be one of {sorted(PIT_OBJECTIVES)}, got {name!r}")
    return PIT_OBJECTIVES[name]
