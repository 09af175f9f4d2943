"""The EM loop of :mod:`bayesgmm.core._loop`, compiled (numba) for data that fit in memory.

On small data the batched numpy loop pays numpy's per-call cost many times per pass: each of
the batch's structures has its own M-step of a few dozen calls, and runs of different K are
padded to the largest. Model selection on a few hundred rows (126 cells, several starts each)
then spent ~160 µs per run and iteration, almost all of it in call overhead. Here each run is
advanced on its own, without padding, by one compiled function: the E-step (Cholesky solves,
log-sum-exp), the sufficient statistics (about the component means), every structure's
maximum-likelihood M-step and SQUAREM's extrapolation, step control and projection, with the
same rules, in the same order, as the numpy loop (:class:`bayesgmm.core._loop._Batch`): a run
ends in the same state either way, up to rounding.

Covered: complete data in memory, maximum likelihood (``reg_covar`` allowed), the batch's row
weights or each run's own. The numpy loop keeps the rest (a prior, missing values, labels,
runs on their own data sets, dask arrays) and is the reference the tests compare against.

Two more pieces of select_em's work on small data are compiled here: the starts' first
M-step (:func:`first_steps`, cold, as em.m_step_batch's for a start) and the hierarchical
tree (:func:`hc_merges`, hc.hierarchical_tree's VVV agglomeration, merge for merge). On large
data, the chunks of :func:`bayesgmm.core._passes.run_pass` run through :func:`pass_chunk`.

numba comes with PyMC (PyTensor depends on it). The functions are compiled on first use and
cached on disk (``cache=True``); set ``BAYESGMM_COMPILED=0`` to use the numpy loop everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

try:  # pragma: no cover - numba ships with pytensor; without it the numpy loop runs
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        def wrap(f):
            return f

        return wrap


#: Structure codes of the compiled M-steps (E and V are EII and VII in one dimension).
CODES = {
    "EII": 0, "VII": 1, "EEI": 2, "VEI": 3, "EVI": 4, "VVI": 5, "EEE": 6, "VEE": 7,
    "EVE": 8, "VVE": 9, "EEV": 10, "VEV": 11, "EVV": 12, "VVV": 13, "E": 0, "V": 1,
}  # fmt: skip
# Codes 0-5 are the diagonal structures (their M-step reads the scatter's diagonal only); the
# codes of VEI, EVI (3, 4) and VEE ... EVV (7-12) those whose set of covariances is not convex
# (SQUAREM projects onto them).

# The numpy loop's constants (bayesgmm.core.structures, _passes, em), repeated for the compiler.
_INNER_TOL = 1e-12
_WARM_MAX = 5
_LOG_FLOOR = -60.0
_EMPTY_RTOL = 1e-10
_EPS = 2.220446049250313e-16  # the machine epsilon of float64
#: _top_eigenvalue's closed form for D = 3 above this r (below, Jacobi's rotations).
_TOP_CLOSED_R = -0.999
_LOG_2PI = math.log(2.0 * math.pi)
#: The largest D whose Mahalanobis sweep is written out (_small_maha).
_SMALL_D = 6
#: A Cholesky pivot at or below this fraction of its diagonal entry counts as singular: so close
#: to singular (a condition number of about 1e10 or more) that LAPACK's factorisation, from other
#: rounding, may fail on the same matrix (a fit to mtcars's 32 rows did at 1e-14; the numpy loop
#: would have stopped there). Such a component is collapsed by the degeneracy rule anyway.
_PD_RTOL = 1e-10

#: Run states returned by :func:`em_runs`.
RUNNING, CONVERGED, SINGULAR, EMPTY, COLLAPSED = 0, 1, 2, 3, 4
#: A component whose covariance has an eigenvalue below this fraction of the data's variance in
#: that direction (each feature standardised) has collapsed: it sits on tied or duplicated
#: points (bayesgmm.core._loop's rule for finished fits).
DEGENERACY_RTOL = 1e-8
#: A run stops, failed, as soon as a component's eigenvalue falls below this fraction (both
#: loops): a variance at rounding level (points tied exactly: 1e-18 to 1e-15 on DNase), which
#: no later step brings back, while the log-likelihood swings by rounding and the run would go
#: on to its iteration budget. Far below DEGENERACY_RTOL: a component near that tolerance (rock's
#: EEV,6 start, 9.5e-9) may end above it.
COLLAPSE_STOP_RTOL = 1e-12


#: The compiled loop advances each run on its own over all rows, its E-step sweeping the rows'
#: moment features (F = 1 + D + D(D + 1)/2 per row) once per component; the numpy loop shares
#: each pass among the runs, in matrix products. Once the features outgrow the core's cache the
#: numpy loop wins. Measured (select_em's default grid, unscreened, the 2-core Xeon), compiled
#: against numpy: 5,000 × 5 (105,000 feature entries) 10.3 s against 14.0; 2,000 × 8 (90,000)
#: 5.6 against 7.8; 1,000 × 10 (66,000) 4.9 against 7.2; 20,000 × 2 (120,000) 34.9 against
#: 47.2; 3,000 × 10 (198,000) 22.0 against 13.0; 5,000 × 8 (225,000) 33.0 against 18.1;
#: 10,000 × 6 (280,000) 55.1 against 28.3.
MAX_FEATURE_ENTRIES = 150_000


def suits(n_rows: int, n_features: int) -> bool:
    """Whether the compiled loop is the faster one for data of this shape."""
    return n_rows * (1 + n_features + n_features * (n_features + 1) // 2) <= MAX_FEATURE_ENTRIES


def enabled() -> bool:
    """Whether the compiled loop may be used (numba importable, not turned off by the
    ``BAYESGMM_COMPILED=0`` environment variable)."""
    return AVAILABLE and os.environ.get("BAYESGMM_COMPILED", "1") != "0"


# -- compiling without making anyone wait ------------------------------------------------------
#
# numba compiles these functions in about a minute on a small machine (2 cores; seconds of it
# per function, mostly numba's own front end), and caches the result on disk. Nobody should
# wait that minute: the first time a process needs the loop and finds no cache, it starts one
# background process that compiles it, and goes on with the numpy code; later calls (and later
# processes) load the cache in well under a second.
#
# The background process compiles in stages, cheapest first, and writes a marker after each, so
# that each piece serves as soon as it is compiled: the chunk pass of large data (and ICL's
# term) in ~5 s, the hierarchical tree in ~4 s more, then the EM loop and the starts' M-steps
# (~50 s, on the 2-core AMD VM). (A user's first select_em on 10⁵ × 5 rows, with no cache: the
# full-data passes, half of its time, waited for the whole minute before.)

#: The stages, in the order compiled: what each serves.
STAGES = ("pass", "hc", "loop")
_STATE: dict[str, Any] = {"loaded": set(), "spawned": False}
#: A compile that has run this long is presumed dead, and another may start.
_STALE_LOCK_S = 900.0


@functools.cache
def _marker_paths(stage: str = "loop") -> tuple[Path, Path]:
    """The marker written when a stage of the cache is complete ("loop", the last, marks it
    whole), and the lock held while compiling, in numba's cache directory for this module (one
    per source, numba, Python and CPU)."""
    import llvmlite.binding
    import numba

    try:
        directory = Path(em_runs._cache._cache_path)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - another numba layout
        directory = Path(tempfile.gettempdir()) / "bayesgmm-numba"
    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())
    key.update(f"{numba.__version__} {sys.version} {llvmlite.binding.get_host_cpu_name()}".encode())
    stem = f"bayesgmm-em-{key.hexdigest()[:16]}"
    done = f"{stem}.ready" if stage == "loop" else f"{stem}.{stage}.ready"
    return directory / done, directory / f"{stem}.lock"


def ready(wait: float = 0.0, stage: str = "loop") -> bool:
    """Whether the compiled functions of ``stage`` (see :data:`STAGES`; "loop", the default, is
    all of them) are loaded in this process, loading them from the cache when that stage of it
    is complete. When they are not, start the compilation in the background (once; never from a
    forked worker, whose parent has already decided) and return False, the numpy code serving
    meanwhile; with ``wait`` > 0, wait up to that many seconds for them (less when the
    compilation this process started ends without its marker: it failed)."""
    if not enabled():
        return False
    if stage in _STATE["loaded"]:
        return True
    marker, lock = _marker_paths(stage)
    deadline = time.monotonic() + wait
    while True:
        if marker.exists() or (stage != "loop" and _marker_paths("loop")[0].exists()):
            _load(stage)
            return True
        if not _compiling(lock):
            if _STATE["spawned"] and wait > 0 and not marker.exists():
                return False  # this process's compilation ended without its marker: it failed
            _spawn(lock)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _load(stage: str) -> None:
    """Load (or compile) ``stage``'s functions in this process; "loop" loads every stage."""
    for name in STAGES if stage == "loop" else (stage,):
        if name not in _STATE["loaded"]:
            _WARM[name]()
            _STATE["loaded"].add(name)


def _compiling(lock: Path) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    return age < _STALE_LOCK_S


