"""Model selection over the number of components and the covariance structure (mclust's grid).

pandas is imported here only to build the table the user reads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._compiled import partition_ranks, thread_limit
from bayesgmm.core._compiled import ready as compiled_ready
from bayesgmm.core._compiled import suits as compiled_suits
from bayesgmm.core._engine import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    KEEP_AFTER_SHORT,
    RUNNER_UP_GAP,
    SHORT_ITER,
    best_result,
    check_settings,
    labelled_start,
    make_starts,
    prepare_data,
    run_cells,
    start_data,
    start_models,
)
from bayesgmm.core._loop import Resumed, StartPoint
from bayesgmm.core._parallel import can_fork, cyclic_gc_paused, forked_pool, resolve_n_jobs
from bayesgmm.core._passes import (
    _log_normalise,
    chunk_log_joint,
    density_params,
    features,
    serial_blas,
)
from bayesgmm.core._validation import as_rng, count_distinct_rows
from bayesgmm.core.em import Degenerate
from bayesgmm.core.init import (
    INIT_METHODS,
    hc_tree,
    labels_to_resp,
    split_halves,
    standardise,
)
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.result import EMResult
from bayesgmm.core.structures import CovarianceStructure, get_structure, structure_names

__all__ = ["SelectionResult", "select_em"]

_CRITERIA = ("bic", "icl")


@dataclass(frozen=True, repr=False)
class SelectionResult:
    """The grid of fits of :func:`select_em`.

    Attributes
    ----------
    table : pandas.DataFrame
        The chosen criterion (rows K, columns structure), textbook sign: smaller is better.
        NaN where the cell failed or was degenerate (see ``failures``).
    bic, icl : pandas.DataFrame
        Both criteria in the same layout.
    loglik : pandas.DataFrame
        The log-likelihood of each cell.
    failures : dict[(str, int), str]
        Why each NaN cell is NaN: no valid start (a start whose first M-step, and that step's
        MAP rescue, give no valid mixture is dropped; the cell fails when all of its starts
        are), too few distinct rows for K, or a degenerate fit.
    results : dict[(str, int), EMResult]
        Every fit that ran, degenerate ones included.
    best : EMResult
        The fit with the smallest criterion among the non-degenerate cells.
    criterion : str
    """

    table: Any
    bic: Any
    icl: Any
    loglik: Any
    failures: dict[tuple[str, int], str]
    results: dict[tuple[str, int], EMResult]
    best: EMResult
    criterion: str

    def top(self, n: int = 3) -> Any:
        """The ``n`` best cells with their criterion and its difference from the best
        (mclust's "top models" summary, in the textbook sign)."""
        import pandas as pd

        stacked = self.table.stack().dropna().sort_values()
        head = stacked.iloc[:n]
        rows = [
            {
                "model": f"{structure},{k}",
                "structure": structure,
                "n_components": int(k),
                self.criterion: float(value),
                "difference": float(value - stacked.iloc[0]),
            }
            for (k, structure), value in head.items()
        ]
        return pd.DataFrame(rows).set_index("model")

    def __repr__(self) -> str:
        import pandas as pd

        name = self.criterion.upper()
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            body = self.table.round(2).to_string(na_rep="—")
        lines = [
            f"{name} over K × structure (smaller is better; mclust prints −{name}):",
            body,
            "",
            f"Top models by {name}:",
            self.top(3).round(2).to_string(),
        ]
        if self.failures:
            lines.append("")
            lines.append(f"{len(self.failures)} cell(s) without a valid fit (see .failures).")
        return "\n".join(lines)


@dataclass(frozen=True)
class _GridJob:
    """What every cell of a grid shares (sent once to each worker process)."""

    X: np.ndarray
    names: tuple[str, ...] | None
    w: np.ndarray | None
    priors: dict[int, Any]
    reg_covar: float
    settings: dict[str, Any]
    #: The data the starting M-steps use (``X`` with missing values filled, see start_data).
    start_X: np.ndarray
    labels: np.ndarray | None = None


def _run_group(
    task: tuple[_GridJob, dict[str, dict[int, list[tuple[str, Any]]]], dict[str, int]],
) -> tuple[dict[tuple[str, int], list[EMResult]], dict[tuple[str, int], str]]:
    """EM for every start of every cell of some structures, as one batch (on small data; the
    loop splits it by structure on large data)."""
    job, cells_by_structure, screen = task
    items: list[tuple[tuple[str, int], str, CovarianceStructure, Any]] = []
    for structure, cells in cells_by_structure.items():
        st = get_structure(structure)
        for k, cell in cells.items():
            items.extend(((structure, k), label, st, start) for label, start in cell)
    built = start_models(
        job.start_X,
        [(st, start) for _, _, st, start in items],
        job.w,
        [job.priors[key[1]] for key, _, _, _ in items],
        job.reg_covar,
        job.names,
        light=True,
    )
    # A start without a valid mixture (even after its MAP rescue) is dropped; a cell fails only
    # when none of its starts is valid.
    models: dict[tuple[str, int], list[tuple[str, GaussianMixture | StartPoint]]] = {}
    failed: dict[tuple[str, int], str] = {}
    for (key, label, _, _), model in zip(items, built, strict=True):
        if isinstance(model, Degenerate):
            failed.setdefault(key, f"no valid start: {model}")
        else:
            models.setdefault(key, []).append((label, model))
    for key in models:
        failed.pop(key, None)
    fits = run_cells(
        job.X,
        job.names,
        job.w,
        models,
        priors={key: job.priors[key[1]] for key in models},
        **job.settings,
        labels=job.labels,
        short_iter=screen.get("short_iter", SHORT_ITER),
        keep=screen.get("keep", KEEP_AFTER_SHORT),
        only_new=bool(screen.get("only_new", False)),
        lazy=bool(screen.get("lazy", False)),
        runner_up=bool(screen.get("runner_up", False)),
        lead=int(screen.get("lead", 1)),
    )
    return fits, failed


#: Above this many rows, select_em screens the grid on a subsample (see its ``screen``).
SCREEN_ROWS = 20_000

#: Cross-starts are screened harder than restarts: a few iterations from each other structure's
#: partition, and only the best one goes on (beside the cell's own fit).
#: (Each cell's own fit runs again beside its cross-starts, as their first start; when it stays
#: the best, nothing new is finished.)
CROSS_SCREEN = {"short_iter": 5, "keep": 1, "only_new": True}


def _n_workers(n_jobs: int | None, n_obs: int, n_structures: int, n_features: int = 1) -> int:
    """Processes for the grid: one per structure up to the cores, for data small enough that a
    pass runs in one thread (larger data already use every core inside each pass)."""
    if n_jobs is not None:
        return min(resolve_n_jobs(n_jobs, 1), n_structures)
    if compiled_suits(n_obs, n_features) and compiled_ready():
        # The compiled loop runs its runs on every core in this process (threads): cheaper
        # than forking (faithful's grid 3.0 s against 3.4-4.1 s in two processes).
        return 1
    # (The two one-feature structures do not repay a fork: acidity's 155 × 1 grid took 0.74 s
    # in two processes and 0.34 s in one.)
    if n_obs >= 4_096 or n_structures < 4 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(os.cpu_count() or 1, n_structures))


