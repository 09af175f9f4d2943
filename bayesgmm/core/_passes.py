"""One pass over the rows: log p(x_n, z_n = k), log-sum-exp and the EM sufficient statistics.

This is the hot path of EM. It never allocates an (N, K, D) or (N, K, D, D) temporary: rows are
processed in chunks whose temporaries are bounded (a few MB), each chunk does its work for all K
components as one matrix product, and chunks run on a small thread pool (numpy and BLAS release
the GIL). Chunk boundaries do not depend on the number of threads and partial sums are added in
chunk order, so results are identical whatever the thread count.

Densities use Cholesky factors only: with Σ_k = L_k L_kᵀ and U_k = L_k⁻ᵀ (upper triangular),

    (x − μ_k)ᵀ Σ_k⁻¹ (x − μ_k) = ‖(x − μ_k) U_k‖²,      log|Σ_k| = 2 Σ_i log (L_k)_ii.

Stacking U = [U_1 … U_K] (D, K·D) turns the K Mahalanobis distances of a chunk into one GEMM.
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
from scipy.linalg.lapack import dtrtri

__all__ = ["DensityParams", "PassStats", "density_params", "run_pass"]

_LOG_2PI = float(np.log(2.0 * np.pi))
#: Bytes allowed for the largest temporary of one chunk.
_CHUNK_BYTES = 4 * 2**20
#: Below this many rows a pass runs in the calling thread.
_PARALLEL_MIN_ROWS = 20_000

_executor: ThreadPoolExecutor | None = None


@functools.cache
def _n_threads() -> int:
    env = os.environ.get("BAYESGMM_NUM_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_n_threads(), thread_name_prefix="bayesgmm")
    return _executor


@dataclass(frozen=True)
class DensityParams:
    """Everything one pass needs about a mixture, in coordinates shifted by ``center``.

    Attributes
    ----------
    kind : {"full", "diag"}
        "diag" when every covariance is diagonal (the cheaper expansion is then used).
    center : ndarray (D,)
    means : ndarray (K, D)
        Means minus ``center``.
    const : ndarray (K,)
        log π_k − D/2 log 2π − 1/2 log|Σ_k|.
    prec_stack : ndarray (D, K·D) for "full"
        [U_1 … U_K] with U_k = L_k⁻ᵀ.
    shift : ndarray (K·D,) for "full"
        [μ_1 U_1 … μ_K U_K].
    inv_var : ndarray (K, D) for "diag"
        1 / σ²_kj.
    """

    kind: Literal["full", "diag"]
    center: np.ndarray
    means: np.ndarray
    const: np.ndarray
    prec_stack: np.ndarray | None = None
    shift: np.ndarray | None = None
    inv_var: np.ndarray | None = None
    mean_term: np.ndarray | None = None  # (K,) Σ_j μ_kj² / σ²_kj for "diag"


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
    log_weights : (K,)
    means : (K, D)
    chol : (K, D, D) lower Cholesky factors of the covariances
    diagonal : bool
        True when every covariance is diagonal.
    center : (D,) reference point subtracted from the rows and the means
    """
    k, d = means.shape
    diag_l = np.diagonal(chol, axis1=1, axis2=2)
    const = log_weights - np.log(diag_l).sum(axis=1) - 0.5 * d * _LOG_2PI
    mc = means - center
    if diagonal:
        inv_var = 1.0 / diag_l**2
        return DensityParams(
            kind="diag",
            center=center,
            means=mc,
            const=const,
            inv_var=inv_var,
            mean_term=(mc**2 * inv_var).sum(axis=1),
        )
    prec = np.empty((d, k * d))
    for j in range(k):
        # U_j = L_j^{-T}: LAPACK's triangular inverse of the factor, never an inverse of Σ.
        inv, info = dtrtri(chol[j], lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"Cholesky factor {j} is singular")
        prec[:, j * d : (j + 1) * d] = inv.T
    shift = (mc[:, :, None] * prec.reshape(d, k, d).transpose(1, 0, 2)).sum(axis=1).reshape(k * d)
    return DensityParams(
        kind="full", center=center, means=mc, const=const, prec_stack=prec, shift=shift
    )