def _spawn(lock: Path) -> None:
    if _STATE["spawned"]:
        return
    _STATE["spawned"] = True
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
        subprocess.Popen(
            [sys.executable, "-c", "from bayesgmm.core._compiled import compile_cache; "
             "compile_cache()"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **_detached(),
        )  # fmt: skip
    except OSError:  # pragma: no cover - no place to write, or no way to start a process
        pass


def _detached() -> dict[str, Any]:
    """Popen's arguments that keep the compilation alive when the user interrupts their own
    work (Ctrl-C signals the terminal's foreground process group): a process group of its own
    (POSIX), in the user's session, where it competes as one more thread of the user's.

    Not a session of its own: Linux's autogroups share the CPU equally between sessions, so the
    compilation took one of two cores from the user's work (a first select_em on 10⁵ × 5 rows,
    cold cache, 2 cores: 77.6 s, everything in numpy until the compilation ended at 69 s; with
    the stages, 100-117 s). Not at the lowest priority either: it then waits for idle cores,
    and work that keeps every core busy (a test suite on all cores, a batch of fits) went on in
    numpy for minutes (the cold test suite: 6:21, against 2:41 at an equal share per thread).
    At an equal share per thread, that first select_em: 65.0 s."""
    if os.name != "posix":  # pragma: no cover
        return {}
    return {"process_group": 0}


def compile_cache() -> None:
    """Compile every stage (or load it from the cache), writing each stage's marker as it is
    done; what the background process runs."""
    lock = _marker_paths()[1]
    try:
        for stage in STAGES:  # cheapest first, each usable as soon as its marker is written
            _load(stage)
            _marker_paths(stage)[0].write_text("ok")
    finally:
        lock.unlink(missing_ok=True)


def warm() -> None:
    """Compile or load every stage in this process (one tiny problem of each kind)."""
    _load("loop")


def _warm_pass() -> None:
    """The chunk pass of large data and ICL's term."""
    X = np.random.default_rng(0).normal(size=(12, 2))
    log_map_sum(np.full((12, 2), 0.5), np.empty(0))
    log_map_sum(np.full((12, 2), 0.5), np.ones(12))
    for w in (np.empty((0, 0)), np.ones((1, 12))):
        pass_chunk(X, 0, 12, X.mean(axis=0), np.zeros((4, 6)), 2, False, w, True, 8,
                   np.zeros((4, 6)), np.zeros(2), np.zeros((12, 4)), np.zeros((12, 2)))  # fmt: skip


def _warm_hc() -> None:
    """The hierarchical tree, the k-means++ seedings and the partitions' keys."""
    Z = np.random.default_rng(0).normal(size=(12, 2))
    hc_merges(Z, 1.0)
    kmeans_seeds(Z, np.zeros(2, dtype=np.int64), np.full((2, 2), 0.5),
                 np.empty((2, 12), dtype=np.int64))  # fmt: skip
    partition_ranks(np.zeros((1, 3), dtype=np.int64), np.empty((1, 3), dtype=np.int32),
                    np.empty(1, dtype=np.int64))  # fmt: skip


def _warm_loop() -> None:
    """The EM loop and the starts' first M-steps (one tiny problem of each structure)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2))
    k = 2
    codes = np.array(sorted(set(CODES.values())), dtype=np.int64)
    r_all = codes.shape[0]
    covs = np.broadcast_to(np.eye(2), (r_all, k, 2, 2)).copy()
    means = np.stack([X[:k]] * r_all)
    xct = _plain((X - X.mean(axis=0)).T)
    em_runs(
        np.arange(r_all, dtype=np.int64), xct, _em_features(xct), X.mean(axis=0), np.empty((1, 0)),
        np.zeros(r_all, dtype=np.int64), codes,
        np.full(r_all, k, dtype=np.int64), np.full((r_all, k), 0.5), means, covs, covs.copy(),
        np.zeros(r_all, dtype=np.int64), 4, 4, 1e-8, True, np.ones(r_all),
        np.zeros(r_all, dtype=np.int64), np.ones((r_all, 2)), 0.0, np.empty((r_all, 8)),
        np.zeros(r_all, dtype=np.int64),
        np.zeros(r_all, dtype=np.int64), np.zeros(r_all, dtype=np.int64), np.zeros(r_all),
    )  # fmt: skip
    resp = np.zeros((12, k))
    resp[np.arange(12), np.arange(12) % k] = 1.0
    first_steps(X, [(name, resp) for name in CODES], None, 0.0, 20)
    first_steps(X, [("VVV", resp)], np.ones(12), 0.0, 20)
    from bayesgmm.core.prior import ConjugatePrior

    single = np.zeros((12, k))
    single[:, 0] = 1.0
    single[0] = [0.0, 1.0]  # a component on one point: every structure's MAP rescue runs
    rescue = {k: ConjugatePrior().resolve(X, k)}
    first_steps(X, [(name, single) for name in CODES], None, 0.0, 20, rescue)


_WARM = {"pass": _warm_pass, "hc": _warm_hc, "loop": _warm_loop}


# -- small dense linear algebra (scalar loops: they compile in a fraction of numpy.linalg's
#    time, and D is small) -------------------------------------------------------------------

_jit = njit(cache=True, error_model="numpy", nogil=True)


@_jit
def _finite(a):  # pragma: no cover - compiled
    for x in a.ravel():
        if not math.isfinite(x):
            return False
    return True


@_jit
def _copy(src, dst):  # pragma: no cover - compiled
    """dst[...] = src for C-contiguous arrays of one size (a loop: numpy-style assignment
    compiles to numba's broadcasting machinery, seconds of compile time each)."""
    a = src.ravel()
    b = dst.ravel()
    for i in range(a.shape[0]):
        b[i] = a[i]


@_jit
def _fill(dst, value):  # pragma: no cover - compiled
    b = dst.ravel()
    for i in range(b.shape[0]):
        b[i] = value


@_jit
def _cholesky(a, out, rtol):  # pragma: no cover - compiled
    """Lower Cholesky factor of ``a`` into ``out``; False when ``a`` is not positive definite
    (or not finite), or so nearly singular (a pivot below ``rtol`` of its diagonal entry:
    _PD_RTOL in EM's steps) that LAPACK's factorisation, from other rounding, might fail on
    it. A start's first M-step uses 0, as the numpy start's LAPACK factorisation does."""
    d = a.shape[0]
    for j in range(d):
        s = a[j, j]
        for p in range(j):
            s -= out[j, p] * out[j, p]
        if not (s > rtol * a[j, j]) or not math.isfinite(s):
            return False
        ljj = math.sqrt(s)
        out[j, j] = ljj
        for i in range(j + 1, d):
            t = a[i, j]
            for p in range(j):
                t -= out[i, p] * out[j, p]
            out[i, j] = t / ljj
        for i in range(j):
            out[i, j] = 0.0
    return True


@_jit
def _pivot(m, c):  # pragma: no cover - compiled
    """Partial pivoting: the row r ≥ c with the largest |m[r, c]| (the first such)."""
    p = c
    big = abs(m[c, c])
    for r in range(c + 1, m.shape[0]):
        if abs(m[r, c]) > big:
            big = abs(m[r, c])
            p = r
    return p


@_jit
def _swap_rows(m, a, b):  # pragma: no cover - compiled
    for j in range(m.shape[1]):
        t = m[a, j]
        m[a, j] = m[b, j]
        m[b, j] = t


@_jit
def _slogdet(a):  # pragma: no cover - compiled
    """(sign, log|A|) by LU with partial pivoting, as numpy's slogdet: sign 0 (and −inf) when
    a pivot is exactly 0; NaN sign when A is not finite."""
    d = a.shape[0]
    if not _finite(a):
        return np.nan, np.nan
    m = np.empty_like(a)
    _copy(a, m)
    sign = 1.0
    logdet = 0.0
    for c in range(d):
        p = _pivot(m, c)
        if m[p, c] == 0.0:
            return 0.0, -np.inf
        if p != c:
            sign = -sign
            _swap_rows(m, c, p)
        piv = m[c, c]
        if piv < 0:
            sign = -sign
        logdet += math.log(abs(piv))
        for r in range(c + 1, d):
            f = m[r, c] / piv
            for j in range(c + 1, d):
                m[r, j] -= f * m[c, j]
    return sign, logdet


@_jit
def _det_root(a):  # pragma: no cover - compiled
    """|A|^(1/d) by LU with partial pivoting; NaN where A is not finite or its determinant is
    not positive (numpy's slogdet, as structures._det_root)."""
    sign, logdet = _slogdet(a)
    if sign > 0:
        return math.exp(logdet / a.shape[0])
    return np.nan


@_jit
def _inv(a, out):  # pragma: no cover - compiled
    """Inverse of ``a`` into ``out`` (Gauss-Jordan, partial pivoting); NaN everywhere when it
    is singular or not finite (structures._inv)."""
    d = a.shape[0]
    if not _finite(a):
        _fill(out, np.nan)
        return
    m = np.empty_like(a)
    _copy(a, m)
    for i in range(d):
        for j in range(d):
            out[i, j] = 1.0 if i == j else 0.0
    for c in range(d):
        p = _pivot(m, c)
        if m[p, c] == 0.0:
            _fill(out, np.nan)
            return
        if p != c:
            _swap_rows(m, c, p)
            _swap_rows(out, c, p)
        piv = m[c, c]
        for j in range(d):
            m[c, j] /= piv
            out[c, j] /= piv
        for r in range(d):
            if r != c:
                f = m[r, c]
                if f != 0.0:
                    for j in range(d):
                        m[r, j] -= f * m[c, j]
                        out[r, j] -= f * out[c, j]


@_jit
def _jacobi(m, vectors, with_vectors):  # pragma: no cover - compiled
    """Cyclic Jacobi rotations of the symmetric ``m`` in place until it is diagonal to
    rounding, its eigenvalues left on the diagonal; with ``with_vectors``, the rotations
    accumulated into ``vectors`` (which start as the identity), else ``vectors`` untouched (the
    rotations of ``m`` the same either way)."""
    d = m.shape[0]
    for _ in range(60):
        off = 0.0
        total = 0.0
        for i in range(d):
            total += m[i, i] * m[i, i]
            for j in range(i + 1, d):
                off += m[i, j] * m[i, j]
        if off == 0.0 or off <= 1e-32 * (total + off):
            break
        for p in range(d - 1):
            for q in range(p + 1, d):
                apq = m[p, q]
                if apq == 0.0:
                    continue
                theta = (m[q, q] - m[p, p]) / (2.0 * apq)
                t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                if theta < 0:
                    t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for r in range(d):
                    x, y = m[r, p], m[r, q]
                    m[r, p] = c * x - s * y
                    m[r, q] = s * x + c * y
                for r in range(d):
                    x, y = m[p, r], m[q, r]
                    m[p, r] = c * x - s * y
                    m[q, r] = s * x + c * y
                if with_vectors:
                    for r in range(d):
                        x, y = vectors[r, p], vectors[r, q]
                        vectors[r, p] = c * x - s * y
                        vectors[r, q] = s * x + c * y


@_jit
def _tridiagonal(m, diag, off, q, with_vectors):  # pragma: no cover - compiled
    """Householder's reduction of the symmetric ``m`` (overwritten) to a tridiagonal T =
    Qᵀ m Q: T's diagonal into ``diag``, its subdiagonal into ``off[:D − 1]`` (off[D − 1] = 0),
    and with ``with_vectors`` the orthogonal Q into ``q``. Step k reflects rows and columns
    k + 1.. by H = I − v vᵀ (|v|² = 2) so that column k has zeros below its subdiagonal:
    H m H = m − v wᵀ − w vᵀ with p = m v and w = p − (vᵀp / 2) v (Golub and Van Loan 2013,
    §8.3.1); only the trailing block is updated and read again."""
    d = m.shape[0]
    if with_vectors:
        for i in range(d):
            for j in range(d):
                q[i, j] = 1.0 if i == j else 0.0
    v = np.zeros(d)
    w = np.zeros(d)
    for k in range(d - 2):
        norm2 = 0.0
        for i in range(k + 1, d):
            norm2 += m[i, k] * m[i, k]
        x0 = m[k + 1, k]
        rest = norm2 - x0 * x0
        if not (rest > 0.0):  # already zero below the subdiagonal
            off[k] = x0
            continue
        norm = math.sqrt(norm2)
        alpha = -norm if x0 >= 0.0 else norm
        v0 = x0 - alpha  # |x0| + norm: no cancellation
        unit = math.sqrt(2.0 / (rest + v0 * v0))
        v[k + 1] = v0 * unit
        for i in range(k + 2, d):
            v[i] = m[i, k] * unit
        half = 0.0
        for i in range(k + 1, d):
            t = 0.0
            for j in range(k + 1, d):
                t += m[i, j] * v[j]
            w[i] = t
            half += v[i] * t
        half *= 0.5
        for i in range(k + 1, d):
            w[i] -= half * v[i]
        for i in range(k + 1, d):
            for j in range(k + 1, d):
                m[i, j] -= v[i] * w[j] + w[i] * v[j]
        off[k] = alpha
        if with_vectors:
            for r in range(d):
                t = 0.0
                for j in range(k + 1, d):
                    t += q[r, j] * v[j]
                for j in range(k + 1, d):
                    q[r, j] -= t * v[j]
    for i in range(d):
        diag[i] = m[i, i]
    if d >= 2:
        off[d - 2] = m[d - 1, d - 2]
    off[d - 1] = 0.0


@_jit
def _tridiagonal_ql(diag, off, z, with_vectors):  # pragma: no cover - compiled
    """The eigenvalues of the symmetric tridiagonal (``diag``, ``off``: _tridiagonal's) into
    ``diag``, by QL iterations with implicit Wilkinson shifts (the EISPACK tql2 scheme, as in
    Press et al. 2007, §11.4): a subdiagonal entry at most ε (|d_m| + |d_m+1|) splits the
    matrix. With ``with_vectors``, the rotations are applied to the columns of ``z`` (Q in,
    the eigenvectors out, unsorted). False when some eigenvalue takes over 60 iterations."""
    n = diag.shape[0]
    for lo in range(n):
        rounds = 0
        while True:
            m = lo
            while m < n - 1:
                if abs(off[m]) <= _EPS * (abs(diag[m]) + abs(diag[m + 1])):
                    break
                m += 1
            if m == lo:
                break
            rounds += 1
            if rounds > 60:
                return False
            g = (diag[lo + 1] - diag[lo]) / (2.0 * off[lo])
            r = math.hypot(g, 1.0)
            g = diag[m] - diag[lo] + off[lo] / (g + (r if g >= 0.0 else -r))
            s = 1.0
            c = 1.0
            p = 0.0
            i = m - 1
            split = False
            while i >= lo:
                f = s * off[i]
                b = c * off[i]
                r = math.hypot(f, g)
                off[i + 1] = r
                if r == 0.0:  # underflow: the matrix splits at i + 1
                    diag[i + 1] -= p
                    off[m] = 0.0
                    split = True
                    break
                s = f / r
                c = g / r
                g = diag[i + 1] - p
                r = (diag[i] - g) * s + 2.0 * c * b
                p = s * r
                diag[i + 1] = g + p
                g = c * r - b
                if with_vectors:
                    for k in range(n):
                        f = z[k, i + 1]
                        z[k, i + 1] = s * z[k, i] + c * f
                        z[k, i] = c * z[k, i] - s * f
                i -= 1
            if split:
                continue
            diag[lo] -= p
            off[lo] = g
            off[m] = 0.0
    return True


#: From this D up, _eigh and _top_eigenvalue reduce to a tridiagonal and iterate QL
#: (~(4/3) D³ flops once, then O(D²) a sweep) instead of sweeping Jacobi rotations over the
#: whole matrix (O(D³) a sweep, 6-10 sweeps): 20 → ~3 µs for a 12 × 12 matrix's eigenvalues.
#: Below it Jacobi stays, as fast there, and its values are the ones our tables were made with.
_TRIDIAG_D = 5


@_jit
def _eigh(a, values, vectors):  # pragma: no cover - compiled
    """Eigenvalues (ascending, into ``values``) and eigenvectors (columns of ``vectors``) of
    the symmetric ``a``: cyclic Jacobi rotations below D = _TRIDIAG_D, else Householder's
    tridiagonal and QL (Jacobi should QL not converge); accurate to rounding."""
    d = a.shape[0]
    m = np.empty_like(a)
    _copy(a, m)
    done = False
    if d >= _TRIDIAG_D:
        off = np.empty(d)
        _tridiagonal(m, values, off, vectors, True)
        done = _tridiagonal_ql(values, off, vectors, True)
        if not done:
            _copy(a, m)
    if not done:
        for i in range(d):
            for j in range(d):
                vectors[i, j] = 1.0 if i == j else 0.0
        _jacobi(m, vectors, True)
        for i in range(d):
            values[i] = m[i, i]
    for i in range(d):  # selection sort, ascending
        best = i
        for j in range(i + 1, d):
            if values[j] < values[best]:
                best = j
        if best != i:
            t = values[i]
            values[i] = values[best]
            values[best] = t
            for r in range(d):
                t = vectors[r, i]
                vectors[r, i] = vectors[r, best]
                vectors[r, best] = t


@_jit
def _top_eigenvalue(a, m):  # pragma: no cover - compiled
    """The largest eigenvalue of the symmetric ``a`` (``m``: D × D scratch): the EVE and VVE
    M-steps' bound ω_k, which needs this value only. In closed form for D ≤ 3: for D = 3 the
    trigonometric solution of the characteristic cubic (Smith 1961), accurate to rounding
    except where the two largest roots (nearly) coincide (cosine → −1), where acos's slope is
    unbounded (5.000000023 for the roots 0, 5 and 5.000000005). There, and for D > 3: _eigh's
    method without the eigenvectors."""
    d = a.shape[0]
    if d == 1:
        return a[0, 0]
    if d == 2:
        h = 0.5 * (a[0, 0] - a[1, 1])
        return 0.5 * (a[0, 0] + a[1, 1]) + math.sqrt(h * h + a[0, 1] * a[0, 1])
    if d == 3:  # λ = mid + 2 rad cos(acos(cosine)/3), B = (a − mid I)/rad, cosine = det(B)/2
        off = a[0, 1] * a[0, 1] + a[0, 2] * a[0, 2] + a[1, 2] * a[1, 2]
        mid = (a[0, 0] + a[1, 1] + a[2, 2]) / 3.0
        b00, b11, b22 = a[0, 0] - mid, a[1, 1] - mid, a[2, 2] - mid
        spread = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off
        if spread == 0.0:  # a multiple of the identity
            return mid
        rad = math.sqrt(spread / 6.0)
        det = (
            b00 * (b11 * b22 - a[1, 2] * a[1, 2])
            - a[0, 1] * (a[0, 1] * b22 - a[1, 2] * a[0, 2])
            + a[0, 2] * (a[0, 1] * a[1, 2] - b11 * a[0, 2])
        )
        cosine = det / (2.0 * rad * rad * rad)
        if cosine > _TOP_CLOSED_R:  # (acos's error at most ~1e-15 / √(2 · 0.001): 2e-14)
            return mid + 2.0 * rad * math.cos(math.acos(min(cosine, 1.0)) / 3.0)
    _copy(a, m)
    if d >= _TRIDIAG_D:
        values = np.empty(d)
        off = np.empty(d)
        _tridiagonal(m, values, off, m, False)
        if _tridiagonal_ql(values, off, m, False):
            top = values[0]
            for i in range(1, d):
                top = max(top, values[i])
            return top
        _copy(a, m)
    _jacobi(m, m, False)
    top = m[0, 0]
    for i in range(1, d):
        if m[i, i] > top:
            top = m[i, i]
    return top


@_jit
def _neg_polar(g, out):  # pragma: no cover - compiled
    """−U Vᵀ for the SVD g = U S Vᵀ (the orthogonal factor of −g), by one-sided Jacobi
    rotations (Hestenes); NaN when ``g`` is not finite."""
    d = g.shape[0]
    if not _finite(g):
        _fill(out, np.nan)
        return
    u = np.empty_like(g)
    _copy(g, u)
    v = np.zeros((d, d))
    for i in range(d):
        v[i, i] = 1.0
    tol = d * _EPS
    for _ in range(60):
        rotated = False
        for p in range(d - 1):
            for q in range(p + 1, d):
                alpha = 0.0
                beta = 0.0
                gamma = 0.0
                for r in range(d):
                    alpha += u[r, p] * u[r, p]
                    beta += u[r, q] * u[r, q]
                    gamma += u[r, p] * u[r, q]
                # Columns orthogonal to rounding (d ulps): a bound below the machine epsilon,
                # which rounding cannot always reach, ran some calls through all 60 sweeps
                # (2-3% of them; 8.3 sweeps on average against 6.2 for random 6 × 6).
                if gamma == 0.0 or abs(gamma) <= tol * math.sqrt(alpha * beta):
                    continue
                rotated = True
                zeta = (beta - alpha) / (2.0 * gamma)
                t = 1.0 / (abs(zeta) + math.sqrt(1.0 + zeta * zeta))
                if zeta < 0:
                    t = -t
                c = 1.0 / math.sqrt(1.0 + t * t)
                s = c * t
                for r in range(d):
                    x, y = u[r, p], u[r, q]
                    u[r, p] = c * x - s * y
                    u[r, q] = s * x + c * y
                    x, y = v[r, p], v[r, q]
                    v[r, p] = c * x - s * y
                    v[r, q] = s * x + c * y
        if not rotated:
            break
    norms = np.empty(d)
    for i in range(d):
        norm = 0.0
        for r in range(d):
            norm += u[r, i] * u[r, i]
        norms[i] = math.sqrt(norm)
    biggest = 0.0
    for i in range(d):
        biggest = max(biggest, norms[i])
    good = np.empty(d, dtype=np.bool_)
    for i in range(d):
        good[i] = norms[i] > 1e-15 * biggest
        if good[i]:
            for r in range(d):
                u[r, i] /= norms[i]
    for i in range(d):
        if good[i]:
            continue
        # A zero singular value (g rank-deficient, e.g. a column of zeros, as the first step of
        # a single live component gives): its left vector is any unit vector orthogonal to the
        # others, as LAPACK's. From the axis farthest from their span (its part outside it has
        # length at least 1/√D; a fixed bound of 0.5, which no axis reaches for a vector spread
        # over 5 or more features, left that column unnormalised: EVE,1 far below VVV,1 at
        # D ≥ 7), made orthogonal to them by Gram-Schmidt, twice (to rounding), then normalised.
        best = 0
        best_left = -1.0
        for e in range(d):
            inside = 0.0
            for q in range(d):
                if q != i and good[q]:
                    inside += u[e, q] * u[e, q]
            if 1.0 - inside > best_left:
                best_left = 1.0 - inside
                best = e
        for r in range(d):
            u[r, i] = 1.0 if r == best else 0.0
        for _ in range(2):
            for q in range(d):
                if q == i or not good[q]:
                    continue
                dot = 0.0
                for r in range(d):
                    dot += u[r, q] * u[r, i]
                for r in range(d):
                    u[r, i] -= dot * u[r, q]
        norm = 0.0
        for r in range(d):
            norm += u[r, i] * u[r, i]
        norm = math.sqrt(norm)
        for r in range(d):
            u[r, i] /= norm
        good[i] = True
    for a in range(d):
        for b in range(d):
            s = 0.0
            for i in range(d):
                s += u[a, i] * v[b, i]
            out[a, b] = -s


@_jit
def _geomean(v):  # pragma: no cover - compiled
    """exp(mean(log v)): NaN unless every entry is > 0 (−inf in the log for a 0)."""
    s = 0.0
    for x in v:
        if x > 0:
            s += math.log(x)
        elif x == 0:
            s += -np.inf
        else:
            s += np.nan
    return math.exp(s / v.shape[0])


@_jit
def _changed(new, old):  # pragma: no cover - compiled
    """True when some entry changed by more than _INNER_TOL relatively (NaN: unchanged)."""
    for i in range(new.shape[0]):
        if abs(new[i] - old[i]) > _INNER_TOL * abs(old[i]):
            return True
    return False


# -- the M-steps of the covariances (maximum likelihood; bayesgmm.core.structures) -------------


@_jit
def _start_volumes(traces, n, previous, d):  # pragma: no cover - compiled
    """structures._start_volumes: the current volumes |Σ_k|^(1/d), or tr(W_k)/(d n_k) on a
    cold start (``previous`` without components)."""
    k = n.shape[0]
    lam = np.ones(k)
    for j in range(k):
        if n[j] > 0:
            lam[j] = traces[j] / (d * n[j]) if previous.shape[0] == 0 else _det_root(previous[j])
    return lam


@_jit
def _volumes_and_shape(values, n, previous, limit):  # pragma: no cover - compiled
    """structures._volumes_and_shape from the current volumes: volumes λ_k and one shape a
    minimising Σ_k [n_k d log λ_k + Σ_j values_kj / (λ_k a_j)]."""
    k, d = values.shape
    traces = np.zeros(k)
    for j in range(k):
        for i in range(d):
            traces[j] += values[j, i]
    lam = _start_volumes(traces, n, previous, d)
    a = np.zeros(d)
    new = np.ones(k)
    for _ in range(limit):
        for i in range(d):
            a[i] = 0.0
            for j in range(k):
                if n[j] > 0:
                    a[i] += values[j, i] / lam[j]
        g = _geomean(a)
        for i in range(d):
            a[i] /= g
        for j in range(k):
            new[j] = 1.0
            if n[j] > 0:
                s = 0.0
                for i in range(d):
                    s += values[j, i] / a[i]
                new[j] = s / (d * n[j])
        done = not _changed(new, lam)
        for j in range(k):
            lam[j] = new[j]
        if done:
            break
    return lam, a


@_jit
def _common_orientation(w, n, previous, equal_volume, out, limit):  # pragma: no cover
    """structures._CommonOrientation.covariances (EVE, VVE) from the current covariances
    (on a cold start, from the eigenvectors of Σ_k W_k): Browne & McNicholas's
    majorise-minimise steps for the common orientation D."""
    k, d = w.shape[0], w.shape[1]
    n_total = 0.0
    for j in range(k):
        n_total += n[j]
    basis = np.zeros((d, d))
    cold = previous.shape[0] == 0
    n_live = 0
    for j in range(k):
        if n[j] > 0:
            n_live += 1
    for j in range(k):
        if cold:
            for a in range(d):
                for b in range(d):
                    basis[a, b] += w[j, a, b]
        elif n_live == 1:  # D is this W's eigenvectors exactly (structures._CommonOrientation)
            if n[j] > 0:
                for a in range(d):
                    for b in range(d):
                        basis[a, b] += w[j, a, b]
        elif n[j] > 0:
            c = n[j] * (j + 1)
            for a in range(d):
                for b in range(d):
                    basis[a, b] += c * previous[j, a, b]
    bad_basis = not _finite(basis)
    if bad_basis:
        for a in range(d):
            for b in range(d):
                basis[a, b] = 1.0 if a == b else 0.0
    rot = np.empty((d, d))
    ev = np.empty(d)
    _eigh(basis, ev, rot)
    top = np.empty(k)
    scratch = np.empty((d, d))
    for j in range(k):
        top[j] = _top_eigenvalue(w[j], scratch) if _finite(w[j]) else np.nan
    old = np.inf
    m = np.empty((k, d))
    v = np.empty((k, d))
    inv_v = np.empty((k, d))
    g = np.empty(k)
    wr = np.empty((k, d, d))
    g_mat = np.empty((d, d))
    for step in range(limit):
        # W_k D, once per step for both m_k = diag(Dᵀ W_k D) and the majoriser's G.
        for j in range(k):
            for a in range(d):
                for col in range(d):
                    s = 0.0
                    for b in range(d):
                        s += w[j, a, b] * rot[b, col]
                    wr[j, a, col] = s
            for i in range(d):
                s = 0.0
                for a in range(d):
                    s += rot[a, i] * wr[j, a, i]
                m[j, i] = s
        if equal_volume:
            lam_sum = 0.0
            for j in range(k):
                g[j] = _geomean(m[j])
                if n[j] > 0:
                    lam_sum += g[j]
            lam = lam_sum / n_total
            for j in range(k):
                for i in range(d):
                    v[j, i] = lam * m[j, i] / (g[j] if n[j] > 0 else 1.0)
        else:
            for j in range(k):
                for i in range(d):
                    v[j, i] = m[j, i] / (n[j] if n[j] > 0 else 1.0)
        objective = 0.0
        for j in range(k):
            log_v = 0.0
            for i in range(d):
                inv_v[j, i] = 1.0 / v[j, i] if n[j] > 0 else 0.0
                objective += m[j, i] * inv_v[j, i]
                log_v += math.log(v[j, i]) if n[j] > 0 else 0.0
            if n[j] > 0:
                objective += n[j] * log_v
        if not (abs(old - objective) > _INNER_TOL * abs(objective)):
            break
        old = objective
        for a in range(d):
            for b in range(d):
                g_mat[a, b] = 0.0
        for j in range(k):
            beta = inv_v[j, 0]
            for i in range(1, d):
                if inv_v[j, i] > beta:
                    beta = inv_v[j, i]
            for a in range(d):
                for col in range(d):
                    if step % 2 == 0:  # W_k ≼ ω_k I
                        g_mat[a, col] += (wr[j, a, col] - rot[a, col] * top[j]) * inv_v[j, col]
                    else:  # V_k⁻¹ ≼ β_k I
                        g_mat[a, col] += wr[j, a, col] * (inv_v[j, col] - beta)
        _neg_polar(g_mat, rot)
    for j in range(k):
        for a in range(d):
            for b in range(d):
                s = 0.0
                for i in range(d):
                    s += rot[a, i] * v[j, i] * rot[b, i]
                out[j, a, b] = np.nan if bad_basis else s


@_jit
def _pooled_volume(g, n, n_total):  # pragma: no cover - compiled
    """The equal volume of EVI and EVV: Σ_k |W_k|^(1/d) (the diagonal's for EVI) over the
    components present, divided by n."""
    total = 0.0
    for j in range(g.shape[0]):
        if n[j] > 0:
            total += g[j]
    return total / n_total


@_jit
def _covariances(code, n, w, previous, out, limit):  # pragma: no cover - compiled
    """The structure's maximum-likelihood covariances into ``out`` (K, D, D) from the counts
    n (K,) and the scatter matrices W (K, D, D) about the new means (the diagonal structures
    read their diagonals), the iterative ones starting from ``previous`` (a cold start when it
    has no components) with at most ``limit`` inner iterations."""
    k, d = w.shape[0], w.shape[1]
    n_total = 0.0
    for j in range(k):
        n_total += n[j]
    for j in range(k):
        for a in range(d):
            for b in range(d):
                out[j, a, b] = 0.0
    if code == 0 or code == 1:  # EII, VII (E, V)
        total = 0.0
        for j in range(k):
            tr = 0.0
            for i in range(d):
                tr += w[j, i, i]
            total += tr
            if code == 1:
                for i in range(d):
                    out[j, i, i] = tr / (d * n[j])
        if code == 0:
            for j in range(k):
                for i in range(d):
                    out[j, i, i] = total / (d * n_total)
    elif code == 2 or code == 5 or code == 6 or code == 13:  # EEI, VVI, EEE, VVV
        pooled = code == 2 or code == 6
        for a in range(d):
            for b in range(d):
                if code <= 5 and a != b:
                    continue  # EEI, VVI: the diagonal only
                total = 0.0
                for j in range(k):
                    total += w[j, a, b]
                for j in range(k):
                    out[j, a, b] = total / n_total if pooled else w[j, a, b] / n[j]
    elif code == 3 or code == 4:  # VEI, EVI
        values = np.empty((k, d))
        for j in range(k):
            for i in range(d):
                values[j, i] = w[j, i, i]
        if code == 3:
            lam, shape = _volumes_and_shape(values, n, previous, limit)
            for j in range(k):
                for i in range(d):
                    out[j, i, i] = lam[j] * shape[i]
        else:
            g = np.empty(k)
            for j in range(k):
                g[j] = _geomean(values[j])
            lam_e = _pooled_volume(g, n, n_total)
            for j in range(k):
                for i in range(d):
                    out[j, i, i] = lam_e * values[j, i] / g[j]
    elif code == 7:  # VEE
        traces = np.zeros(k)
        for j in range(k):
            for i in range(d):
                traces[j] += w[j, i, i]
        lam = _start_volumes(traces, n, previous, d)
        cm = np.zeros((d, d))
        c_inv = np.empty((d, d))
        new = np.ones(k)
        for _ in range(limit):
            for a in range(d):
                for b in range(d):
                    cm[a, b] = 0.0
                    for j in range(k):
                        if n[j] > 0:
                            cm[a, b] += w[j, a, b] / lam[j]
            root = _det_root(cm)
            for a in range(d):
                for b in range(d):
                    cm[a, b] /= root
            _inv(cm, c_inv)
            for j in range(k):
                new[j] = 1.0
                if n[j] > 0:
                    s = 0.0
                    for a in range(d):
                        for b in range(d):
                            s += w[j, a, b] * c_inv[b, a]
                    new[j] = s / (d * n[j])
            done = not _changed(new, lam)
            for j in range(k):
                lam[j] = new[j]
            if done:
                break
        for j in range(k):
            for a in range(d):
                for b in range(d):
                    out[j, a, b] = lam[j] * cm[a, b]
    elif code == 8 or code == 9:  # EVE, VVE
        _common_orientation(w, n, previous, code == 8, out, limit)
    elif code == 12:  # EVV
        g = np.empty(k)
        for j in range(k):
            g[j] = _det_root(w[j])
        lam_e = _pooled_volume(g, n, n_total)
        for j in range(k):
            for a in range(d):
                for b in range(d):
                    out[j, a, b] = lam_e * w[j, a, b] / g[j]
    elif code == 10 or code == 11:  # EEV, VEV
        omega = np.empty((k, d))
        vec = np.empty((k, d, d))
        ev = np.empty(d)
        vv = np.empty((d, d))
        for j in range(k):
            if _finite(w[j]):
                _eigh(w[j], ev, vv)
                for i in range(d):  # decreasing order
                    omega[j, i] = ev[d - 1 - i]
                    for a in range(d):
                        vec[j, a, i] = vv[a, d - 1 - i]
            else:
                for i in range(d):
                    omega[j, i] = np.nan
                    for a in range(d):
                        vec[j, a, i] = 1.0 if a == i else 0.0
        scale = np.empty((k, d))
        if code == 10:
            for i in range(d):
                total = 0.0
                for j in range(k):
                    if n[j] > 0:
                        total += omega[j, i]
                for j in range(k):
                    scale[j, i] = total / n_total
        else:
            lam, shape = _volumes_and_shape(omega, n, previous, limit)
            for j in range(k):
                for i in range(d):
                    scale[j, i] = lam[j] * shape[i]
        for j in range(k):
            for a in range(d):
                for b in range(d):
                    s = 0.0
                    for i in range(d):
                        s += vec[j, a, i] * scale[j, i] * vec[j, b, i]
                    out[j, a, b] = s


# -- one pass and one M-step --------------------------------------------------------------------


@_jit
def _small_maha(xct, prec, mean, center, const, out, top):  # pragma: no cover - compiled
    """out ← const − ½ |L⁻¹ (x − μ)|² and top ← max(top, out) for D ≤ 6 (``prec`` L⁻¹, the
    rows ``xct`` about ``center``, transposed): _evaluate's loop with every sum in the same
    order, in one sweep over the rows instead of one per term (15 for D = 3, 33 for D = 6,
    each a load and a store of a row vector; 1.0 → 0.35 µs a component at D = 6, 200 rows),
    its terms in registers."""
    d, n_rows = xct.shape
    s0 = 0.0  # (L⁻¹ (μ − c))_0, then _1, ...: summed from 0.0 as there
    s0 += prec[0, 0] * (mean[0] - center[0])
    a00 = prec[0, 0]
    x0 = xct[0]
    if d == 1:
        for r in range(n_rows):
            y0 = -s0 + a00 * x0[r]
            v = const - 0.5 * (y0 * y0)
            out[r] = v
            if v > top[r]:
                top[r] = v
        return
    s1 = 0.0
    s1 += prec[1, 0] * (mean[0] - center[0])
    s1 += prec[1, 1] * (mean[1] - center[1])
    a10, a11 = prec[1, 0], prec[1, 1]
    x1 = xct[1]
    if d == 2:
        for r in range(n_rows):
            y0 = -s0 + a00 * x0[r]
            y1 = (-s1 + a10 * x0[r]) + a11 * x1[r]
            v = const - 0.5 * (y0 * y0 + y1 * y1)
            out[r] = v
            if v > top[r]:
                top[r] = v
        return
    s2 = 0.0
    for p in range(3):
        s2 += prec[2, p] * (mean[p] - center[p])
    a20, a21, a22 = prec[2, 0], prec[2, 1], prec[2, 2]
    x2 = xct[2]
    if d == 3:
        for r in range(n_rows):
            y0 = -s0 + a00 * x0[r]
            y1 = (-s1 + a10 * x0[r]) + a11 * x1[r]
            y2 = ((-s2 + a20 * x0[r]) + a21 * x1[r]) + a22 * x2[r]
            v = const - 0.5 * ((y0 * y0 + y1 * y1) + y2 * y2)
            out[r] = v
            if v > top[r]:
                top[r] = v
        return
    # D = 4 to 6: one loop, the terms beyond the fourth under conditions on D that the compiler
    # lifts out of the loop (the same bits as a loop per D, ~10% slower, a third of the code).
    s3 = 0.0
    for p in range(4):
        s3 += prec[3, p] * (mean[p] - center[p])
    s4 = 0.0
    s5 = 0.0
    if d > 4:
        for p in range(5):
            s4 += prec[4, p] * (mean[p] - center[p])
    if d > 5:
        for p in range(6):
            s5 += prec[5, p] * (mean[p] - center[p])
    a30, a31, a32, a33 = prec[3, 0], prec[3, 1], prec[3, 2], prec[3, 3]
    x3 = xct[3]
    x4 = xct[4] if d > 4 else x3
    x5 = xct[5] if d > 5 else x3
    for r in range(n_rows):
        y0 = -s0 + a00 * x0[r]
        y1 = (-s1 + a10 * x0[r]) + a11 * x1[r]
        y2 = ((-s2 + a20 * x0[r]) + a21 * x1[r]) + a22 * x2[r]
        y3 = (((-s3 + a30 * x0[r]) + a31 * x1[r]) + a32 * x2[r]) + a33 * x3[r]
        q = ((y0 * y0 + y1 * y1) + y2 * y2) + y3 * y3
        if d > 4:
            y = -s4 + prec[4, 0] * x0[r]
            y = ((y + prec[4, 1] * x1[r]) + prec[4, 2] * x2[r]) + prec[4, 3] * x3[r]
            y = y + prec[4, 4] * x4[r]
            q = q + y * y
            if d > 5:
                y = -s5 + prec[5, 0] * x0[r]
                y = ((y + prec[5, 1] * x1[r]) + prec[5, 2] * x2[r]) + prec[5, 3] * x3[r]
                y = (y + prec[5, 4] * x4[r]) + prec[5, 5] * x5[r]
                q = q + y * y
        v = const - 0.5 * q
        out[r] = v
        if v > top[r]:
            top[r] = v


@_jit
def _maha_row(xct, a, i, shift, y, maha):  # pragma: no cover - compiled
    """Row i of L⁻¹ (x − μ) for D > _SMALL_D, and its square added to ``maha`` (set, for i =
    0): y = −shift + Σ_{p ≤ i} a_p x_p, the terms added in order of p as one at a time, four
    terms a sweep over the rows (a missing term of the last sweep is 0.0 · x, which adds an
    exact zero), the square added in the last sweep. (A sweep per term, each a load and a
    store of y, was most of the E-step at D = 9: 64 sweeps against 15 now.)"""
    n_rows = xct.shape[1]
    for p0 in range(0, i + 1, 4):
        a0 = a[p0]
        x0 = xct[p0]
        a1 = a[p0 + 1] if p0 + 1 <= i else 0.0
        x1 = xct[p0 + 1] if p0 + 1 <= i else x0
        a2 = a[p0 + 2] if p0 + 2 <= i else 0.0
        x2 = xct[p0 + 2] if p0 + 2 <= i else x0
        a3 = a[p0 + 3] if p0 + 3 <= i else 0.0
        x3 = xct[p0 + 3] if p0 + 3 <= i else x0
        last = p0 + 4 > i
        if p0 == 0 and i == 0:
            for r in range(n_rows):
                v = (((-shift + a0 * x0[r]) + a1 * x1[r]) + a2 * x2[r]) + a3 * x3[r]
                maha[r] = v * v
        elif p0 == 0 and last:
            for r in range(n_rows):
                v = (((-shift + a0 * x0[r]) + a1 * x1[r]) + a2 * x2[r]) + a3 * x3[r]
                maha[r] += v * v
        elif p0 == 0:
            for r in range(n_rows):
                y[r] = (((-shift + a0 * x0[r]) + a1 * x1[r]) + a2 * x2[r]) + a3 * x3[r]
        elif last:
            for r in range(n_rows):
                v = (((y[r] + a0 * x0[r]) + a1 * x1[r]) + a2 * x2[r]) + a3 * x3[r]
                maha[r] += v * v
        else:
            for r in range(n_rows):
                y[r] = (((y[r] + a0 * x0[r]) + a1 * x1[r]) + a2 * x2[r]) + a3 * x3[r]


@_jit
def _lower_inverse(chol, out):  # pragma: no cover - compiled
    """L⁻¹ of the lower triangular Cholesky factor ``chol`` into ``out`` (its upper triangle
    zeros), by forward substitution row by row."""
    d = chol.shape[0]
    for i in range(d):
        for col in range(d):
            if col > i:
                out[i, col] = 0.0
                continue
            t = 1.0 if i == col else 0.0
            for p in range(col, i):
                t -= chol[i, p] * out[p, col]
            out[i, col] = t / chol[i, i]


@_jit
def _evaluate(xct, feats, center, w, weights, means, chol, code, diag, prev_covs, reg_covar,
              prec, sums, new_w, new_mu, new_cov, new_chol, lj, rows, bits,
              scale):  # fmt: skip  # pragma: no cover
    """One E-step at (weights, means, chol) and the M-step from it into (new_w, new_mu,
    new_cov, new_chol), on the data about their ``center``, transposed: ``xct`` (D, N), and
    their moment features ``feats`` (:func:`_em_features`: the full set, then the diagonal
    structures').
    Returns (log-likelihood, state, component, value): state RUNNING, or SINGULAR, EMPTY (value:
    its weight) or COLLAPSED (value: its eigenvalue, ``scale`` the features' spreads) with the
    failing component (the numpy loop's rules: an empty component is reported over a singular
    one, and a singular one over a collapsed one).

    As the numpy pass, the statistics are sums about the data's ``center`` (n_k, Σ γ (x − c),
    Σ γ (x − c)(x − c)ᵀ) and the scatter about the new means follows from them; the
    Mahalanobis distances come from L⁻¹ (x − μ), with L⁻¹ computed once. Every loop over the
    rows is innermost, over contiguous memory (a component at a time), and vectorises: the
    exponentials are :func:`_exp_floored`'s, and the sums one product of the responsibilities
    with the features (BLAS; a sum added row by row waits on each addition: the two took
    half the E-step's time)."""
    d, n_rows = xct.shape
    k = weights.shape[0]
    # The caller's scratch (allocated once per run, not per iteration): lj (K, N) log π_k
    # N(x | k), then the responsibilities; rows (3, N); bits (N,) int64.
    y = rows[0]
    top = rows[1]  # each row's largest term
    total = rows[2]
    for r in range(n_rows):
        top[r] = -np.inf
        total[r] = 0.0
    for j in range(k):
        logdet = 0.0
        for i in range(d):
            logdet += math.log(chol[j, i, i])
        lw = math.log(weights[j]) if weights[j] > 0 else -np.inf
        const = lw - logdet - 0.5 * d * _LOG_2PI
        _lower_inverse(chol[j], prec[j])
        maha = lj[j]
        if d <= _SMALL_D:
            _small_maha(xct, prec[j], means[j], center, const, maha, top)
            continue
        for i in range(d):
            shift = 0.0  # (L⁻¹ (μ − c))_i
            for p in range(i + 1):
                shift += prec[j, i, p] * (means[j, p] - center[p])
            if diag:  # L⁻¹'s row i is zero but for a_ii: the general row's sums, bit for bit
                a = prec[j, i, i]
                xi = xct[i]
                if i == 0:
                    for r in range(n_rows):
                        v = -shift + a * xi[r]
                        maha[r] = v * v
                else:
                    for r in range(n_rows):
                        v = -shift + a * xi[r]
                        maha[r] += v * v
            else:
                _maha_row(xct, prec[j, i], i, shift, y, maha)
        for r in range(n_rows):
            maha[r] = const - 0.5 * maha[r]
            if maha[r] > top[r]:
                top[r] = maha[r]
    for j in range(k):
        row = lj[j]
        _exp_floored(row, top, bits)
        for r in range(n_rows):
            total[r] += row[r]
    loglik = 0.0
    unweighted = w.shape[0] == 0
    _log_into(total, n_rows, y, bits)  # (y is free)
    for r in range(n_rows):
        wr = 1.0 if unweighted else w[r]
        loglik += wr * (y[r] + top[r])
        total[r] = wr / total[r]  # now each row's scale
    for j in range(k):
        g = lj[j]
        for r in range(n_rows):
            g[r] *= total[r]
    n_full = 1 + d + d * (d + 1) // 2  # (feats: _em_features's, full then diagonal)
    if diag:
        _sums_diag(feats[n_full:], lj, sums)
    else:
        _sums_into(feats[:n_full], lj, sums)
    state, bad, collapsed = _m_step(sums, center, code, diag, prev_covs, reg_covar, _warm(code),
                                    _PD_RTOL, new_w, new_mu, new_cov, new_chol)  # fmt: skip
    if state == RUNNING:
        bad, collapsed = _collapse(new_cov, new_chol, scale, prec[0])
        if bad >= 0:
            state = COLLAPSED
    return loglik, state, bad, collapsed


@_jit
def _collapse(covs, chol, scale, m):  # pragma: no cover - compiled
    """The component of ``covs`` (K, D, D; ``chol`` their factors) with the smallest eigenvalue
    below COLLAPSE_STOP_RTOL once each feature is divided by its ``scale``, and that eigenvalue;
    (−1, 0.0) when none (_loop.collapsed_components's rule). ``m``: D × D scratch. The
    eigenvalue is computed only where neither of two lower bounds of it clears twice the
    tolerance: det / tr^(D−1), and 1 / tr(Σ⁻¹) = 1 / ‖L⁻¹‖²_F (L⁻¹ by forward substitution,
    D³/6 multiplications; within a factor D of the eigenvalue, where the first is off by
    (tr / λ)^(D−1): at D = 16, on 47 rows, every component of every step was decomposed)."""
    k, d = covs.shape[0], covs.shape[1]
    worst = -1
    low = np.inf
    for j in range(k):
        det = 1.0
        tr = 0.0
        for i in range(d):
            v = chol[j, i, i] / scale[i]
            det *= v * v
            tr += covs[j, i, i] / (scale[i] * scale[i])
        if det >= 2.0 * COLLAPSE_STOP_RTOL * tr ** (d - 1):
            continue
        _lower_inverse(chol[j], m)
        inv_tr = 0.0  # ‖L⁻¹ diag(scale)‖²_F: the standardised covariance's tr(Σ⁻¹)
        for i in range(d):
            for col in range(i + 1):
                y = m[i, col] * scale[col]
                inv_tr += y * y
        if 1.0 >= 2.0 * COLLAPSE_STOP_RTOL * inv_tr:
            continue
        for a in range(d):
            for b in range(d):
                m[a, b] = covs[j, a, b] / (scale[a] * scale[b])
        _jacobi(m, m, False)
        ev = m[0, 0]
        for i in range(1, d):
            if m[i, i] < ev:
                ev = m[i, i]
        if ev < COLLAPSE_STOP_RTOL and ev < low:
            low = ev
            worst = j
    return worst, (low if worst >= 0 else 0.0)


@_jit
def _features(xct):  # pragma: no cover - compiled
    """The rows' moment features (F, N), F = 1 + D + D(D + 1)/2: [1, x − c, the lower triangle
    of (x − c)(x − c)ᵀ row by row], from the data about their centre, transposed (``xct``,
    D × N): the layout of the sums the M-step reads."""
    d, n_rows = xct.shape
    out = np.empty((1 + d + d * (d + 1) // 2, n_rows))
    for r in range(n_rows):
        out[0, r] = 1.0
    for i in range(d):
        out[1 + i] = xct[i]
    f = 1 + d
    for a in range(d):
        xa = xct[a]
        for b in range(a + 1):
            xb = xct[b]
            row = out[f]
            for r in range(n_rows):
                row[r] = xa[r] * xb[r]
            f += 1
    return out


@_jit
def _em_features(xct):  # pragma: no cover - compiled
    """The EM loop's features (F + 1 + 2D, N): :func:`_features`'s F rows, then [1, x − c,
    (x − c)²] again, the diagonal structures' only (:func:`_sums_diag` reads that block)."""
    d, n_rows = xct.shape
    full = _features(xct)
    f = full.shape[0]
    out = np.empty((f + 1 + 2 * d, n_rows))
    for i in range(f):
        out[i] = full[i]
    out[f] = full[0]
    for i in range(d):
        out[f + 1 + i] = full[1 + i]
        out[f + 1 + d + i] = full[1 + d + i * (i + 1) // 2 + i]
    return out


@_jit
def _sums_diag(feats, g, out):  # pragma: no cover - compiled
    """:func:`_sums_into` for the diagonal structures from the features' diagonal block
    [1, x − c, (x − c)²] (1 + 2D rows, :func:`_em_features`): only the sums their M-step reads,
    Σ g, Σ g (x − c) and the diagonal of Σ g (x − c)(x − c)ᵀ (at D = 9, 19 columns of the
    product instead of 55); the off-diagonal entries of ``out`` are zeros (no M-step of theirs
    reads them; the run's scratch would otherwise hold whatever its memory held)."""
    d = (feats.shape[0] - 1) // 2
    part = np.dot(feats, g.T)  # (1 + 2D, K)
    for j in range(out.shape[0]):
        for f in range(1 + d):
            out[j, f] = part[f, j]
        f = 1 + d
        for a in range(d):
            for _ in range(a):
                out[j, f] = 0.0
                f += 1
            out[j, f] = part[1 + d + a, j]
            f += 1


@_jit
def _sums_into(feats, g, out):  # pragma: no cover - compiled
    """The components' sums from their (weighted) responsibilities g (K, N) and the features
    (F, N): out (K, F) = [Σ g, Σ g (x − c) (D), Σ g (x − c)(x − c)ᵀ (lower triangle, row by
    row)], as one product."""
    part = np.dot(feats, g.T)  # (F, K)
    for j in range(out.shape[0]):
        for f in range(out.shape[1]):
            out[j, f] = part[f, j]


@_jit
def _m_step(sums, center, code, diag, prev_covs, reg_covar, limit, rtol, new_w, new_mu,
            new_cov, new_chol):  # fmt: skip  # pragma: no cover - compiled
    """The M-step from a pass's sums about ``center`` (rows [n_k, Σ γ (x − c), packed
    Σ γ (x − c)(x − c)ᵀ]) into (new_w, new_mu, new_cov, new_chol), the iterative structures
    starting from ``prev_covs`` (cold when it has no components) with at most ``limit`` inner
    iterations, and ``rtol`` the factorisation's pivot threshold (see _cholesky). Returns
    (state, component, collapsed weight): RUNNING, or SINGULAR or EMPTY with the failing
    component (an empty component is reported over a singular one)."""
    k = sums.shape[0]
    d = center.shape[0]
    total_n = 0.0
    for j in range(k):
        total_n += sums[j, 0]
    empty = -1
    for j in range(k):
        if sums[j, 0] <= _EMPTY_RTOL * total_n:
            empty = j
            break
    # Scatter about the new means: Σ γ (x − c)(x − c)ᵀ − n_k x̄ x̄ᵀ (x̄ in shifted coordinates).
    scatter = new_cov
    for j in range(k):
        n_j = sums[j, 0]
        c = n_j if n_j > _EMPTY_RTOL * total_n else 1.0
        for i in range(d):
            new_mu[j, i] = sums[j, 1 + i] / c
        _scatter_about(sums, j, new_mu[j], diag, scatter[j])
        for i in range(d):
            new_mu[j, i] += center[i]
        new_w[j] = n_j / total_n
    if empty >= 0:
        return EMPTY, empty, sums[empty, 0] / total_n
    counts = np.empty(k)
    for j in range(k):
        counts[j] = sums[j, 0]
    scat = np.empty_like(scatter)
    _copy(scatter, scat)
    _covariances(code, counts, scat, prev_covs, new_cov, limit)
    bad = _finish_covs(new_cov, reg_covar, new_chol, rtol)
    if bad >= 0:
        return SINGULAR, bad, 0.0
    return RUNNING, -1, 0.0


@_jit
def _warm(code):  # pragma: no cover - compiled
    """_WARM_MAX as a run-time integer: passed as the constant itself, numba would type it as
    the literal 5 and compile _m_step and _covariances (every structure's M-step) a second
    time for it, beside the start's run-time limit (a third of the loop's compile)."""
    return _WARM_MAX if code >= 0 else 0


@_jit
def _scatter_about(sums, j, mean, diag, out):  # pragma: no cover - compiled
    """out (D, D) ← component j's scatter about its mean from a pass's sums about the centre:
    Σ γ (x − c)(x − c)ᵀ − n_j x̄ x̄ᵀ, x̄ = ``mean`` (shifted coordinates); a negative diagonal
    entry (rounding) is 0 for the diagonal structures."""
    d = mean.shape[0]
    n_j = sums[j, 0]
    f = 1 + d
    for a in range(d):
        for b in range(a + 1):
            v = sums[j, f] - n_j * mean[a] * mean[b]
            if diag and a == b and v < 0:
                v = 0.0
            out[a, b] = v
            out[b, a] = v
            f += 1


@_jit
def _finish_covs(covs, reg_covar, chol, rtol):  # pragma: no cover - compiled
    """In place: ``reg_covar`` added to the diagonals; Cholesky factors into ``chol``; the
    first component that is not positive definite, or −1."""
    k, d = covs.shape[0], covs.shape[1]
    bad = -1
    for j in range(k):
        for i in range(d):
            covs[j, i, i] += reg_covar
        if not _cholesky(covs[j], chol[j], rtol) and bad < 0:
            bad = j
    return bad


# -- the loop --------------------------------------------------------------------------------


@_jit
def _run(xct, feats, center, w, code, weights, means, covs, chol, n_iter, until_iter,
         pause_iter, tol, accelerate, step_max, plain_until, scale, reg_covar, trace,
         n_trace):  # fmt: skip  # pragma: no cover
    """Advance one run in place (parameters, trace) until it converges, fails or has done
    ``until_iter`` iterations, or pauses at the end of the first SQUAREM cycle (or plain step)
    after ``pause_iter`` iterations; returns (state, n_iter, component, collapsed weight,
    step_max, trace length). The rules are _Batch.plain_step's, _Batch.extrapolate's and
    _Batch.pause's: a cycle that ends before ``plain_until`` iterations makes no trial."""
    d = xct.shape[0]
    k = weights.shape[0]
    prec = np.empty((k, d, d))
    sums = np.empty((k, 1 + d + d * (d + 1) // 2))
    lj = np.empty((k, xct.shape[1]))  # the E-step's scratch (see _evaluate)
    rows = np.empty((3, xct.shape[1]))
    bits = np.empty(xct.shape[1], dtype=np.int64)
    # Slots 0..2 hold θ0, θ1, θ2 of the SQUAREM cycle in turn; slot 3 the extrapolated trial.
    p_w = np.empty((4, k))
    p_m = np.empty((4, k, d))
    p_c = np.empty((4, k, d, d))
    p_l = np.empty((4, k, d, d))
    # (Flags computed from the code, never passed as constants: a literal argument would make
    # numba compile another specialisation of every function below.)
    nonlinear = (code >= 3 and code <= 4) or (code >= 7 and code <= 12)
    diag = code <= 5
    _copy(weights, p_w[0])
    _copy(means, p_m[0])
    _copy(covs, p_c[0])
    _copy(chol, p_l[0])
    cur = 0  # the slot of the parameters the next step starts from
    phase = 0  # plain steps done in the current SQUAREM cycle
    while True:
        if phase == 0 and n_iter >= pause_iter:  # between cycles: resumed, the same path
            _get(p_w, p_m, p_c, p_l, cur, weights, means, covs, chol)
            return RUNNING, n_iter, -1, 0.0, step_max, n_trace
        nxt = (cur + 1) % 3
        ll, state, bad, collapsed = _evaluate(
            xct, feats, center, w, p_w[cur], p_m[cur], p_l[cur], code, diag, p_c[cur], reg_covar,
            prec, sums, p_w[nxt], p_m[nxt], p_c[nxt], p_l[nxt], lj, rows, bits, scale,
        )  # fmt: skip
        prev = trace[n_trace - 1] if n_trace > 0 else -np.inf
        trace[n_trace] = ll
        n_trace += 1
        if tol > 0 and math.isfinite(prev) and abs(ll - prev) <= tol * abs(ll):
            _get(p_w, p_m, p_c, p_l, cur, weights, means, covs, chol)
            return CONVERGED, n_iter, -1, 0.0, step_max, n_trace
        if state != RUNNING:
            _get(p_w, p_m, p_c, p_l, cur, weights, means, covs, chol)
            return state, n_iter, bad, collapsed, step_max, n_trace
        n_iter += 1
        if n_iter >= until_iter:
            _get(p_w, p_m, p_c, p_l, nxt, weights, means, covs, chol)
            return RUNNING, n_iter, -1, 0.0, step_max, n_trace
        cur = nxt
        if not accelerate:
            continue
        phase += 1
        if phase < 2:
            continue
        phase = 0
        if n_iter < plain_until:
            continue  # on from θ2, the bound as it was
        i0, i1, i2 = (cur + 1) % 3, (cur + 2) % 3, cur
        step_max, trial_ok = _extrapolate(
            p_w, p_m, p_c, p_l, i0, i1, i2, scale, step_max, nonlinear, code
        )
        if not trial_ok:
            continue  # on from θ2
        nxt = i0  # θ0's slot is free: the trial's M-step goes there
        ll, state, bad, collapsed = _evaluate(
            xct, feats, center, w, p_w[3], p_m[3], p_l[3], code, diag, p_c[3], reg_covar, prec,
            sums, p_w[nxt], p_m[nxt], p_c[nxt], p_l[nxt], lj, rows, bits, scale,
        )  # fmt: skip
        ok = state == RUNNING and ll >= trace[n_trace - 1]
        if step_max < 0:  # the step was cut to its bound: the bound learns from the outcome
            step_max = -step_max
            step_max = step_max * 4.0 if ok else max(1.0, step_max / 4.0)
        if ok and n_iter + 1 < until_iter:
            trace[n_trace] = ll
            n_trace += 1
            n_iter += 1
            cur = nxt


@_jit
def _extrapolate(p_w, p_m, p_c, p_l, i0, i1, i2, scale, step_max, nonlinear,
                 code):  # fmt: skip  # pragma: no cover
    """SQUAREM's trial θ' = θ0 − 2αr + α²v into slot 3 (projected onto the structure when it is
    not convex); returns (the step bound, whether the trial is a valid mixture). A bound
    returned negative marks a trial cut to the bound, whose evaluation updates it."""
    k, d = p_m.shape[1], p_m.shape[2]
    rr = 0.0
    vv = 0.0
    for j in range(k):
        a = p_w[i1, j] - p_w[i0, j]
        b = p_w[i2, j] - 2.0 * p_w[i1, j] + p_w[i0, j]
        rr += a * a
        vv += b * b
        for i in range(d):
            a = (p_m[i1, j, i] - p_m[i0, j, i]) / scale[i]
            b = (p_m[i2, j, i] - 2.0 * p_m[i1, j, i] + p_m[i0, j, i]) / scale[i]
            rr += a * a
            vv += b * b
            for q in range(d):
                s = scale[i] * scale[q]
                a = (p_c[i1, j, i, q] - p_c[i0, j, i, q]) / s
                b = (p_c[i2, j, i, q] - 2.0 * p_c[i1, j, i, q] + p_c[i0, j, i, q]) / s
                rr += a * a
                vv += b * b
    nr = math.sqrt(rr)
    nv = math.sqrt(vv)
    alpha = -nr / nv if nv > 0 else -1.0
    alpha = min(max(alpha, -step_max), -1.0)
    capped = alpha == -step_max
    a1 = -2.0 * alpha
    a2 = alpha * alpha
    valid = alpha < -1.0
    for j in range(k):
        x0, x1, x2 = p_w[i0, j], p_w[i1, j], p_w[i2, j]
        p_w[3, j] = x0 + a1 * (x1 - x0) + a2 * (x2 - 2.0 * x1 + x0)
        if p_w[3, j] < 0:
            valid = False
        for i in range(d):
            x0, x1, x2 = p_m[i0, j, i], p_m[i1, j, i], p_m[i2, j, i]
            p_m[3, j, i] = x0 + a1 * (x1 - x0) + a2 * (x2 - 2.0 * x1 + x0)
            for q in range(d):
                x0, x1, x2 = p_c[i0, j, i, q], p_c[i1, j, i, q], p_c[i2, j, i, q]
                p_c[3, j, i, q] = x0 + a1 * (x1 - x0) + a2 * (x2 - 2.0 * x1 + x0)
        for i in range(d):
            for q in range(i):
                s = 0.5 * (p_c[3, j, i, q] + p_c[3, j, q, i])
                p_c[3, j, i, q] = s
                p_c[3, j, q, i] = s
    if valid and nonlinear:
        # Brought back onto the structure: the M-step with S_k = max(π_k, 0) Σ'_k.
        wpos = np.empty(k)
        scat = np.empty((k, d, d))
        for j in range(k):
            wpos[j] = max(p_w[3, j], 0.0)
            for i in range(d):
                for q in range(d):
                    scat[j, i, q] = p_c[3, j, i, q] * wpos[j]
        previous = np.empty_like(p_c[3])
        _copy(p_c[3], previous)
        _covariances(code, wpos, scat, previous, p_c[3], _warm(code))
    if valid:
        for j in range(k):
            if not _cholesky(p_c[3, j], p_l[3, j], _PD_RTOL):
                valid = False
                break
    if capped and not valid:
        # A step cut to the bound: the plain step (bound 1) lets the bound grow; an invalid
        # mixture (a covariance not positive definite, a negative weight) shrinks it.
        step_max = step_max * 4.0 if alpha == -1.0 else max(1.0, step_max / 4.0)
    if not valid:
        return step_max, False
    total = 0.0
    for j in range(k):
        total += p_w[3, j]
    for j in range(k):
        p_w[3, j] /= total
    return (-step_max if capped else step_max), True


@_jit
def _get(p_w, p_m, p_c, p_l, slot, weights, means, covs, chol):  # pragma: no cover
    _copy(p_w[slot], weights)
    _copy(p_m[slot], means)
    _copy(p_c[slot], covs)
    _copy(p_l[slot], chol)


@_jit
def em_runs(todo, xct, feats, center, w_all, w_index, codes, ks, weights, means, covs, chol,
            n_iter, until_iter, pause_iter, tol, accelerate, step_max, plain_until, scales,
            reg_covar, trace, n_trace, state, component,
            collapsed):  # fmt: skip  # pragma: no cover - compiled
    """Advance each run r in ``todo`` (K = ks[r] components of the padded (R, Kmax, ...)
    arrays, in place) on the data about ``center``, transposed (``xct``, D × N), and their
    moment features ``feats`` (:func:`_em_features`, built once by the caller for all threads),
    with the row weights w_all[w_index[r]] (none when w_all has no columns). Threads may share
    the arrays, each with its own runs: the GIL is released."""
    for r in todo:
        k = ks[r]
        code = codes[r]
        st, it, comp, coll, smax, nt = _run(
            xct, feats, center, w_all[w_index[r]], code, weights[r, :k], means[r, :k],
            covs[r, :k], chol[r, :k], n_iter[r], until_iter, pause_iter, tol, accelerate,
            step_max[r], plain_until[r], scales[r], reg_covar, trace[r], n_trace[r],
        )  # fmt: skip
        state[r], n_iter[r], component[r], collapsed[r] = st, it, comp, coll
        step_max[r], n_trace[r] = smax, nt


@_jit
def _map_m_step(sums, center, code, kappa, mu_c, dof, scale, reg_covar, limit, new_w, new_mu,
                new_cov, new_chol):  # fmt: skip  # pragma: no cover - compiled
    """The MAP M-step under the conjugate prior (shrinkage ``kappa``, mean ``mu_c`` about
    ``center``, ``dof``, ``scale`` Λ (D, D)) from a pass's sums, as em.m_step_batch computes it
    with a prior (each structure's MAP in bayesgmm.core.structures), cold, into (new_w, new_mu,
    new_cov, new_chol). Returns True when every covariance is positive definite (no empty
    check: the prior keeps an empty component's covariance valid, as in numpy)."""
    k = sums.shape[0]
    d = center.shape[0]
    diag = code <= 5
    total_n = 0.0
    for j in range(k):
        total_n += sums[j, 0]
    scatter = np.empty((k, d, d))
    off = np.empty(d)
    for j in range(k):
        n_j = sums[j, 0]
        low = n_j <= _EMPTY_RTOL * total_n
        c = 1.0 if low else n_j
        for i in range(d):
            xbar = sums[j, 1 + i] / c
            new_mu[j, i] = xbar  # x̄ for now (shifted coordinates)
            off[i] = 0.0 if low else xbar - mu_c[i]
        coef = kappa * n_j / (kappa + n_j)
        _scatter_about(sums, j, new_mu[j], diag, scatter[j])
        for a in range(d):
            for b in range(d):
                scatter[j, a, b] += coef * off[a] * off[b]
        for i in range(d):
            new_mu[j, i] = (sums[j, 1 + i] + kappa * mu_c[i]) / (n_j + kappa) + center[i]
        new_w[j] = n_j / total_n
    # Every structure's MAP is its maximum-likelihood M-step on MAP terms n'_k and W'_k: the
    # coupled ones' (and VVV's, VVI's) n_k + ν + d + 2 and W_k + Λ, or n_k + ν + 3 and W_k + diag
    # Λ; the closed forms of mclust's conventions (structures.py) spread their prior terms over
    # the k components: EII λ = (ς² + Σ tr W_k) / ((n + k) d + ν + 2) with ς² = tr Λ / d is the
    # pooled ML λ = Σ tr W'_k / (d Σ n'_k) for W'_k = W_k + ς²/(k d) I, n'_k = n_k + 1 +
    # (ν + 2)/(k d); likewise VII (k = 1 in those terms), EEI (n + k + ν + 2, diag Λ), EEE
    # (n + k + ν + d + 1, Λ).
    tr_scale = 0.0
    for i in range(d):
        tr_scale += scale[i, i]
    if code == 0 or code == 1:  # EII, VII (E, V): ς² I spread over the components
        share = 1.0 if code == 1 else float(k)
        add_n = 1.0 + (dof + 2.0) / (share * d)
        spherical = tr_scale / d / (share * d)
        frac = 0.0
    elif code == 2:  # EEI
        add_n, spherical, frac = 1.0 + (dof + 2.0) / k, 0.0, 1.0 / k
    elif code == 6:  # EEE
        add_n, spherical, frac = 1.0 + (dof + d + 1.0) / k, 0.0, 1.0 / k
    else:  # VVI and the diagonal coupled ones; VVV and the full coupled ones
        add_n, spherical, frac = (dof + 3.0 if diag else dof + d + 2.0), 0.0, 1.0
    counts = np.empty(k)
    for j in range(k):
        counts[j] = sums[j, 0] + add_n
        for a in range(d):
            scatter[j, a, a] += spherical + frac * scale[a, a]
            if not diag:
                for b in range(d):
                    if b != a:
                        scatter[j, a, b] += frac * scale[a, b]
    _covariances(code, counts, scatter, np.empty((0, d, d)), new_cov, limit)
    return _finish_covs(new_cov, reg_covar, new_chol, 0.0) < 0


@_jit
def start_steps(todo, center, codes, ks, offsets, sums_all, reg_covar, limit, weights, means,
                covs, chol, state, component, collapsed, rescue, kappa, mu_c, dof,
                scales, rescued):  # fmt: skip  # pragma: no cover
    """The first M-step of each start r in ``todo``: from its components' sums
    sums_all[offsets[r] : offsets[r] + ks[r]] (:func:`_sums_into`'s layout, about ``center``),
    cold, with at most ``limit`` inner iterations, into the padded (R, Kmax, ...) arrays;
    state[r] RUNNING, or SINGULAR or EMPTY with the failing component. A start that fails
    gets the MAP step under the conjugate prior (κ ``kappa``, mean ``mu_c`` about ``center``,
    ``dof``, scale scales[K]) when rescue[K]; rescued[r] is 1 when that step is valid (state
    keeps the maximum-likelihood failure). Threads may share the arrays, each with its own
    starts."""
    d = center.shape[0]
    no_previous = np.empty((0, d, d))
    for r in todo:
        k = ks[r]
        off = offsets[r]
        code = codes[r]
        st, bad, coll = _m_step(
            sums_all[off : off + k], center, code, code <= 5, no_previous, reg_covar, limit,
            0.0, weights[r, :k], means[r, :k], covs[r, :k], chol[r, :k],
        )  # fmt: skip
        state[r], component[r], collapsed[r] = st, bad, coll
        if st != RUNNING and rescue[k]:
            ok = _map_m_step(
                sums_all[off : off + k], center, code, kappa, mu_c, dof, scales[k], reg_covar,
                limit, weights[r, :k], means[r, :k], covs[r, :k], chol[r, :k],
            )  # fmt: skip
            rescued[r] = 1 if ok else 0


def advance_runs(
    X: np.ndarray,
    runs: list,
    until_iter: int,
    *,
    w: np.ndarray | None,
    reg_covar: float,
    tol: float,
    accelerate: bool,
    scale: np.ndarray | None,
    center: np.ndarray,
    pause_at: int | None = None,
) -> None:
    """:func:`bayesgmm.core._loop.iterate` for runs the compiled loop covers (see the module's
    docstring): every run advanced on its own, the results written back into each Run."""
    from bayesgmm.core.em import BatchRow

    r_all = len(runs)
    d = X.shape[1]
    # What the loop needs of each run, in one pass over the runs (one per field cost ~1 µs a
    # run on the 2-core VM, a few thousand runs a grid): K (no BatchRow views), the structure's
    # code, iterations, SQUAREM's bound, and the trace's last log-likelihood (the loop reads
    # only that one: its convergence test and SQUAREM's; what the call adds is appended to
    # each Run's trace).
    fields = [
        (r.k, CODES[r.structure.name], r.n_iter, r.step_max, r.plain_until, len(r.trace) > 0,
         r.trace[-1] if r.trace else np.nan)
        for r in runs
    ]  # fmt: skip
    ks_l, codes_l, iters_l, steps_l, plain_l, had_l, last_l = zip(*fields, strict=True)
    ks = np.array(ks_l, dtype=np.int64)
    kmax = int(ks.max())
    weights, means, covs, chol = pack_params([r.params for r in runs], ks, kmax)
    codes = np.array(codes_l, dtype=np.int64)
    n_iter = np.array(iters_l, dtype=np.int64)
    step_max = np.array(steps_l, dtype=np.float64)
    plain_until = np.array(plain_l, dtype=np.int64)
    own = runs[0].row_weight is not None
    if own:
        w_all = np.stack([r.row_weight for r in runs]).astype(np.float64, copy=False)
        w_index = np.arange(r_all, dtype=np.int64)
        scales = np.stack([r.scale for r in runs])
    else:
        w_all = np.empty((1, 0)) if w is None else np.asarray(w, dtype=np.float64)[None]
        w_index = np.zeros(r_all, dtype=np.int64)
        s = np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64)
        scales = np.broadcast_to(s, (r_all, d))
    had = np.array(had_l, dtype=np.int64)
    n_trace = had.copy()
    pause = until_iter if pause_at is None else min(int(pause_at), until_iter)
    # (A paused run ends its SQUAREM cycle: up to 2 iterations past ``pause``.)
    trace = np.empty((r_all, max(min(until_iter, pause + 2) - int(n_iter.min()) + 3, 1)))
    trace[:, 0] = last_l
    state = np.zeros(r_all, dtype=np.int64)
    component = np.full(r_all, -1, dtype=np.int64)
    collapsed = np.zeros(r_all)
    xct = _plain((X - center).T)
    args = (
        xct, _em_features(xct), _plain(center), _plain(w_all), w_index,
        codes, ks, weights, means, covs, chol, n_iter, int(until_iter), pause, float(tol),
        bool(accelerate), step_max, plain_until, _plain(scales), float(reg_covar), trace,
        n_trace, state, component, collapsed,
    )  # fmt: skip
    _in_threads(em_runs, ks, args)
    # Each run's parameters become views of this call's arrays (fresh ones each call: no later
    # call writes into them).
    arrays = (weights, means, covs, chol)
    # The new log-likelihoods of all runs as one list (run after run), each run's a slice of it.
    cols = np.arange(int(n_trace.max()))
    added = trace[:, : cols.shape[0]][(cols >= had[:, None]) & (cols < n_trace[:, None])].tolist()
    ends = np.cumsum(n_trace - had)
    for run, i, k, start, stop, it, smax, st in zip(
        runs, range(r_all), ks.tolist(), (ends - (n_trace - had)).tolist(), ends.tolist(),
        n_iter.tolist(), step_max.tolist(), state.tolist(), strict=True,
    ):  # fmt: skip
        run.params = BatchRow(arrays, i, k)
        run.trace.extend(added[start:stop])
        run.n_iter, run.step_max = it, smax
        if st == CONVERGED:
            run.converged = True
        elif st == SINGULAR:
            run.reason = (
                f"component {component[i]}: its covariance became singular (points tied or "
                "duplicated)"
            )
        elif st == EMPTY:
            run.reason = (
                f"component {component[i]}: its weight collapsed to {collapsed[i]:.2g} (empty)"
            )
        elif st == COLLAPSED:
            run.reason = f"component {component[i]}: {collapse_text(collapsed[i])}"


def collapse_text(value: float) -> str:
    """Why a run stopped on a collapsed component (its eigenvalue ``value``, standardised)."""
    return (
        f"its covariance collapsed (an eigenvalue {value:.2g} times the data's variance: it sits "
        "on tied or duplicated points)"
    )


def pack_params(
    params: list[Any], ks: np.ndarray, kmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mixtures ``params`` (batches of one, K = ks[i] components) as padded (R, kmax, ...)
    arrays of weights, means, covariances and Cholesky factors (what lies beyond a mixture's K
    is not read: zeros, or its earlier batch's padding). Those
    that are rows of an earlier batch (:class:`~bayesgmm.core.em.BatchRow`) are gathered from it
    a batch at a time, the others copied a K at a time (one copy per array and batch or K, not
    per run: on small data the grid's thousands of short runs made a per-run packing a tenth of
    select_em's time)."""
    from bayesgmm.core.em import BatchRow

    rows: dict[int, tuple[tuple[np.ndarray, ...], list[int], list[int]]] = {}
    loose: dict[int, list[int]] = {}
    for i, (p, k) in enumerate(zip(params, ks.tolist(), strict=True)):
        if type(p) is BatchRow:
            group = rows.get(id(p.arrays))
            if group is None:
                group = rows[id(p.arrays)] = (p.arrays, [], [])
            group[1].append(i)
            group[2].append(p.row)
        else:
            loose.setdefault(k, []).append(i)
    # Each group a block of rows taken at once (numpy's take; a fancy-indexed assignment into
    # the padded arrays cost 30 times as much: 2 ms for diabetes's 2,027 runs), then the blocks
    # in the runs' order.
    blocks: list[tuple[np.ndarray, ...]] = []
    order: list[list[int]] = []
    for arrays, dst, src in rows.values():
        # (Their padding beyond each run's K comes along: the loop reads only a run's K.)
        of = np.asarray(src)
        blocks.append(tuple(_padded(b[of], kmax) for b in arrays))
        order.append(dst)
    for idx in loose.values():
        ps = [params[i] for i in idx]
        blocks.append(
            tuple(
                _padded(np.concatenate([getattr(p, name) for p in ps]), kmax)
                for name in ("weights", "means", "covs", "chol")
            )
        )
        order.append(idx)
    if len(blocks) == 1 and order[0] == list(range(len(params))):
        return blocks[0]  # type: ignore[return-value]
    where = np.argsort(np.concatenate([np.asarray(o, dtype=np.intp) for o in order]))
    out = tuple(np.concatenate([b[a] for b in blocks])[where] for a in range(4))
    return out  # type: ignore[return-value]


def _padded(a: np.ndarray, kmax: int) -> np.ndarray:
    """Rows of a batch (R, K, ...) as C-contiguous (R, kmax, ...): cut to kmax, or padded with
    zeros (``a``, a fresh array, itself when it has kmax components and is C-contiguous: the
    loop writes each run's parameters back through flat views, which an array in another order
    would only copy: a start whose means were a Fortran-ordered array, as pandas' to_numpy
    gives, came back with its first means and its last covariances)."""
    if a.shape[1] == kmax:
        return np.ascontiguousarray(a)
    if a.shape[1] > kmax:
        return np.ascontiguousarray(a[:, :kmax])
    out = np.zeros((a.shape[0], kmax) + a.shape[2:])
    out[:, : a.shape[1]] = a
    return out


# -- one pass over large data (bayesgmm.core._passes.run_pass) -----------------------------------
#
# numpy's pass builds each chunk's feature matrix, multiplies, normalises and multiplies again,
# each step a sweep over a few MB: the operands fall out of the core's cache between the steps,
# BLAS re-packs them, and ~25 calls per chunk hold the GIL between them. Here a chunk is one
# call, its rows taken a block at a time (a few hundred, so that the block's features stay in
# cache for both products), and the products themselves are still BLAS's (np.dot).

_LOG2E = 1.4426950408889634
# ln 2 in two parts (Cody and Waite): k·_LN2_HI is exact for the |k| ≤ 87 that occur here.
_LN2_HI = 0.693145751953125
_LN2_LO = 1.42860682030941723212e-6
_ROUNDER = 6755399441055744.0  # 1.5 · 2⁵²
_TINY = 2.2250738585072014e-308  # the smallest normal float64
_TWO54 = 18014398509481984.0
_SQRT2 = math.sqrt(2.0)
_MANTISSA = 0x000FFFFFFFFFFFFF
_EXP_ONE = 0x3FF0000000000000
#: The exponential's polynomial with fused multiply-adds (LLVM's ``contract``, the only fast-math
#: liberty taken: each a·r + c then rounds once instead of twice, so it stays within 1 ulp of
#: numpy's exp), which halves its cost: 2.1 → 0.9 ns a value, with the rounding trick above.
_jit_fma = njit(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})


@_jit_fma
def _exp_floored(a, shift, bits):  # pragma: no cover - compiled
    """In place: a ← exp(a − shift), with exactly 0 where a − shift ≤ _LOG_FLOOR (as the numpy
    pass) and NaN kept (the subtraction of each row's largest term done here, not in a sweep
    of its own). exp as 2^k · p(r), r = x − k ln 2 in [−ln2/2, ln2/2] and p its Taylor
    polynomial of degree 13 (truncation < 2e-16 of the result; within 1 ulp of numpy's exp),
    written so that the loop vectorises (libm's exp, called one value at a time, costs about
    five times as much). ``bits`` is int64 scratch of at least a's length."""
    n = a.shape[0]
    for i in range(n):
        x = a[i] - shift[i]
        keep = x > _LOG_FLOOR
        xs = x if keep else _LOG_FLOOR
        # k = round(xs · log2 e) by the 1.5 · 2⁵² trick (the sum's rounding drops the fraction):
        # a floor() call stops the loop vectorising as well.
        k = (xs * _LOG2E + _ROUNDER) - _ROUNDER
        r = (xs - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        a[i] = p if keep else (0.0 if x <= _LOG_FLOOR else math.nan)
        bits[i] = (np.int64(k) + 1023) << 52  # 2^k, as the bits of a float64
    scale = bits[:n].view(np.float64)
    for i in range(n):
        a[i] *= scale[i]


@_jit_fma
def _log_into(a, n, out, bits):  # pragma: no cover - compiled
    """out[:n] ← log(a[:n]), within 2 ulp of numpy's log, vectorisable (libm's log, called one
    value at a time, cost 3.7 ns a value against 1.7): a = 2^e · m with m in [√2/2, √2), then
    log m = 2 atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.172, by its Taylor series to s²¹
    (truncation below 1e-17 of the result), and e · ln 2 in two parts. Subnormal values are
    scaled first; log 0 = −inf, log inf = inf, NaN for NaN and negative values. ``bits`` is
    int64 scratch of at least ``n`` values; ``out`` may not be ``a``. (Whole arrays and a
    count, not slices: a view of a slice, ``out[:n].view(...)``, stopped the loops vectorising,
    4 ns a value.)"""
    for i in range(n):
        x = a[i]
        out[i] = x * _TWO54 if x < _TINY else x
    ob = out.view(np.int64)
    for i in range(n):
        bits[i] = (ob[i] & _MANTISSA) | _EXP_ONE  # the mantissa as a number in [1, 2)
    mv = bits.view(np.float64)
    for i in range(n):
        x = a[i]
        e = float((ob[i] >> 52) - 1023) - (54.0 if x < _TINY else 0.0)
        m = mv[i]
        big = m > _SQRT2
        m = 0.5 * m if big else m
        e = e + 1.0 if big else e
        f = m - 1.0
        t = f / (2.0 + f)
        z = t * t
        p = 1.0 / 21.0
        p = p * z + 1.0 / 19.0
        p = p * z + 1.0 / 17.0
        p = p * z + 1.0 / 15.0
        p = p * z + 1.0 / 13.0
        p = p * z + 1.0 / 11.0
        p = p * z + 1.0 / 9.0
        p = p * z + 1.0 / 7.0
        p = p * z + 1.0 / 5.0
        p = p * z + 1.0 / 3.0
        r = e * _LN2_HI + ((2.0 * t + 2.0 * t * (z * p)) + e * _LN2_LO)
        ok = x > 0.0 and x < np.inf
        out[i] = r if ok else (-np.inf if x == 0.0 else (np.inf if x == np.inf else np.nan))


@_jit
def pass_chunk(X, lo, hi, center, coef, n_batch, diag, w, want_sums, block, sums, loglik,
               resp, logp):  # fmt: skip  # pragma: no cover - compiled
    """Rows lo..hi of ``X`` (N, D) through the pass of :func:`bayesgmm.core._passes.run_pass`
    for a batch of R = ``n_batch`` mixtures, given its ``coef`` (M, F) (M = R·K components,
    component-major; features of kind "full", or "diag" when ``diag``, about ``center``).
    Adds Σ_n w_n log p(x_n) of each mixture to ``loglik`` (R,) and, when ``want_sums``, the
    sums [second moments | Σ γ (x − c) | Σ γ] of each component to ``sums`` (M, F). ``w`` is
    (0, 0) for unit weights, (1, N) for one weight vector, (R, N) for one per mixture. Writes
    p(z_n = m | x_n) into ``resp`` (N, M) and log p(x_n) into ``logp`` (N, R) unless they are
    (0, 0)."""
    d = X.shape[1]
    m, f = coef.shape
    k = m // n_batch
    t = f - d - 1
    bits = np.empty(block, dtype=np.int64)
    top = np.empty(block)
    total = np.empty(block)
    logs = np.empty(block)
    for b0 in range(lo, hi, block):
        b1 = min(b0 + block, hi)
        nb = b1 - b0
        feats = np.empty((f, nb))
        for i in range(d):
            c = center[i]
            row = feats[t + i]
            for r in range(nb):
                row[r] = X[b0 + r, i] - c
        q = 0
        for i in range(d):
            xi = feats[t + i]
            for j in range(i, i + 1 if diag else d):
                xj = feats[t + j]
                row = feats[q]
                for r in range(nb):
                    row[r] = xi[r] * xj[r]
                q += 1
        ones = feats[f - 1]
        for r in range(nb):
            ones[r] = 1.0
        lj = np.dot(coef, feats)  # log p(x, z = m), (M, nb)
        for rr in range(n_batch):
            for r in range(nb):
                top[r] = -np.inf
            for j in range(k):
                row = lj[j * n_batch + rr]
                for r in range(nb):
                    if row[r] > top[r]:
                        top[r] = row[r]
            for r in range(nb):
                total[r] = 0.0
            for j in range(k):
                row = lj[j * n_batch + rr]
                _exp_floored(row, top, bits)
                for r in range(nb):
                    total[r] += row[r]
            acc = 0.0
            _log_into(total, nb, logs, bits)
            if w.shape[0] == 0:
                for r in range(nb):
                    acc += logs[r] + top[r]
            else:
                wr = w[min(rr, w.shape[0] - 1)]
                for r in range(nb):
                    acc += wr[b0 + r] * (logs[r] + top[r])
            loglik[rr] += acc
            if logp.shape[0] > 0:
                for r in range(nb):
                    logp[b0 + r, rr] = logs[r] + top[r]
            for r in range(nb):
                total[r] = 1.0 / total[r]
            if resp.shape[0] > 0:
                for j in range(k):
                    row = lj[j * n_batch + rr]
                    col = j * n_batch + rr
                    for r in range(nb):
                        resp[b0 + r, col] = row[r] * total[r]
            if want_sums and w.shape[0] > 0:
                for r in range(nb):
                    total[r] *= wr[b0 + r]
            if want_sums:
                for j in range(k):
                    row = lj[j * n_batch + rr]
                    for r in range(nb):
                        row[r] *= total[r]
        if want_sums:
            part = np.dot(feats, lj.T)  # (F, M)
            for j in range(m):
                for q in range(f):
                    sums[j, q] += part[q, j]


@_jit
def log_map_sum(resp, w):  # pragma: no cover - compiled
    """Σ_n w_n log max(max_k resp[n, k], tiny) (ICL's hard-assignment term; ``w`` empty for unit
    weights), one pass over the rows: numpy's row maxima of a long (N, K) matrix with few
    columns cost 50-100 ms at 10⁶ rows, as much as the pass that computed it."""
    n, k = resp.shape
    tiny = 2.2250738585072014e-308
    acc = 0.0
    for r in range(n):
        top = resp[r, 0]
        for j in range(1, k):
            if resp[r, j] > top:
                top = resp[r, j]
        v = math.log(top if top > tiny else tiny)
        acc += v if w.shape[0] == 0 else w[r] * v
    return acc


# -- the hierarchical tree (bayesgmm.core.hc.hierarchical_tree, VVV criterion) ---------------


@_jit
def _logaddexp(a, b):  # pragma: no cover - compiled
    """numpy's logaddexp."""
    if a == b:
        return a + math.log(2.0)
    t = a - b
    if t > 0:
        return a + math.log1p(math.exp(-t))
    return b + math.log1p(math.exp(t))


@_jit
def _hc_term(n, w, ridge, scaled):  # pragma: no cover - compiled
    """A cluster's term n log(det(W/n) + (tr W + α)/n), the determinant 0 while n ≤ d (hc._cost)."""
    d = w.shape[0]
    tr = 0.0
    for i in range(d):
        tr += w[i, i]
    log_term = math.log((tr + ridge) / n)
    if n > d:
        for a in range(d):
            for b in range(d):
                scaled[a, b] = w[a, b] / n
        sign, logdet = _slogdet(scaled)
        if sign > 0:
            log_term = _logaddexp(logdet, log_term)
    return n * log_term


@_jit
def _hc_pair(i, o, counts, means, W, own, ridge, wm, scaled):  # pragma: no cover - compiled
    """The cost of merging the clusters in positions i and o (hc's merge_costs, same order of
    operations)."""
    d = means.shape[1]
    n_i, n_o = counts[i], counts[o]
    n = n_i + n_o
    coef = n_i * n_o / n
    for a in range(d):
        da = means[o, a] - means[i, a]
        for b in range(d):
            wm[a, b] = W[i, a, b] + W[o, a, b] + coef * da * (means[o, b] - means[i, b])
    return _hc_term(n, wm, ridge, scaled) - (own[i] + own[o])


@_jit
def _hc_rescan(j, cost, col_min, col_arg):  # pragma: no cover - compiled
    """Column j's least cost among rows 0..j−1 and the last row that has it."""
    col_min[j] = np.inf
    col_arg[j] = 0
    if j == 0:
        return
    best = np.inf
    arg = j - 1
    for r in range(j - 1, -1, -1):  # from the last row: the last of equal costs wins
        if cost[r, j] < best:
            best = cost[r, j]
            arg = r
    col_min[j], col_arg[j] = cost[arg, j], arg


@_jit
def _sq_distances(Z, c, out):  # pragma: no cover - compiled
    """out ← each row's Σ over the features of (z − c)², in order (init._sq_distances)."""
    n, d = Z.shape
    for i in range(n):
        t = Z[i, 0] - c[0]
        acc = t * t
        for f in range(1, d):
            t = Z[i, f] - c[f]
            acc += t * t
        out[i] = acc


@_jit
def partition_ranks(labels, out, counts):  # pragma: no cover - compiled
    """Each row of ``labels`` (M, N) renamed in order of first appearance into ``out`` (int32),
    and its number of distinct labels into ``counts`` (select._partition_keys's ranks)."""
    m, n = labels.shape
    for i in range(m):
        row = labels[i]
        lo = row[0]
        hi = row[0]
        for j in range(n):
            lo = min(lo, row[j])
            hi = max(hi, row[j])
        rank = np.full(hi - lo + 1, -1, dtype=np.int32)
        seen = 0
        for j in range(n):
            v = row[j] - lo
            if rank[v] < 0:
                rank[v] = seen
                seen += 1
            out[i, j] = rank[v]
        counts[i] = seen


@_jit
def kmeans_seeds(Z, firsts, uniforms, labels):  # pragma: no cover - compiled
    """k-means++ seedings of the rows ``Z`` (init.kmeans_plus_plus_many's, with the same
    arithmetic), K = uniforms.shape[1] + 1, seeding r from its first row firsts[r] and its
    uniform draws uniforms[r], into labels[r] (each row's nearest seed, the first of equally
    near ones). Returns False, at once, when a seeding finds every row on a seed already (its
    draw would then have been a row, not a uniform)."""
    n = Z.shape[0]
    k = uniforms.shape[1] + 1
    closest = np.empty(n)
    dist = np.empty(n)
    cdf = np.empty(n)
    for r in range(firsts.shape[0]):
        # Each row's nearest seed as the seeds come: the distances to seed 0, then each
        # nearer seed's (the first of equally near ones).
        _sq_distances(Z, Z[firsts[r]], closest)
        for i in range(n):
            labels[r, i] = 0
        for j in range(1, k):
            # numpy's cumsum(closest)[-1], then cumsum(closest / total) / its last entry
            total = closest[0]
            for i in range(1, n):
                total += closest[i]
            if total <= 0:
                return False
            acc = closest[0] / total
            cdf[0] = acc
            for i in range(1, n):
                acc += closest[i] / total
                cdf[i] = acc
            last = cdf[n - 1]
            u = uniforms[r, j - 1]
            pick = 0  # searchsorted(cdf / last, u, side="right")
            for i in range(n):
                if cdf[i] / last <= u:
                    pick = i + 1
                else:
                    break
            _sq_distances(Z, Z[pick], dist)
            for i in range(n):
                if dist[i] < closest[i]:
                    closest[i] = dist[i]
                    labels[r, i] = j
    return True


@_jit
def hc_merges(Z, ridge):  # pragma: no cover - compiled
    """hc.hierarchical_tree's merges (criterion VVV) for the rows of Z with regularisation
    ``ridge`` (α already scaled): the same bookkeeping, tie rules and order of operations."""
    m, d = Z.shape
    counts = np.ones(m)
    means = Z.copy()
    W = np.zeros((m, d, d))
    own = np.empty(m)
    wm = np.empty((d, d))
    scaled = np.empty((d, d))
    for r in range(m):
        own[r] = _hc_term(1.0, W[r], ridge, scaled)
    rep = np.arange(m)
    cost = np.full((m, m), np.inf)
    for j in range(1, m):
        for i in range(j):
            cost[i, j] = _hc_pair(j, i, counts, means, W, own, ridge, wm, scaled)
    col_min = np.full(m, np.inf)
    col_arg = np.zeros(m, dtype=np.int64)
    for j in range(m):
        _hc_rescan(j, cost, col_min, col_arg)
    merges = np.empty((max(m - 1, 0), 2), dtype=np.int64)
    delta = np.empty(d)
    for stage in range(m - 1):
        g = m - stage
        j = g - 1
        best = col_min[j]
        for y in range(g - 2, -1, -1):  # the largest j among equal least costs
            if col_min[y] < best:
                best = col_min[y]
                j = y
        i = col_arg[j]
        merges[stage, 0], merges[stage, 1] = rep[i], rep[j]
        n_i, n_j = counts[i], counts[j]
        coef = n_i * n_j / (n_i + n_j)
        for a in range(d):
            delta[a] = means[j, a] - means[i, a]
        for a in range(d):
            for b in range(d):
                W[i, a, b] = W[i, a, b] + W[j, a, b] + coef * (delta[a] * delta[b])
        for a in range(d):
            means[i, a] = (n_i * means[i, a] + n_j * means[j, a]) / (n_i + n_j)
        counts[i] = n_i + n_j
        own[i] = _hc_term(counts[i], W[i], ridge, scaled)
        top = g - 1
        if j != top:  # the cluster in the last position moves into position j
            counts[j], own[j], rep[j] = counts[top], own[top], rep[top]
            for a in range(d):
                means[j, a] = means[top, a]
                for b in range(d):
                    W[j, a, b] = W[top, a, b]
            for r in range(j):
                cost[r, j] = cost[r, top]
            for c in range(j + 1, top):
                cost[j, c] = cost[c, top]
        for r in range(m):
            cost[r, top] = np.inf
            cost[top, r] = np.inf
        col_min[top] = np.inf
        if g <= 2:
            continue
        for o in range(top):
            if o == i:
                continue
            v = _hc_pair(i, o, counts, means, W, own, ridge, wm, scaled)
            if o < i:
                cost[o, i] = v
            else:
                cost[i, o] = v
        lo = i
        _hc_rescan(i, cost, col_min, col_arg)
        if j != top:
            _hc_rescan(j, cost, col_min, col_arg)
            lo = min(i, j)
        r1, r2 = min(i, j), max(i, j)
        for y in range(lo + 1, top):
            if y == i or y == j:
                continue
            held = col_arg[y] == i or (j != top and col_arg[y] == j)
            if held:
                _hc_rescan(y, cost, col_min, col_arg)
                continue
            rows = (r1, r2) if j != top else (i, i)
            for t in range(2 if j != top else 1):
                r = rows[t]
                if y > r:
                    v = cost[r, y]
                    if v < col_min[y] or (v == col_min[y] and r > col_arg[y]):
                        col_min[y] = v
                        col_arg[y] = r
    return merges


def distinct_columns(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The distinct arrays of a list (the same object counted once: select_em offers each start
    to every structure) and, for each array of the list, the first column of its block once
    the distinct ones are laid side by side."""
    at_of: dict[int, int] = {}
    distinct: list[np.ndarray] = []
    offsets = []
    width = 0
    for a in arrays:
        at = at_of.get(id(a))
        if at is None:
            at = at_of[id(a)] = width
            distinct.append(a)
            width += a.shape[1]
        offsets.append(at)
    return distinct, offsets


def first_steps(
    X: np.ndarray,
    starts: list[tuple[str, np.ndarray]],
    w: np.ndarray | None,
    reg_covar: float,
    limit: int,
    rescue: Mapping[int, Any] | None = None,
) -> list[tuple[Any, int, float]]:
    """The first M-step of each (structure name, responsibilities (N, K)) start, cold with at
    most ``limit`` inner iterations, about the data's mean, as em.m_step_batch computes it
    for a start. Per start: (its Params, a batch of one, −1, 0.0) when it gives a valid
    mixture; (None, j, weight) when component j is empty (its weight share); (None, j, −1.0)
    when component j's covariance is singular. ``rescue`` maps K to a resolved conjugate prior
    (or None): a start with K components whose maximum-likelihood step fails gets the MAP step
    under it instead (em.m_step_batch with that prior), and its failure stands only when that
    step fails too."""
    from bayesgmm.core.em import BatchRow

    r_all = len(starts)
    d = X.shape[1]
    ks = np.array([resp.shape[1] for _, resp in starts], dtype=np.int64)
    # A start shared by several structures (select_em's, the same array for each) is
    # transposed, and its sums computed, once: each start reads its block of rows.
    distinct, at = distinct_columns([resp for _, resp in starts])
    offsets = np.asarray(at, dtype=np.int64)
    # (Σ K of the distinct starts, N), rows contiguous as the product has always read them,
    # each start's block copied into place (a concatenation then a transposed copy took twice
    # as long for the grid's thousands of starts)
    respt = np.empty((sum(a.shape[1] for a in distinct), X.shape[0]))
    row = 0
    for a in distinct:
        respt[row : row + a.shape[1]] = a.T
        row += a.shape[1]
    center = X.mean(axis=0)
    if w is not None:
        respt *= w
    sums_all = respt @ _features(_plain((X - center).T)).T  # (Σ K, F), one product
    codes = np.array([CODES[name] for name, _ in starts], dtype=np.int64)
    kmax = int(ks.max())
    weights = np.zeros((r_all, kmax))
    means = np.zeros((r_all, kmax, d))
    covs = np.zeros((r_all, kmax, d, d))
    chol = np.zeros((r_all, kmax, d, d))
    state = np.zeros(r_all, dtype=np.int64)
    component = np.full(r_all, -1, dtype=np.int64)
    collapsed = np.zeros(r_all)
    # The rescue's prior per K: only its scale depends on K (κ, μ and ν are the data's).
    can = np.zeros(kmax + 1, dtype=np.bool_)
    scales = np.zeros((kmax + 1, d, d))
    kappa, mu_c, dof = 0.0, np.zeros(d), 0.0
    for k, prior in (rescue or {}).items():
        if prior is not None and k <= kmax:
            can[k] = True
            scales[k] = prior.terms.scale
            kappa, dof = float(prior.shrinkage), float(prior.terms.dof)
            mu_c = _plain(np.asarray(prior.mean, dtype=np.float64) - center)
    rescued = np.zeros(r_all, dtype=np.int64)
    args = (
        _plain(center), codes, ks, offsets, sums_all, float(reg_covar), int(limit), weights,
        means, covs, chol, state, component, collapsed, can, kappa, mu_c, dof, scales, rescued,
    )  # fmt: skip
    _in_threads(start_steps, ks, args)
    # The factorisation above accepts any positive pivot; where one is below _PD_RTOL of its
    # diagonal entry, LAPACK's (which the numpy start uses, and the final model will) decides.
    valid = (state == RUNNING) | (rescued == 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # (the padding's zeros)
        ratio = np.diagonal(chol, axis1=-2, axis2=-1) ** 2 / np.diagonal(covs, axis1=-2, axis2=-1)
    close = valid & (np.where(ratio > 0, ratio, 1.0) < _PD_RTOL).any(axis=(1, 2))
    suspects = np.flatnonzero(close).tolist()
    if suspects:
        # All their components in one LAPACK call; one at a time only when some fails (a
        # call per component was a tenth of this function's time on diabetes).
        try:
            np.linalg.cholesky(np.concatenate([covs[r, : ks[r]] for r in suspects]))
            suspects = []
        except np.linalg.LinAlgError:
            pass
    for r in suspects:
        for j in range(int(ks[r])):
            try:
                np.linalg.cholesky(covs[r, j])
            except np.linalg.LinAlgError:
                if rescued[r]:
                    rescued[r] = 0  # the maximum-likelihood failure stands
                else:
                    state[r], component[r] = SINGULAR, j
                valid[r] = False
                break
    out: list[tuple[Any, int, float]] = []
    arrays = (weights, means, covs, chol)
    for i, (k, ok) in enumerate(zip(ks.tolist(), valid.tolist(), strict=True)):
        if ok:
            out.append((BatchRow(arrays, i, k), -1, 0.0))
        else:
            out.append(
                (None, int(component[i]), float(collapsed[i]) if state[i] == EMPTY else -1.0)
            )
    return out


#: Threads the compiled loop may use (1 in forked worker processes, which share the cores).
def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says, as in a
    container limited to a few of the machine's cores), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


_THREADS = {"n": _usable_cores()}


def threads(n: int | None = None) -> int:
    """The compiled loop's thread count; with ``n``, set it first."""
    if n is not None:
        _THREADS["n"] = max(1, int(n))
    return _THREADS["n"]


@contextlib.contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """Within the block, at most ``n`` threads (None: no change), as a caller's ``n_jobs=1``
    asks for one core."""
    before = _THREADS["n"]
    if n is not None:
        _THREADS["n"] = max(1, min(before, int(n)))
    try:
        yield
    finally:
        _THREADS["n"] = before


#: The threads that help the caller in :func:`_in_threads`, kept between calls (a thread pool
#: as the passes': starting and joining a thread per call cost ~0.37 ms on the 2-core VM, six
#: to eight calls per select_em on small data; handing work to an idle one ~0.1 ms), stopped
#: before the process forks (os.register_at_fork) and started again on demand.
_HELPERS: dict[str, Any] = {"pool": None, "size": 0}
HELPER_PREFIX = "bayesgmm-compiled"
_HELPERS_LOCK = [threading.Lock()]  # (a list: replaced in a forked child)


def _helpers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` helper threads."""
    with _HELPERS_LOCK[0]:
        if _HELPERS["pool"] is None or _HELPERS["size"] < n:
            old = _HELPERS["pool"]
            _HELPERS["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=HELPER_PREFIX)
            _HELPERS["size"] = n
            if old is not None:
                old.shutdown(wait=False)  # (its idle threads end; a call in flight finishes)
        return _HELPERS["pool"]


def stop_workers() -> None:
    """Stop the compiled loop's idle helper threads (they start again on demand): before a
    fork, and wherever no thread of ours may be left running."""
    with _HELPERS_LOCK[0]:
        pool, _HELPERS["pool"], _HELPERS["size"] = _HELPERS["pool"], None, 0
    if pool is not None:
        pool.shutdown(wait=True)


def _forked_child() -> None:  # pragma: no cover - runs in a forked child
    _HELPERS["pool"], _HELPERS["size"] = None, 0  # (no thread survives a fork)
    _HELPERS_LOCK[0] = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=stop_workers, after_in_child=_forked_child)


def _in_threads(kernel: Any, ks: np.ndarray, args: tuple) -> None:
    """``kernel(todo, *args)`` over all runs (``ks`` their K), on :func:`threads` threads that
    each take the next few runs as they finish their last ones (largest K first: a run's cost
    grows with its K, and its iterations are not known in advance), so that no thread idles
    while another has a long queue (a fixed deal left one thread 10-30% longer). The calling
    thread is one of them, the others :data:`_HELPERS`'s (none is left running after a call;
    idle ones are stopped before a fork)."""
    order = np.argsort(-ks, kind="stable").astype(np.int64)
    n_threads = min(threads(), order.shape[0])
    if n_threads <= 1:
        kernel(order, *args)
        return
    # Pieces of a few runs: enough of them to even out the threads' loads, few enough that the
    # call per piece (numba checks each argument's type) stays negligible.
    size = max(1, order.shape[0] // (8 * n_threads))
    pieces = [order[i : i + size] for i in range(0, order.shape[0], size)]
    lock = threading.Lock()
    state = {"next": 0}
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            with lock:
                i = state["next"]
                state["next"] = i + 1
            if i >= len(pieces):
                return
            try:
                kernel(pieces[i], *args)
            except BaseException as err:  # raised in the caller: never half-advanced runs
                errors.append(err)

    # The calling thread is one of the workers (the kernel releases the GIL): one thread fewer
    # to wake per call.
    pool = _helpers(n_threads - 1)
    helping = []
    try:
        for _ in range(n_threads - 1):
            helping.append(pool.submit(work))
        work()
    finally:
        for done in helping:
            done.result()  # (work() records its errors itself)
    if errors:
        raise errors[0]


def _plain(a: np.ndarray) -> np.ndarray:
    """A writeable C-contiguous float64 array (one compiled specialisation for all callers: a
    read-only or strided array would be compiled again)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.writeable else a.copy()
