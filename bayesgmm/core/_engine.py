"""The engine behind :func:`~bayesgmm.fit_em` and :func:`~bayesgmm.select_em` (private):
validation of the data and settings, the starts, and the multi-start EM run of a set of cells.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._compiled import distinct_columns, first_steps
from bayesgmm.core._compiled import ready as compiled_ready
from bayesgmm.core._compiled import suits as compiled_suits
from bayesgmm.core._loop import (
    Resumed,
    Run,
    StartPoint,
    _collapse_reason,
    _collapse_reasons,
    _data_scale,
    finish_all,
    finish_many,
    iterate,
    new_run,
)
from bayesgmm.core._missing import fill_means, missingness
from bayesgmm.core._moments import mean_cov
from bayesgmm.core._passes import PassStats, features
from bayesgmm.core._validation import (
    as_data,
    check_sample_weight,
    integer_valued,
)
from bayesgmm.core.em import Degenerate, m_step, m_step_batch, to_model
from bayesgmm.core.init import (
    hc_tree,
    kmeans_plus_plus_labels,
    kmeans_plus_plus_many,
    labels_to_resp,
    random_resp,
    standardise,
)
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior, ResolvedPrior
from bayesgmm.core.result import EMResult
from bayesgmm.core.structures import CovarianceStructure, cold_inner_limit

#: Default relative tolerance on the log-likelihood change. scikit-learn's 1e-3 (absolute, per
#: observation) stops faithful's EEE,3 fit about 0.05 short of its optimum; this does not.
DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 1000
#: With several starts, each runs this many iterations before the unpromising ones are dropped.
SHORT_ITER = 20
#: Restarts (besides the first start) carried on to convergence after the short runs.
KEEP_AFTER_SHORT = 2
#: Inner iterations of a start's first M-step in the iterative structures (VEI, VEE, EVE, VVE,
#: VEV, EVV, ...): a generalised M-step, which EM's warm steps then refine. Iterated to
#: convergence (up to 500), the batched first M-steps of select_em's default grid took 5.4 s of
#: its 11 on iris, each batch waiting for its slowest member; at 20, no grid cell got worse
#: against mclust on faithful, iris, thyroid or banknote.
START_INNER_MAX = 20


@dataclass(frozen=True)
class _SubsetStart:
    """Responsibilities known for some rows only (a hierarchical start built on a subset)."""

    rows: np.ndarray
    resp: np.ndarray


Start = GaussianMixture | np.ndarray | _SubsetStart


def prepare_data(X: Any, sample_weight: Any, labels: Any = None) -> Any:
    """Validated data (NaN for a missing value), feature names and weights (rows of weight 0
    dropped); with ``labels`` given (not None), also the checked labels of the rows kept."""
    arr, names = as_data(X, allow_missing=True)
    w = check_sample_weight(sample_weight, arr.shape[0])
    lab = None if labels is None else check_labels(labels, arr.shape[0])
    if w is not None and (w == 0).any():
        keep = w > 0
        arr, w = arr[keep], w[keep]
        lab = None if lab is None else lab[keep]
    _check_not_constant(arr, w)
    if labels is None:
        return arr, names, w
    return arr, names, w, lab


def check_labels(labels: Any, n: int) -> np.ndarray:
    """Known components as an int (n,) array: 0, 1, ... where known, −1 where not."""
    try:
        lab = np.asarray(labels)
    except Exception as err:  # pragma: no cover - anything array-like converts
        raise TypeError(f"labels could not be read as an array ({err}).") from err
    if lab.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},), one per row of X (−1 where unknown); got {lab.shape}."
        )
    as_int = integer_valued(lab)
    if as_int is None:
        raise TypeError(
            f"labels must be integers (component indices, −1 where unknown); got dtype "
            f"{lab.dtype}. For class names, use bayesgmm.fit_classifier, which maps them."
        )
    lab = as_int
    if lab.size and lab.min() < -1:
        raise ValueError(
            f"labels must be component indices 0..K−1, or −1 where unknown; got {lab.min()}."
        )
    return lab.astype(np.int64)


def labelled_start(lab: np.ndarray, k: int, init: Any, n_init: int) -> tuple[str, Start]:
    """The start of semi-supervised EM: the given mixture, or the M-step on the labelled rows
    (their one-hot responsibilities)."""
    if lab.max(initial=-1) >= k:
        raise ValueError(
            f"labels must be component indices 0..{k - 1} (or −1); got {lab.max()} with "
            f"n_components={k}."
        )
    if n_init != 1:
        raise ValueError(
            f"n_init={n_init}: with labels, the labelled rows fix the components and EM starts "
            "from them; restarts do not apply. Pass n_init=1."
        )
    if isinstance(init, GaussianMixture):
        if init.n_components != k:
            raise ValueError(f"init has {init.n_components} components; the fit asks for {k}.")
        return ("mixture", init)
    if not (isinstance(init, str) and init == "hc"):
        raise ValueError(
            f"init={init!r}: with labels, EM starts from the M-step on the labelled rows (the "
            "default) or from a GaussianMixture passed as init."
        )
    counts = np.bincount(lab[lab >= 0], minlength=k)
    if (counts == 0).any():
        j = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(
            f"component {j} has no labelled row; every component 0..{k - 1} needs at least one "
            "(EM starts from the labelled rows). Label a row of it, or use fewer components."
        )
    rows = np.flatnonzero(lab >= 0)
    return ("labels", _SubsetStart(rows, labels_to_resp(lab[rows], k)))


def check_settings(n_init: Any, tol: Any, max_iter: Any, reg_covar: Any, prior: Any) -> None:
    """Type and range checks of the EM settings shared by fit_em and select_em."""
    _check_positive("n_init", n_init, integer=True)
    _check_positive("max_iter", max_iter, integer=True, allow_zero=True)
    _check_positive("tol", tol, integer=False, allow_zero=True)
    _check_positive("reg_covar", reg_covar, integer=False, allow_zero=True)
    if prior is not None and not isinstance(prior, ConjugatePrior):
        raise TypeError(f"prior must be a ConjugatePrior or None; got {prior!r}.")


def _check_positive(name: str, value: Any, *, integer: bool, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int | np.integer) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}; got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}; got {value!r}.")


def make_starts(
    parsed: str | np.ndarray | GaussianMixture,
    X: np.ndarray,
    k: int,
    gen: np.random.Generator,
    n_init: int,
    hc: tuple[Any, np.ndarray] | None = None,
    standardised: np.ndarray | None = None,
) -> list[tuple[str, Start]]:
    """The ``n_init`` starts of one fit: ``init`` first, then k-means++ (or random) restarts
    (seeded on ``standardised``, :func:`standardise`'s ``X``, when the caller has it)."""
    starts: list[tuple[str, Start]] = []
    if isinstance(parsed, str):
        starts.append((parsed, _method_start(parsed, X, k, gen, hc)))
    elif isinstance(parsed, GaussianMixture):
        starts.append(("mixture", parsed))
    else:
        starts.append(("user", parsed))
    if isinstance(parsed, str) and parsed == "random":
        starts.extend(("random", random_resp(X.shape[0], k, gen)) for _ in range(n_init - 1))
        return starts
    if n_init > 1:
        z = standardise(X) if standardised is None else standardised
        seeds = kmeans_plus_plus_many(z, k, gen, n_init - 1)
        starts.extend(("kmeans++", labels_to_resp(labels, k)) for labels in seeds)
    return starts


def run_cells(
    X: np.ndarray,
    names: tuple[str, ...] | None,
    w: np.ndarray | None,
    cells: Mapping[Any, Sequence[tuple[str, GaussianMixture | StartPoint]]],
    *,
    priors: dict[Any, ResolvedPrior | None],
    reg_covar: float,
    tol: float,
    max_iter: int,
    accelerate: bool = True,
    short_iter: int = SHORT_ITER,
    keep: int = KEEP_AFTER_SHORT,
    labels: np.ndarray | None = None,
    only_new: bool = False,
    lazy: bool = False,
    runner_up: bool = False,
    lead: int = 1,
) -> dict[Any, list[EMResult]]:
    """Run EM from every start of every cell (cells keyed e.g. by K or by (structure, K); each
    start's structure is its mixture's), all in one batch, and return the finished runs of
    each cell.

    With several starts in a cell, every start first runs ``short_iter`` iterations; then the
    first start and the ``keep`` best other starts go on to convergence. With ``only_new``
    (the first start is a fit the caller already has), a cell whose best run is its first
    start returns no result when that start is the fit as it stands (a Resumed one). With
    ``lazy``, the results compute their responsibilities on first access
    (:func:`~bayesgmm.core._loop.finish`).
    """
    if len(cells) > 1 and any(p is not None for p in priors.values()):
        out: dict[Any, list[EMResult]] = {}
        for key, starts in cells.items():  # the MAP M-step depends on K: no batching over K
            out |= run_cells(
                X,
                names,
                w,
                {key: starts},
                priors={key: priors[key]},
                reg_covar=reg_covar,
                tol=tol,
                max_iter=max_iter,
                accelerate=accelerate,
                short_iter=short_iter,
                keep=keep,
                labels=labels,
                only_new=only_new,
                lazy=lazy,
                runner_up=runner_up,
                lead=lead,
            )
        return out
    prior = next(iter(priors.values()), None)
    missing = missingness(X)
    if missing is None:
        center = X.mean(axis=0) if w is None else w @ X / w.sum()
    else:
        center = mean_cov(X, w, diagonal=True)[0]
    settings: dict[str, Any] = {
        "center": center,
        "w": w,
        "prior": prior,
        "reg_covar": reg_covar,
        "tol": tol,
        "accelerate": accelerate,
        "missing": missing,
        "labels": labels,
    }
    # The features' spreads (SQUAREM's units, the degeneracy rule's) once for every batch and
    # result, not once per batch and per cell (1 s of select_em's 31 on 10⁵ × 5 rows).
    scale = settings["scale"] = _data_scale(X, w)
    runs = {key: [new_run(m, label) for label, m in starts] for key, starts in cells.items()}
    pruned: dict[Any, list[Run]] = {}
    # Each converged run's collapse test, by id, once: the fallback's, the choice's and the
    # finishing's (the runs live in ``runs`` and ``pruned`` until the end).
    verdicts: dict[int, str | None] = {}
    advance(X, runs, max_iter, short_iter, keep, settings, pruned, lead, verdicts)
    chosen = _best_runs(X, runs, w, missing, center, scale, verdicts)
    # A cell whose every finished run failed or collapsed goes on with the starts its short
    # round set aside (those not failed there): one of them may end at a valid mixture, as
    # mclust's single start often does where our best starts climb onto a singularity.
    spare = {key: pruned[key] for key, (_, ok) in chosen.items() if not ok and pruned.get(key)}
    if spare:
        iterate(X, [r for rs in spare.values() for r in rs], max_iter, **settings)
        for key, (run, ok) in _best_runs(X, spare, w, missing, center, scale, verdicts).items():
            if ok:
                chosen[key] = (run, ok)
    # (A first start that is not a Resumed fit, a degenerate fit started again from its mixture,
    # ran anew: its run is a new result.)
    todo = [
        key
        for key, (run, _) in chosen.items()
        if not (only_new and run is runs[key][0] and isinstance(cells[key][0][1], Resumed))
    ]
    seconds = _runners_up(runs, chosen, scale) if runner_up else {}
    done = finish_all(X, [chosen[key][0] for key in todo] + list(seconds.values()), names, w,
                      missing, labels, scale, lazy, verdicts)  # fmt: skip
    finished = dict(zip(todo, done[: len(todo)], strict=True))
    second = dict(zip(seconds, done[len(todo) :], strict=True))
    return {
        key: ([finished[key]] if key in finished else []) + ([second[key]] if key in second else [])
        for key in chosen
    }


#: A screen's runner-up (:func:`_runners_up`) is offered to the full data when its
#: log-likelihood on the subsample is within this fraction of the best's.
RUNNER_UP_GAP = 1e-3


def _runners_up(
    runs: dict[Any, list[Run]], chosen: dict[Any, tuple[Run, bool]], scale: np.ndarray
) -> dict[Any, Run]:
    """Each valid cell's best valid run that ended at another optimum than its chosen one, one
    whose log-likelihood is lower by more than 1e-6 and at most :data:`RUNNER_UP_GAP` relative
    (what a screened grid's full data try beside the screen's best fit)."""
    out = {}
    for key, (best, ok) in chosen.items():
        if not ok or not best.trace:
            continue
        top = float(best.trace[-1])
        others = sorted(
            (r for r in runs[key] if r is not best and r.reason is None and r.trace),
            key=lambda r: -float(r.trace[-1]),
        )
        for r in others:
            if top - RUNNER_UP_GAP * abs(top) <= float(r.trace[-1]) < top - 1e-6 * abs(top):
                if _collapse_reason(r.params.covs[0], scale) is None:
                    out[key] = r
                break
    return out


def _best_runs(
    X: np.ndarray,
    cells: Mapping[Any, list[Run]],
    w: np.ndarray | None,
    missing: Any,
    center: np.ndarray,
    scale: np.ndarray,
    verdicts: dict[int, str | None] | None = None,
) -> dict[Any, tuple[Run, bool]]:
    """For each cell, the run :func:`best_result` would pick once every run is finished,
    without finishing them all (each start's final E-step, responsibilities and criteria cost
    more than the choice): a run that converged or failed ended at the mixture of its trace's
    last log-likelihood, and it is degenerate when it failed or collapsed; runs stopped by the
    iteration budget were not evaluated at their last mixture, and get one (batched) pass per
    cell. Returns each cell's run and whether it is valid (neither failed nor collapsed; a lone
    run, with nothing to choose from, is only checked for failure). ``verdicts``: collapse
    tests already made, by run id (read, and added to)."""
    out: dict[Any, tuple[Run, bool]] = {}
    # Per cell: its runs ranked, each run's collapse when known, and the rank reached.
    ranked: dict[Any, tuple[list[int], dict[int, bool]]] = {}
    for key, runs in cells.items():
        if len(runs) == 1:
            out[key] = (runs[0], runs[0].reason is None)
            continue
        loglik: dict[int, float] = {}
        collapsed: dict[int, bool] = {}
        todo = []
        for i, run in enumerate(runs):
            if run.trace and (run.converged or run.reason is not None):
                loglik[i] = float(run.trace[-1])
                if run.reason is not None:
                    collapsed[i] = True
                elif verdicts is not None and id(run) in verdicts:
                    collapsed[i] = verdicts[id(run)] is not None
            else:
                todo.append(i)
        if todo:
            done = finish_many(X, [runs[i] for i in todo], center, w, missing)
            for j, i in enumerate(todo):
                loglik[i], collapsed[i] = float(done.loglik[j]), done.reasons[j] is not None
        # The best run that did not collapse (the first of equal ones; a NaN log-likelihood
        # last), else the best of all.
        order = sorted(
            range(len(runs)), key=lambda i: (math.inf if math.isnan(loglik[i]) else -loglik[i], i)
        )
        ranked[key] = (order, collapsed)
    # The collapse test (an eigendecomposition per run) only as far down each ranking as
    # needed, the runs of all cells that need one tested together.
    at = dict.fromkeys(ranked, 0)
    while at:
        tests: list[tuple[Any, int]] = []
        for key in list(at):
            order, collapsed = ranked[key]
            pos = at[key]
            while pos < len(order) and collapsed.get(order[pos]) is True:
                pos += 1
            at[key] = pos
            if pos == len(order):
                out[key] = (cells[key][order[0]], False)
                del at[key]
            elif order[pos] in collapsed:  # known, and not collapsed
                out[key] = (cells[key][order[pos]], True)
                del at[key]
            else:
                tests.append((key, order[pos]))
        if tests:
            covs = [cells[key][i].params.covs[0] for key, i in tests]
            for (key, i), reason in zip(tests, _collapse_reasons(covs, scale), strict=True):
                ranked[key][1][i] = reason is not None
                if verdicts is not None:
                    verdicts[id(cells[key][i])] = reason
    return {key: out[key] for key in cells}


def advance(
    X: Any,
    runs: dict[Any, list[Run]],
    max_iter: int,
    short_iter: int,
    keep: int,
    settings: dict[str, Any],
    pruned: dict[Any, list[Run]] | None = None,
    lead: int = 1,
    verdicts: dict[int, str | None] | None = None,
) -> None:
    """EM for the runs of every cell (``settings``: :func:`iterate`'s keywords), in place.

    Cells with more starts than go on get a short round first: every start runs
    ``short_iter`` iterations, then only the promising runs go on (Biernacki, Celeux &
    Govaert 2003), the first start always and the best ``keep`` of the others. (A cell whose
    starts all go on skips it: on 100,000 rows the screened grid's two starts per cell spent
    57 s of 222 there.) With ``lead`` > 1, the first ``lead`` starts always go on and the others
    are challengers (:func:`_challenge`). The short round pauses each run between SQUAREM
    cycles (:func:`iterate`'s ``pause_at``): the runs that go on take the path they take
    without it. When every challenger that went on fails on the way (a covariance turned
    singular, a component emptied) or converges onto a collapsed component (the short round's
    leader is often a run climbing onto a singularity) while the first start's run stands, the
    cell's next ``keep`` set-aside runs go on, in the short round's order, until one ends valid
    or none is left (all such cells together, a batch per turn; the collapse test is
    :func:`_best_runs`'s). The runs set aside that had not failed and never went on are left in
    ``pruned`` (per cell) when it is given: where the first run fails too, run_cells then runs
    them all. The collapse tests made are left in ``verdicts`` (by run id) when it is given."""
    if lead > 1:
        _challenge(X, runs, max_iter, short_iter, keep, lead, settings, pruned)
        iterate(X, [r for rs in runs.values() for r in rs], max_iter, **settings)
        return
    aside: dict[Any, list[Run]] = {} if pruned is None else pruned
    multi = [rs for rs in runs.values() if len(rs) > 1 + keep]
    if multi:
        iterate(X, [r for rs in multi for r in rs], max_iter, pause_at=short_iter, **settings)
        for key, rs in runs.items():
            if len(rs) > 1 + keep:
                alive = sorted(rs[1:], key=lambda r: (r.reason is None, r.loglik), reverse=True)
                runs[key] = [rs[0], *alive[:keep]]
                aside[key] = [r for r in alive[keep:] if r.reason is None]
    batch = [r for rs in runs.values() for r in rs]
    collapsed: dict[int, str | None] = {} if verdicts is None else verdicts  # by run id
    while batch:
        iterate(X, batch, max_iter, **settings)
        # The cells with starts left whose first run stands (else every start set aside goes on
        # later, in run_cells) and whose every challenger failed or converged, as far as known.
        waiting = [
            key
            for key, rs in aside.items()
            if rs
            and runs[key][0].reason is None
            and all(r.reason is not None or r.converged for r in runs[key][1:])
        ]
        # The challengers first; a cell's first run only where they all failed.
        _test_collapse([r for key in waiting for r in runs[key][1:]], collapsed, settings)
        waiting = [
            key
            for key in waiting
            if all(r.reason is not None or collapsed.get(id(r)) is not None for r in runs[key][1:])
        ]
        _test_collapse([runs[key][0] for key in waiting], collapsed, settings)
        batch = []
        for key in waiting:
            if collapsed.get(id(runs[key][0])) is None:
                rs = aside[key]
                runs[key].extend(rs[:keep])
                batch.extend(rs[:keep])
                aside[key] = rs[keep:]


def _test_collapse(
    runs: list[Run], verdicts: dict[int, str | None], settings: dict[str, Any]
) -> None:
    """Record in ``verdicts`` (by id) why each converged run not tested yet ended with a
    collapsed component, or None (:func:`_collapse_reasons`, all in one call)."""
    tests = [r for r in runs if r.reason is None and r.converged and id(r) not in verdicts]
    if tests:
        reasons = _collapse_reasons([r.params.covs[0] for r in tests], settings["scale"])
        verdicts.update((id(r), why) for r, why in zip(tests, reasons, strict=True))


def _challenge(
    X: Any,
    runs: dict[Any, list[Run]],
    max_iter: int,
    short_iter: int,
    keep: int,
    lead: int,
    settings: dict[str, Any],
    pruned: dict[Any, list[Run]] | None,
) -> None:
    """:func:`advance`'s short round with ``lead`` > 1: the challengers (the starts after the
    first ``lead``) run ``short_iter`` iterations (to the end of a SQUAREM cycle) beside the
    lead starts, and the best ``keep`` of them stay only if they then lead every lead start.
    The lead starts go on along the path they take without challengers (paused between
    cycles; an earlier short round that split SQUAREM's cycles moved converged fits by up to
    6, and then ran on copies of them)."""
    contested = {key: rs for key, rs in runs.items() if len(rs) > lead}
    if not contested:
        return
    batch = [r for rs in contested.values() for r in rs]
    iterate(X, batch, max_iter, pause_at=short_iter, **settings)
    for key, rs in contested.items():
        bar = max((r.loglik for r in rs[:lead] if r.reason is None), default=-math.inf)
        alive = sorted(rs[lead:], key=lambda r: (r.reason is None, r.loglik), reverse=True)
        go = [r for r in alive[:keep] if r.reason is None and r.loglik > bar]
        runs[key] = [*rs[:lead], *go]
        if pruned is not None:
            pruned[key] = [r for r in alive if r.reason is None and all(r is not g for g in go)]


def start_data(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The data the starts are computed on: ``X`` itself, or with missing values each NaN
    replaced by its column's mean (the hierarchical tree, k-means++ and the first M-step need
    complete rows; EM then runs on the observed values)."""
    return fill_means(X, w) if np.isnan(X).any() else X


def best_result(results: list[EMResult]) -> EMResult:
    """The best non-degenerate log-likelihood (the best degenerate one when all are)."""
    good = [r for r in results if not r.degenerate]
    return max(good or results, key=lambda r: r.loglik)


def start_model(
    X: np.ndarray,
    start: GaussianMixture | np.ndarray | _SubsetStart,
    structure: CovarianceStructure,
    w: np.ndarray | None,
    prior: ResolvedPrior | None,
    reg_covar: float,
    names: tuple[str, ...] | None,
    ml_failed: Degenerate | None = None,
) -> GaussianMixture:
    """The mixture EM starts from: the given one, or an M-step from the start's responsibilities
    (``ml_failed``: the maximum-likelihood M-step is known to fail so, and only its MAP rescue
    is tried)."""
    if isinstance(start, Resumed):
        if start.model.covariance_type == structure.name:
            return start  # type: ignore[return-value]  # (new_run resumes it)
        start = start.model  # another structure's fit: a start like any mixture
    if isinstance(start, GaussianMixture):
        if start.covariance_type == structure.name:
            return start
        try:
            return GaussianMixture(
                start.weights, start.means, start.covariances, structure.name, names
            )
        except ValueError:
            # Covariances without the structure's constraint (another structure's fit, or
            # mclust's VEV whose shapes agree to its inner tolerance only): EM starts from the
            # mixture's E-step, the first M-step the structure's, as mclust's em() from given
            # parameters (it was an error that told the caller to pass another structure).
            start = start.responsibilities(X)
    if isinstance(start, _SubsetStart):
        Xs, resp0 = X[start.rows], start.resp
        ws = None if w is None else w[start.rows]
    else:
        Xs, ws, resp0 = X, w, start
    with cold_inner_limit(START_INNER_MAX):
        try:
            if ml_failed is not None:
                raise ml_failed
            return m_step(
                Xs, resp0, structure, sample_weight=ws, prior=prior, reg_covar=reg_covar,
                feature_names=names,
            )  # fmt: skip
        except Degenerate as err:
            # A start with a singleton or empty cluster: begin from its MAP M-step instead.
            try:
                rescue = prior or ConjugatePrior().resolve(Xs, resp0.shape[1], ws)
                return m_step(
                    Xs, resp0, structure, sample_weight=ws, prior=rescue, reg_covar=reg_covar,
                    feature_names=names,
                )  # fmt: skip
            except (Degenerate, ValueError):
                raise err from None


#: Largest feature matrix (entries) that the batched starting M-steps build (32 MB).
START_BATCH_MAX_ENTRIES = 4_000_000


def start_models(
    X: np.ndarray,
    starts: list[tuple[CovarianceStructure, GaussianMixture | np.ndarray | _SubsetStart]],
    w: np.ndarray | None,
    priors: list[ResolvedPrior | None],
    reg_covar: float,
    names: tuple[str, ...] | None,
    *,
    light: bool = False,
) -> list[GaussianMixture | StartPoint | Degenerate]:
    """:func:`start_model` for many starts at once: the maximum-likelihood M-steps from
    responsibilities on all rows share one product with the feature matrix and one batched
    M-step per structure (or, with ``light`` on data the compiled loop covers, run compiled
    with their MAP rescues and returned as :class:`StartPoint`); otherwise the MAP rescues of
    the starts whose M-step fails are batched by structure and K; the others go one at a
    time. A start without a valid mixture gives its :class:`Degenerate`."""
    out: list[GaussianMixture | StartPoint | Degenerate | None] = [None] * len(starts)
    failed: dict[int, Degenerate] = {}  # batched ML M-steps that failed: only the rescue is left
    # The feature matrix is (D(D+1)/2 + D + 1) × n: built whole only when that is small.
    d = X.shape[1]
    small = X.shape[0] * (d * (d + 1) // 2 + d + 1) <= START_BATCH_MAX_ENTRIES
    batchable = [
        i
        for i, (_, start) in enumerate(starts)
        if small and priors[i] is None and isinstance(start, np.ndarray)
    ]
    if batchable and light and compiled_suits(*X.shape) and compiled_ready():
        # The MAP rescue (see start_model) runs compiled beside the maximum-likelihood step.
        ks = {np.asarray(starts[i][1]).shape[1] for i in batchable}
        rescue = _rescue_priors(X, sorted(ks), w)
        firsts = first_steps(
            X, [(starts[i][0].name, np.asarray(starts[i][1])) for i in batchable], w,
            reg_covar, START_INNER_MAX, rescue,
        )  # fmt: skip
        for i, (first, comp, weight) in zip(batchable, firsts, strict=True):
            if first is not None:
                out[i] = StartPoint(first, starts[i][0])
                continue
            if weight >= 0:
                failed[i] = Degenerate(comp, f"its weight collapsed to {weight:.2g} (empty)")
            else:
                failed[i] = Degenerate(comp, _SINGULAR)
            out[i] = failed[i]  # (its rescue, when there is one, ran and failed too)
        batchable = []
    center = X.mean(axis=0)
    feats: list[np.ndarray] = []  # (F, n): [packed second moments | x − c | 1], built once

    def start_stats(resps: list[np.ndarray]) -> tuple[PassStats, np.ndarray]:
        if not feats:
            feats.append(features(X, center, "full"))
        return _start_stats(feats[0], resps, w, d)

    if batchable:
        resps = [np.asarray(starts[i][1]) for i in batchable]
        stats, mask = start_stats(resps)
        groups: dict[str, list[int]] = {}
        for j, i in enumerate(batchable):
            groups.setdefault(starts[i][0].name, []).append(j)
        for rows in groups.values():
            idx = np.asarray(rows)
            st = starts[batchable[rows[0]]][0]
            sub = stats.take(idx, diagonal=st.scatter_kind == "diag")
            with cold_inner_limit(START_INNER_MAX):
                params, bad, reasons = m_step_batch(sub, center, st, None, reg_covar, mask[idx])
            for jj, j in enumerate(rows):
                if bad[jj] < 0:
                    k = resps[j].shape[1]
                    out[batchable[j]] = to_model(params.member(jj, k), 0, st, names)
                else:
                    failed[batchable[j]] = Degenerate(int(bad[jj]), reasons[jj])
    if small:
        _rescue_many(X, starts, w, reg_covar, names, failed, out, center, start_stats)
    for i, (structure, start) in enumerate(starts):
        if out[i] is None:
            try:
                out[i] = start_model(
                    X, start, structure, w, priors[i], reg_covar, names, failed.get(i)
                )
            except Degenerate as err:
                out[i] = err
    return [m for m in out if m is not None]


_SINGULAR = "its covariance became singular (points tied or duplicated)"


def _start_stats(
    feats: np.ndarray, resps: list[np.ndarray], w: np.ndarray | None, d: int
) -> tuple[PassStats, np.ndarray]:
    """The pass statistics of many starts' responsibilities (N, K each) on the data's feature
    matrix (:func:`features`, "full"), in one product, padded to the largest K; and the
    (R, Kmax) mask of their real components. A start shared by several structures (the same
    array) is multiplied once (select_em's first round offers each start to all 14: on a
    5,000-row screen the product of every copy took 1.2 s)."""
    distinct, offsets = distinct_columns(resps)
    wide = np.concatenate(distinct, axis=1)
    if w is not None:
        wide = wide * w[:, None]
    sums = wide.T @ feats.T  # (Σ K of the distinct starts, F)
    t = sums.shape[1] - d - 1
    kmax = max(r.shape[1] for r in resps)
    r_all = len(resps)
    counts = np.zeros((r_all, kmax))
    sum_x = np.zeros((r_all, kmax, d))
    second = np.zeros((r_all, kmax, t))
    mask = np.zeros((r_all, kmax), dtype=bool)
    for j, (resp, pos) in enumerate(zip(resps, offsets, strict=True)):
        k = resp.shape[1]
        block = sums[pos : pos + k]
        counts[j, :k], sum_x[j, :k], second[j, :k] = block[:, -1], block[:, t : t + d], block[:, :t]
        mask[j, :k] = True
    return PassStats(np.zeros(r_all), counts, sum_x, second), mask


def _rescue_many(
    X: np.ndarray,
    starts: list[tuple[CovarianceStructure, Any]],
    w: np.ndarray | None,
    reg_covar: float,
    names: tuple[str, ...] | None,
    failed: dict[int, Degenerate],
    out: list[Any],
    center: np.ndarray,
    start_stats: Any,
) -> None:
    """:func:`start_model`'s MAP rescue for the failed maximum-likelihood starts (all rows,
    no prior), batched by structure and K: one product with the feature matrix per group
    (``start_stats``, :func:`_start_stats` on the shared one) and one batched M-step (the
    rescue's prior depends on K). Fills ``out``; a start the rescue cannot save keeps its
    maximum-likelihood failure."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i in failed:
        if out[i] is None and isinstance(starts[i][1], np.ndarray):
            groups.setdefault((starts[i][0].name, starts[i][1].shape[1]), []).append(i)
    rescue_priors: dict[int, ResolvedPrior | None] = {}
    for (_, k), rows in groups.items():
        if k not in rescue_priors:
            rescue_priors[k] = _rescue_prior(X, k, w)
        prior = rescue_priors[k]
        structure = starts[rows[0]][0]
        if prior is None:
            for i in rows:
                out[i] = failed[i]
            continue
        stats, _ = start_stats([np.asarray(starts[i][1]) for i in rows])
        batch = stats.take(np.arange(len(rows)), diagonal=structure.scatter_kind == "diag")
        with cold_inner_limit(START_INNER_MAX):
            params, bad, _ = m_step_batch(batch, center, structure, prior, reg_covar)
        for j, i in enumerate(rows):
            out[i] = failed[i]
            if bad[j] < 0:
                with contextlib.suppress(ValueError):
                    out[i] = to_model(params.member(j, k), 0, structure, names)


def _rescue_prior(X: np.ndarray, k: int, w: np.ndarray | None) -> ResolvedPrior | None:
    """The MAP rescue's prior for K components (mclust's default conjugate prior), or None
    when the data give none (a constant feature)."""
    return _rescue_priors(X, [k], w)[k]


def _rescue_priors(
    X: np.ndarray, ks: list[int], w: np.ndarray | None
) -> dict[int, ResolvedPrior | None]:
    """:func:`_rescue_prior` for each K in ``ks``, the data's moments computed once."""
    try:
        return dict(ConjugatePrior().resolve_many(X, ks, w))
    except ValueError:
        return dict.fromkeys(ks)


def _check_not_constant(X: np.ndarray, w: np.ndarray | None) -> None:
    """Every covariance is singular when a feature is constant: say so before EM starts."""
    if X.shape[0] < 2:
        raise ValueError(
            f"X has {X.shape[0]} observation; a Gaussian mixture needs at least 2 (and more than "
            "the number of components) to estimate a covariance."
        )
    if not np.isnan(X).any():
        spread = np.ptp(X, axis=0)
    else:
        empty = np.flatnonzero(np.isnan(X).all(axis=0))
        if empty.size:
            raise ValueError(
                f"X's feature {int(empty[0])} has no observed value (all NaN); drop that column."
            )
        spread = np.nanmax(X, axis=0) - np.nanmin(X, axis=0)
    constant = np.flatnonzero(spread == 0)
    if constant.size:
        value = float(np.nanmax(X[:, constant[0]]))
        raise ValueError(
            f"X's feature(s) {constant.tolist()} are constant (value {value}), "
            "so every covariance would be singular; drop constant columns before fitting."
        )


def _method_start(
    method: str, X: np.ndarray, k: int, gen: np.random.Generator, hc: tuple[Any, np.ndarray] | None
) -> np.ndarray | _SubsetStart:
    n = X.shape[0]
    if method == "hc":
        tree, rows = hc if hc is not None else hc_tree(X, gen)
        if k > tree.n_initial:
            raise ValueError(
                f"n_components={k} exceeds the {tree.n_initial} distinct rows the hierarchical "
                "start was built on; use fewer components or init='kmeans++'."
            )
        labels = tree.cut(k)
        if rows.shape[0] == n:
            return labels_to_resp(labels, k)
        # The tree was built on a subset: the first M-step uses that subset's rows only.
        return _SubsetStart(rows, labels_to_resp(labels, k))
    if method == "kmeans++":
        return labels_to_resp(kmeans_plus_plus_labels(X, k, gen), k)
    return random_resp(n, k, gen)