def chunk_log_joint(xc: np.ndarray, p: DensityParams, sq: np.ndarray | None = None) -> np.ndarray:
    """log p(x_n, z_n = k) for a chunk of shifted rows ``xc`` (c, D) → (c, K)."""
    k = p.const.shape[0]
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
        maha = y.reshape(xc.shape[0], k, -1).sum(axis=2)
    maha *= -0.5
    maha += p.const
    return maha


def _log_normalise(log_joint: np.ndarray) -> np.ndarray:
    """In place: turn log p(x_n, z_n = k) into p(z_n = k | x_n); return log p(x_n) (c,)."""
    top = log_joint.max(axis=1)
    log_joint -= top[:, None]
    np.exp(log_joint, out=log_joint)
    total = log_joint.sum(axis=1)
    log_joint /= total[:, None]
    return top + np.log(total)


@dataclass
class PassStats:
    """Sums over observations from one pass (all in ``center``-shifted coordinates).

    Attributes
    ----------
    loglik : float
        Σ_n w_n log p(x_n).
    counts : (K,)
        n_k = Σ_n w_n γ_nk.
    sum_x : (K, D)
        Σ_n w_n γ_nk (x_n − c).
    scatter : (K, D, D) or (K, D)
        "full": Σ_n w_n γ_nk (x_n − μ_k)(x_n − μ_k)ᵀ about the pass's own means μ_k;
        "diag": Σ_n w_n γ_nk (x_n − c)² (raw second moments, elementwise).
    """

    loglik: float
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


def _chunk_rows(n: int, k: int, d: int) -> int:
    per_row = 8 * max(k * d, k + d, 1)
    return min(max(_CHUNK_BYTES // per_row, 256), 65_536)


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
    xc = X[lo:hi] - p.center
    sq = xc * xc if p.kind == "diag" or stats == "diag" else None
    resp = chunk_log_joint(xc, p, sq)
    logp = _log_normalise(resp)
    if logp_out is not None:
        logp_out[lo:hi] = logp
    if resp_out is not None:
        resp_out[lo:hi] = resp
    if w is not None:
        wc = w[lo:hi]
        loglik = float(wc @ logp)
        resp *= wc[:, None]
    else:
        loglik = float(logp.sum())
    k, d = p.means.shape
    if stats == "none":
        return PassStats(loglik, np.zeros(k), np.zeros((k, d)), None)
    counts = resp.sum(axis=0)
    sum_x = resp.T @ xc
    if stats == "diag":
        scatter = resp.T @ sq
    else:
        # (K, c, D) deviations of the chunk from each component's mean: bounded by the chunk size.
        dev = xc[None, :, :] - p.means[:, None, :]
        scatter = np.matmul((dev * resp.T[:, :, None]).transpose(0, 2, 1), dev)
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
    """One pass over all rows of ``X`` (N, D).

    Computes Σ_n w_n log p(x_n) and, when ``stats`` is "full" or "diag", the sufficient statistics
    of the M-step (see :class:`PassStats`). Writes p(z_n = k | x_n) into ``resp_out`` (N, K) and
    log p(x_n) into ``logp_out`` (N,) when given. Memory: O(chunk) beyond the outputs.
    """
    n = X.shape[0]
    k, d = p.means.shape
    step = _chunk_rows(n, k, d)
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    args = (p, sample_weight, stats, resp_out, logp_out)
    if n < _PARALLEL_MIN_ROWS or len(bounds) == 1 or _n_threads() == 1:
        parts = [_one_chunk(X, lo, hi, *args) for lo, hi in bounds]
    else:
        parts = list(_pool().map(lambda b: _one_chunk(X, b[0], b[1], *args), bounds))
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total
