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

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bayesgmm.core._passes import (
    PassStats,
    _log_normalise,
    features,
    fix_labels,
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
class Group:
    """The patterns with the same number of observed coordinates: their factorisations are
    batched."""

    idx: np.ndarray  # (P_g,) indices into Missingness.patterns
    obs: np.ndarray  # (P_g, d_o)
    mis: np.ndarray  # (P_g, d_m)


#: Patterns with at least this many rows get a matrix product of their own; consecutive smaller
#: ones share blocks of up to ``_BLOCK_ROWS`` rows, each row with its own pattern's coefficients.
_GEMM_MIN_ROWS = 32
_BLOCK_ROWS = 1024
#: Rows whose log-densities are normalised together (bounds the (K·R, rows) temporary).
_SUPER_ROWS = 32_768
#: Largest cached feature matrix of the incomplete rows (entries; 128 MB).
_FEATURE_CACHE_ENTRIES = 2**24


@dataclass(frozen=True)
class Missingness:
    """Where the NaNs of a data set are, grouped once for every pass of a fit.

    Attributes
    ----------
    observed : ndarray (N, D) of bool
    complete : ndarray (n_c,)
        Indices of the rows without a missing value; ``x_complete`` those rows.
    patterns : list of Pattern
        The incomplete rows, grouped by pattern (patterns in a fixed order for given data).
    groups : list of Group
        The patterns by their number of observed coordinates.
    sorted_rows : ndarray (n_i,)
        The incomplete rows, pattern after pattern; ``bounds`` (P + 1,) delimits each
        pattern's, and ``x_sorted`` (n_i, D) holds them (NaN where missing).
    blocks : list of (int, int)
        Runs of patterns processed together: one large pattern, or consecutive small ones.
    """

    observed: np.ndarray
    complete: np.ndarray
    x_complete: np.ndarray
    patterns: list[Pattern]
    groups: list[Group]
    sorted_rows: np.ndarray
    bounds: np.ndarray
    x_sorted: np.ndarray
    blocks: list[tuple[int, int]]
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
    groups = [
        Group(
            np.asarray(members),
            np.stack([patterns[j].obs for j in members]),
            np.stack([patterns[j].mis for j in members]),
        )
        for _, members in sorted(by_observed.items())
    ]
    sizes = np.diff(bounds)
    blocks = []
    p0 = 0
    while p0 < len(patterns):
        p1 = p0 + 1
        if sizes[p0] < _GEMM_MIN_ROWS:
            while (
                p1 < len(patterns)
                and sizes[p1] < _GEMM_MIN_ROWS
                and bounds[p1 + 1] - bounds[p0] <= _BLOCK_ROWS
            ):
                p1 += 1
        blocks.append((p0, p1))
        p0 = p1
    return Missingness(
        observed,
        complete,
        np.ascontiguousarray(X[complete]),
        patterns,
        groups,
        sorted_rows,
        bounds,
        np.ascontiguousarray(X[sorted_rows]),
        blocks,
    )


@functools.cache
def _packed_index(d: int) -> np.ndarray:
    """(D, D) table: the position of entry (i, j) (either order) in the packed upper triangle
    (row-major, as ``numpy.triu_indices``)."""
    iu, ju = triu(d)
    table = np.empty((d, d), dtype=np.intp)
    table[iu, ju] = np.arange(iu.size)
    table[ju, iu] = np.arange(iu.size)
    table.flags.writeable = False
    return table


@dataclass(frozen=True)
class _GroupFactors:
    """A group's conditional distributions of the missing given the observed, per pattern
    and component (M = R·K, mixture-major): E[x_m − c_m | x_o, z] = B (x_o − c_o) + α and
    Cov[x_m | x_o, z] = C."""

    regress: np.ndarray  # (M, P_g, d_m, d_o): B = Σ_mo Σ_oo⁻¹
    shift: np.ndarray  # (M, P_g, d_m): α = μ_m − c_m − B (μ_o − c_o)
    cond_cov: np.ndarray  # (M, P_g, d_m, d_m): C = Σ_mm − B Σ_om


def _factors(
    miss: Missingness,
    log_w: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    center: np.ndarray,
    kind: str,
    with_stats: bool,
) -> tuple[np.ndarray, list[_GroupFactors | None]]:
    """For every pattern and component (log_w (M,), means (M, D), covs (M, D, D); M in
    mixture-major order): the coefficients of log p(x_o, z) = coef · f(x̃) in the layout of
    :func:`~bayesgmm.core._passes.features` ("full" or "diag"), (P, M, F), and with
    ``with_stats`` each group's conditional distributions. One batched Cholesky factorisation
    per group."""
    p, (m, d) = len(miss.patterns), means.shape
    t = d if kind == "diag" else d * (d + 1) // 2
    n_f = t + d + 1
    coef = np.zeros((p, n_f, m))
    mc = means - center
    table = _packed_index(d)
    conditionals: list[_GroupFactors | None] = []
    for group in miss.groups:
        obs, mis = group.obs, group.mis
        d_o = obs.shape[1]
        soo = covs[:, obs[:, :, None], obs[:, None, :]]  # (M, P_g, d_o, d_o)
        chol = np.linalg.cholesky(soo)
        whiten = np.linalg.inv(chol)
        prec = np.swapaxes(whiten, 2, 3) @ whiten  # Σ_oo⁻¹
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=2, axis2=3)).sum(axis=2)  # (M, P_g)
        mc_o = mc[:, obs]  # (M, P_g, d_o)
        lin = (prec @ mc_o[..., None])[..., 0]
        const = log_w[:, None] - 0.5 * (d_o * _LOG_2PI + logdet + (lin * mc_o).sum(axis=2))
        if kind == "diag":
            quad, pos = np.diagonal(prec, axis1=2, axis2=3), obs
        else:
            io, jo = triu(d_o)
            quad = prec[..., io, jo] * np.where(io == jo, 1.0, 2.0)
            pos = table[obs[:, io], obs[:, jo]]  # (P_g, T_o)
        rows = group.idx[:, None]
        coef[rows, pos] = -0.5 * quad.transpose(1, 2, 0)
        coef[rows, t + obs] = lin.transpose(1, 2, 0)
        coef[group.idx, n_f - 1] = const.T
        if not with_stats or mis.shape[1] == 0:
            conditionals.append(None)
            continue
        smo = covs[:, mis[:, :, None], obs[:, None, :]]  # (M, P_g, d_m, d_o)
        regress = smo @ prec
        cond = covs[:, mis[:, :, None], mis[:, None, :]] - regress @ np.swapaxes(smo, 2, 3)
        shift = mc[:, mis] - (regress @ mc_o[..., None])[..., 0]
        conditionals.append(_GroupFactors(regress, shift, cond))
    return coef.transpose(0, 2, 1), conditionals


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
    labels: np.ndarray | None = None,
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
    statistics follow from those and its conditional distributions.
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
            miss.x_complete, dens, sample_weight=wc, stats=stats, resp_out=resp_c,
            logp_out=logp_c, labels=None if labels is None else labels[rows_c],
        )  # fmt: skip
        out += part
        if resp_out is not None and resp_c is not None:
            resp_out[rows_c] = resp_c
        if logp_out is not None and logp_c is not None:
            logp_out[rows_c] = logp_c
    if not miss.patterns:
        return out
    kind = "diag" if diagonal or d == 1 else "full"
    if stats == "diag" and kind == "full":
        raise ValueError("diagonal statistics need diagonal covariances")
    with np.errstate(divide="ignore"):
        log_w = np.log(weights).reshape(m)
    coef, conditionals = _factors(
        miss, log_w, means.reshape(m, d), covs.reshape(m, d, d), center, kind, stats != "none"
    )
    # mixture-major (r·K + k) → component-major (k·R + r), as the complete-data pass
    coef = np.ascontiguousarray(coef.reshape(-1, r, k, coef.shape[2]).swapaxes(1, 2))
    coef = coef.reshape(len(miss.patterns), m, -1)
    feats = miss.features(center, kind)  # (F, n_i)
    n_f = feats.shape[0]
    sums = np.zeros((len(miss.patterns), m, n_f)) if stats != "none" else None
    bounds = miss.bounds
    w_sorted = None if w is None else w[..., miss.sorted_rows]
    for s0, s1 in _super_blocks(miss):
        lo_s, hi_s = bounds[miss.blocks[s0][0]], bounds[miss.blocks[s1 - 1][1]]
        lj = np.empty((m, hi_s - lo_s))
        for p0, p1 in miss.blocks[s0:s1]:
            lo, hi = bounds[p0], bounds[p1]
            if p1 == p0 + 1:
                lj[:, lo - lo_s : hi - lo_s] = coef[p0] @ feats[:, lo:hi]
            else:
                local = np.repeat(np.arange(p0, p1), np.diff(bounds[p0 : p1 + 1]))
                lj[:, lo - lo_s : hi - lo_s] = np.einsum("nmf,fn->mn", coef[local], feats[:, lo:hi])
        rows = miss.sorted_rows[lo_s:hi_s]
        if joint_out is not None:
            joint_out[rows] = lj.T
        if labels is not None:
            fix_labels(lj, labels[rows], r, k)
        logp = _log_normalise(lj, r, k)  # lj now holds p(z = k | x_o), (K·R, n_s)
        if logp_out is not None:
            logp_out[rows] = logp.T
        if resp_out is not None:
            resp_out[rows] = lj.T
        if w_sorted is not None:
            wb = w_sorted[..., lo_s:hi_s]
            if wb.ndim == 2:
                out.loglik += (logp * wb).sum(axis=1)
                lj.reshape(k, r, -1)[...] *= wb
            else:
                out.loglik += logp @ wb
                lj *= wb
        else:
            out.loglik += logp.sum(axis=1)
        if sums is None:
            continue
        for p0, p1 in miss.blocks[s0:s1]:
            lo, hi = bounds[p0], bounds[p1]
            g = lj[:, lo - lo_s : hi - lo_s]
            if p1 == p0 + 1:
                sums[p0] = g @ feats[:, lo:hi].T
            else:
                each = g.T[:, :, None] * feats[:, lo:hi].T[:, None, :]  # (n_b, K·R, F)
                sums[p0:p1] = np.add.reduceat(each, bounds[p0:p1] - lo, axis=0)
    if sums is not None:
        _expected_statistics(out, sums, miss, conditionals, kind, r, k)
    return out


