"""EM on data beyond memory: a dask array (or a dask DataFrame, or an xarray object backed by
dask) is never gathered. Each EM iteration is one pass over its chunks: every chunk runs the
core's own pass (:func:`~bayesgmm.core._passes.run_pass`, the same kernel as in memory) and
returns its sufficient statistics (Σ w log p(x), N_k, Σ γ x, packed Σ γ x xᵀ) as one flat vector;
dask sums the vectors as a tree (``split_every``) on whatever scheduler is active (its threads,
or a ``distributed.Client``), and every structure's M-step runs unchanged on the sums. The loop
(:func:`~bayesgmm.core._loop.iterate`: SQUAREM, convergence, degeneracy) is the in-memory one.

Starts (hierarchical, k-means++) are computed on a seeded uniform subsample held in memory; every
log-likelihood reported is a full-data one.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any, Literal

import numpy as np

from bayesgmm.core._passes import DensityParams, PassStats, run_pass

__all__ = ["as_dask", "chunked_pass", "chunked_scores", "is_dask", "moments"]

#: Sums of this many chunks' statistics are added in one task (dask's ``split_every``).
SPLIT_EVERY = 8

#: On a distributed cluster, a pass over data read from its store (not persisted) runs as this
#: many tasks per worker thread, each reading its run of chunks and summing their statistics
#: (:func:`block_sums`).
TASKS_PER_THREAD = 8


def is_dask(X: Any) -> bool:
    """Whether ``X`` is a dask collection (array, DataFrame, Series), or an xarray object whose
    data is one, without importing dask when it is not loaded."""
    module = type(X).__module__
    if module.startswith("dask.") or module.startswith("dask_expr"):
        return True
    if module.startswith("xarray.") and hasattr(X, "variable"):
        return is_dask(X.variable._data)
    return False


def as_dask(X: Any) -> tuple[Any, tuple[str, ...] | None]:
    """A float64 dask array (N, D) with known row chunks and all columns in each chunk, and the
    feature names when ``X`` has them; a clear error for what EM cannot use."""
    import dask.array as da

    names: tuple[str, ...] | None = None
    module = type(X).__module__
    if module.startswith("xarray."):
        if X.ndim not in (1, 2):
            raise ValueError(
                f"X is an xarray object with dims {X.dims}; pass a 2-d (observations, "
                "features) one."
            )
        if X.ndim == 2:
            names = tuple(str(v) for v in X[X.dims[1]].values) if X.dims[1] in X.coords else None
        X = X.data
    elif hasattr(X, "dtypes") and hasattr(X, "to_dask_array"):  # a dask DataFrame or Series
        frame = X.to_frame() if not hasattr(X, "columns") else X
        import pandas as pd

        bad = [str(c) for c, t in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
        if bad:
            raise ValueError(
                f"X has non-numeric column(s) {bad}; select the numeric ones, e.g. "
                "X.select_dtypes('number'), or encode them first."
            )
        names = tuple(str(c) for c in frame.columns)
        X = frame.to_dask_array(lengths=True)  # the row counts per partition: one quick pass
    if not isinstance(X, da.Array):
        raise TypeError(f"expected a dask array, DataFrame or xarray object; got {type(X)!r}.")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-d (observations, features); got shape {X.shape}.")
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            "X is a dask array with unknown chunk sizes (NaN in X.chunks, as after boolean "
            "indexing); call X.compute_chunk_sizes() first (for a dask DataFrame, "
            "X.to_dask_array(lengths=True))."
        )
    if X.dtype.kind not in "fiub":
        raise ValueError(f"X has dtype {X.dtype}; EM needs numbers (float64).")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"X has shape {X.shape}; EM needs at least 2 rows and 1 feature.")
    X = X.astype(np.float64)
    if X.numblocks[1] > 1:
        X = X.rechunk({1: -1})
    return X, names


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """In a dask worker process (whose nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``, so that
    glibc hands freed memory back at once), let the pass's temporaries (a few MB each) come
    from the heap instead of a fresh ``mmap`` per allocation: setting the trim threshold turns
    off glibc's adaptive mmap threshold, and every temporary then page-faults in anew. Measured
    on a 250,000 × 10 chunk, K = 10 VVV: 0.30–0.39 s per chunk pass, 0.13–0.19 s after this.
    Memory above 64 MB at the heap's top is still given back."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import os
    import sys

    if sys.platform != "linux" or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 64 * 2**20)


