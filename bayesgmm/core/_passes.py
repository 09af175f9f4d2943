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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "DensityParams",
    "PassStats",
    "density_params",
    "features",
    "run_pass",
    "run_pass_stacked",
    "stacked_features",
    "triu",
]

_LOG_2PI = float(np.log(2.0 * np.pi))
_LOG_FLOOR = -60.0
_EXP_FLOOR = float(np.exp(_LOG_FLOOR))
#: Bytes allowed for the largest temporary of one chunk.
_CHUNK_BYTES = 4 * 2**20  # measured: 2-8 MB is fastest on two cores
#: Below this many rows a pass runs in the calling thread.
_PARALLEL_MIN_ROWS = 4_096
#: Passes over more rows than this are cut into at least 8 chunks (whatever the thread count,
#: so that results do not depend on it), so that mid-sized data use every core.
_MIN_CHUNK_ROWS = 2_048

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


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def serial_blas() -> Any:
    """A context within which BLAS runs on one thread: inside our own threads (two levels of
    threads would fight over the same cores), and around a grid of the compiled loop's calls,
    whose threads otherwise share the cores with OpenBLAS's idle workers, which spin for a
    while after each multithreaded product the calling thread makes between the loop's calls
    (select_em on a 145 × 3 data set: 0.45 → 0.37 s, and 0.71 → 0.54 s of CPU)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def shutdown_pool() -> None:
    """Stop the pass threads (they restart on demand): a process must not fork while they run."""
    global _executor
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=n_threads(), thread_name_prefix="bayesgmm")
    return _executor


@dataclass(frozen=True)
class DensityParams:
    """Everything one pass needs about a batch of R mixtures of K components (M = R·K).

    Components are in component-major order: row k·R + r is component k of mixture r.

    Attributes
    ----------
    kind : {"full", "diag", "direct"}
        Which features a chunk needs (see :func:`features`): "diag" when every covariance is
        diagonal (or D = 1); "direct" for full covariances when the D(D+1)/2 quadratic features
        would outweigh working with D·M whitened coordinates (large D, few components).
    n_batch, n_components : int
        R and K.
    center : ndarray (D,)
        Reference point subtracted from every row.
    means : ndarray (M, D)
        Means minus ``center``.
    coef : ndarray (M, F), or (M, 1) for "direct"
        log p(x, z = m) = coef[m] · f(x) for the feature vector f(x) of :func:`features`:
        the quadratic form −½ (x − μ_m)ᵀ Σ_m⁻¹ (x − μ_m) expanded, plus log π_m − D/2 log 2π
        − ½ log|Σ_m| on the constant feature. For "direct", just that constant.
    prec_aug : ndarray (D·M, D + 1), "direct" only
        √½ [L_m⁻¹ | −L_m⁻¹ μ_m], row j·M + m holding row j of component m.
    """

    kind: Literal["full", "diag", "direct"]
    n_batch: int
    n_components: int
    center: np.ndarray
    means: np.ndarray
    coef: np.ndarray
    prec_aug: np.ndarray | None = None


def density_params(
    log_weights: np.ndarray,
    means: np.ndarray,
    chol: np.ndarray,
    diagonal: bool,
    center: np.ndarray,
    allow_direct: bool = True,
) -> DensityParams:
    """Precompute the per-component coefficients of a pass from Cholesky factors.

    Σ_m⁻¹ = U_m U_mᵀ with U_m = L_m⁻ᵀ, the inverse of the triangular Cholesky factor (never an
    inverse of Σ itself); log|Σ_m| = 2 Σ_i log (L_m)_ii.

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
    allow_direct : bool, default True
        False keeps the quadratic features ("full") where "direct" would be faster: what
        :func:`run_pass_stacked` needs.
    """
    r, k = (1, log_weights.shape[0]) if log_weights.ndim == 1 else log_weights.shape
    d = means.shape[-1]
    m = r * k
    # Component-major order: reductions over the K components of each mixture then run over
    # the leading axis, with observations contiguous.
    means = np.swapaxes(means.reshape(r, k, d), 0, 1).reshape(m, d)
    chol = np.swapaxes(chol.reshape(r, k, d, d), 0, 1).reshape(m, d, d)
    log_w = log_weights.reshape(r, k).T.reshape(m)
    diag_l = np.diagonal(chol, axis1=1, axis2=2)
    const = log_w - np.log(diag_l).sum(axis=1) - 0.5 * d * _LOG_2PI
    mc = means - center
    if diagonal or d == 1:
        prec_diag = 1.0 / (diag_l * diag_l)
        quad = prec_diag
        lin = prec_diag * mc
        kind: Literal["full", "diag"] = "diag"
    else:
        u = np.tril(np.linalg.inv(chol))  # L⁻¹, lower triangular by construction
        if allow_direct and _use_direct(m, d):
            # √½ [L⁻¹ | −L⁻¹μ] stacked: applied to [x; 1] it gives √½ L⁻¹(x − μ), whose squared
            # norm is half the Mahalanobis distance. Row j·M + m is row j of component m.
            aug = np.concatenate([u, -(u @ mc[:, :, None])], axis=2)  # (M, D, D + 1)
            aug = np.sqrt(0.5) * aug.transpose(1, 0, 2).reshape(d * m, d + 1)
            return DensityParams("direct", r, k, center, mc, const[:, None], aug)
        prec = np.swapaxes(u, 1, 2) @ u  # Σ⁻¹ = L⁻ᵀ L⁻¹, symmetric positive definite
        iu, ju = triu(d)
        quad = prec[:, iu, ju] * np.where(iu == ju, 1.0, 2.0)  # packed, off-diagonals twice
        lin = (prec @ mc[:, :, None])[:, :, 0]
        kind = "full"
    offset = (lin * mc).sum(axis=1)
    with np.errstate(invalid="ignore"):  # −inf weights (padding) times 0 stay −inf below
        coef = np.concatenate([-0.5 * quad, lin, (const - 0.5 * offset)[:, None]], axis=1)
    return DensityParams(kind, r, k, center, mc, coef)


def mixture_density(
    weights: np.ndarray,
    means: np.ndarray,
    chol: np.ndarray,
    diagonal: bool,
    center: np.ndarray,
    allow_direct: bool = True,
) -> DensityParams:
    """:func:`density_params` from weights (zero weights, such as padding, give log 0 = −inf)."""
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    return density_params(log_w, means, chol, diagonal, center, allow_direct)


def _use_direct(m: int, d: int) -> bool:
    """Whether full covariances are better evaluated as whitened coordinates L⁻¹(x − μ) (cost
    ~D² M per row, no large temporary) than as D(D+1)/2 quadratic features (memory-bound when
    that count dwarfs the D·M outputs)."""
    # Measured (N = 1e5, alternating runs), numpy's pass: direct wins at (D, M) = (10, 3),
    # (15, 3), (50, 10), features at (10, 10); (20, 10) and (30, 10) tie. The compiled chunk
    # (features in cache) moves the balance: features win at (10, 3) 3.3 against 11.8 ms,
    # (20, 3), (30, 5), (50, 10) 139 against 173; (30, 3), (50, 7), (100, 15) tie; direct
    # wins at (50, 3) 57 against 84, (50, 5), (100, 10): about where D(D+1)/2 > 4 D·M.
    from bayesgmm.core import _compiled

    return d * (d + 1) // 2 > (4 if _compiled.ready(stage="pass") else 1) * m * d


def features(rows: np.ndarray, center: np.ndarray, kind: str) -> np.ndarray:
    """The feature matrix of a chunk, (F, c) with observations contiguous:

    * "full": the upper triangle (row-major, as ``numpy.triu_indices``) of (x − c)(x − c)ᵀ,
      then x − c, then 1 — F = D(D+1)/2 + D + 1;
    * "diag": (x − c)², then x − c, then 1 — F = 2D + 1;
    * "direct": x − c, then 1 — F = D + 1.

    Both log p(x, z = m) (``coef @ features``) and the M-step's sums (``resp @ featuresᵀ``)
    are then one matrix product each.
    """
    c, d = rows.shape
    t = {"full": d * (d + 1) // 2, "diag": d, "direct": 0}[kind]
    out = np.empty((t + d + 1, c))
    xt = out[t : t + d]
    np.subtract(rows.T, center[:, None], out=xt)
    if kind == "full":
        start = 0
        for i in range(d):
            np.multiply(xt[i], xt[i:], out=out[start : start + d - i])
            start += d - i
    elif kind == "diag":
        np.multiply(xt, xt, out=out[:d])
    out[-1] = 1.0
    return out


def chunk_log_joint(feats: np.ndarray, p: DensityParams) -> np.ndarray:
    """log p(x_n, z_n = m) for a chunk, from its :func:`features` (F, c); returns (M, c)."""
    if p.kind != "direct" or p.prec_aug is None:
        # A padded component's constant is log 0 = −inf: BLAS may multiply it by the zeros
        # of its own padding and raise the invalid flag for lanes it then drops (the result is
        # −inf, as it should be). Said here, in the thread that runs the chunk: np.errstate
        # does not reach the pass's threads from the caller's.
        with np.errstate(invalid="ignore"):
            return p.coef @ feats
    y = p.prec_aug @ feats  # (D·M, c): whitened coordinates, scaled by √½
    np.multiply(y, y, out=y)
    half_maha = y.reshape(-1, p.coef.shape[0], feats.shape[1]).sum(axis=0)
    return np.subtract(p.coef, half_maha, out=half_maha)


def fix_labels(log_joint: np.ndarray, labels: np.ndarray, r: int, k: int) -> None:
    """In place: where a row's component is known (``labels`` ≥ 0), log p(x_n, z_n = k) of the
    other components becomes −inf, so that normalising gives that row a one-hot
    responsibility and log p(x_n, z_n) (the joint) in place of log p(x_n)."""
    known = labels >= 0
    if not known.any():
        return
    other = known[None, :] & (labels[None, :] != np.arange(k)[:, None])  # (K, c)
    np.copyto(log_joint.reshape(k, r, -1), -np.inf, where=other[:, None, :])


def _log_normalise(log_joint: np.ndarray, r: int, k: int) -> np.ndarray:
    """In place: turn log p(x_n, z_n = k) (K·R, c), component-major, into p(z_n = k | x_n)
    within each of the R mixtures; return log p(x_n), shape (R, c)."""
    lj = log_joint.reshape(k, r, -1)
    top = lj.max(axis=0)
    lj -= top
    # exp of a large negative number takes libm's slow underflow path and is several times
    # dearer than the rest of the pass. Terms more than 60 nats below the row's largest
    # (under 1e-26 of the sum) are clamped there before exp, then set to exactly 0.
    np.maximum(lj, _LOG_FLOOR, out=lj)
    np.exp(lj, out=lj)
    # Multiplying by the mask is about five times cheaper than a masked copy (copyto where=).
    lj *= lj > _EXP_FLOOR
    total = lj.sum(axis=0)
    lj *= 1.0 / total
    np.log(total, out=total)
    total += top
    return total


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

    def take(self, idx: np.ndarray, diagonal: bool = False) -> PassStats:
        """The statistics of mixtures ``idx``; with ``diagonal``, full (packed) second moments
        are cut down to their diagonals, as a diagonal structure's M-step reads them."""
        scatter = None if self.scatter is None else self.scatter[idx]
        if diagonal and scatter is not None:
            d = self.sum_x.shape[-1]
            iu, ju = triu(d)
            scatter = scatter[..., np.flatnonzero(iu == ju)]
        return PassStats(self.loglik[idx], self.counts[idx], self.sum_x[idx], scatter)

    def __iadd__(self, other: PassStats) -> PassStats:
        self.loglik += other.loglik
        self.counts += other.counts
        self.sum_x += other.sum_x
        if self.scatter is not None and other.scatter is not None:
            self.scatter += other.scatter
        return self