def _partition_key(labels: np.ndarray) -> bytes:
    """A key that two label vectors share exactly when they define the same partition: the
    labels renamed in order of first appearance (so that a list of partitions is deduplicated
    by a set, not by comparing every pair)."""
    return _partition_keys(np.asarray(labels).reshape(1, -1))[0][0]


#: Most (rows × labels × observations) booleans that _partition_keys compares at once.
_KEY_BLOCK = 4_000_000


def _partition_keys(labels: np.ndarray) -> tuple[list[bytes], list[int]]:
    """:func:`_partition_key` of each row of ``labels`` (M, N), and the number of distinct
    labels in each row: in one compiled sweep when the compiled functions are loaded, else a
    block of rows at a time (one call per label vector was a few percent of select_em's time
    on small data; the block's numpy calls still ~0.1 ms a call, 26 calls a grid). The labels
    are a few components' (each row is compared with every value from its smallest to the
    largest label)."""
    lab = np.asarray(labels)
    m, n = lab.shape
    keys: list[bytes] = []
    counts: list[int] = []
    if m == 0:
        return keys, counts
    if compiled_ready(stage="hc"):  # the same ranks, as integers: the same keys
        ranks = np.empty((m, n), dtype=np.int32)
        found = np.empty(m, dtype=np.int64)
        partition_ranks(np.ascontiguousarray(lab, dtype=np.int64), ranks, found)
        return [row.tobytes() for row in ranks], found.tolist()
    lab = lab - lab.min(axis=1, keepdims=True)
    width = int(lab.max()) + 1
    step = max(1, _KEY_BLOCK // (width * n))
    ids = np.arange(width)
    for lo in range(0, m, step):
        block = lab[lo : lo + step]
        rows = block.shape[0]
        hit = block[:, None, :] == ids[:, None]  # (rows, width, N): label j at observation i
        present = hit.any(axis=2)
        first = np.where(present, hit.argmax(axis=2), n)  # each label's first appearance
        rank = np.empty((rows, width), dtype=np.int32)
        order = np.argsort(first, axis=1, kind="stable")
        np.put_along_axis(rank, order, np.broadcast_to(ids.astype(np.int32), (rows, width)), 1)
        keys.extend(row.tobytes() for row in np.take_along_axis(rank, block, axis=1))
        counts.extend(present.sum(axis=1).tolist())
    return keys, counts


def _distinct(
    starts: dict[int, list[tuple[str, Any]]],
) -> dict[int, list[tuple[str, Any]]]:
    """Each K's starts whose partitions (hard assignments of one-hot responsibilities) differ
    (the keys of every K's starts in one call)."""
    arrays = [
        start for cell in starts.values() for _, start in cell if isinstance(start, np.ndarray)
    ]
    keys = iter(_partition_keys(np.stack([a.argmax(axis=1) for a in arrays]))[0] if arrays else [])
    out: dict[int, list[tuple[str, Any]]] = {}
    for k, cell in starts.items():
        seen: set[bytes] = set()
        kept = out[k] = []
        for label, start in cell:
            if isinstance(start, np.ndarray):
                key = next(keys)
                if key in seen:
                    continue
                seen.add(key)
            kept.append((label, start))
    return out


def _parse_ks(n_components: Any) -> list[int]:
    if isinstance(n_components, int | np.integer) and not isinstance(n_components, bool):
        ks = [int(n_components)]
    elif isinstance(n_components, Iterable) and not isinstance(n_components, str):
        ks = [int(k) for k in n_components]
    else:
        raise TypeError(
            f"n_components must be an int or an iterable of ints such as range(1, 10); got "
            f"{n_components!r}."
        )
    if not ks or min(ks) < 1:
        raise ValueError(f"n_components must be positive integers; got {ks}.")
    return sorted(set(ks))


def select_em(
    X: Any,
    n_components: Any = range(1, 10),
    covariance_types: str | Iterable[str] = "all",
    criterion: str = "bic",
    *,
    init: str = "hc",
    n_init: int = 10,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    reg_covar: float = 0.0,
    prior: ConjugatePrior | None = None,
    sample_weight: Any = None,
    rng: Any = 0,
    cross_starts: bool = True,
    accelerate: bool = True,
    n_jobs: int | None = None,
    labels: Any = None,
    screen: int | None = SCREEN_ROWS,
) -> SelectionResult:
    """Fit every (structure, K) cell by EM and choose by BIC or ICL, as mclust's ``Mclust``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        NaN marks a missing value, as in :func:`fit_em`. A dask array (or dask DataFrame, or
        xarray object backed by dask) is never gathered: the grid is screened on a seeded
        subsample of ``screen // 4`` rows in memory, then every cell runs EM over the chunks
        from the subsample's best fit and the hierarchical start (and its runner-up, as for
        ``screen`` below), all cells sharing each pass (docs/scale.md).
    n_components : int or iterable of int, default range(1, 10)
    covariance_types : "all" or iterable of str, default "all"
        "all" is every structure built (E and V for one feature, as mclust).
    criterion : {"bic", "icl"}, default "bic"
        Textbook sign: the smallest wins.
    init : {"hc", "kmeans++", "random"}, a tree or its name, default "hc"
        With "hc" (mclust's start, see :func:`fit_em`), one hierarchical tree is built for the
        whole grid and cut at each K; a tree of these data (:func:`bayesgmm.hierarchical`) or
        its name ("hc:ward", "hc:average", "hc:complete", "hc:single", "hc:vvv", "hc:eii") is
        cut the same way.
    n_init : int, default 10
        Starts per cell: the hierarchical one plus ``n_init − 1`` k-means++ restarts, because EM
        finds local optima (mclust's default start alone misses galaxies' V,3). ``n_init=1,
        cross_starts=False, tol=1e-5`` does mclust's work: one start per cell, its tolerance.
    tol, max_iter, reg_covar, prior, sample_weight, accelerate
        As :func:`fit_em`.
    rng : int or numpy.random.Generator, default 0
        Seeds the restarts; the default makes the table reproducible.
    cross_starts : bool, default True
        After the first pass, rerun each cell from the partitions the other structures found at
        the same K and from the splits of its own structure's fit at K − 1 (each component in
        turn split in two along its principal axis, moments kept): 5 EM iterations from each,
        the best one then to convergence. Never makes a cell worse. A cell whose fit is
        degenerate is offered them too (after the restarts its short round set aside), and a
        valid fit from any of them replaces it.
    n_jobs : int, optional
        Worker processes; the covariance structures are dealt to them in turn, and each
        worker's share runs as one batch. scikit-learn's convention for explicit values (-1:
        every core, -2: all but one; an explicit value also bounds the compiled loop's
        threads); None: this process when the compiled EM loop is loaded and suits the data
        (rows × (1 + D + D(D + 1)/2) up to 150,000, e.g. 5,000 × 5; it runs on every core
        the process may use, in threads),
        else one per core for small data (under 4096 rows, where a pass runs in one thread)
        and 1 otherwise. Results do not depend on it.
    labels : array_like (n_obs,) of int, optional
        Semi-supervised EM in every cell (see :func:`fit_em`): each K starts from its labelled
        rows, without restarts or cross-starts; a K with an unlabelled component fails.
    screen : int or None, default 20,000
        On data with more rows than this, the grid is first screened on a seeded uniform
        subsample of ``screen // 4`` rows (every start, restart and cross-start there), and
        each cell then runs full-data EM from two starts only, the screen's best fit and the
        full data's hierarchical start; the better one is the cell's. (A third, the screen's
        runner-up, a distinct optimum within 0.1% of its best there, goes on only when it
        leads both after 5 full-data iterations.) Every number in the
        tables is a full-data log-likelihood. The restarts are what make the default grid
        several times the cost of one start per cell; on large data they run on the
        subsample. With one start per cell (``n_init=1, cross_starts=False``) there is nothing
        to screen. None: no screening (every start on all rows).

    Returns
    -------
    SelectionResult

    Examples
    --------
    >>> import bayesgmm as bg
    >>> sel = bg.select_em(bg.datasets.load_faithful())
    >>> sel.best.covariance_type, sel.best.n_components
    ('EEE', 3)
    """

    from bayesgmm.core._dask import is_dask

    if is_dask(X):
        return _select_chunked(X, n_components, covariance_types, criterion, labels=labels,
                               init=init, n_init=n_init, tol=tol, max_iter=max_iter,
                               reg_covar=reg_covar, prior=prior, sample_weight=sample_weight,
                               rng=rng, cross_starts=cross_starts, accelerate=accelerate,
                               n_jobs=n_jobs, screen=screen)  # fmt: skip
    if labels is None:
        arr, names, w = prepare_data(X, sample_weight)
        lab = None
    else:
        arr, names, w, lab = prepare_data(X, sample_weight, labels)
    check_settings(n_init, tol, max_iter, reg_covar, prior)
    return _select(
        arr, names, w, lab, _parse_ks(n_components),
        _structure_list(covariance_types, arr.shape[1]), _criterion(criterion), as_rng(rng),
        init=init, n_init=n_init, tol=tol, max_iter=max_iter, reg_covar=reg_covar, prior=prior,
        cross_starts=cross_starts, accelerate=accelerate, n_jobs=n_jobs, screen=screen,
    )  # fmt: skip


def _select(arr: np.ndarray, *args: Any, **kwargs: Any) -> SelectionResult:
    """:func:`_select_grid` without automatic cyclic garbage collection (see
    :func:`~bayesgmm.core._parallel.cyclic_gc_paused`), and with BLAS on one thread when the
    compiled loop runs the grid (see :func:`~bayesgmm.core._passes.serial_blas`)."""
    serial = compiled_suits(*arr.shape) and compiled_ready()
    with cyclic_gc_paused(), serial_blas() if serial else contextlib.nullcontext():
        return _select_grid(arr, *args, **kwargs)


def _select_grid(
    arr: np.ndarray,
    names: tuple[str, ...] | None,
    w: np.ndarray | None,
    lab: np.ndarray | None,
    ks: list[int],
    structures: list[str],
    crit: str,
    gen: np.random.Generator,
    *,
    init: Any,
    n_init: int,
    tol: float,
    max_iter: int,
    reg_covar: float,
    prior: ConjugatePrior | None,
    cross_starts: bool,
    accelerate: bool,
    n_jobs: int | None,
    screen: int | None,
    hc: tuple[Any, np.ndarray] | None = None,
    runners_out: dict[tuple[str, int], EMResult] | None = None,
) -> SelectionResult:
    """select_em on validated data in memory; ``hc``: the hierarchical start's (tree, rows)
    when the caller has built it (the screen's, shared with the full data)."""
    from bayesgmm.core.hierarchy import HierarchicalResult, tree_start

    method = _start_method(init)
    # Screening moves the restarts and cross-starts to a subsample; with none to move (one
    # start per cell), there is nothing to screen.
    has_restarts = n_init > 1 or (cross_starts and len(structures) > 1)
    sub = None
    screen_runners: dict[tuple[str, int], EMResult] = {}
    if screen is not None and lab is None and has_restarts and arr.shape[0] > screen:
        rows = np.sort(gen.choice(arr.shape[0], size=max(2, screen // 4), replace=False))
        sub_w = None if w is None else w[rows]
        sub_init = "hc" if isinstance(init, HierarchicalResult) else init
        sub_hc = None
        if isinstance(sub_init, str) and sub_init.lower() == "hc":
            # One tree serves both rounds: built on rows of the subsample (mclust's 2,000),
            # it is the screen's hierarchical start and, those rows being rows of the data,
            # the full data's (two trees took 1.8 s of select_em's 30 on 10⁵ × 5 rows).
            sub_hc = hc_tree(start_data(arr[rows], sub_w), gen)
            if hc is None and sub_hc[1].shape[0] < rows.shape[0]:
                hc = (sub_hc[0], rows[sub_hc[1]])
        sub = _select(
            arr[rows], names, sub_w, None, ks, structures, crit, gen, init=sub_init,
            n_init=n_init, tol=tol, max_iter=max_iter, reg_covar=reg_covar, prior=prior,
            cross_starts=cross_starts, accelerate=accelerate, n_jobs=n_jobs, screen=None,
            hc=sub_hc, runners_out=screen_runners,
        )  # fmt: skip
    filled = start_data(arr, w)
    given = tree_start(init, filled, gen)
    tree = given if given is not None else hc
    if tree is None and method == "hc":
        tree = hc_tree(filled, gen)
    failures: dict[tuple[str, int], str] = {}
    usable = _usable_ks(ks, structures, count_distinct_rows(arr, at_least=max(ks)), tree, failures)
    priors = dict.fromkeys(usable) if prior is None else prior.resolve_many(arr, usable, w)
    if lab is not None:
        starts = _labelled_starts(lab, usable, structures, failures)
        usable, cross_starts = list(starts), False  # restarts and cross-starts do not apply
    elif sub is not None:
        starts = {k: make_starts(method, filled, k, gen, 1, tree) for k in usable}
    else:
        # One start at K = 1 (every start is the one-cluster partition), and restarts that
        # repeat a partition already among a cell's starts are dropped.
        z = standardise(filled)  # (k-means++'s data, once for every K)
        starts = _distinct(
            {
                k: make_starts(method, filled, k, gen, n_init if k > 1 else 1, tree, z)
                for k in usable
            }
        )
    settings = {"reg_covar": float(reg_covar), "tol": float(tol), "max_iter": int(max_iter),
                "accelerate": bool(accelerate)}  # fmt: skip
    job = _GridJob(arr, names, w, priors, float(reg_covar), settings, filled, lab)
    workers = _n_workers(n_jobs, arr.shape[0], len(structures), arr.shape[1])
    cells = {s: _screened_starts(sub, s, starts, screen_runners) for s in structures}
    results: dict[tuple[str, int], EMResult] = {}
    # On screened (large) data each cell's responsibilities are computed when first asked for:
    # kept, the grid's 126 (N, K) matrices were 126 times the data (5 GB for 10⁶ × 5 rows).
    # The screen's best fit and the hierarchical start both run to convergence (the lead starts);
    # the screen's runner-up, a distinct optimum close behind its best on the subsample, goes on
    # only if it leads both after 5 full-data iterations: the subsample's best optimum is not
    # always where full-data EM climbs highest (10⁵ × 3 rows, VII,7: -506274.5 from the best,
    # -506149.7 from the runner-up, 11 behind on the subsample).
    keep = None if sub is None else {"keep": 1, "lazy": True, "lead": 2, "short_iter": 5}
    if runners_out is not None:  # the screen itself: report each cell's runner-up
        keep = {"runner_up": True}
    # An explicit n_jobs also bounds the compiled loop's threads (n_jobs=1: one core).
    with thread_limit(None if n_jobs is None else resolve_n_jobs(n_jobs, 1)):
        for key, fits in _run_grid(job, workers, cells, keep, failures):
            results[key] = best_result(fits)
            if runners_out is not None and len(fits) > 1:
                runners_out[key] = min(fits, key=lambda f: f.loglik)
        if sub is None and cross_starts and len(structures) > 1:
            cross = _cross_start_cells(results, structures, usable, filled)
            # Every cell offered cross-starts has its fit already: a cross-start that cannot
            # start is no failure of the cell.
            for key, fits in _run_grid(job, workers, cross, CROSS_SCREEN, {}):
                if fits:
                    old = results[key]
                    _keep_better(results, key, best_result(fits))
                    new = results[key]
                    if runners_out is not None and new is not old and not old.degenerate:
                        if old.loglik >= new.loglik - RUNNER_UP_GAP * abs(new.loglik):
                            runners_out[key] = old  # the cell's grid fit: a runner-up now
    for key, fit in results.items():
        if fit.degenerate:
            failures[key] = fit.degenerate_reason or "degenerate"
    return _selection(results, failures, ks, structures, crit)


def _criterion(criterion: Any) -> str:
    crit = str(criterion).lower()
    if crit not in _CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not one of {list(_CRITERIA)}.")
    return crit


def _select_chunked(
    X: Any,
    n_components: Any,
    covariance_types: Any,
    criterion: Any,
    *,
    labels: Any,
    screen: int | None,
    **options: Any,
) -> SelectionResult:
    """select_em on a dask collection (:func:`bayesgmm.core._dask.select_em_chunked`)."""
    from bayesgmm.core._dask import as_dask, select_em_chunked

    if labels is not None:
        raise ValueError("labels= is not available for dask input yet; select in memory.")
    check_settings(options["n_init"], options["tol"], options["max_iter"],
                   options["reg_covar"], options["prior"])  # fmt: skip
    crit = _criterion(criterion)
    _start_method(options["init"])
    d = as_dask(X)[0].shape[1]
    return select_em_chunked(
        X, _parse_ks(n_components), _structure_list(covariance_types, d), crit,
        screen=SCREEN_ROWS if screen is None else screen, **options,
    )  # fmt: skip


def _screened_starts(
    sub: SelectionResult | None,
    structure: str,
    starts: dict[int, list[tuple[str, Any]]],
    runners: dict[tuple[str, int], EMResult] | None = None,
) -> dict[int, list[tuple[str, Any]]]:
    """A structure's starts per K: the shared ones, after the screen's best fit of that cell
    when the grid was screened."""
    if sub is None:
        return starts
    out = {}
    for k, own in starts.items():
        fit = sub.results.get((structure, k))
        good = fit is not None and not fit.degenerate
        out[k] = [(f"screen ({fit.init})", fit.model), *own] if good and fit else list(own)
        second = (runners or {}).get((structure, k))
        if good and second is not None and not second.degenerate:
            out[k].append((f"screen runner-up ({second.init})", second.model))
    return out


def _start_method(init: Any) -> str:
    """select_em's start method: "hc" for any tree (given, or named "hc:<...>"), else the name."""
    from bayesgmm.core.hierarchy import HierarchicalResult

    named_tree = isinstance(init, str) and init.lower().startswith("hc:")
    if not (isinstance(init, HierarchicalResult) or named_tree) and (
        not isinstance(init, str) or init.lower() not in INIT_METHODS
    ):
        raise ValueError(
            f"select_em's init must be one of {list(INIT_METHODS)}, a tree of the data "
            f"(bayesgmm.hierarchical) or its name such as 'hc:ward'; got {init!r}. To start one "
            "fit from labels or a mixture, use fit_em(init=...)."
        )
    return "hc" if not isinstance(init, str) or named_tree else init.lower()


def _structure_list(covariance_types: Any, d: int) -> list[str]:
    """The structures of the grid: every one built for D features, or those named."""
    if isinstance(covariance_types, str) and covariance_types.lower() == "all":
        return structure_names(d)
    types = [covariance_types] if isinstance(covariance_types, str) else list(covariance_types)
    return list(dict.fromkeys(get_structure(t, d).name for t in types))


def _usable_ks(
    ks: list[int],
    structures: list[str],
    n_distinct: int,
    tree: Any,
    failures: dict[tuple[str, int], str],
) -> list[int]:
    """The K the data allow (the others recorded in ``failures`` with the reason)."""
    usable = []
    for k in ks:
        if k > n_distinct:
            reason = f"K={k} exceeds the {n_distinct} distinct rows"
        elif tree is not None and k > tree[0].n_initial:
            reason = f"K={k} exceeds the {tree[0].n_initial} rows of the hierarchical start"
        else:
            usable.append(k)
            continue
        for structure in structures:
            failures[(structure, k)] = reason
    return usable


def _labelled_starts(
    lab: np.ndarray,
    usable: list[int],
    structures: list[str],
    failures: dict[tuple[str, int], str],
) -> dict[int, list[tuple[str, Any]]]:
    """Semi-supervised: each K's start from its labelled rows; a K whose components are not
    all labelled fails with the reason."""
    starts = {}
    for k in usable:
        try:
            starts[k] = [labelled_start(lab, k, "hc", 1)]
        except ValueError as err:
            for structure in structures:
                failures[(structure, k)] = str(err)
    return starts


def _run_grid(
    job: _GridJob,
    workers: int,
    cells_by_structure: dict[str, dict[int, list[tuple[str, Any]]]],
    screen: dict[str, int] | None,
    failures: dict[tuple[str, int], str],
) -> Iterator[tuple[tuple[str, int], list[EMResult]]]:
    """EM for every start of every cell: the structures dealt to the workers round-robin,
    each worker's share as one batch (on small data, passes are shared across structures
    too); yields each cell's fits, and records the cells without a valid start."""
    n_tasks = min(workers, len(cells_by_structure))
    if n_tasks == 0:
        return
    shares: list[dict[str, dict[int, list[tuple[str, Any]]]]] = [{} for _ in range(n_tasks)]
    for i, (s, cells) in enumerate(cells_by_structure.items()):
        shares[i % n_tasks][s] = cells
    tasks = [(job, share, screen or {}) for share in shares]
    if can_fork(len(tasks)):
        with forked_pool(len(tasks)) as pool:
            outputs = list(pool.map(_run_group, tasks))
    else:
        merged = {s: c for share in shares for s, c in share.items()}
        outputs = [_run_group((job, merged, screen or {}))]
    for fits_by_cell, failed in outputs:
        failures.update(failed)
        yield from fits_by_cell.items()


def _cross_start_cells(
    results: dict[tuple[str, int], EMResult],
    structures: list[str],
    usable: list[int],
    X: np.ndarray,
) -> dict[str, dict[int, list[tuple[str, Any]]]]:
    """Cross-starts: each cell again from the partitions that the other structures found at
    the same K (a cell's optimum is often reached from a neighbour's partition that its own
    start missed; the grid becomes consistent and never worse), and from the splits of the
    same structure's fit at K − 1 (each component in turn, :func:`split_components`), beside
    its own fit. Starts that give a partition already on the list are dropped."""
    key_of: dict[tuple[str, int], bytes] = {}  # each valid fit's partition
    partitions: dict[int, list[tuple[str, np.ndarray, bytes]]] = {}
    for k in usable:
        found: list[tuple[str, np.ndarray, bytes]] = []
        keys: set[bytes] = set()
        fitted = [
            (structure, fit.predict())
            for structure in structures
            if (fit := results.get((structure, k))) is not None and not fit.degenerate
        ]
        if not fitted:
            partitions[k] = found
            continue
        fit_keys, sizes = _partition_keys(np.stack([labels for _, labels in fitted]))
        for (structure, labels), key, size in zip(fitted, fit_keys, sizes, strict=True):
            key_of[(structure, k)] = key
            if size == k and key not in keys:
                found.append((f"from {structure},{k}", labels, key))
                keys.add(key)
        partitions[k] = found
    cross: dict[str, dict[int, list[tuple[str, Any]]]] = {}
    # One responsibility array per partition, whichever structures it is offered to (the
    # starts' first M-steps then compute its sums once: on a 5,000-row screen the copies
    # made a 1 GB matrix).
    resp_of: dict[bytes, np.ndarray] = {}
    splits = _split_starts(results, structures, [k - 1 for k in usable], X)
    for structure in structures:
        cells: dict[int, list[tuple[str, Any]]] = {}
        for k in usable:
            current = results.get((structure, k))
            if current is None:
                continue
            # (A degenerate fit is offered them too: a valid one from any of them replaces it.)
            own = key_of.get((structure, k))
            seen = set() if own is None else {own}
            extra = []
            for label, part, key in partitions[k]:
                if key not in seen:
                    if key not in resp_of:
                        resp_of[key] = labels_to_resp(part, k)
                    extra.append((label, resp_of[key]))
                    seen.add(key)
            for label, resp, key, size in splits.get((structure, k - 1), []):
                if size == k and key not in seen:
                    extra.append((label, resp))
                    seen.add(key)
            if extra:
                # The cell's own fit competes as it stands (when it is sound; a degenerate
                # one starts again from its mixture).
                own_start: Any = (
                    current.model
                    if current.degenerate
                    else Resumed(current.model, current.n_iter, current.converged, current.loglik)
                )
                cells[k] = [(current.init, own_start), *extra]
        if cells:
            cross[structure] = cells
    return cross


#: Most numbers (components × fits × splits × rows) _split_starts normalises at once.
_SPLIT_BLOCK = 2_000_000


def _split_starts(
    results: dict[tuple[str, int], EMResult], structures: list[str], ks: list[int], X: np.ndarray
) -> dict[tuple[str, int], list[tuple[str, np.ndarray, bytes, int]]]:
    """The responsibilities (N, K + 1) of each split of each structure's fit at each K in
    ``ks`` (none for a fit that is missing or degenerate), with its partition's key
    (:func:`_partition_key`) and number of non-empty components.

    A split (:func:`~bayesgmm.core.init.split_components`) changes one component of its fit:
    log π_k N(x | k) of the fits' components and of their halves (3K a fit, the fits of every
    K in one product on small data) give every split's, which are normalised over its K + 1
    components as a pass does. (The K splits of a fit as K mixtures of K + 1 components cost
    K(K + 1) densities a fit: at K = 8 the splits of all structures' fits took 5% of
    select_em on 145 × 3 rows.)"""
    out: dict[tuple[str, int], list[tuple[str, np.ndarray, bytes, int]]] = {}
    n = X.shape[0]
    center = X.mean(axis=0)
    groups = []
    for k in ks:
        fits = [
            (structure, fit)
            for structure in structures
            if (fit := results.get((structure, k))) is not None and not fit.degenerate
        ]
        if fits:
            groups.append((k, fits))
    # The fits of several K in one product (its rows the components of all), as many K as keep
    # it within 4 · _SPLIT_BLOCK numbers: on small data all of them (one product per K was a
    # third of the splits' time on acidity).
    batches: list[list[tuple[int, list[tuple[str, EMResult]]]]] = []
    size = 0
    for k, fits in groups:
        need = 3 * len(fits) * k * n
        if not batches or size + need > 4 * _SPLIT_BLOCK:
            batches.append([])
            size = 0
        batches[-1].append((k, fits))
        size += need
    for batch in batches:
        every = _split_log_joint(X, center, [f.model for _, fits in batch for _, f in fits])
        at = 0
        for k, fits in batch:
            s = len(fits)
            joint = every[:, at : at + s * k].reshape(3, s, k, n)
            at += s * k
            _split_responsibilities(out, k, fits, joint, n)
    return out


def _split_log_joint(X: np.ndarray, center: np.ndarray, models: list[GaussianMixture]) -> Any:
    """log π_k N(x | k) (3, C, N) of the C components of ``models`` (all their components in
    order), of their lower halves and of their upper halves (weights π/2, means μ ∓ a,
    covariance Σ − a aᵀ: :func:`~bayesgmm.core.init.split_halves`), in one product."""
    d = X.shape[1]
    w = np.concatenate([m.weights for m in models])
    mu = np.concatenate([m.means for m in models])
    cov = np.concatenate([m.covariances for m in models])
    half, inner = split_halves(cov)
    means = np.concatenate([mu, mu - half, mu + half])
    covs = np.concatenate([cov, inner, inner])
    with np.errstate(divide="ignore"):
        log_w = np.concatenate([np.log(w), np.log(w / 2), np.log(w / 2)])
    off = ~np.eye(d, dtype=bool)
    p = density_params(log_w, means, np.linalg.cholesky(covs), not covs[:, off].any(), center)
    return chunk_log_joint(features(X, center, p.kind), p).reshape(3, w.shape[0], X.shape[0])


def _split_responsibilities(
    out: dict[tuple[str, int], list[tuple[str, np.ndarray, bytes, int]]],
    k: int,
    fits: list[tuple[str, EMResult]],
    joint: np.ndarray,
    n: int,
) -> None:
    """Each split's responsibilities, key and size (:func:`_split_starts`) of the ``fits`` at
    ``k`` into ``out``, from ``joint`` (3, S, K, N): log π_k N(x | k) of each fit's components,
    lower halves and upper halves."""
    s = len(fits)
    step = max(1, _SPLIT_BLOCK // (k * (k + 1) * n))
    for lo in range(0, s, step):
        hi = min(lo + step, s)
        m = (hi - lo) * k  # the block's splits
        # Split j: the components other than j, in order, then j's two halves. Its c-th
        # is component c for the splits j > c, component c + 1 for the others.
        terms = np.empty((k + 1, hi - lo, k, n))  # (component, fit, split, row)
        for c in range(k - 1):
            terms[c, :, c + 1 :] = joint[0, lo:hi, c, None]
            terms[c, :, : c + 1] = joint[0, lo:hi, c + 1, None]
        terms[k - 1] = joint[1, lo:hi]
        terms[k] = joint[2, lo:hi]
        flat = terms.reshape(k + 1, m, n)
        _log_normalise(flat.reshape((k + 1) * m, n), m, k + 1)
        # Each row's first most probable component (argmax's rule), a component at a time.
        labels = np.zeros((m, n), dtype=np.intp)
        top = flat[0].copy()
        for c in range(1, k + 1):
            ahead = flat[c] > top
            np.copyto(labels, c, where=ahead)
            np.maximum(top, flat[c], out=top)
        keys, sizes = _partition_keys(labels)
        for i, (structure, fit) in enumerate(fits[lo:hi]):
            name = f"{fit.model.covariance_type},{k}"
            out[(structure, k)] = [
                (f"split {j} of {name}", flat[:, i * k + j].T, keys[i * k + j],
                 sizes[i * k + j])
                for j in range(k)
            ]  # fmt: skip


def _keep_better(
    results: dict[tuple[str, int], EMResult], key: tuple[str, int], refit: EMResult
) -> None:
    """A cross-start replaces the cell's fit only when it does better (the cell's own fit ran
    again beside it, and converged at once), or when that fit is degenerate and it is not (the
    degenerate fit's own run too: started again from its mixture, it may end valid)."""
    current = results[key]
    if not refit.degenerate and (
        current.degenerate
        or (
            refit.init != current.init
            and refit.loglik > current.loglik + 1e-12 * abs(current.loglik)
        )
    ):
        results[key] = refit


def _selection(
    results: dict[tuple[str, int], EMResult],
    failures: dict[tuple[str, int], str],
    ks: list[int],
    structures: list[str],
    crit: str,
) -> SelectionResult:
    """The tables (rows K, columns structure; NaN where a cell failed) and the best cell."""
    import pandas as pd

    valid = [[(s, k) in results and (s, k) not in failures for s in structures] for k in ks]
    k_axis, s_axis = pd.Index(ks, name="K"), pd.Index(structures, name="structure")

    def frame(attr: str) -> pd.DataFrame:
        # (From one float array: a frame built from a dict of lists, and stack().idxmin() on
        # it, took ~1.5 ms of acidity's 35.)
        data = np.array(
            [
                [
                    getattr(results[(s, k)], attr) if ok else np.nan
                    for s, ok in zip(structures, row, strict=True)
                ]
                for k, row in zip(ks, valid, strict=True)
            ],
            dtype=np.float64,
        ).reshape(len(ks), len(structures))
        # (Axes of its own: a name set on one table's axis stays on that table. Copies of one
        # pair: building a string Index costs ~0.1 ms, copying it a tenth of that.)
        return pd.DataFrame(data, index=k_axis.copy(), columns=s_axis.copy())

    bic_t, icl_t, ll_t = frame("bic"), frame("icl"), frame("loglik")
    table = bic_t if crit == "bic" else icl_t
    values = table.to_numpy()
    if np.isnan(values).all():
        raise ValueError(
            "no cell of the grid gave a valid fit: "
            + "; ".join(f"{s},{k}: {r}" for (s, k), r in list(failures.items())[:3])
        )
    # The first smallest in row order (K, then structure): stack().idxmin()'s choice.
    row, col = divmod(int(np.nanargmin(values)), len(structures))
    k_best, s_best = ks[row], structures[col]
    return SelectionResult(
        table=table,
        bic=bic_t,
        icl=icl_t,
        loglik=ll_t,
        failures=failures,
        results=results,
        best=results[(s_best, int(k_best))],
        criterion=crit,
    )
