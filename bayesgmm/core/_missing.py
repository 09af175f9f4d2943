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

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bayesgmm.core._passes import (
    PassStats,
    _log_normalise,
    features,
    mixture_density,
    run_pass,
    triu,
)

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
        The incomplete rows, grouped by pattern (patterns in a fixed order for given data).
    by_observed : dict[int, list[int]]
        Indices into ``patterns`` by their number of observed coordinates.
    sorted_rows : ndarray (n_i,)
        The incomplete rows, pattern after pattern (``bounds`` delimits each pattern's).
    bounds : ndarray (P + 1,)
    """

    observed: np.ndarray
    complete: np.ndarray
    x_complete: np.ndarray
    patterns: list[Pattern]
    by_observed: dict[int, list[int]]
    sorted_rows: np.ndarray
    bounds: np.ndarray
    x_sorted: np.ndarray  # (n_i, D) the incomplete rows in that order, NaN where missing
    _features: dict[tuple[str, bytes], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_missing(self) -> int:
        return int((~self.observed).sum())

    def features(self, center: np.ndarray, kind: str) -> np.ndarray:
        """The feature matrix (F, n_i) of the incomplete rows (sorted) with each missing
        value at ``center`` (so that its deviation, and every feature it enters, is 0): what
        each pattern's log-densities and moments are products with. Kept for the fit (its
        center does not change) when under ``_FEATURE_CACHE_ENTRIES`` entries."""
        key = (kind, center.tobytes())
        hit = self._features.get(key)
        if hit is not None:
            return hit
        filled = np.where(np.isnan(self.x_sorted), center, self.x_sorted)
        feats = features(filled, center, kind)
        if feats.size <= _FEATURE_CACHE_ENTRIES:
            self._features.clear()
            self._features[key] = feats
        return feats


#: Largest cached feature matrix of the incomplete rows (entries; 128 MB).
_FEATURE_CACHE_ENTRIES = 2**24


def missingness(X: np.ndarray) -> Missingness | None:
    """The missingness of ``X`` (N, D), or None when nothing is missing. Every row must have at
    least one observed value (checked at the boundary, by ``as_data``)."""
    missing = np.isnan(X)
    if not missing.any():
        return None
    observed = ~missing
    incomplete = np.flatnonzero(missing.any(axis=1))
    complete = np.flatnonzero(~missing.any(axis=1))
    d = X.shape[1]
    if d <= 62:  # each pattern as one integer: sorting integers, not rows
        codes = observed[incomplete].astype(np.int64) @ (np.int64(1) << np.arange(d))
    else:
        packed = np.ascontiguousarray(np.packbits(observed[incomplete], axis=1))
        codes = packed.view(np.dtype((np.void, packed.shape[1])))[:, 0]
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(first.size + 1))
    sorted_rows = incomplete[order]
    patterns: list[Pattern] = []
    by_observed: dict[int, list[int]] = {}
    for j in range(first.size):
        key = observed[incomplete[first[j]]]
        rows = sorted_rows[bounds[j] : bounds[j + 1]]
        obs, mis = np.flatnonzero(key), np.flatnonzero(~key)
        by_observed.setdefault(obs.size, []).append(len(patterns))
        patterns.append(Pattern(obs, mis, rows, np.ascontiguousarray(X[np.ix_(rows, obs)])))
    return Missingness(
        observed,
        complete,
        np.ascontiguousarray(X[complete]),
        patterns,
        by_observed,
        sorted_rows,
        bounds,
        np.ascontiguousarray(X[sorted_rows]),
    )


@dataclass(frozen=True)
class _Factors:
    """Per pattern and component (M = R·K, mixture-major), batched over the P patterns and
    embedded in D × D (zeros where a coordinate is missing): the precision of the observed
    block Σ_oo⁻¹, the constant log π − d_o/2 log 2π − ½ log|Σ_oo|, and the affine map of
    E[x − c | x_o, z] = A (x̃ − c) + a (x̃: missing values at c) with the conditional covariance
    C of the missing block."""

    prec: np.ndarray  # (P, M, D, D)
    const: np.ndarray  # (P, M)
    affine: np.ndarray | None  # (P, M, D, D): identity on the observed block, Σ_mo Σ_oo⁻¹ below
    shift: np.ndarray | None  # (P, M, D): μ_m − c_m − Σ_mo Σ_oo⁻¹ (μ_o − c_o) on the missing
    cond_cov: np.ndarray | None  # (P, M, D, D): C on the missing block


def _factors(
    miss: Missingness,
    log_w: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    center: np.ndarray,
    with_stats: bool,
) -> _Factors:
    """The factors of every pattern: one batched Cholesky per number of observed coordinates
    (log_w (M,), means (M, D), covs (M, D, D))."""
    p, (m, d) = len(miss.patterns), means.shape
    prec_all = np.zeros((p, m, d, d))
    const_all = np.empty((p, m))
    affine = shift = cond = None
    if with_stats:
        affine, shift, cond = np.zeros((p, m, d, d)), np.zeros((p, m, d)), np.zeros((p, m, d, d))
    mc = means - center
    for d_o, members in miss.by_observed.items():
        idx = np.asarray(members)
        obs = np.stack([miss.patterns[j].obs for j in members])  # (P_g, d_o)
        soo = covs[:, obs[:, :, None], obs[:, None, :]]  # (M, P_g, d_o, d_o)
        chol = np.linalg.cholesky(soo)
        whiten = np.tril(np.linalg.inv(chol))
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=2, axis2=3)).sum(axis=2)  # (M, P_g)
        const_all[idx] = (log_w[:, None] - 0.5 * (d_o * _LOG_2PI + logdet)).T
        prec = np.swapaxes(whiten, 2, 3) @ whiten  # Σ_oo⁻¹ (M, P_g, d_o, d_o)
        rows_o, cols_o = obs[:, :, None], obs[:, None, :]
        # Advanced indices around a slice: the result's axes are (P_g, d_o, d_o, M).
        sub = np.zeros((idx.size, d, d, m))
        sub[np.arange(idx.size)[:, None, None], rows_o, cols_o] = prec.transpose(1, 2, 3, 0)
        prec_all[idx] = sub.transpose(0, 3, 1, 2)
        if not with_stats or d_o == d or affine is None or shift is None or cond is None:
            continue
        mis = np.stack([miss.patterns[j].mis for j in members])  # (P_g, d_m)
        smo = covs[:, mis[:, :, None], obs[:, None, :]]  # (M, P_g, d_m, d_o)
        regress = smo @ prec
        smm = covs[:, mis[:, :, None], mis[:, None, :]]
        cmm = smm - regress @ np.swapaxes(smo, 2, 3)
        mu_o = mc[:, obs]  # (M, P_g, d_o)
        alpha = mc[:, mis] - (regress @ mu_o[..., None])[..., 0]  # (M, P_g, d_m)
        g = np.arange(idx.size)[:, None, None]
        block = np.zeros((idx.size, d, d, m))
        block[g, obs[:, :, None], obs[:, None, :]] = np.eye(d_o)[None, :, :, None]
        block[g, mis[:, :, None], obs[:, None, :]] = regress.transpose(1, 2, 3, 0)
        affine[idx] = block.transpose(0, 3, 1, 2)
        vec = np.zeros((idx.size, d, m))
        vec[np.arange(idx.size)[:, None], mis] = alpha.transpose(1, 2, 0)
        shift[idx] = vec.transpose(0, 2, 1)
        block = np.zeros((idx.size, d, d, m))
        block[g, mis[:, :, None], mis[:, None, :]] = cmm.transpose(1, 2, 3, 0)
        cond[idx] = block.transpose(0, 3, 1, 2)
    return _Factors(prec_all, const_all, affine, shift, cond)


def _coefficients(fac: _Factors, mc: np.ndarray, kind: str, r: int, k: int) -> np.ndarray:
    """log p(x_o, z = m) = coef[p, m] · f(x̃) for each pattern p, in the feature layout of
    :func:`~bayesgmm.core._passes.features` ("full" or "diag"), components in component-major
    order (k·R + r) as the complete-data pass: (P, K·R, F)."""
    p, m, d, _ = fac.prec.shape
    lin = (fac.prec @ mc[None, :, :, None])[..., 0]  # (P, M, D); 0 where missing
    offset = (lin * mc[None]).sum(axis=2)
    if kind == "diag":
        quad = np.diagonal(fac.prec, axis1=2, axis2=3)
    else:
        iu, ju = triu(d)
        quad = fac.prec[:, :, iu, ju] * np.where(iu == ju, 1.0, 2.0)
    with np.errstate(invalid="ignore"):  # −inf weights (padding)
        coef = np.concatenate([-0.5 * quad, lin, (fac.const - 0.5 * offset)[..., None]], axis=2)
    # mixture-major (r·K + k) → component-major (k·R + r)
    return coef.reshape(p, r, k, -1).swapaxes(1, 2).reshape(p, m, -1)


#: Patterns with at least this many rows get a matrix product of their own; consecutive smaller
#: ones share blocks of up to ``_BLOCK_ROWS`` rows.
_GEMM_MIN_ROWS = 32
_BLOCK_ROWS = 1024


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

    The incomplete rows' log-densities are products of one feature matrix (their values with
    each missing one at the center, built once per fit) with per-pattern coefficients, and
    their sums Σ γ, Σ γ x̃, Σ γ x̃ x̃ᵀ per pattern one product back; each pattern's expected
    statistics follow from those by its affine map and conditional covariance.
    """
    r, k, d = means.shape
    m = r * k
    w = sample_weight
    out = PassStats(np.zeros(r), np.zeros((r, k)), np.zeros((r, k, d)), None)
    if stats != "none":
        out.scatter = np.zeros((r, k, d if stats == "diag" else d * (d + 1) // 2))
    rows_c = miss.complete
    if rows_c.size:
        dens = mixture_density(weights, means, chol, diagonal, center, allow_direct=False)
        resp_c = None if resp_out is None else np.empty((rows_c.size, m))
        logp_c = None if logp_out is None else np.empty((rows_c.size, r))
        wc = None if w is None else w[..., rows_c]
        part = run_pass(
            miss.x_complete, dens, sample_weight=wc, stats=stats, resp_out=resp_c, logp_out=logp_c
        )
        out += part
        if resp_out is not None and resp_c is not None:
            resp_out[rows_c] = resp_c
        if logp_out is not None and logp_c is not None:
            logp_out[rows_c] = logp_c
    if not miss.patterns:
        return out
    kind = "diag" if diagonal or d == 1 else "full"
    with np.errstate(divide="ignore"):
        log_w = np.log(weights).reshape(m)
    mc = means.reshape(m, d) - center
    fac = _factors(miss, log_w, means.reshape(m, d), covs.reshape(m, d, d), center, stats != "none")
    coef = _coefficients(fac, mc, kind, r, k)  # (P, K·R, F)
    feats = miss.features(center, kind)  # (F, n_i)
    n_f = feats.shape[0]
    sums = np.zeros((len(miss.patterns), m, n_f)) if stats != "none" else None
    w_sorted = None if w is None else w[..., miss.sorted_rows]
    bounds = miss.bounds
    sizes = np.diff(bounds)
    p0 = 0
    while p0 < len(miss.patterns):
        # A pattern of many rows is one product with the feature matrix; consecutive patterns
        # of few rows share a block in which each row takes its own pattern's coefficients.
        p1 = p0 + 1
        if sizes[p0] < _GEMM_MIN_ROWS:
            while (
                p1 < len(miss.patterns)
                and sizes[p1] < _GEMM_MIN_ROWS
                and bounds[p1 + 1] - bounds[p0] <= _BLOCK_ROWS
            ):
                p1 += 1
        lo, hi = bounds[p0], bounds[p1]
        f_blk = feats[:, lo:hi]
        single = p1 == p0 + 1
        if single:
            lj = coef[p0] @ f_blk  # (K·R, n_b)
        else:
            local = np.repeat(np.arange(p0, p1), sizes[p0:p1])
            lj = np.einsum("nmf,fn->mn", coef[local], f_blk)
        rows = miss.sorted_rows[lo:hi]
        if joint_out is not None:
            joint_out[rows] = lj.T
        logp = _log_normalise(lj, r, k)  # lj now holds p(z = k | x_o), (K·R, n_b)
        if logp_out is not None:
            logp_out[rows] = logp.T
        if resp_out is not None:
            resp_out[rows] = lj.T
        if w_sorted is not None:
            wb = w_sorted[..., lo:hi]
            if wb.ndim == 2:
                out.loglik += (logp * wb).sum(axis=1)
                lj.reshape(k, r, -1)[...] *= wb
            else:
                out.loglik += logp @ wb
                lj *= wb
        else:
            out.loglik += logp.sum(axis=1)
        if sums is not None:
            if single:
                sums[p0] = lj @ f_blk.T
            else:
                each = lj.T[:, :, None] * f_blk.T[:, None, :]  # (n_b, K·R, F)
                sums[p0:p1] = np.add.reduceat(each, bounds[p0:p1] - lo, axis=0)
        p0 = p1
    if sums is not None and out.scatter is not None:
        _expected_statistics(out, sums, fac, kind, r, k)
    return out


def _expected_statistics(
    out: PassStats, sums: np.ndarray, fac: _Factors, kind: str, r: int, k: int
) -> None:
    """Add the incomplete rows' expected statistics to ``out`` from each pattern's sums over
    its rows (P, K·R, F) of γ f(x̃): with u = x̃ − c, s0 = Σ γ, s1 = Σ γ u, S2 = Σ γ u uᵀ and the
    pattern's E[x − c | x_o, z] = A u + a,

        Σ γ E[x − c] = A s1 + a s0,
        Σ γ E[(x − c)(x − c)ᵀ] = A S2 Aᵀ + (A s1) aᵀ + a (A s1)ᵀ + s0 (a aᵀ + C)."""
    p, m, n_f = sums.shape
    d = out.sum_x.shape[2]
    # component-major (k·R + r) → mixture-major (r·K + k), as the factors
    sums = sums.reshape(p, k, r, n_f).swapaxes(1, 2).reshape(p, m, n_f)
    s0 = sums[..., -1]  # (P, M)
    t = n_f - d - 1
    s1 = sums[..., t : t + d]  # (P, M, D)
    if fac.affine is None or fac.shift is None or fac.cond_cov is None or out.scatter is None:
        return
    a, shift, cond = fac.affine, fac.shift, fac.cond_cov
    mean_part = (a @ s1[..., None])[..., 0]  # (P, M, D)
    out.counts += s0.sum(axis=0).reshape(r, k)
    out.sum_x += (mean_part + shift * s0[..., None]).sum(axis=0).reshape(r, k, d)
    cond_diag = np.diagonal(cond, axis1=2, axis2=3)
    if kind == "diag":
        # Diagonal covariances: A is the identity on the observed block and 0 elsewhere, so
        # the second moments are S2's on the observed and s0 (a² + C) on the missing.
        second = sums[..., :d] + s0[..., None] * (shift * shift + cond_diag)
        out.scatter += second.sum(axis=0).reshape(r, k, d)
        return
    iu, ju = triu(d)
    s2 = np.zeros((p, m, d, d))
    s2[..., iu, ju] = sums[..., :t]
    s2[..., ju, iu] = sums[..., :t]
    cross = mean_part[..., :, None] * shift[..., None, :]
    second = (
        a @ s2 @ np.swapaxes(a, 2, 3)
        + cross
        + np.swapaxes(cross, 2, 3)
        + s0[..., None, None] * (shift[..., :, None] * shift[..., None, :] + cond)
    )
    out.scatter += second.sum(axis=0)[:, iu, ju].reshape(r, k, -1)


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
    k, d = means.shape
    center = means.mean(axis=0)
    resp = np.empty((X.shape[0], k))
    missing_pass(
        miss, weights[None], means[None], covs[None], np.linalg.cholesky(covs)[None], False,
        center, resp_out=resp,
    )  # fmt: skip
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    fac = _factors(miss, log_w, means, covs, center, with_stats=True)
    out = np.array(X, dtype=np.float64, copy=True)
    if draws is not None:
        out = np.repeat(out[None], draws, axis=0)
    if fac.affine is None or fac.shift is None or fac.cond_cov is None:
        return out
    for j, pat in enumerate(miss.patterns):
        u = np.zeros((pat.rows.size, d))
        u[:, pat.obs] = pat.x_obs - center[pat.obs]
        # E[x | x_o, z = k] for each k: c + A_k u + a_k, (K, n_p, d_m) on the missing block
        xm = (u @ np.swapaxes(fac.affine[j], 1, 2) + fac.shift[j][:, None, :])[:, :, pat.mis]
        xm += center[pat.mis]
        g = resp[pat.rows].T  # (K, n_p)
        cells = np.ix_(pat.rows, pat.mis)
        if draws is None or gen is None:
            out[cells] = np.einsum("kn,knd->nd", g, xm)
            continue
        cum = np.cumsum(g, axis=0)
        u_draw = gen.random((draws, pat.rows.size)) * cum[-1]
        z = np.minimum((cum[None, :, :] <= u_draw[:, None, :]).sum(axis=1), k - 1)
        cmm = fac.cond_cov[j][:, pat.mis[:, None], pat.mis[None, :]]  # (K, d_m, d_m)
        chol = np.linalg.cholesky(cmm)
        eps = gen.standard_normal((draws, pat.rows.size, pat.mis.size))
        cols = np.arange(pat.rows.size)
        noise = np.einsum("snij,snj->sni", chol[z], eps)
        out[(slice(None), *np.ix_(pat.rows, pat.mis))] = xm[z, cols[None, :]] + noise
    return out