def _chunk_rows(n: int, m: int, n_features: int) -> int:
    per_row = 8 * max(m, n_features, 1)
    rows = min(max(_CHUNK_BYTES // per_row, 256), 65_536)
    return min(rows, max(_MIN_CHUNK_ROWS, -(-n // 8)))


def _n_features(kind: str, d: int, m: int) -> int:
    if kind == "direct":
        return d * m  # the whitened coordinates are the largest temporary
    return (d * (d + 1) // 2 if kind == "full" else d) + d + 1


def _compiled_ready(
    X: np.ndarray,
    p: DensityParams,
    resp_out: np.ndarray | None,
    logp_out: np.ndarray | None,
    labels: np.ndarray | None,
) -> bool:
    """Whether the pass may run through the compiled chunk (:func:`._compiled.pass_chunk`):
    statistics of quadratic features ("full" or "diag") on rows in C order, no labels, per-row
    outputs (if any) C-ordered float64, and the compiled functions loaded
    (:func:`._compiled.ready` starts their compilation in the background when they are not)."""
    if p.kind == "direct" or labels is not None:
        return False
    if X.dtype != np.float64 or not X.flags.c_contiguous:
        return False
    for out in (resp_out, logp_out):
        if out is not None and (out.dtype != np.float64 or not out.flags.c_contiguous):
            return False
    from bayesgmm.core import _compiled

    return _compiled.ready(stage="pass")


def _compiled_chunk(
    X: np.ndarray,
    rows: tuple[int, int],
    p: DensityParams,
    w: np.ndarray | None,
    sums: bool,
    resp_out: np.ndarray | None = None,
    logp_out: np.ndarray | None = None,
) -> PassStats:
    """:func:`_one_chunk` (``rows`` lo..hi) through the compiled chunk, for what
    :func:`_compiled_ready` allows. The same sums up to rounding (its exp is within 1 ulp of
    numpy's)."""
    from bayesgmm.core._compiled import pass_chunk

    lo, hi = rows
    r = p.n_batch
    m, f = p.coef.shape
    if w is None:
        w2 = np.empty((0, 0))
    else:
        w2 = np.ascontiguousarray(w.reshape(-1, X.shape[0]), dtype=np.float64)
    # Rows per block: the block's features (F × block) and log-joints (M × block) stay in
    # the core's cache (measured at 1e6 × 10, K = 10: 256 rows 53 ms a pass, 2048 rows 83).
    block = max(64, min(512, 2**17 // (8 * max(f, m))))
    out = np.zeros((m, f))
    loglik = np.zeros(r)
    none = np.empty((0, 0))
    pass_chunk(
        X, lo, hi, np.ascontiguousarray(p.center, dtype=np.float64),
        np.ascontiguousarray(p.coef), r, p.kind == "diag", w2, sums, block, out, loglik,
        none if resp_out is None else resp_out.reshape(X.shape[0], m),
        none if logp_out is None else logp_out.reshape(X.shape[0], r),
    )  # fmt: skip
    return _pass_stats(loglik, out if sums else None, p)


def _pass_stats(loglik: np.ndarray, sums: np.ndarray | None, p: DensityParams) -> PassStats:
    """A chunk's :class:`PassStats` from its per-component sums (M, F), component-major:
    [second moments | Σ γ (x − c) | Σ γ]; None: the log-likelihoods only."""
    r, k = p.n_batch, p.n_components
    d = p.means.shape[1]
    if sums is None:
        return PassStats(loglik, np.zeros((r, k)), np.zeros((r, k, d)), None)
    by_run = sums.reshape(k, r, -1).swapaxes(0, 1)
    t = by_run.shape[2] - d - 1
    return PassStats(loglik, by_run[:, :, -1], by_run[:, :, t : t + d], by_run[:, :, :t])


def _one_chunk(
    X: np.ndarray,
    lo: int,
    hi: int,
    p: DensityParams,
    w: np.ndarray | None,
    stats: Literal["none", "full", "diag"],
    resp_out: np.ndarray | None,
    logp_out: np.ndarray | None,
    labels: np.ndarray | None = None,
    compiled: bool = False,
) -> PassStats:
    if compiled:
        return _compiled_chunk(X, (lo, hi), p, w, stats != "none", resp_out, logp_out)
    r, k = p.n_batch, p.n_components
    d = p.means.shape[1]
    feats = features(X[lo:hi], p.center, p.kind)
    resp = chunk_log_joint(feats, p)  # (M, c)
    if labels is not None:
        fix_labels(resp, labels[lo:hi], r, k)
    logp = _log_normalise(resp, r, k)  # (R, c)
    if logp_out is not None:
        logp_out[lo:hi] = logp.T
    if resp_out is not None:
        resp_out[lo:hi] = resp.T
    if w is not None and w.ndim == 2:  # a weight vector per mixture (R, N)
        wc = w[:, lo:hi]
        loglik = np.einsum("rc,rc->r", logp, wc)
        resp.reshape(k, r, -1)[...] *= wc
    elif w is not None:
        wc = w[lo:hi]
        loglik = logp @ wc
        resp *= wc
    else:
        loglik = logp.sum(axis=1)
    if stats == "none":
        return _pass_stats(loglik, None, p)
    # [second moments | Σx | Σ1], (M, F). As (F × c)(c × M), BLAS's long inner dimension is
    # the one it handles well: about 30% faster than resp @ feats.T, the same sums.
    sums = (feats @ resp.T).T
    if p.kind == "direct":
        # Second moments one component at a time: M GEMMs of D × c × D, no D²-row temporary.
        iu, ju = triu(d)
        xt = feats[:d]
        second = np.empty((sums.shape[0], iu.shape[0]))
        for j in range(sums.shape[0]):
            second[j] = ((xt * resp[j]) @ xt.T)[iu, ju]
        sums = np.concatenate([second, sums], axis=1)
    return _pass_stats(loglik, sums, p)


#: Bytes of one block's (components × rows) temporaries when a pass over few rows is cut by
#: mixtures instead (many bootstrap replicates on a small data set): blocks that stay in cache,
#: and blocks for every core where cutting the rows would leave one chunk.
_RUN_BLOCK_BYTES = 2**20


def _run_block(p: DensityParams, lo: int, hi: int) -> DensityParams:
    """Mixtures lo..hi of a batch (not "direct")."""
    k, r = p.n_components, p.n_batch

    def part(a: np.ndarray) -> np.ndarray:
        return a.reshape(k, r, -1)[:, lo:hi].reshape(k * (hi - lo), -1)

    return DensityParams(p.kind, hi - lo, k, p.center, part(p.means), part(p.coef))


def _by_run_blocks(
    X: np.ndarray,
    p: DensityParams,
    w: np.ndarray | None,
    stats: Literal["none", "full", "diag"],
    labels: np.ndarray | None = None,
) -> PassStats:
    """A pass over few rows for a large batch, cut into blocks of mixtures (each block all
    rows), on the thread pool. The blocks depend on the sizes only, not on the threads."""
    n, r, k = X.shape[0], p.n_batch, p.n_components
    size = max(1, _RUN_BLOCK_BYTES // (8 * k * n))
    bounds = [(lo, min(lo + size, r)) for lo in range(0, r, size)]

    compiled = _compiled_ready(X, p, None, None, labels)

    def one(b: tuple[int, int]) -> PassStats:
        lo, hi = b
        wb = w[lo:hi] if w is not None and w.ndim == 2 else w
        return _one_chunk(X, 0, n, _run_block(p, lo, hi), wb, stats, None, None, labels, compiled)

    if n_threads() == 1 or len(bounds) == 1:
        parts = [one(b) for b in bounds]
    else:
        with serial_blas():
            parts = list(_pool().map(one, bounds))
    scatter = None if parts[0].scatter is None else np.concatenate([q.scatter for q in parts])
    return PassStats(
        np.concatenate([q.loglik for q in parts]),
        np.concatenate([q.counts for q in parts]),
        np.concatenate([q.sum_x for q in parts]),
        scatter,
    )


def run_pass(
    X: np.ndarray,
    p: DensityParams,
    *,
    sample_weight: np.ndarray | None = None,
    stats: Literal["none", "full", "diag"] = "none",
    resp_out: np.ndarray | None = None,
    logp_out: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    parallel: bool = True,
) -> PassStats:
    """One pass over all rows of ``X`` (N, D) for a batch of R mixtures.

    Computes Σ_n w_n log p(x_n) for each mixture and, when ``stats`` is "full" or "diag", the
    sufficient statistics of the M-step (see :class:`PassStats`). ``sample_weight`` is (N,),
    the same for every mixture, or (R, N), one weight vector per mixture (bootstrap replicates,
    cross-validation folds as 0/1 weights): the same one product with the feature matrix.
    Writes p(z_n = k | x_n) into ``resp_out`` (N, K·R, component-major) and log p(x_n) into
    ``logp_out`` (N, R) when given. ``labels`` (N,) fixes the component of the rows where it is
    ≥ 0 (:func:`fix_labels`: semi-supervised EM).
    Memory: O(chunk) beyond the outputs. ``X`` may be a dask array (:mod:`._dask`: the same
    pass on each of its chunks, summed by dask; statistics only). ``parallel=False`` keeps the
    pass on the calling thread (a dask worker's task).
    """
    if not isinstance(X, np.ndarray):
        from bayesgmm.core._dask import chunked_pass

        if resp_out is not None or logp_out is not None or labels is not None:
            raise ValueError("a pass over a dask array returns statistics only")
        return chunked_pass(X, p, sample_weight=sample_weight, stats=stats)
    n = X.shape[0]
    m, d = p.means.shape
    if (
        parallel
        and p.kind != "direct"
        and resp_out is None
        and logp_out is None
        and p.n_batch > 1
        and n < _PARALLEL_MIN_ROWS
        and m * n * 8 > 2 * _RUN_BLOCK_BYTES
    ):
        return _by_run_blocks(X, p, sample_weight, stats, labels)
    compiled = _compiled_ready(X, p, resp_out, logp_out, labels)
    if compiled:
        # The compiled chunk's temporaries are a block's, whatever the chunk's rows: chunks
        # as large as balancing the threads allows (each chunk's sums are M × F numbers, which
        # 2,500 chunks of 395 rows at D = 50 made 270 MB).
        step = min(65_536, max(_MIN_CHUNK_ROWS, -(-n // 8)))
    else:
        step = _chunk_rows(n, m, _n_features(p.kind, d, m))
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    args = (p, sample_weight, stats, resp_out, logp_out, labels, compiled)
    if not parallel or n < _PARALLEL_MIN_ROWS or len(bounds) == 1 or n_threads() == 1:
        parts: Iterator[PassStats] = (_one_chunk(X, lo, hi, *args) for lo, hi in bounds)
        return _sum_in_order(parts)
    # Our threads already use every core: BLAS inside them runs single-threaded, or two
    # levels of threads fight over the same cores.
    with serial_blas():
        return _sum_in_order(_pool().map(lambda b: _one_chunk(X, b[0], b[1], *args), bounds))


def _sum_in_order(parts: Iterator[PassStats]) -> PassStats:
    """The chunks' statistics added in chunk order (so the sums do not depend on the threads),
    each as it comes: only chunks still being added wait in memory."""
    total = next(parts)
    for part in parts:
        total += part
    return total


def stacked_features(X: np.ndarray, center: np.ndarray, diagonal: bool) -> np.ndarray:
    """:func:`features` ("full" or "diag") of R data sets of the same shape at once: (R, F, N)
    for ``X`` (R, N, D)."""
    xt = np.swapaxes(X, 1, 2) - center[None, :, None]  # (R, D, N)
    if diagonal:
        quad = xt * xt
    else:
        iu, ju = triu(X.shape[2])
        quad = xt[:, iu, :] * xt[:, ju, :]
    ones = np.ones((X.shape[0], 1, X.shape[1]))
    return np.concatenate([quad, xt, ones], axis=1)


def run_pass_stacked(
    feats_all: np.ndarray,
    p: DensityParams,
    *,
    sample_weight: np.ndarray | None = None,
    stats: Literal["none", "full", "diag"] = "none",
) -> PassStats:
    """:func:`run_pass` for R mixtures each on its own data set, given those data sets'
    :func:`stacked_features` (R, F, N) (of ``p.kind`` and ``p.center``; mixture r on data set
    r: parametric bootstrap replicates, the likelihood-ratio test's simulated data). One
    batched product per pass (R products of K × F by F × N), in blocks of mixtures that bound
    the temporaries. ``p`` must be "full" or "diag" (not "direct")."""
    if p.kind == "direct":
        raise ValueError("run_pass_stacked needs quadratic features (kind 'full' or 'diag').")
    r, k = p.n_batch, p.n_components
    n, d = feats_all.shape[2], p.means.shape[1]
    f = p.coef.shape[1]
    coef = np.swapaxes(p.coef.reshape(k, r, f), 0, 1)  # (R, K, F)
    block = max(1, _CHUNK_BYTES // (8 * n * max(f, k)))
    total = PassStats(np.zeros(r), np.zeros((r, k)), np.zeros((r, k, d)), None)
    parts_scatter = []
    for lo in range(0, r, block):
        hi = min(lo + block, r)
        feats = feats_all[lo:hi]  # (b, F, N)
        with np.errstate(invalid="ignore"):  # padding's −inf (see chunk_log_joint)
            lj = np.ascontiguousarray(np.swapaxes(coef[lo:hi] @ feats, 0, 1))  # (K, b, N)
        logp = _log_normalise(lj.reshape(k * (hi - lo), n), hi - lo, k)  # (b, N)
        resp = np.swapaxes(lj, 0, 1)  # (b, K, N) responsibilities
        if sample_weight is not None:
            wc = sample_weight[lo:hi] if sample_weight.ndim == 2 else sample_weight[None]
            total.loglik[lo:hi] = (logp * wc).sum(axis=1)
            resp = resp * wc[:, None, :]
        else:
            total.loglik[lo:hi] = logp.sum(axis=1)
        if stats == "none":
            continue
        sums = resp @ np.swapaxes(feats, 1, 2)  # (b, K, F): [second moments | Σx | Σ1]
        t = f - d - 1
        total.counts[lo:hi] = sums[:, :, -1]
        total.sum_x[lo:hi] = sums[:, :, t : t + d]
        parts_scatter.append(sums[:, :, :t])
    if stats != "none":
        total.scatter = np.concatenate(parts_scatter, axis=0)
    return total
