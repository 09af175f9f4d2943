"""Values missing at random: the pass of EM on the observed coordinates of each row.

A row x_n with observed coordinates o and missing coordinates m (NaN) has the marginal density
N(x_o | μ_o, Σ_oo) under each component, so its responsibilities and its contribution to the
log-likelihood use only what was observed. EM treats x_m as latent: given x_o and z = k, x_m is
normal with mean and covariance

    x̂_m = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o),      C = Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om,

so the expected sufficient statistics fill the missing block with x̂_m and add C to the expected
scatter: E[x xᵀ | x_o, z = k] = x̂ x̂ᵀ + [0 0; 0 C]. The statistics then have the shape of the
complete-data pass's (:class:`~bayesgmm.core._passes.PassStats`) and every structure's M-step
works unchanged; the log-likelihood maximised is the observed-data one.

Rows are grouped by their pattern of missingness: the factorisations are one per (pattern,
component), batched over all patterns with the same number of observed coordinates, and each
pattern's rows are then handled as a block (matrix products over its rows). Complete rows take
the ordinary pass. A pass on data without NaN never comes here, so complete data give exactly
the results they gave before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bayesgmm.core._passes import PassStats, _log_normalise, mixture_density, run_pass, triu

__all__ = ["Missingness", "missing_pass", "missingness"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class Pattern:
    """The rows sharing one pattern of missing coordinates."""

    obs: np.ndarray  # (d_o,) observed coordinates
    mis: np.ndarray  # (d_m,) missing coordinates
    rows: np.ndarray  # (n_p,) row indices
    x_obs: np.ndarray  # (n_p, d_o) their observed values


@dataclass(frozen=True)
class Missingness:
    """Where the NaNs of a data set are, grouped once for every pass of a fit.

    Attributes
    ----------
    observed : ndarray (N, D) of bool
    complete : ndarray (n_c,)
        Indices of the rows without a missing value.
    x_complete : ndarray (n_c, D)
        Those rows.
    patterns : list of Pattern
        The incomplete rows, grouped by pattern (in order of first appearance of the pattern
        in a sort of the patterns: fixed for given data).
    by_observed : dict[int, list[int]]
        Indices into ``patterns`` by their number of observed coordinates.
    """

    observed: np.ndarray
    complete: np.ndarray
    x_complete: np.ndarray
    patterns: list[Pattern]
    by_observed: dict[int, list[int]]

    @property
    def n_missing(self) -> int:
        return int((~self.observed).sum())


def missingness(X: np.ndarray) -> Missingness | None:
    """The missingness of ``X`` (N, D), or None when nothing is missing. Every row must have at
    least one observed value (checked at the boundary, by ``as_data``)."""
    missing = np.isnan(X)
    if not missing.any():
        return None
    observed = ~missing
    incomplete = np.flatnonzero(missing.any(axis=1))
    complete = np.flatnonzero(~missing.any(axis=1))
    keys, inverse = np.unique(observed[incomplete], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(keys.shape[0] + 1))
    patterns: list[Pattern] = []
    by_observed: dict[int, list[int]] = {}
    for j, key in enumerate(keys):
        rows = incomplete[order[bounds[j] : bounds[j + 1]]]
        obs, mis = np.flatnonzero(key), np.flatnonzero(~key)
        by_observed.setdefault(obs.size, []).append(len(patterns))
        patterns.append(Pattern(obs, mis, rows, np.ascontiguousarray(X[np.ix_(rows, obs)])))
    return Missingness(observed, complete, np.ascontiguousarray(X[complete]), patterns, by_observed)


@dataclass(frozen=True)
class _Factors:
    """For one pattern: per component (M = R·K, mixture-major), the whitening L_oo⁻¹, the
    constant of log p(x_o, z) and, when statistics are wanted, the regression B = Σ_mo Σ_oo⁻¹
    and the conditional covariance C."""

    whiten: np.ndarray  # (M, d_o, d_o), lower triangular L_oo⁻¹
    const: np.ndarray  # (M,): log π − d_o/2 log 2π − ½ log|Σ_oo|
    regress: np.ndarray | None  # (M, d_m, d_o)
    cond_cov: np.ndarray | None  # (M, d_m, d_m)


def _factors(
    miss: Missingness, log_w: np.ndarray, covs: np.ndarray, with_stats: bool
) -> list[_Factors]:
    """The factors of every pattern, one batched Cholesky and inverse per number of observed
    coordinates (covs (M, D, D), log_w (M,))."""
    out: list[_Factors | None] = [None] * len(miss.patterns)
    for d_o, members in miss.by_observed.items():
        obs = np.stack([miss.patterns[j].obs for j in members])  # (P, d_o)
        soo = covs[:, obs[:, :, None], obs[:, None, :]]  # (M, P, d_o, d_o)
        chol = np.linalg.cholesky(soo)
        whiten = np.linalg.inv(chol)
        whiten = np.tril(whiten)  # exactly triangular (inv of a triangular matrix)
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=2, axis2=3)).sum(axis=2)  # (M, P)
        const = log_w[:, None] - 0.5 * (d_o * _LOG_2PI + logdet)
        regress = cond = None
        if with_stats:
            mis = np.stack([miss.patterns[j].mis for j in members])  # (P, d_m)
            prec = np.swapaxes(whiten, 2, 3) @ whiten  # Σ_oo⁻¹ (M, P, d_o, d_o)
            smo = covs[:, mis[:, :, None], obs[:, None, :]]  # (M, P, d_m, d_o)
            regress = smo @ prec
            smm = covs[:, mis[:, :, None], mis[:, None, :]]
            cond = smm - regress @ np.swapaxes(smo, 2, 3)
        for i, j in enumerate(members):
            out[j] = _Factors(
                whiten[:, i],
                const[:, i],
                None if regress is None else regress[:, i],
                None if cond is None else cond[:, i],
            )
    return [f for f in out if f is not None]


def missing_pass(
    miss: Missingness,
    weights: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    chol: np.ndarray,
    diagonal: bool,
    center: np.ndarray,
    *,
    sample_weight: np.ndarray | None = None,
    stats: Literal["none", "full", "diag"] = "none",
    resp_out: np.ndarray | None = None,
    logp_out: np.ndarray | None = None,
    joint_out: np.ndarray | None = None,
) -> PassStats:
    """:func:`~bayesgmm.core._passes.run_pass` on the data ``miss`` describes, for a batch of R
    mixtures given as weights (R, K), means (R, K, D), covariances and their Cholesky factors
    (R, K, D, D).

    ``sample_weight`` is (N,) or (R, N); ``resp_out`` (N, K·R) and ``logp_out`` (N, R) as for
    run_pass; ``joint_out`` (N, K·R) receives log p(x_n,o, z_n = k) of the incomplete rows
    only (the caller evaluates the complete rows' directly).
    """
    r, k, d = means.shape
    w = sample_weight
    out = PassStats(np.zeros(r), np.zeros((r, k)), np.zeros((r, k, d)), None)
    if stats != "none":
        out.scatter = np.zeros((r, k, d if stats == "diag" else d * (d + 1) // 2))
    rows_c = miss.complete
    if rows_c.size:
        dens = mixture_density(weights, means, chol, diagonal, center, allow_direct=False)
        resp_c = None if resp_out is None else np.empty((rows_c.size, k * r))
        logp_c = None if logp_out is None else np.empty((rows_c.size, r))
        wc = None if w is None else w[..., rows_c]
        part = run_pass(
            miss.x_complete, dens, sample_weight=wc, stats=stats, resp_out=resp_c, logp_out=logp_c
        )
        out.loglik += part.loglik
        out.counts += part.counts
        out.sum_x += part.sum_x
        if out.scatter is not None and part.scatter is not None:
            out.scatter += part.scatter
        if resp_out is not None and resp_c is not None:
            resp_out[rows_c] = resp_c
        if logp_out is not None and logp_c is not None:
            logp_out[rows_c] = logp_c
    if not miss.patterns:
        return out
    m = r * k
    with np.errstate(divide="ignore"):
        log_w = np.log(weights).reshape(m)
    mu = means.reshape(m, d)
    factors = _factors(miss, log_w, covs.reshape(m, d, d), stats != "none")
    iu, ju = triu(d)
    for pat, fac in zip(miss.patterns, factors, strict=True):
        resid = pat.x_obs[None, :, :] - mu[:, None, pat.obs]  # (M, n_p, d_o)
        y = resid @ np.swapaxes(fac.whiten, 1, 2)
        lj = fac.const[:, None] - 0.5 * np.einsum("mnd,mnd->mn", y, y)  # (M, n_p)
        # Component-major (K·R, n_p), as the complete-data pass normalises it.
        lj = np.ascontiguousarray(lj.reshape(r, k, -1).swapaxes(0, 1)).reshape(m, -1)
        if joint_out is not None:
            joint_out[pat.rows] = lj.T
        logp = _log_normalise(lj, r, k)  # lj now holds p(z = k | x_o), (K·R, n_p)
        if logp_out is not None:
            logp_out[pat.rows] = logp.T
        if resp_out is not None:
            resp_out[pat.rows] = lj.T
        g = lj.reshape(k, r, -1).swapaxes(0, 1)  # (R, K, n_p)
        if w is not None:
            wp = w[..., pat.rows]
            out.loglik += (logp * wp).sum(axis=1) if wp.ndim == 2 else logp @ wp
            g = g * (wp[:, None, :] if wp.ndim == 2 else wp)
        else:
            out.loglik += logp.sum(axis=1)
        if stats == "none" or fac.regress is None or fac.cond_cov is None or out.scatter is None:
            continue
        gm = g.reshape(m, -1)  # (M, n_p), mixture-major
        xhat = np.empty((m, pat.rows.size, d))
        xhat[:, :, pat.obs] = pat.x_obs - center[pat.obs]
        xhat[:, :, pat.mis] = (mu[:, None, pat.mis] - center[pat.mis]) + resid @ np.swapaxes(
            fac.regress, 1, 2
        )
        counts = gm.sum(axis=1)  # (M,)
        sum_x = (gm[:, None, :] @ xhat)[:, 0, :]
        out.counts += counts.reshape(r, k)
        out.sum_x += sum_x.reshape(r, k, d)
        if stats == "diag":
            second = np.einsum("mn,mnd->md", gm, xhat * xhat)
            second[:, pat.mis] += counts[:, None] * np.diagonal(fac.cond_cov, axis1=1, axis2=2)
        else:
            full = np.swapaxes(xhat * gm[:, :, None], 1, 2) @ xhat  # (M, D, D)
            full[:, pat.mis[:, None], pat.mis[None, :]] += counts[:, None, None] * fac.cond_cov
            second = full[:, iu, ju]
        out.scatter += second.reshape(r, k, -1)
    return out


def fill_means(X: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """``X`` with each NaN replaced by its column's (weighted) mean over the observed values:
    the data the starts (hierarchical tree, k-means++, the first M-step) are computed on."""
    observed = ~np.isnan(X)
    filled = np.where(observed, X, 0.0)
    ww = np.ones(X.shape[0]) if w is None else w
    col = (ww @ filled) / (ww @ observed)
    return np.where(observed, X, col)


def impute_missing(
    X: np.ndarray,
    miss: Missingness,
    weights: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    draws: int | None,
    gen: np.random.Generator | None,
) -> np.ndarray:
    """The missing values of ``X`` under one mixture (weights (K,), means (K, D), covariances
    (K, D, D)): with ``draws`` None, the conditional mean E[x_m | x_o] = Σ_k γ_k(x_o) x̂_m,k,
    shape (N, D); otherwise ``draws`` imputations (draws, N, D), each drawing z from
    p(z | x_o) and then x_m from N(x̂_m,z, C_z). Observed values are returned as they are."""
    k = means.shape[0]
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    factors = _factors(miss, log_w, covs, with_stats=True)
    out = np.array(X, dtype=np.float64, copy=True)
    if draws is not None:
        out = np.repeat(out[None], draws, axis=0)
    for pat, fac in zip(miss.patterns, factors, strict=True):
        if fac.regress is None or fac.cond_cov is None:
            continue
        resid = pat.x_obs[None, :, :] - means[:, None, pat.obs]  # (K, n_p, d_o)
        y = resid @ np.swapaxes(fac.whiten, 1, 2)
        lj = fac.const[:, None] - 0.5 * np.einsum("knd,knd->kn", y, y)
        _log_normalise(lj, 1, k)  # lj now holds p(z = k | x_o), (K, n_p)
        xm = means[:, None, pat.mis] + resid @ np.swapaxes(fac.regress, 1, 2)  # (K, n_p, d_m)
        cells = np.ix_(pat.rows, pat.mis)
        if draws is None or gen is None:
            out[cells] = np.einsum("kn,knd->nd", lj, xm)
            continue
        cum = np.cumsum(lj, axis=0)  # (K, n_p)
        u = gen.random((draws, pat.rows.size)) * cum[-1]
        z = np.minimum((cum[None, :, :] <= u[:, None, :]).sum(axis=1), k - 1)  # (draws, n_p)
        chol = np.linalg.cholesky(fac.cond_cov)  # (K, d_m, d_m)
        eps = gen.standard_normal((draws, pat.rows.size, pat.mis.size))
        cols = np.arange(pat.rows.size)
        noise = np.einsum("snij,snj->sni", chol[z], eps)
        out[(slice(None), *np.ix_(pat.rows, pat.mis))] = xm[z, cols[None, :]] + noise
    return out