def _super_blocks(miss: Missingness) -> list[tuple[int, int]]:
    """Runs of consecutive blocks of up to ``_SUPER_ROWS`` rows (a larger block alone)."""
    out = []
    bounds, blocks = miss.bounds, miss.blocks
    b0 = 0
    while b0 < len(blocks):
        b1 = b0 + 1
        while b1 < len(blocks) and bounds[blocks[b1][1]] - bounds[blocks[b0][0]] <= _SUPER_ROWS:
            b1 += 1
        out.append((b0, b1))
        b0 = b1
    return out


def _expected_statistics(
    out: PassStats,
    sums: np.ndarray,
    miss: Missingness,
    conditionals: list[_GroupFactors | None],
    kind: str,
    r: int,
    k: int,
) -> None:
    """Add the incomplete rows' expected statistics to ``out``, from each pattern's sums over
    its rows (P, K·R, F) of γ f(x̃). With u = x̃ − c (0 where missing), s0 = Σ γ, s1 = Σ γ u,
    S2 = Σ γ u uᵀ, and E[x_m − c_m | x_o, z] = B u_o + α, Cov = C:

        Σ γ E[x − c]: s1 on the observed coordinates, B s1_o + α s0 on the missing;
        Σ γ E[(x − c)(x − c)ᵀ]: S2_oo; B S2_oo + α s1_oᵀ (missing × observed);
                                 B S2_oo Bᵀ + (B s1_o) αᵀ + α (B s1_o)ᵀ + s0 (α αᵀ + C).

    The observed parts are the sums themselves (the features of a missing value are 0); the
    missing parts are computed per group in its reduced coordinates and added at their
    positions."""
    p, m, n_f = sums.shape
    d = out.sum_x.shape[2]
    t = n_f - d - 1
    sums = sums.reshape(p, k, r, n_f).swapaxes(1, 2).reshape(p, m, n_f)  # mixture-major
    total = sums.sum(axis=0)  # (M, F)
    sum_x = total[:, t : t + d].copy()
    second = total[:, :t].copy()
    table = _packed_index(d)
    for group, cond in zip(miss.groups, conditionals, strict=True):
        if cond is None:
            continue
        obs, mis = group.obs, group.mis
        p_g, d_o = obs.shape
        d_m = mis.shape[1]
        part = sums[group.idx]  # (P_g, M, F)
        s0 = part[:, :, -1].T  # (M, P_g)
        s1 = np.take_along_axis(part, (t + obs)[:, None, :], axis=2).transpose(1, 0, 2)
        bs1 = (cond.regress @ s1[..., None])[..., 0]  # (M, P_g, d_m)
        _add_at(sum_x, np.broadcast_to(mis, (m, p_g, d_m)), bs1 + cond.shift * s0[..., None])
        if kind == "diag":
            # Diagonal covariances: B = 0, and only the diagonal is wanted.
            c_diag = np.diagonal(cond.cond_cov, axis1=2, axis2=3)
            values = s0[..., None] * (cond.shift * cond.shift + c_diag)
            _add_at(second, np.broadcast_to(mis, (m, p_g, d_m)), values)
            continue
        pos_oo = table[obs[:, :, None], obs[:, None, :]].reshape(p_g, 1, d_o * d_o)
        s2 = np.take_along_axis(part, pos_oo, axis=2).reshape(p_g, m, d_o, d_o)
        s2 = s2.transpose(1, 0, 2, 3)  # (M, P_g, d_o, d_o)
        b_s2 = cond.regress @ s2  # (M, P_g, d_m, d_o)
        mo = b_s2 + cond.shift[..., :, None] * s1[..., None, :]
        cross = bs1[..., :, None] * cond.shift[..., None, :]
        mm = (
            b_s2 @ np.swapaxes(cond.regress, 2, 3)
            + cross
            + np.swapaxes(cross, 2, 3)
            + s0[..., None, None] * (cond.shift[..., :, None] * cond.shift[..., None, :])
            + s0[..., None, None] * cond.cond_cov
        )
        pos_mo = table[mis[:, :, None], obs[:, None, :]]  # (P_g, d_m, d_o)
        _add_at(second, np.broadcast_to(pos_mo, mo.shape), mo)
        im, jm = triu(d_m)  # each unordered pair of missing coordinates once
        pos_mm = table[mis[:, im], mis[:, jm]]  # (P_g, T_m)
        values = mm[..., im, jm]  # (M, P_g, T_m)
        _add_at(second, np.broadcast_to(pos_mm, values.shape), values)
    out.counts += total[:, -1].reshape(r, k)
    out.sum_x += sum_x.reshape(r, k, d)
    if out.scatter is not None:
        out.scatter += second.reshape(r, k, -1)


