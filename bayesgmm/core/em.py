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
every numpy call is shared by all starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core._passes import PassStats, density_params, run_pass, triu
from bayesgmm.core.criteria import aic, bic, icl
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ResolvedPrior
from bayesgmm.core.result import EMResult
from bayesgmm.core.structures import CovarianceStructure, get_structure

__all__ = ["Degenerate", "e_step", "m_step", "step"]

#: A component whose covariance has an eigenvalue below this fraction of the data's variance in
#: that direction (after standardising each feature) is declared collapsed.
DEGENERACY_RTOL = 1e-8

_REMEDY = (
    "Try fewer components, a more constrained covariance_type, a prior "
    "(prior=ConjugatePrior()) or reg_covar > 0."
)


class Degenerate(Exception):
    """Raised when a step cannot produce a valid mixture (empty or singular component)."""

    def __init__(self, component: int, reason: str):
        super().__init__(f"component {component}: {reason}")
        self.component = component
        self.reason = reason


# -- batched M-step ---------------------------------------------------------------------------


@dataclass
class _Params:
    """Arrays of a batch of R mixtures: weights (R, K), means (R, K, D), covariances and their
    Cholesky factors (R, K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    chol: np.ndarray

    def take(self, idx: Any) -> _Params:
        return _Params(self.weights[idx], self.means[idx], self.covs[idx], self.chol[idx])

    def member(self, i: int, k: int) -> _Params:
        """Mixture ``i`` of the batch as a batch of one, without its padding beyond ``k``."""
        return _Params(
            self.weights[i : i + 1, :k],
            self.means[i : i + 1, :k],
            self.covs[i : i + 1, :k],
            self.chol[i : i + 1, :k],
        )


def _stack_padded(parts: list[_Params], kmax: int) -> tuple[_Params, np.ndarray]:
    """Stack batches of one with K ≤ ``kmax`` components into one batch, padding each with
    zero-weight components (identity covariance) so that mixtures of different K share passes.
    Returns the batch and the (R, kmax) mask of real components."""
    r = len(parts)
    d = parts[0].means.shape[-1]
    weights = np.zeros((r, kmax))
    means = np.zeros((r, kmax, d))
    covs = np.broadcast_to(np.eye(d), (r, kmax, d, d)).copy()
    chol = covs.copy()
    mask = np.zeros((r, kmax), dtype=bool)
    for i, p in enumerate(parts):
        k = p.weights.shape[1]
        weights[i, :k] = p.weights[0]
        means[i, :k] = p.means[0]
        covs[i, :k] = p.covs[0]
        chol[i, :k] = p.chol[0]
        mask[i, :k] = True
    return _Params(weights, means, covs, chol), mask


def _batched_cholesky(covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        pd = finite & (np.linalg.eigvalsh(safe)[..., 0] > 0)
        chol = np.zeros_like(covs)
        for r in range(covs.shape[0]):
            if not pd[r].all():
                bad[r] = int(np.argmin(pd[r]))
                continue
            try:
                chol[r] = np.linalg.cholesky(covs[r])
            except np.linalg.LinAlgError:
                bad[r] = 0
    diag = np.diagonal(chol, axis1=-2, axis2=-1)
    invalid = ~(np.isfinite(diag) & (diag > 0)).all(axis=-1)  # (R, K)
    for r in np.flatnonzero(invalid.any(axis=1) & (bad < 0)):
        bad[r] = int(np.argmax(invalid[r]))
    return chol, bad


def _unpack(packed: np.ndarray, d: int) -> np.ndarray:
    """(..., D(D+1)/2) upper triangles → (..., D, D) symmetric matrices."""
    iu, ju = triu(d)
    out = np.empty((*packed.shape[:-1], d, d))
    out[..., iu, ju] = packed
    out[..., ju, iu] = packed
    return out


def _m_step_batch(
    stats: PassStats,
    center: np.ndarray,
    structure: CovarianceStructure,
    prior: ResolvedPrior | None,
    reg_covar: float,
    mask: np.ndarray | None = None,
) -> tuple[_Params, np.ndarray, list[str]]:
    """π, μ, Σ for each mixture of the batch from its pass statistics.

    ``mask`` (R, K) marks the real components when mixtures are padded (maximum likelihood
    only: the MAP divisors depend on the number of components). Returns the new parameters, the
    index of a failed component per mixture (−1 when none) and the reasons of the failures.
    """
    counts = stats.counts
    total = counts.sum(axis=-1, keepdims=True)
    tiny = 1e-10 * total
    low = counts <= tiny
    empty = low if mask is None else low & mask
    safe = np.where(low, 1.0, counts)
    xbar = stats.sum_x / safe[..., None]
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
        covs = structure.covariances(counts, scatter, terms)
    if reg_covar:
        covs = covs + reg_covar * np.eye(covs.shape[-1])
    if mask is not None and not mask.all():
        pad = ~mask
        covs[pad] = np.eye(covs.shape[-1])
        means[pad] = 0.0
    chol, bad = _batched_cholesky(covs)
    reasons = ["" for _ in range(counts.shape[0])]
    for r in np.flatnonzero(bad >= 0):
        reasons[r] = "its covariance became singular (points tied or duplicated)"
    if prior is None:
        for r in np.flatnonzero(empty.any(axis=1)):
            j = int(np.argmax(empty[r]))
            bad[r] = j
            reasons[r] = f"its weight collapsed to {counts[r, j] / total[r, 0]:.2g} (empty)"
    weights = counts / total
    return _Params(weights, means + center, covs, chol), bad, reasons


def _stats_from_resp(
    X: np.ndarray, resp: np.ndarray, sample_weight: np.ndarray | None, kind: str
) -> PassStats:
    """Sufficient statistics of a batch of one from given responsibilities, for rows ``X`` that
    are already shifted by the center."""
    wr = resp if sample_weight is None else resp * sample_weight[:, None]
    counts = wr.sum(axis=0)
    sum_x = wr.T @ X
    if kind == "diag":
        scatter = wr.T @ (X * X)
    else:
        iu, ju = triu(X.shape[1])
        scatter = wr.T @ (X[:, iu] * X[:, ju])
    return PassStats(np.zeros(1), counts[None], sum_x[None], scatter[None])


def _to_model(
    p: _Params, r: int, structure: CovarianceStructure, names: tuple[str, ...] | None
) -> GaussianMixture:
    return GaussianMixture._trusted(
        p.weights[r].copy(), p.means[r].copy(), p.covs[r].copy(), structure, names
    )


def _density(p: _Params, structure: CovarianceStructure, center: np.ndarray):
    diagonal = structure.scatter_kind == "diag" or p.means.shape[-1] == 1
    with np.errstate(divide="ignore"):
        log_w = np.log(p.weights)
    return density_params(log_w, p.means, p.chol, diagonal, center)


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
    stats = _stats_from_resp(X - center, resp, sample_weight, structure.scatter_kind)
    params, bad, reasons = _m_step_batch(stats, center, structure, prior, reg_covar)
    if bad[0] >= 0:
        raise Degenerate(int(bad[0]), reasons[0])
    return _to_model(params, 0, structure, feature_names)


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
    params, bad, reasons = _m_step_batch(stats, p.center, structure, prior, reg_covar)
    if bad[0] >= 0:
        raise Degenerate(int(bad[0]), reasons[0])
    return _to_model(params, 0, structure, model.feature_names), float(stats.loglik[0])


# -- the batched loop -------------------------------------------------------------------------


@dataclass
class Run:
    """The state of one EM run (one start), resumable: short runs from many starts are
    advanced together and only the promising ones are carried on."""

    params: _Params  # a batch of one
    label: str
    key: Any = None  # which cell of a grid the run belongs to
    trace: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.converged or self.reason is not None

    @property
    def loglik(self) -> float:
        return self.trace[-1] if self.trace else -np.inf

    @property
    def k(self) -> int:
        return int(self.params.weights.shape[1])


def new_run(model: GaussianMixture, label: str, key: Any = None) -> Run:
    """A run starting at ``model``."""
    p = _Params(
        model.weights[None], model.means[None], model.covariances[None], model.cholesky[None]
    )
    return Run(p, label, key=key)


def iterate(
    X: np.ndarray,
    runs: list[Run],
    until_iter: int,
    structure: CovarianceStructure,
    *,
    center: np.ndarray,
    w: np.ndarray | None,
    prior: ResolvedPrior | None,
    reg_covar: float,
    tol: float,
    accelerate: bool = False,
) -> None:
    """Advance every unfinished run until it converges, degenerates or has done ``until_iter``
    iterations (M-steps); all active runs share each pass over the data.

    With ``accelerate``, every two EM steps θ0 → θ1 → θ2 are followed by a SQUAREM extrapolation
    (Varadhan & Roland 2008, scheme S3) θ' = θ0 − 2αr + α²v, r = θ1 − θ0, v = θ2 − 2θ1 + θ0,
    α = −‖r‖/‖v‖ (at most −1), in standardised units. θ' is evaluated by one more pass and kept,
    followed by its EM step, only when it is a valid mixture whose log-likelihood is at least
    that of θ1; otherwise the run goes on from θ2. Every log-likelihood recorded in the trace is
    therefore at least the previous one, exactly as for plain EM.
    """
    active = [r for r in runs if not r.finished and r.n_iter < until_iter]
    if not active:
        return
    ks = [r.k for r in active]
    if prior is not None and len(set(ks)) > 1:
        for kk in sorted(set(ks)):  # MAP divisors depend on K: one batch per K
            group = [r for r in active if r.k == kk]
            iterate(
                X,
                group,
                until_iter,
                structure,
                center=center,
                w=w,
                prior=prior,
                reg_covar=reg_covar,
                tol=tol,
                accelerate=accelerate,
            )
        return
    params, mask = _stack_padded([r.params for r in active], max(ks))
    batch = _Batch(X, structure, center, w, prior, reg_covar, tol, until_iter, scale=None)
    if accelerate:
        batch.scale = _data_scale(X, w)
    mask_or_none = None if mask.all() else mask
    while active:
        if not accelerate:
            active, params, mask_or_none = batch.plain_step(active, params, mask_or_none)
            continue
        theta0 = params
        active, theta1, mask_or_none, kept1 = batch.plain_step(
            active, params, mask_or_none, return_kept=True
        )
        if not active:
            break
        theta0 = theta0.take(kept1)
        active, theta2, mask_or_none, kept2 = batch.plain_step(
            active, theta1, mask_or_none, return_kept=True
        )
        if not active:
            break
        theta0, theta1 = theta0.take(kept2), theta1.take(kept2)
        params = batch.extrapolate(active, theta0, theta1, theta2, mask_or_none)


@dataclass
class _Batch:
    """The fixed settings of one batched EM loop, and its two kinds of step."""

    X: np.ndarray
    structure: CovarianceStructure
    center: np.ndarray
    w: np.ndarray | None
    prior: ResolvedPrior | None
    reg_covar: float
    tol: float
    until_iter: int
    scale: np.ndarray | None

    def evaluate(self, params: _Params, mask: np.ndarray | None):
        """One pass at ``params``: log-likelihoods (R,) and the M-step's result."""
        dens = _density(params, self.structure, self.center)
        stats = run_pass(self.X, dens, sample_weight=self.w, stats=self.structure.scatter_kind)
        new, bad, reasons = _m_step_batch(
            stats, self.center, self.structure, self.prior, self.reg_covar, mask
        )
        return stats.loglik, new, bad, reasons

    def plain_step(self, active, params, mask, return_kept=False):
        """One EM step for every active run; runs that converge, degenerate or reach the
        iteration budget leave the batch."""
        loglik, new, bad, reasons = self.evaluate(params, mask)
        keep = []
        for i, run in enumerate(active):
            ll = float(loglik[i])
            prev = run.loglik
            run.trace.append(ll)
            if self.tol > 0 and np.isfinite(prev) and abs(ll - prev) <= self.tol * abs(ll):
                run.converged = True
                run.params = params.member(i, run.k)
            elif bad[i] >= 0:
                run.reason = f"component {bad[i]}: {reasons[i]}"
                run.params = params.member(i, run.k)
            else:
                run.n_iter += 1
                if run.n_iter >= self.until_iter:
                    run.params = new.member(i, run.k)
                else:
                    keep.append(i)
        idx = np.asarray(keep, dtype=np.intp)
        if len(keep) < len(active):
            active = [active[i] for i in keep]
            new = new.take(idx)
            if mask is not None:
                mask = mask[idx]
        if return_kept:
            return active, new, mask, idx
        return active, new, mask

    def extrapolate(self, active, theta0, theta1, theta2, mask):
        """The SQUAREM step for each run; returns the batch to continue from."""
        s = self.scale if self.scale is not None else np.ones(self.X.shape[1])
        scov = s[:, None] * s[None, :]

        def flat(p: _Params) -> np.ndarray:
            r = p.weights.shape[0]
            return np.concatenate(
                [p.weights, (p.means / s).reshape(r, -1), (p.covs / scov).reshape(r, -1)], axis=1
            )

        f0, f1, f2 = flat(theta0), flat(theta1), flat(theta2)
        r_vec = f1 - f0
        v_vec = f2 - 2.0 * f1 + f0
        nr = np.sqrt((r_vec * r_vec).sum(axis=1))
        nv = np.sqrt((v_vec * v_vec).sum(axis=1))
        alpha = np.where(nv > 0, -nr / np.where(nv > 0, nv, 1.0), -1.0)
        alpha = np.minimum(alpha, -1.0)
        a1 = (-2.0 * alpha)[:, None]
        a2 = (alpha * alpha)[:, None]

        def combine(x0, x1, x2):
            shape = (-1,) + (1,) * (x0.ndim - 1)
            return x0 + a1.reshape(shape) * (x1 - x0) + a2.reshape(shape) * (x2 - 2 * x1 + x0)

        weights = combine(theta0.weights, theta1.weights, theta2.weights)
        means = combine(theta0.means, theta1.means, theta2.means)
        covs = combine(theta0.covs, theta1.covs, theta2.covs)
        covs = 0.5 * (covs + np.swapaxes(covs, -1, -2))
        if mask is not None:
            weights = np.where(mask, weights, 0.0)
        chol, bad = _batched_cholesky(covs)
        valid = (bad < 0) & (weights >= 0).all(axis=1) & (alpha < -1.0)
        if not valid.any():
            return theta2
        out = _Params(
            theta2.weights.copy(), theta2.means.copy(), theta2.covs.copy(), theta2.chol.copy()
        )
        idx = np.flatnonzero(valid)
        trial = _Params(weights[idx], means[idx], covs[idx], chol[idx])
        trial.weights /= trial.weights.sum(axis=1, keepdims=True)
        loglik, new, bad_new, _ = self.evaluate(trial, None if mask is None else mask[idx])
        for j, i in enumerate(idx):
            run = active[i]
            # The trial is kept only when its EM step is valid, it improves on θ1 and the run
            # still has budget for one more M-step.
            if bad_new[j] < 0 and loglik[j] >= run.loglik and run.n_iter + 1 < self.until_iter:
                run.trace.append(float(loglik[j]))
                run.n_iter += 1
                out.weights[i], out.means[i] = new.weights[j], new.means[j]
                out.covs[i], out.chol[i] = new.covs[j], new.chol[j]
        return out


