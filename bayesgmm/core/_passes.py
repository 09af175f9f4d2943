"""One pass over the rows: log p(x_n, z_n = k), log-sum-exp and the EM sufficient statistics.

This is the hot path of EM. A pass evaluates a *batch* of R mixtures of K components at once (the
R starts of a multi-start fit), so that the fixed cost of each numpy call is paid once per batch
rather than once per start. It never allocates an (N, K, D) or (N, K, D, D) temporary: rows are
processed in chunks whose temporaries are bounded (a few MB), each chunk does its work for all
R·K components as one matrix product, and chunks run on a small thread pool (numpy and BLAS release
the GIL). Chunk boundaries do not depend on the number of threads and partial sums are added in
chunk order, so results are identical whatever the thread count.

Densities use Cholesky factors only: with Σ_k = L_k L_kᵀ and U_k = L_k⁻ᵀ (upper triangular),

    (x − μ_k)ᵀ Σ_k⁻¹ (x − μ_k) = ‖(x − μ_k) U_k‖²,      log|Σ_k| = 2 Σ_i log (L_k)_ii.

Stacking U = [U_1 … U_M] (D, M·D) turns the M Mahalanobis distances of a chunk into one GEMM.
All arithmetic is on rows shifted by a reference point (``center``) so that large offsets do not
eat the digits of small spreads.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["DensityParams", "PassStats", "density_params", "run_pass", "triu"]

_LOG_2PI = float(np.log(2.0 * np.pi))
#: Bytes allowed for the largest temporary of one chunk.
_CHUNK_BYTES = 4 * 2**20
#: Below this many rows a pass runs in the calling thread.
_PARALLEL_MIN_ROWS = 20_000

_executor: ThreadPoolExecutor | None = None


@functools.cache
def n_threads() -> int:
    """Threads used by a pass: ``BAYESGMM_NUM_THREADS`` or the number of cores (at most 8)."""
    env = os.environ.get("BAYESGMM_NUM_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


@functools.cache
def triu(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle of a D × D matrix (cached)."""
    iu, ju = np.triu_indices(d)
    iu.flags.writeable = False
    ju.flags.writeable = False
    return iu, ju


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=n_threads(), thread_name_prefix="bayesgmm")
    return _executor


@dataclass(frozen=True)
class DensityParams:
    """Everything one pass needs about a batch of R mixtures of K components (M = R·K).

    All positions are shifted by ``center``.

    Attributes
    ----------
    kind : {"full", "diag"}
        "diag" when every covariance is diagonal (the cheaper expansion is then used).
    n_batch, n_components : int
        R and K.
    center : ndarray (D,)
    means : ndarray (M, D)
        Means minus ``center``, component-major: row k·R + r is component k of mixture r.
    const : ndarray (M,)
        log π_k − D/2 log 2π − 1/2 log|Σ_k|.
    prec_stack : ndarray (D, D·M), "full" only
        Column j·M + m holds the j-th column of U_m = L_m⁻ᵀ.
    shift : ndarray (D·M,), "full" only
        The matching entries of μ_m U_m.
    inv_var : ndarray (M, D), "diag" only
        1 / σ²_kj.
    mean_term : ndarray (M,), "diag" only
        Σ_j μ_kj² / σ²_kj.
    """

    kind: Literal["full", "diag"]
    n_batch: int
    n_components: int
    center: np.ndarray
    means: np.ndarray
    const: np.ndarray
    prec_stack: np.ndarray | None = None
    shift: np.ndarray | None = None
    inv_var: np.ndarray | None = None
    mean_term: np.ndarray | None = None


def density_params(
    log_weights: np.ndarray,
    means: np.ndarray,
    chol: np.ndarray,
    diagonal: bool,
    center: np.ndarray,
) -> DensityParams:
    """Precompute the per-component quantities of a pass from Cholesky factors.

    Parameters
    ----------
    log_weights : (R, K) or (K,)
    means : (R, K, D) or (K, D)
    chol : (R, K, D, D) or (K, D, D)
        Lower Cholesky factors of the covariances.
    diagonal : bool
        True when every covariance is diagonal.
    center : (D,)
        Reference point subtracted from the rows and the means.
    """
    r, k = (1, log_weights.shape[0]) if log_weights.ndim == 1 else log_weights.shape
    d = means.shape[-1]
    m = r * k
    # Component-major order (index k·R + r): reductions over the K components of each mixture
    # then run over a middle axis with the R mixtures contiguous, which numpy does quickly.
    means = np.swapaxes(means.reshape(r, k, d), 0, 1).reshape(m, d)
    chol = np.swapaxes(chol.reshape(r, k, d, d), 0, 1).reshape(m, d, d)
    log_w = log_weights.reshape(r, k).T.reshape(m)
    diag_l = np.diagonal(chol, axis1=1, axis2=2)
    const = log_w - np.log(diag_l).sum(axis=1) - 0.5 * d * _LOG_2PI
    mc = means - center
    if diagonal:
        inv_var = 1.0 / (diag_l * diag_l)
        return DensityParams(
            "diag", r, k, center, mc, const, inv_var=inv_var, mean_term=(mc * mc * inv_var).sum(1)
        )
    # U_m = L_m^{-T}: the inverse of the triangular factor (never of Σ), lower triangular by
    # construction, so rounding above the diagonal is cleared.
    u = np.swapaxes(np.tril(np.linalg.inv(chol)), 1, 2)  # (M, D, D), upper
    prec = u.transpose(1, 2, 0).reshape(d, d * m)  # column j·M + m holds U_m[:, j]
    shift = (mc[:, :, None] * u).sum(axis=1).T.reshape(d * m)
    return DensityParams("full", r, k, center, mc, const, prec_stack=prec, shift=shift)