def _add_at(target: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """target[m, positions[m, ...]] += values[m, ...] for every m (repeated positions add up),
    as one bincount."""
    m, width = target.shape
    flat = (np.arange(m).reshape((m,) + (1,) * (positions.ndim - 1)) * width + positions).ravel()
    target += np.bincount(flat, weights=values.ravel(), minlength=m * width).reshape(m, width)


def _each_pattern(
    miss: Missingness, conditionals: list[_GroupFactors | None]
) -> Iterator[tuple[Pattern, _GroupFactors, int]]:
    """Every incomplete pattern with its group's conditionals and its place in the group."""
    for group, cond in zip(miss.groups, conditionals, strict=True):
        if cond is None:
            continue
        for i, j in enumerate(group.idx):
            yield miss.patterns[j], cond, i


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
    center = means.mean(axis=0)
    resp = np.empty((X.shape[0], k))
    missing_pass(
        miss, weights[None], means[None], covs[None], np.linalg.cholesky(covs)[None], False,
        center, resp_out=resp,
    )  # fmt: skip
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    _, conditionals = _factors(miss, log_w, means, covs, center, "full", with_stats=True)
    out = np.array(X, dtype=np.float64, copy=True)
    if draws is not None:
        out = np.repeat(out[None], draws, axis=0)
    for pat, cond, i in _each_pattern(miss, conditionals):
        u = pat.x_obs - center[pat.obs]  # (n_p, d_o)
        # E[x_m | x_o, z = k] for each k: (K, n_p, d_m)
        xm = u @ np.swapaxes(cond.regress[:, i], 1, 2) + cond.shift[:, i, None, :]
        xm += center[pat.mis]
        g = resp[pat.rows].T  # (K, n_p)
        if draws is None or gen is None:
            out[np.ix_(pat.rows, pat.mis)] = np.einsum("kn,knd->nd", g, xm)
            continue
        cum = np.cumsum(g, axis=0)
        u_draw = gen.random((draws, pat.rows.size)) * cum[-1]
        z = np.minimum((cum[None, :, :] <= u_draw[:, None, :]).sum(axis=1), k - 1)
        chol = np.linalg.cholesky(cond.cond_cov[:, i])  # (K, d_m, d_m)
        eps = gen.standard_normal((draws, pat.rows.size, pat.mis.size))
        cols = np.arange(pat.rows.size)
        noise = np.einsum("snij,snj->sni", chol[z], eps)
        out[(slice(None), *np.ix_(pat.rows, pat.mis))] = xm[z, cols[None, :]] + noise
    return out


def impute_draws(
    miss: Missingness,
    weights: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    gen: np.random.Generator,
) -> np.ndarray:
    """One imputation of every missing cell under each of S mixtures (weights (S, K), means
    (S, K, D), covariances (S, K, D, D): the draws of a posterior): z from p(z | x_o, θ_s), then
    x_m from N(x̂_m,z, C_z). Returns (S, n_missing), the cells in row-major order of the data
    (``np.nonzero(~miss.observed)``)."""
    s, k, d = means.shape
    m = s * k
    center = means.reshape(m, d).mean(axis=0)
    resp = np.empty((miss.observed.shape[0], m))
    missing_pass(
        miss, weights, means, covs, np.linalg.cholesky(covs), False, center, resp_out=resp
    )  # resp in component-major order (k·S + s)
    with np.errstate(divide="ignore"):
        log_w = np.log(weights).reshape(m)
    _, conditionals = _factors(
        miss, log_w, means.reshape(m, d), covs.reshape(m, d, d), center, "full", with_stats=True
    )
    out = np.full((s,) + miss.observed.shape, np.nan)
    for pat, cond, i in _each_pattern(miss, conditionals):
        n_p, d_m = pat.rows.size, pat.mis.size
        u = pat.x_obs - center[pat.obs]  # (n_p, d_o)
        regress = cond.regress[:, i].reshape(s, k, d_m, -1)
        xm = np.einsum("skmo,no->sknm", regress, u) + cond.shift[:, i].reshape(s, k, 1, d_m)
        xm += center[pat.mis]  # (S, K, n_p, d_m)
        g = resp[pat.rows].reshape(n_p, k, s).transpose(2, 1, 0)  # (S, K, n_p)
        cum = np.cumsum(g, axis=1)
        u_draw = gen.random((s, n_p)) * cum[:, -1]
        z = np.minimum((cum <= u_draw[:, None, :]).sum(axis=1), k - 1)  # (S, n_p)
        chol = np.linalg.cholesky(cond.cond_cov[:, i]).reshape(s, k, d_m, d_m)
        pick_s = np.arange(s)[:, None]
        eps = gen.standard_normal((s, n_p, d_m))
        mean = xm[pick_s, z, np.arange(n_p)[None, :]]  # (S, n_p, d_m)
        noise = np.einsum("snij,snj->sni", chol[pick_s, z], eps)
        out[:, pat.rows[:, None], pat.mis[None, :]] = mean + noise
    return out[:, ~miss.observed]


def expected_rows(
    miss: Missingness,
    X: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted points per component whose first and second moments are the E-step's
    expected ones under one mixture (weights (K,), means (K, D), covariances (K, D, D)): for
    a complete row, the row with weight γ_nk; for a row with d_m missing values, the 2 d_m
    points x̂_k ± √d_m c_k,j (c_k,j the columns of a square root of C_k on the missing block,
    x_o elsewhere), each with weight γ_nk / (2 d_m). Their weighted Σ x and Σ x xᵀ are
    Σ γ x̂ and Σ γ (x̂ x̂ᵀ + C): by Fisher's identity, a complete-data gradient (linear in
    those moments) evaluated on them is the gradient of the observed-data log-likelihood.
    Returns (weights (K, N'), points (K, N', D))."""
    k, d = means.shape
    center = means.mean(axis=0)
    resp = np.empty((X.shape[0], k))
    missing_pass(
        miss, weights[None], means[None], covs[None], np.linalg.cholesky(covs)[None], False,
        center, resp_out=resp, labels=labels,
    )  # fmt: skip
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    _, conditionals = _factors(miss, log_w, means, covs, center, "full", with_stats=True)
    gammas = [resp[miss.complete].T]
    points = [np.broadcast_to(miss.x_complete, (k,) + miss.x_complete.shape)]
    for pat, cond, i in _each_pattern(miss, conditionals):
        n_p, d_m = pat.rows.size, pat.mis.size
        xhat = np.empty((k, n_p, d))
        xhat[:, :, pat.obs] = pat.x_obs
        u = pat.x_obs - center[pat.obs]
        xhat[:, :, pat.mis] = (
            u @ np.swapaxes(cond.regress[:, i], 1, 2) + cond.shift[:, i, None, :]
        ) + center[pat.mis]
        root = np.sqrt(d_m) * np.linalg.cholesky(cond.cond_cov[:, i])  # (K, d_m, d_m)
        offsets = np.zeros((k, 2 * d_m, d))
        offsets[:, :d_m, pat.mis] = np.swapaxes(root, 1, 2)  # rows: the columns c_j
        offsets[:, d_m:, pat.mis] = -np.swapaxes(root, 1, 2)
        pts = xhat[:, :, None, :] + offsets[:, None, :, :]  # (K, n_p, 2 d_m, D)
        points.append(pts.reshape(k, -1, d))
        g = resp[pat.rows].T / (2 * d_m)  # (K, n_p)
        gammas.append(np.repeat(g, 2 * d_m, axis=1))
    return np.concatenate(gammas, axis=1), np.concatenate(points, axis=1)