def _data_scale(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    ww = np.ones(X.shape[0]) if w is None else w
    mean = ww @ X / ww.sum()
    var = ww @ (X - mean) ** 2 / ww.sum()
    return np.sqrt(np.where(var > 0, var, 1.0))


def _collapse_reason(model: GaussianMixture, scale: np.ndarray) -> str | None:
    """Why a fitted mixture is degenerate, or None: a covariance with an eigenvalue that is a
    vanishing fraction of the data's variance in the same (standardised) direction."""
    std = model.covariances / (scale[:, None] * scale[None, :])
    smallest = np.linalg.eigvalsh(std)[:, 0]
    if (smallest < DEGENERACY_RTOL).any():
        j = int(np.argmin(smallest))
        return (
            f"component {j} collapsed (its covariance has an eigenvalue {smallest[j]:.2g} times "
            "the data's variance, i.e. it sits on tied or duplicated points)"
        )
    return None


def finish(
    X: np.ndarray,
    run: Run,
    structure: CovarianceStructure,
    names: tuple[str, ...] | None,
    w: np.ndarray | None,
) -> EMResult:
    """Final E-step at the run's mixture: log-likelihood, responsibilities and criteria."""
    model = _to_model(run.params, 0, structure, names)
    resp = np.empty((X.shape[0], model.n_components))
    final = run_pass(X, model._params, sample_weight=w, resp_out=resp)
    loglik = float(final.loglik[0])
    trace = list(run.trace)
    if not run.converged or not trace:
        trace.append(loglik)
    reason = run.reason if run.reason is not None else _collapse_reason(model, _data_scale(X, w))
    n_obs = float(X.shape[0] if w is None else w.sum())
    p = model.n_parameters
    return EMResult(
        model=model,
        loglik=loglik,
        loglik_trace=np.asarray(trace),
        n_iter=run.n_iter,
        converged=run.converged,
        n_parameters=p,
        n_obs=n_obs,
        bic=bic(loglik, p, n_obs),
        aic=aic(loglik, p),
        icl=icl(loglik, p, n_obs, resp, w),
        responsibilities=resp,
        degenerate=reason is not None,
        degenerate_reason=None if reason is None else f"{reason}. {_REMEDY}",
        init=run.label,
    )