def _scale(var: np.ndarray) -> np.ndarray:
    """Feature scales (standard deviations, 1 where constant) from variances already known: the
    loop's SQUAREM norm and degeneracy test would otherwise take a pass over the chunks each."""
    return np.sqrt(np.where(var > 0, var, 1.0))


def _check_block(block: np.ndarray, info: dict | None) -> None:
    """A non-finite value stops the pass with where it is (chunk and row), never a NaN sum.
    (The moments' kernel calls it first, the pass's kernel when its block's log-likelihood is
    not finite; each tunes the worker's malloc first.)"""
    _tune_malloc()
    if np.isfinite(block).all():
        return
    r, c = (int(i) for i in np.argwhere(~np.isfinite(block))[0])
    where = ""
    if info is not None:
        chunk, row0 = info["chunk-location"][0], info["array-location"][0][0]
        where = f" in chunk {chunk} (row {row0 + r})"
    value = block[r, c]
    if np.isnan(value):
        raise ValueError(
            f"X has a missing value (NaN){where}, feature {c}; EM on a dask array needs complete "
            "rows for now: drop those rows (X[~da.isnan(X).any(axis=1)]) or fit in memory, "
            "where missing values are modelled."
        )
    raise ValueError(
        f"X has an infinite value ({value}){where}, feature {c}; remove or fix it before fitting."
    )


