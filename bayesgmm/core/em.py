"""Maximum-likelihood (and MAP) EM for the Gaussian mixture, as plain step functions.

E-step: responsibilities
    γ_nk = π_k N(x_n | μ_k, Σ_k) / Σ_j π_j N(x_n | μ_j, Σ_j).
M-step: with sample weights w_n (1 by default),
    n_k = Σ_n w_n γ_nk,   π_k = n_k / Σ_n w_n,   μ_k = Σ_n w_n γ_nk x_n / n_k,
    Σ_k from S_k = Σ_n w_n γ_nk (x_n − μ_k)(x_n − μ_k)ᵀ under the covariance structure
    (VVV: Σ_k = S_k / n_k; see :mod:`bayesgmm.core.structures` for the others).

:func:`e_step`, :func:`m_step` and :func:`step` are the public step functions. The loop that
:func:`bayesgmm.fit_em` runs is the same step applied to a *batch* of mixtures at once (the
starts of a multi-start fit), each with its own convergence test, so that the fixed cost of
every numpy call is shared by all starts: see :mod:`bayesgmm.core._loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._passes import (
    DensityParams,
    PassStats,
    features,
    mixture_density,
    run_pass,
    triu,
)
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ResolvedPrior
from bayesgmm.core.structures import CovarianceStructure, get_structure

__all__ = ["Degenerate", "e_step", "m_step", "step"]


class Degenerate(Exception):
    """Raised when a step cannot produce a valid mixture (empty or singular component)."""

    def __init__(self, component: int, reason: str):
        super().__init__(f"component {component}: {reason}")
        self.component = component
        self.reason = reason


# -- batched M-step ---------------------------------------------------------------------------


@dataclass
class Params:
    """Arrays of a batch of R mixtures: weights (R, K), means (R, K, D), covariances and their
    Cholesky factors (R, K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    chol: np.ndarray

    def take(self, idx: Any) -> Params:
        return Params(self.weights[idx], self.means[idx], self.covs[idx], self.chol[idx])

    def member(self, i: int, k: int) -> Params:
        """Mixture ``i`` of the batch as a batch of one, without its padding beyond ``k``."""
        return Params(
            self.weights[i : i + 1, :k],
            self.means[i : i + 1, :k],
            self.covs[i : i + 1, :k],
            self.chol[i : i + 1, :k],
        )


class BatchRow(Params):
    """Mixture ``row`` (K = ``k`` components) of a batch's padded arrays ``arrays`` (weights,
    means, covariances, Cholesky factors; (R, Kmax, ...)) as a batch of one, its views made
    when first read: a compiled call hands back thousands of runs, most of which are only
    packed into the next call (:func:`bayesgmm.core._compiled.pack_params` gathers them from
    their batch without the views)."""

    def __init__(self, arrays: tuple[np.ndarray, ...], row: int, k: int) -> None:
        self.arrays = arrays
        self.row = row
        self.k = k

    def _view(self, a: int) -> np.ndarray:
        return self.arrays[a][self.row : self.row + 1, : self.k]

    weights = property(lambda self: self._view(0))  # type: ignore[assignment]
    means = property(lambda self: self._view(1))  # type: ignore[assignment]
    covs = property(lambda self: self._view(2))  # type: ignore[assignment]
    chol = property(lambda self: self._view(3))  # type: ignore[assignment]


def stack_padded(parts: list[Params], kmax: int) -> tuple[Params, np.ndarray]:
    """Stack batches of one with K ≤ ``kmax`` components into one batch, padding each with
    zero-weight components (identity covariance) so that mixtures of different K share passes.
    Returns the batch and the (R, kmax) mask of real components."""
    from bayesgmm.core._compiled import pack_params

    # Gathered a source batch at a time (pack_params: a loop over the parts, four views and
    # copies each, was a sixth of select_em's finishing on small data), then the padding set.
    ks = np.array([p.k if type(p) is BatchRow else p.weights.shape[1] for p in parts])
    weights, means, covs, chol = pack_params(parts, ks, kmax)  # fresh arrays
    mask = np.arange(kmax) < ks[:, None]
    pad = ~mask
    if pad.any():
        d = means.shape[-1]
        weights[pad] = 0.0
        means[pad] = 0.0
        covs[pad] = np.eye(d)
        chol[pad] = np.eye(d)
    return Params(weights, means, covs, chol), mask


def batched_cholesky(covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factors of (R, K, D, D) covariances and, per mixture, the first component that
    is not positive definite (−1 when all are)."""
    bad = np.full(covs.shape[0], -1)
    try:
        chol = np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        # Find the failing mixtures without one LAPACK call per matrix: eigenvalues of the whole
        # batch (NaN-safe), then Cholesky of the mixtures whose covariances all look PD.
        finite = np.isfinite(covs).all(axis=(-2, -1))
        safe = np.where(finite[..., None, None], covs, 0.0)
        pd_comp = finite & (np.linalg.eigvalsh(safe)[..., 0] > 0)  # (R, K)
        pd = pd_comp.all(axis=1)
        chol = np.zeros_like(covs)
        bad[~pd] = np.argmin(pd_comp[~pd], axis=1)
        ok = np.flatnonzero(pd)
        try:
            chol[ok] = np.linalg.cholesky(covs[ok])
        except np.linalg.LinAlgError:  # an eigenvalue barely above 0: one at a time
            for r in ok:
                try:
                    chol[r] = np.linalg.cholesky(covs[r])
                except np.linalg.LinAlgError:
                    bad[r] = 0
    diag = np.diagonal(chol, axis1=-2, axis2=-1)
    invalid = ~(np.isfinite(diag) & (diag > 0)).all(axis=-1)  # (R, K)
    for i in np.flatnonzero(invalid.any(axis=1) & (bad < 0)):
        bad[i] = int(np.argmax(invalid[i]))
    return chol, bad


def _unpack(packed: np.ndarray, d: int) -> np.ndarray:
    """(..., D(D+1)/2) upper triangles → (..., D, D) symmetric matrices."""
    iu, ju = triu(d)
    out = np.empty((*packed.shape[:-1], d, d))
    out[..., iu, ju] = packed
    out[..., ju, iu] = packed
    return out


def m_step_batch(
    stats: PassStats,
    center: np.ndarray,
    structure: CovarianceStructure,
    prior: ResolvedPrior | None,
    reg_covar: float,
    mask: np.ndarray | None = None,
    previous: np.ndarray | None = None,
) -> tuple[Params, np.ndarray, list[str]]:
    """π, μ, Σ for each mixture of the batch from its pass statistics.

    ``mask`` (R, K) marks the real components when mixtures are padded (maximum likelihood
    only: the MAP divisors depend on the number of components). ``previous`` (R, K, D, D), the
    current covariances, is where the iterative M-steps start. Returns the new parameters, the
    index of a failed component per mixture (−1 when none) and the reasons of the failures.
    """
    counts = stats.counts
    total = counts.sum(axis=-1, keepdims=True)
    tiny = 1e-10 * total
    low = counts <= tiny
    empty = low if mask is None else low & mask
    safe = np.where(low, 1.0, counts)
    xbar = stats.sum_x / safe[..., None]
    if stats.scatter is None:
        raise ValueError("the M-step needs a pass with stats='full' or 'diag'")
    if structure.scatter_kind == "full":
        second = _unpack(stats.scatter, xbar.shape[-1])
        scatter = second - counts[..., None, None] * xbar[..., :, None] * xbar[..., None, :]
    else:
        scatter = np.maximum(stats.scatter - counts[..., None] * xbar * xbar, 0.0)
    if prior is None:
        means = xbar
        terms = None
    else:
        mu_p = prior.mean - center
        kappa = prior.shrinkage
        means = (stats.sum_x + kappa * mu_p) / (counts + kappa)[..., None]
        off = np.where(low[..., None], 0.0, xbar - mu_p)
        coef = kappa * counts / (kappa + counts)
        if structure.scatter_kind == "full":
            scatter = scatter + coef[..., None, None] * off[..., :, None] * off[..., None, :]
        else:
            scatter = scatter + coef[..., None] * off * off
        terms = prior.terms
    with np.errstate(divide="ignore", invalid="ignore"):
        covs = structure.covariances(counts, scatter, terms, previous)
    if reg_covar:
        covs = covs + reg_covar * np.eye(covs.shape[-1])
    if mask is not None and not mask.all():
        pad = ~mask
        covs[pad] = np.eye(covs.shape[-1])
        means[pad] = 0.0
    chol, bad = batched_cholesky(covs)
    reasons = ["" for _ in range(counts.shape[0])]
    for r in np.flatnonzero(bad >= 0):
        reasons[r] = "its covariance became singular (points tied or duplicated)"
    if prior is None:
        for r in np.flatnonzero(empty.any(axis=1)):
            j = int(np.argmax(empty[r]))
            bad[r] = j
            reasons[r] = f"its weight collapsed to {counts[r, j] / total[r, 0]:.2g} (empty)"
    weights = counts / total
    return Params(weights, means + center, covs, chol), bad, reasons


def _stats_from_resp(
    X: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray | None,
    kind: str,
    center: np.ndarray,
) -> PassStats:
    """Sufficient statistics of a batch of one from given responsibilities (n, K), about
    ``center``: the same sums a pass computes, from the same feature matrix."""
    wr = resp if sample_weight is None else resp * sample_weight[:, None]
    d = X.shape[1]
    sums = wr.T @ features(X, center, kind).T  # (K, F): [second moments | Σx | Σ1]
    t = sums.shape[1] - d - 1
    return PassStats(np.zeros(1), sums[None, :, -1], sums[None, :, t : t + d], sums[None, :, :t])


def to_model(
    p: Params, r: int, structure: CovarianceStructure, names: tuple[str, ...] | None
) -> GaussianMixture:
    return GaussianMixture._trusted(
        p.weights[r].copy(), p.means[r].copy(), p.covs[r].copy(), structure, names
    )


def density(p: Params, structure: CovarianceStructure, center: np.ndarray) -> DensityParams:
    return mixture_density(p.weights, p.means, p.chol, structure.scatter_kind == "diag", center)


# -- the public step functions ----------------------------------------------------------------


def e_step(
    X: np.ndarray, model: GaussianMixture, sample_weight: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """E-step: the log-likelihood Σ_n w_n log p(x_n) and the responsibilities γ (n, K)."""
    resp = np.empty((X.shape[0], model.n_components))
    stats = run_pass(X, model._params, sample_weight=sample_weight, resp_out=resp)
    return float(stats.loglik[0]), resp


def m_step(
    X: np.ndarray,
    resp: np.ndarray,
    covariance_type: str | CovarianceStructure = "VVV",
    *,
    sample_weight: np.ndarray | None = None,
    prior: ResolvedPrior | None = None,
    reg_covar: float = 0.0,
    feature_names: tuple[str, ...] | None = None,
) -> GaussianMixture:
    """M-step from responsibilities γ (n, K): the mixture maximising the expected complete-data
    log-likelihood (log-posterior when ``prior`` is given) under the covariance structure.

    Raises
    ------
    Degenerate
        When a component is empty or its covariance is singular.
    """
    structure = get_structure(covariance_type, X.shape[1])
    center = X.mean(axis=0)
    stats = _stats_from_resp(X, resp, sample_weight, structure.scatter_kind, center)
    params, bad, reasons = m_step_batch(stats, center, structure, prior, reg_covar)
    if bad[0] >= 0:
        raise Degenerate(int(bad[0]), reasons[0])
    return to_model(params, 0, structure, feature_names)


def step(
    X: np.ndarray,
    model: GaussianMixture,
    *,
    sample_weight: np.ndarray | None = None,
    prior: ResolvedPrior | None = None,
    reg_covar: float = 0.0,
) -> tuple[GaussianMixture, float]:
    """One EM iteration in one pass over the rows.

    Returns the updated mixture and the log-likelihood of the *input* mixture (which the E-step
    computes anyway). Under maximum likelihood the next call's log-likelihood is never lower.

    Raises
    ------
    Degenerate
        When the M-step empties a component or makes a covariance singular.
    """
    structure = model.structure
    p = model._params
    stats = run_pass(X, p, sample_weight=sample_weight, stats=structure.scatter_kind)
    params, bad, reasons = m_step_batch(
        stats, p.center, structure, prior, reg_covar, previous=model.covariances[None]
    )
    if bad[0] >= 0:
        raise Degenerate(int(bad[0]), reasons[0])
    return to_model(params, 0, structure, model.feature_names), float(stats.loglik[0])
