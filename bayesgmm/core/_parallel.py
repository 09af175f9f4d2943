"""Forked worker processes for independent fits (select_em's cells, bootstrap replicates)."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from bayesgmm.core._passes import shutdown_pool

__all__ = ["can_fork", "cyclic_gc_paused", "forked_pool", "resolve_n_jobs", "single_threaded_blas"]


def resolve_n_jobs(n_jobs: object, default: int) -> int:
    """Worker processes for ``n_jobs``, scikit-learn's convention for explicit values: a
    positive integer is that many, -1 every core, -k every core but k − 1 (at least one).
    None is the calling function's ``default`` (documented there: select_em one per core on
    small data, the bootstrap one process, since its batched passes already use every core)."""
    import os

    if n_jobs is None:
        return max(1, default)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ValueError(
            f"n_jobs must be a positive integer, a negative one (-1: every core, -2: all but "
            f"one, ...) or None; got {n_jobs!r}."
        )
    cores = os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def single_threaded_blas() -> None:
    """Worker processes already use every core: BLAS, the compiled EM loop and the passes over
    large data inside each run on one thread (the passes' count was the parent's, one per
    core, in every worker)."""
    import os

    from threadpoolctl import threadpool_limits

    from bayesgmm.core import _passes
    from bayesgmm.core._compiled import threads

    threadpool_limits(1)
    threads(1)
    os.environ["BAYESGMM_NUM_THREADS"] = "1"  # (this worker's environment only)
    _passes.n_threads.cache_clear()


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Within the block, no automatic cyclic garbage collection (restored after, when it was
    on). A grid keeps thousands of runs alive for a while, and those survivors trigger full
    collections of the whole process's objects: with pandas and scipy loaded, one every three
    select_em calls on a 145-row data set, 60-80 ms each (a fifth of the call), and longer the
    more a user's process holds. The grid makes no reference cycles of its own (a collection
    right after one finds none); reference counting frees what it leaves."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def can_fork(workers: int) -> bool:
    """Whether ``workers`` > 1 processes may be forked now.

    Fork only when no other Python thread runs (one could hold a lock the child then waits on
    forever); callers otherwise run in this process, with the same results. Fork, not a fork
    server or spawn: those re-import the caller's script, and a user's unguarded analysis
    script would then run again.
    """
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    # Our own idle threads (the passes' pool, the compiled loop's workers) stop first: they
    # start again on demand.
    from bayesgmm.core._compiled import stop_workers

    shutdown_pool()
    stop_workers()
    return threading.active_count() == 1


@contextmanager
def forked_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` forked processes with single-threaded BLAS.

    Our own pass threads are shut down first. The only other threads are OpenBLAS's, which
    re-creates its pool in the child (pthread_atfork), so Python's generic warning about
    forking a multi-threaded process is silenced here. The compiled EM loop is loaded first
    (when its cache is complete), so that the workers inherit it rather than each loading it.
    """
    from bayesgmm.core._compiled import ready

    ready()
    shutdown_pool()
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*use of fork\\(\\) may lead to deadlocks",
            category=DeprecationWarning,
        )
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=single_threaded_blas
        ) as pool:
            yield pool