def chunk_log_joint(xc: np.ndarray, p: DensityParams, sq: np.ndarray | None = None) -> np.ndarray:
    """log p(x_n, z_n = k) for a chunk of shifted rows ``xc`` (c, D) → (c, M)."""
    if p.kind == "diag":
        if sq is None:
            sq = xc * xc
        maha = sq @ p.inv_var.T
        maha -= 2.0 * (xc @ (p.means * p.inv_var).T)
        maha += p.mean_term
        np.maximum(maha, 0.0, out=maha)  # the expansion can round a tiny distance below 0
    else:
        y = xc @ p.prec_stack
        y -= p.shift
        np.multiply(y, y, out=y)
        maha = y.reshape(xc.shape[0], -1, p.const.shape[0]).sum(axis=1)
    maha *= -0.5
    maha += p.const
    return maha


def _log_normalise(log_joint: np.ndarray, r: int, k: int) -> np.ndarray:
    """In place: turn log p(x_n, z_n = k) (c, K·R, component-major) into p(z_n = k | x_n)
    within each of the R mixtures; return log p(x_n), shape (c, R)."""
    lj = log_joint.reshape(-1, k, r)
    top = lj.max(axis=1)
    lj -= top[:, None, :]
    np.exp(lj, out=lj)
    total = lj.sum(axis=1)
    lj /= total[:, None, :]
    return top + np.log(total)


@dataclass
class PassStats:
    """Sums over observations from one pass, per mixture of the batch (shifted coordinates).

    Attributes
    ----------
    loglik : (R,)
        Σ_n w_n log p(x_n).
    counts : (R, K)
        n_k = Σ_n w_n γ_nk.
    sum_x : (R, K, D)
        Σ_n w_n γ_nk (x_n − c).
    scatter : (R, K, D(D+1)/2) or (R, K, D), or None
        Raw second moments about the center c: "full": the upper triangle (row-major, as
        ``numpy.triu_indices``) of Σ_n w_n γ_nk (x_n − c)(x_n − c)ᵀ; "diag": its diagonal.
    """

    loglik: np.ndarray
    counts: np.ndarray
    sum_x: np.ndarray
    scatter: np.ndarray | None

    def __iadd__(self, other: PassStats) -> PassStats:
        self.loglik += other.loglik
        self.counts += other.counts
        self.sum_x += other.sum_x
        if self.scatter is not None and other.scatter is not None:
            self.scatter += other.scatter
        return self


def _chunk_rows(m: int, d: int, stats: str) -> int:
    per_row = 8 * max(m * d, m + d, d * (d + 1) // 2, 1)
    return min(max(_CHUNK_BYTES // per_row, 64), 65_536)


def _one_chunk(
    X: np.ndarray,
    lo: int,
    hi: int,
    p: DensityParams,
    w: np.ndarray | None,
    stats: Literal["none", "full", "diag"],
    resp_out: np.ndarray | None,
    logp_out: np.ndarray | None,
) -> PassStats:
    r, k = p.n_batch, p.n_components
    d = p.means.shape[1]
    xc = X[lo:hi] - p.center
    sq = xc * xc if p.kind == "diag" or stats == "diag" else None
    resp = chunk_log_joint(xc, p, sq)
    logp = _log_normalise(resp, r, k)
    if logp_out is not None:
        logp_out[lo:hi] = logp
    if resp_out is not None:
        resp_out[lo:hi] = resp
    if w is not None:
        wc = w[lo:hi]
        loglik = wc @ logp
        resp *= wc[:, None]
    else:
        loglik = logp.sum(axis=0)
    if stats == "none":
        return PassStats(loglik, np.zeros((r, k)), np.zeros((r, k, d)), None)
    counts = resp.sum(axis=0).reshape(k, r).T
    sum_x = (resp.T @ xc).reshape(k, r, d).swapaxes(0, 1)
    if stats == "diag":
        scatter = (resp.T @ sq).reshape(k, r, d).swapaxes(0, 1)
    else:
        # Raw second moments about the center, upper triangle packed: one GEMM for all
        # components, with a (c, D(D+1)/2) temporary.
        iu, ju = triu(d)
        scatter = (resp.T @ (xc[:, iu] * xc[:, ju])).reshape(k, r, iu.shape[0]).swapaxes(0, 1)
    return PassStats(loglik, counts, sum_x, scatter)


def run_pass(
    X: np.ndarray,
    p: DensityParams,
    *,
    sample_weight: np.ndarray | None = None,
    stats: Literal["none", "full", "diag"] = "none",
    resp_out: np.ndarray | None = None,
    logp_out: np.ndarray | None = None,
) -> PassStats:
    """One pass over all rows of ``X`` (N, D) for a batch of R mixtures.

    Computes Σ_n w_n log p(x_n) for each mixture and, when ``stats`` is "full" or "diag", the
    sufficient statistics of the M-step (see :class:`PassStats`). Writes p(z_n = k | x_n) into
    ``resp_out`` (N, K·R, component-major) and log p(x_n) into ``logp_out`` (N, R) when given.
    Memory: O(chunk)
    beyond the outputs.
    """
    n = X.shape[0]
    m, d = p.means.shape
    step = _chunk_rows(m, d, stats)
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    args = (p, sample_weight, stats, resp_out, logp_out)
    if n < _PARALLEL_MIN_ROWS or len(bounds) == 1 or n_threads() == 1:
        parts = [_one_chunk(X, lo, hi, *args) for lo, hi in bounds]
    else:
        parts = list(_pool().map(lambda b: _one_chunk(X, b[0], b[1], *args), bounds))
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total