def _stat_sizes(r: int, k: int, d: int, stats: str) -> list[tuple[int, ...]]:
    t = {"full": d * (d + 1) // 2, "diag": d, "none": 0}[stats]
    return [(r,), (r, k), (r, k, d), (r, k, t)]


class ChunkWeights:
    """Bootstrap row weights of R replicates on a dask array, never stored: each chunk draws its
    rows' weights from the replicate's own stream for that chunk, the same on every pass.

    Nonparametric: the replicate's N draws are first dealt to the chunks (a multinomial over
    the chunk sizes, ``per_chunk``), then to the rows of each chunk (a multinomial of that
    count): together the multinomial of N draws over all rows with equal probabilities, as in
    memory. Weighted (Newton & Raftery's weighted likelihood bootstrap): N times a flat
    Dirichlet over the rows, as each chunk's Gamma(size) share of the total (``per_chunk``)
    times a flat Dirichlet within the chunk.
    """

    #: Rows × replicates of one block of weights drawn at once in a chunk (64 MB).
    BLOCK_ENTRIES = 8_000_000

    def __init__(self, kind: str, seeds: np.ndarray, per_chunk: np.ndarray, n: int) -> None:
        self.kind, self.seeds, self.per_chunk, self.n = kind, seeds, per_chunk, n

    @classmethod
    def draw(cls, kind: str, sizes: tuple[int, ...], seed: Any) -> ChunkWeights:
        """One replicate's weights, from ``seed`` (a SeedSequence)."""
        gen = np.random.default_rng(seed)
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        n = int(sizes_arr.sum())
        if kind == "nonparametric":
            per_chunk = gen.multinomial(n, sizes_arr / n).astype(np.float64)
        else:
            per_chunk = gen.gamma(sizes_arr.astype(np.float64))
        entropy = np.array([int(gen.integers(2**63))], dtype=np.int64)
        return cls(kind, entropy, per_chunk[None, :], n)

    @classmethod
    def stack(cls, parts: list[ChunkWeights]) -> ChunkWeights:
        return cls(
            parts[0].kind, np.concatenate([p.seeds for p in parts]),
            np.concatenate([p.per_chunk for p in parts]), parts[0].n,
        )  # fmt: skip

    @property
    def shape(self) -> tuple[int, int]:
        return (self.seeds.shape[0], self.n)

    def __getitem__(self, idx: Any) -> ChunkWeights:
        return ChunkWeights(self.kind, self.seeds[idx], self.per_chunk[idx], self.n)

    def block(self, chunk: int, rows: int, lo: int, hi: int) -> np.ndarray:
        """The weights (hi − lo, rows) of replicates lo..hi on chunk ``chunk``."""
        out = np.empty((hi - lo, rows))
        for j, r in enumerate(range(lo, hi)):
            gen = np.random.default_rng([int(self.seeds[r]), chunk])
            share = self.per_chunk[r, chunk]
            if self.kind == "nonparametric":
                out[j] = gen.multinomial(int(share), np.full(rows, 1.0 / rows))
            else:
                out[j] = self.n * share / self.per_chunk[r].sum() * gen.dirichlet(np.ones(rows))
        return out


def _replicate_pass(
    block: np.ndarray, p: DensityParams, weights: ChunkWeights, chunk: int, stats: Any
) -> PassStats:
    """A chunk's pass for R replicates, their weights drawn in blocks of replicates (bounded
    memory), each block's pass on its mixtures of the batch."""
    from bayesgmm.core._passes import _run_block

    r = p.n_batch
    if p.kind == "direct":  # few mixtures: all at once
        w = weights.block(chunk, block.shape[0], 0, r)
        return run_pass(block, p, sample_weight=w, stats=stats, parallel=False)
    size = max(1, ChunkWeights.BLOCK_ENTRIES // max(1, block.shape[0]))
    parts = []
    for lo in range(0, r, size):
        hi = min(lo + size, r)
        w = weights.block(chunk, block.shape[0], lo, hi)
        parts.append(
            run_pass(block, _run_block(p, lo, hi), sample_weight=w, stats=stats, parallel=False)
        )
    scatter = None if stats == "none" else np.concatenate([q.scatter for q in parts])
    return PassStats(
        np.concatenate([q.loglik for q in parts]), np.concatenate([q.counts for q in parts]),
        np.concatenate([q.sum_x for q in parts]), scatter,
    )  # fmt: skip


_PASS_LOG: Any = None


class pass_log:
    """Within the block, ``callback(seconds, loglik)`` after every pass over a dask array's
    chunks (the command line's progress line): the pass's wall time and the log-likelihoods
    (R,) of the runs it served."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def __enter__(self) -> None:
        global _PASS_LOG
        self.previous, _PASS_LOG = _PASS_LOG, self.callback

    def __exit__(self, *exc: Any) -> None:
        global _PASS_LOG
        _PASS_LOG = self.previous


def _pass_kernel(
    block: np.ndarray,
    *rest: Any,
    p: DensityParams,
    replicates: ChunkWeights | None,
    stats: Literal["none", "full", "diag"],
    scatter_shape: tuple[int, ...],
    block_info: dict | None = None,
) -> np.ndarray:
    """:func:`chunked_pass`'s task: one chunk's statistics, flattened into one row."""
    info = None if block_info is None else block_info[0]
    _tune_malloc()
    if replicates is not None:
        assert info is not None
        s = _replicate_pass(block, p, replicates, info["chunk-location"][0], stats)
    else:
        w = rest[0][:, 0] if rest else None
        s = run_pass(block, p, sample_weight=w, stats=stats, parallel=False)
    # A NaN or inf in the block makes its log-likelihood NaN or infinite (any weight): the
    # block is scanned for it only then, which names the row (a scan of every block on every
    # pass cost 2-3% of the pass).
    if not np.isfinite(s.loglik).all():
        _check_block(block, info)
    parts = [s.loglik, s.counts, s.sum_x]
    parts.append(s.scatter if s.scatter is not None else np.zeros(scatter_shape))
    return np.concatenate([a.ravel() for a in parts])[None, :]


def chunked_pass(
    X: Any,
    p: DensityParams,
    *,
    sample_weight: Any = None,
    stats: Literal["none", "full", "diag"] = "none",
) -> PassStats:
    """:func:`~bayesgmm.core._passes.run_pass` over a dask array: the core's pass on every chunk,
    its statistics summed as a tree on the active scheduler. ``sample_weight`` is None, a
    dask array (N,) chunked as ``X``'s rows, or the :class:`ChunkWeights` of the batch's R
    bootstrap replicates."""

    r, k, d = p.n_batch, p.n_components, X.shape[1]
    shapes = _stat_sizes(r, k, d, stats)
    size = sum(int(np.prod(s)) for s in shapes)
    replicates = sample_weight if isinstance(sample_weight, ChunkWeights) else None

    # A module-level function with its arguments bound, not a closure: the client pickles each
    # task's function, and cloudpickle's pass over a closure's globals cost 1.5 ms a task
    # (0.25 s of client CPU a pass over 80 chunks, on the workers' cores).
    kernel = functools.partial(_pass_kernel, p=p, replicates=replicates, stats=stats,
                               scatter_shape=shapes[3])  # fmt: skip
    own = sample_weight is None or replicates is not None
    args = [X] if own else [X, sample_weight[:, None]]
    started = time.perf_counter()
    flat = block_sums(kernel, args, size)
    if _PASS_LOG is not None:
        _PASS_LOG(time.perf_counter() - started, flat[:r])
    out, pos = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[pos : pos + n].reshape(shape))
        pos += n
    return PassStats(out[0], out[1], out[2], out[3] if stats != "none" else None)


class _Blocks:
    """A run of row blocks of dask arrays chunked alike, each block's graph culled from theirs
    (a task's source: it reads its blocks itself, one at a time, on dask's synchronous
    scheduler, so that the cluster schedules one task per run instead of a read and a pass per
    chunk)."""

    def __init__(self, graph: dict, keys: list[list[Any]], lo: int, rows: list[tuple[int, int]],
                 width: int) -> None:  # fmt: skip
        from dask.optimization import cull

        self.lo, self.rows, self.width = lo, rows, width
        self.keys = keys
        self.graphs = [cull(graph, k)[0] for k in keys]

    def __iter__(self) -> Any:
        from dask.local import get_sync

        for i, (graph, keys) in enumerate(zip(self.graphs, self.keys, strict=True)):
            b = self.lo + i
            info = {"chunk-location": (b, 0), "array-location": [self.rows[i], (0, self.width)]}
            yield get_sync(graph, keys), {0: info}


def _group_sum(kernel: Any, blocks: _Blocks) -> np.ndarray:
    """:func:`block_sums`'s task on a cluster: its blocks' rows of statistics, summed in order."""
    total = None
    for parts, info in blocks:
        row = kernel(*parts, block_info=info)
        total = row if total is None else total + row
    assert total is not None
    return total


_GROUPS: dict[tuple[Any, ...], list[_Blocks] | None] = {}


def _groups(arrays: list[Any], threads: int) -> list[_Blocks] | None:
    """The runs of blocks of ``arrays`` for ``threads`` worker threads, or None where a task
    cannot read its blocks itself: data persisted on the cluster (its graph holds futures), or
    a graph carrying over 1 MB of data for a run (``da.from_array`` of a large array in
    memory). Kept for the last few arrays not persisted (a persisted array has the same name)."""
    import cloudpickle
    from distributed import Future

    graph: dict = {}
    for a in arrays:
        graph.update(a.__dask_graph__())
    if any(isinstance(v, Future) for v in graph.values()):
        return None
    key = (tuple(a.name for a in arrays), threads)
    if key in _GROUPS:
        return _GROUPS[key]
    nb, starts = arrays[0].numblocks[0], np.cumsum((0, *arrays[0].chunks[0]))
    keys = [[a.__dask_keys__()[b][0] for a in arrays] for b in range(nb)]
    edges = np.linspace(0, nb, min(nb, TASKS_PER_THREAD * threads) + 1).astype(int)
    groups: list[_Blocks] | None = [
        _Blocks(graph, keys[lo:hi], int(lo), [(int(starts[b]), int(starts[b + 1]))
                for b in range(lo, hi)], int(arrays[0].shape[1]))
        for lo, hi in itertools.pairwise(edges)
    ]  # fmt: skip
    if max(len(cloudpickle.dumps(g)) for g in groups or ()) > 2**20:
        groups = None
    if len(_GROUPS) >= 4:
        _GROUPS.pop(next(iter(_GROUPS)))
    _GROUPS[key] = groups
    return groups


def block_sums(kernel: Any, arrays: list[Any], size: int) -> np.ndarray:
    """Σ over the row blocks of ``kernel(*blocks, block_info=...)`` (a (1, size) row per block of
    the dask arrays ``arrays``, chunked alike by rows, one chunk across): shape (size,).

    On dask's threads, or on data persisted on a cluster: ``map_blocks`` and a tree of sums.
    On a ``distributed`` cluster reading the data from its store, each task reads a run of
    chunks itself and sums their rows (:data:`TASKS_PER_THREAD` tasks per worker thread): the
    per-chunk scheduling (a read, a pass and the sums' tasks for each chunk, about 170 tasks a
    pass over 80 chunks) took a fifth of a pass from the workers' two cores."""
    import dask.array as da
    from dask.base import get_scheduler

    client = getattr(get_scheduler(collections=arrays), "__self__", None)
    if client is not None and type(client).__name__ == "Client":
        groups = _groups(arrays, sum(client.nthreads().values()))
        if groups is not None:
            futures = [client.submit(_group_sum, kernel, g, pure=False) for g in groups]
            return np.sum(client.gather(futures), axis=0)[0]
    per_chunk = da.map_blocks(
        kernel, *arrays, chunks=((1,) * arrays[0].numblocks[0], (size,)), dtype=np.float64,
        meta=np.empty((0, 0)),
    )  # fmt: skip
    return per_chunk.sum(axis=0, split_every=SPLIT_EVERY).compute()


def moments(X: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every feature (weighted), in one pass over the chunks (each chunk's
    sums about the first row, so that they do not cancel); a non-finite value stops it."""

    shift = np.asarray(X[0].compute())
    d = X.shape[1]

    def kernel(block: np.ndarray, *rest: Any, block_info: dict | None = None) -> np.ndarray:
        _check_block(block, None if block_info is None else block_info[0])
        y = block - shift
        w = rest[0] if rest else np.ones((block.shape[0], 1))
        return np.concatenate([w.sum(axis=0), (w * y).sum(axis=0), (w * y * y).sum(axis=0)])[None]

    args = [X] if sample_weight is None else [X, sample_weight[:, None]]
    sums = block_sums(kernel, args, 2 * d + 1)
    total, s1, s2 = sums[0], sums[1 : d + 1], sums[d + 1 :]
    mean = s1 / total
    var = np.maximum(s2 / total - mean * mean, 0.0)
    return mean + shift, var


def chunked_scores(X: Any, p: DensityParams, sample_weight: Any = None) -> np.ndarray:
    """Σ w log p(x) and Σ w log γ_{n, MAP(n)} (ICL's entropy term) of each of the R mixtures of
    ``p`` (padding allowed), in one pass: shape (2, R)."""

    k, r = p.n_components, p.n_batch

    def kernel(block: np.ndarray, *rest: Any, block_info: dict | None = None) -> np.ndarray:
        _check_block(block, None if block_info is None else block_info[0])
        c = block.shape[0]
        resp = np.empty((c, k * r))
        logp = np.empty((c, r))
        run_pass(block, p, resp_out=resp, logp_out=logp, parallel=False)
        top = np.log(np.maximum(resp.reshape(c, k, r).max(axis=1), np.finfo(float).tiny))
        w = rest[0][:, 0] if rest else np.ones(c)
        return np.concatenate([w @ logp, w @ top])[None]

    args = [X] if sample_weight is None else [X, sample_weight[:, None]]
    return block_sums(kernel, args, 2 * r).reshape(2, r)


def per_row(X: Any, fn: Any, n_out: int | None) -> Any:
    """A lazy dask array of ``fn(block)`` per row chunk: (N, n_out), or (N,) when n_out is None
    (log-densities, responsibilities and labels of data beyond memory)."""
    import dask.array as da

    def kernel(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        _check_block(block, None if block_info is None else block_info[0])
        return fn(block)

    if n_out is None:
        return da.map_blocks(kernel, X, drop_axis=1, dtype=np.float64, meta=np.empty((0,)))
    return da.map_blocks(
        kernel, X, chunks=(X.chunks[0], (n_out,)), dtype=np.float64, meta=np.empty((0, 0))
    )


#: Rows of the seeded uniform subsample that the starts of a fit on a dask array are computed
#: on (the hierarchical tree itself uses at most mclust's 2000 of them, as in memory).
START_ROWS = 20_000


def persist_if_small(X: Any) -> Any:
    """``X`` held in memory (the workers', under a ``distributed.Client``) when it takes under
    half of it, so that EM's passes do not read its store again; otherwise streamed each pass."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        workers = client.scheduler_info().get("workers", {}).values()
        memory = sum(w.get("memory_limit", 0) or 0 for w in workers)
    else:
        import psutil

        memory = psutil.virtual_memory().available
    return X.persist() if X.nbytes < 0.5 * memory else X


def dask_weights(sample_weight: Any, X: Any) -> Any:
    """Row weights as a dask array chunked like ``X``'s rows (None stays None)."""
    import dask.array as da

    if sample_weight is None:
        return None
    w = sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight)
    if w.ndim != 1 or w.shape[0] != X.shape[0]:
        raise ValueError(
            f"sample_weight must have shape ({X.shape[0]},), one weight per row of X; got "
            f"{w.shape}."
        )
    if not isinstance(w, da.Array):
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError("sample_weight must be finite, non-negative and not all zero.")
        return da.from_array(w.astype(np.float64), chunks=(X.chunks[0],))
    return w.astype(np.float64).rechunk((X.chunks[0],))


def fit_em_chunked(
    X: Any,
    n_components: int,
    covariance_type: Any,
    *,
    init: Any,
    n_init: int,
    tol: float,
    max_iter: int,
    reg_covar: float,
    prior: Any,
    sample_weight: Any,
    rng: Any,
    accelerate: bool,
) -> Any:
    """:func:`~bayesgmm.core.fit.fit_em` on a dask collection: starts on a subsample, EM passes
    over the chunks (see the module's docstring), and a result whose responsibilities are a lazy
    dask array."""
    from bayesgmm.core._engine import (
        KEEP_AFTER_SHORT,
        SHORT_ITER,
        advance,
        make_starts,
        start_model,
    )
    from bayesgmm.core._loop import new_run
    from bayesgmm.core._validation import as_rng, check_n_components
    from bayesgmm.core.em import Degenerate
    from bayesgmm.core.init import parse_init
    from bayesgmm.core.structures import get_structure

    if prior is not None:
        raise ValueError(
            "prior= is not available for dask input yet; fit without it, or on a subsample in "
            "memory."
        )
    arr, names = as_dask(X)
    n, d = arr.shape
    structure = get_structure(covariance_type, d)
    w = dask_weights(sample_weight, arr)
    arr = persist_if_small(arr)
    center, var = moments(arr, w)
    constant = np.flatnonzero(var == 0)
    if constant.size:
        raise ValueError(
            f"X's feature(s) {constant.tolist()} are constant, so every covariance would be "
            "singular; drop constant columns before fitting."
        )
    gen = as_rng(rng)
    rows = np.sort(gen.choice(n, size=min(n, START_ROWS), replace=False))
    sub = np.asarray(arr[rows].compute())
    k = check_n_components(n_components, sub)
    if not (isinstance(init, str) or hasattr(init, "n_components")):
        raise ValueError(
            "init for a dask array must be 'hc', 'kmeans++', 'random' or a GaussianMixture "
            f"(responsibilities or labels would need every row in memory); got {type(init)!r}."
        )
    parsed = parse_init(init, sub, k)
    w_sub = None if w is None else np.asarray(w[rows].compute())
    starts = make_starts(parsed, sub, k, gen, n_init)
    try:
        models = [
            (label, start_model(sub, st, structure, w_sub, None, float(reg_covar), names))
            for label, st in starts
        ]
    except Degenerate as err:
        raise ValueError(
            f"no valid starting mixture for n_components={k}, covariance_type="
            f"{structure.name!r} on the start's subsample of {sub.shape[0]} rows ({err}). Use "
            "fewer components or a more constrained covariance_type."
        ) from None
    settings: dict[str, Any] = {"center": center, "w": w, "prior": None,
                                "reg_covar": float(reg_covar), "tol": float(tol),
                                "accelerate": bool(accelerate), "scale": _scale(var)}  # fmt: skip
    cell = {k: [new_run(m, label) for label, m in models]}
    advance(arr, cell, max_iter, SHORT_ITER, KEEP_AFTER_SHORT, settings)
    results = finish_runs(arr, cell[k], names, w, var)
    good = [r for r in results if not r.degenerate]
    return max(good or results, key=lambda r: r.loglik)


def finish_runs(X: Any, runs: list[Any], names: Any, w: Any, var: np.ndarray) -> list[Any]:
    """The results of finished runs on a dask array: their full-data log-likelihoods and ICL
    terms in one pass for all, lazy responsibilities, degeneracy as in memory."""
    from bayesgmm.core._loop import run_result
    from bayesgmm.core._passes import mixture_density
    from bayesgmm.core.criteria import bic
    from bayesgmm.core.em import stack_padded, to_model

    params, _ = stack_padded([r.params for r in runs], max(r.k for r in runs))
    dens = mixture_density(params.weights, params.means, params.chol, False, np.zeros(X.shape[1]))
    scores = chunked_scores(X, dens, w)
    scale = _scale(var)
    n_obs = float(X.shape[0] if w is None else w.sum().compute())
    out = []
    for i, run in enumerate(runs):
        model = to_model(run.params, 0, run.structure, names)
        loglik, entropy = float(scores[0, i]), float(scores[1, i])
        icl = bic(loglik, model.n_parameters, n_obs) - 2.0 * entropy
        resp = per_row(X, model.responsibilities, model.n_components)
        out.append(run_result(run, model, loglik, icl, resp, n_obs, scale))
    return out


def select_em_chunked(
    X: Any,
    ks: list[int],
    structures: list[str],
    crit: str,
    *,
    screen: int,
    rng: Any,
    sample_weight: Any,
    **options: Any,
) -> Any:
    """:func:`~bayesgmm.core.select.select_em` on a dask collection: the whole grid (every
    start, restart and cross-start) on a seeded uniform subsample of ``screen // 4`` rows in
    memory, then full-data EM for every cell from two lead starts, the subsample's best fit and
    the hierarchical start, and the subsample's runner-up as a challenger (on only if it leads
    both after 5 iterations, as in memory: :func:`~bayesgmm.core._engine.advance`), all cells'
    runs sharing each pass over the chunks."""
    import pandas as pd

    from bayesgmm.core._engine import (
        advance,
        make_starts,
        prepare_data,
        start_data,
        start_models,
    )
    from bayesgmm.core._loop import new_run
    from bayesgmm.core._validation import as_rng
    from bayesgmm.core.init import hc_tree
    from bayesgmm.core.select import _select, _selection
    from bayesgmm.core.structures import get_structure

    if options.get("prior") is not None:
        raise ValueError(
            "prior= is not available for dask input yet; select without it, or on a subsample "
            "in memory."
        )
    arr, names = as_dask(X)
    w = dask_weights(sample_weight, arr)
    arr = persist_if_small(arr)
    center, var = moments(arr, w)
    if (var == 0).any():
        raise ValueError(
            f"X's feature(s) {np.flatnonzero(var == 0).tolist()} are constant; drop constant "
            "columns before fitting."
        )
    gen = as_rng(rng)
    n = arr.shape[0]
    rows = np.sort(gen.choice(n, size=min(n, max(2, screen // 4)), replace=False))
    sub = np.asarray(arr[rows].compute())
    w_sub = None if w is None else np.asarray(w[rows].compute())
    data = sub if names is None else pd.DataFrame(sub, columns=list(names))
    if options.get("n_jobs") is None:
        # One process: forking beside a distributed client's event-loop thread is unsafe.
        options["n_jobs"] = 1
    # The screen reports each cell's runner-up too: its best distinct optimum close behind its
    # best fit (see select_em's ``screen``).
    runners: dict[tuple[str, int], Any] = {}
    sub_arr, sub_names, sub_w = prepare_data(data, w_sub)
    # With mclust's start, one tree serves the screen and the full data, as in memory.
    shared = None
    if isinstance(options.get("init"), str) and options["init"].lower() == "hc":
        shared = hc_tree(start_data(sub_arr, sub_w), gen)
    screened = _select(sub_arr, sub_names, sub_w, None, ks, structures, crit, gen, screen=None,
                       hc=shared, runners_out=runners, **options)  # fmt: skip
    tree = shared if shared is not None else hc_tree(sub, gen)
    failures = dict(screened.failures)
    cells: list[tuple[tuple[str, int], str, Any]] = []
    for (structure, k), fit in screened.results.items():
        if not fit.degenerate:
            cells.append(((structure, k), f"screen ({fit.init})", fit.model))
    hc_items: list[tuple[tuple[str, int], Any]] = []
    for k in ks:
        if k > tree[0].n_initial:
            continue
        [(_, start)] = make_starts("hc", sub, k, gen, 1, tree)
        hc_items.extend(((s, k), start) for s in structures)
    built = start_models(
        sub, [(get_structure(s), st) for (s, _), st in hc_items], w_sub, [None] * len(hc_items),
        float(options.get("reg_covar", 0.0)), names,
    )  # fmt: skip
    for ((s, k), _), model in zip(hc_items, built, strict=True):
        if hasattr(model, "n_components"):
            cells.append(((s, k), "hc", model))
    for key, second in runners.items():  # after each cell's lead starts
        if not second.degenerate and not screened.results[key].degenerate:
            cells.append((key, f"screen runner-up ({second.init})", second.model))
    by_key: dict[tuple[str, int], list[Any]] = {}
    for key, label, model in cells:
        by_key.setdefault(key, []).append(new_run(model, label))
    settings = {"center": center, "w": w, "prior": None,
                "reg_covar": float(options.get("reg_covar", 0.0)),
                "tol": float(options.get("tol", 1e-8)),
                "accelerate": bool(options.get("accelerate", True)),
                "scale": _scale(var)}  # fmt: skip
    advance(arr, by_key, int(options.get("max_iter", 1000)), 5, 1, settings, lead=2)
    finished = iter(finish_runs(arr, [r for rs in by_key.values() for r in rs], names, w, var))
    results = {}
    for key, rs in by_key.items():
        fits = [next(finished) for _ in rs]
        good = [f for f in fits if not f.degenerate]
        best = max(good or fits, key=lambda f: f.loglik)
        results[key] = best
        failures.pop(key, None)
        if best.degenerate:
            failures[key] = best.degenerate_reason or "degenerate"
    return _selection(results, failures, ks, structures, crit)


def replicate_chunked(
    fit: Any, X: Any, *, n_boot: int, kind: str, tol: float, max_iter: int, rng: Any
) -> list[Any]:
    """Bootstrap replicates of ``fit`` on a dask array, as one batched EM over the chunks (every
    replicate from the estimate, each with the :class:`ChunkWeights` of its own stream): what
    :func:`~bayesgmm.core.bootstrap.replicate_em` makes of each, a replicate or the reason it
    failed."""
    from bayesgmm.core._loop import Run, finish_many, iterate
    from bayesgmm.core._validation import as_rng
    from bayesgmm.core.bootstrap import _Replicate
    from bayesgmm.core.em import Params

    if kind not in ("nonparametric", "weighted"):
        raise ValueError(
            f"kind={kind!r} is not available for dask input yet (a parametric replicate is a new "
            "data set of N rows); use 'nonparametric' or 'weighted'."
        )
    arr, _ = as_dask(X)
    est = fit.model
    n_fit = fit.responsibilities.shape[0]
    if arr.shape != (n_fit, est.n_features):
        raise ValueError(
            f"X has shape {arr.shape} but the fit was made on {n_fit} rows of "
            f"{est.n_features} features; pass the data the fit was made on."
        )
    arr = persist_if_small(arr)
    center, var = moments(arr)
    scale = _scale(var)
    root = int(as_rng(rng).integers(2**63))
    runs = []
    for seed in np.random.SeedSequence(root).spawn(n_boot):
        p = Params(est.weights[None], est.means[None], est.covariances[None], est.cholesky[None])
        weights: Any = ChunkWeights.draw(kind, arr.chunks[0], seed)
        runs.append(Run(p, "mixture", est.structure, row_weight=weights, scale=scale))
    iterate(arr, runs, max_iter, center=center, w=None, prior=None, reg_covar=0.0, tol=tol,
            accelerate=True)  # fmt: skip
    done = finish_many(arr, runs, center)
    out: list[Any] = []
    for run, model, ll, reason in zip(runs, done.models, done.loglik, done.reasons, strict=True):
        out.append(reason if reason is not None else _Replicate(model, float(ll), run.n_iter,
                                                                 run.converged))  # fmt: skip
    return out
