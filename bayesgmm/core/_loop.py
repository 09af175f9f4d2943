"""The EM loop over a batch of runs: convergence, SQUAREM acceleration, degeneracy, results.

A *run* is EM from one start, under one covariance structure. Runs (several starts, several K,
on small data several structures) are advanced together: their mixtures are stacked, padded to
the largest K with zero-weight components, and share every pass over the data; each run's
M-step is its structure's, and each keeps its own convergence test and leaves the batch when it
converges, degenerates or exhausts its iteration budget.

Runs may also be separate problems: each with its own row weights on the shared data (bootstrap
replicates, cross-validation folds as 0/1 weights: one (R, N) weight matrix, one product with
the feature matrix per pass), or each on its own data set of a common shape (parametric
replicates, the likelihood-ratio test's simulated data: a stacked pass). A run's result is the
one it would reach alone from the same start, up to rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bayesgmm.core._compiled import (
    COLLAPSE_STOP_RTOL,
    DEGENERACY_RTOL,
    advance_runs,
    collapse_text,
)
from bayesgmm.core._compiled import ready as compiled_ready
from bayesgmm.core._compiled import suits as compiled_suits
from bayesgmm.core._missing import Missingness, missing_pass
from bayesgmm.core._moments import mean_cov
from bayesgmm.core._passes import (
    mixture_density,
    run_pass,
    run_pass_stacked,
    stacked_features,
)
from bayesgmm.core.criteria import ICL_COMPILED_ROWS, aic, bic, icl
from bayesgmm.core.em import (
    BatchRow,
    Params,
    batched_cholesky,
    m_step_batch,
    stack_padded,
    to_model,
)
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ResolvedPrior
from bayesgmm.core.result import EMResult
from bayesgmm.core.structures import CovarianceStructure

__all__ = ["Finished", "Resumed", "Run", "finish", "finish_many", "iterate", "new_run"]

#: Runs on data with fewer rows than this share passes across K and structures (padding to the
#: largest K, full statistics for all): the per-pass costs saved (the feature matrix, the thread
#: hand-offs, numpy's per-call cost) outweigh the padding's wasted arithmetic. Measured on the
#: 4-structure × 9-K grid at 20,000 rows: 1.4–1.6× faster shared (D = 4 and 10); on much larger
#: data the padding dominates.
SHARED_PASS_MAX_ROWS = 50_000

#: The run from the hierarchical start (mclust's start, label "hc"), or from a partition or
#: mixture the caller gave ("user", "mixture": a tree's cut is the same start as the tree),
#: makes no SQUAREM trial in its first this many iterations; k-means++ and random restarts,
#: which explore, extrapolate from their second cycle. Far from an optimum an extrapolated step
#: can leap into another basin than the one EM climbs from the start. From the hierarchical
#: start, on MASS's UScereal (8 numeric columns) VEI,9, EM reaches -1699.15 and SQUAREM's
#: second cycle carried the run to -1703.66 (mclust: -1701.67, at its tolerance); on
#: crabs[, 4:8] VEE,9, -1230.81 against -1232.81. Over the 4,161 cells (K = 2..9) of the 56
#: benchmark data sets of up to 1,200 rows where EM from that start ends valid, fit_em from it
#: reaches EM's optimum in 4,053 cells with these plain steps and 4,006 without (higher in 61
#: and 90, lower in 44 and 59, degenerate in 3 and 6): benchmarks/hc_path.py.
PLAIN_FIRST_ITER = 5
PLAIN_FIRST_LABELS = frozenset({"hc", "user", "mixture"})

#: Entries of a batch's (runs × rows) weight matrix, or of its runs' stacked data sets and their
#: feature matrices, at most (32 MB): more runs go in further batches (:func:`batch_ranges`).
BATCH_MAX_ENTRIES = 4_000_000

#: Runs per batch at most (bootstrap replicates, cross-validation folds): a batch runs until
#: its slowest run converges, but the passes of its last few runs are cheap, and fewer, larger
#: batches pay each pass's fixed cost less often (Old Faithful, EEE, K = 3, 999 nonparametric
#: replicates: batches of 64 took 1.8-2.6 s, of 256 1.5 s, one batch 0.9-1.3 s).
RUNS_PER_BATCH = 1024


def batch_ranges(n: int, per_run: int) -> list[range]:
    """``n`` runs, each keeping ``per_run`` entries, cut into batches (index ranges) within
    :data:`BATCH_MAX_ENTRIES` and :data:`RUNS_PER_BATCH`."""
    size = max(1, min(RUNS_PER_BATCH, BATCH_MAX_ENTRIES // max(1, per_run)))
    return [range(lo, min(lo + size, n)) for lo in range(0, n, size)]


_REMEDY = (
    "Try fewer components, a more constrained covariance_type, a prior "
    "(prior=ConjugatePrior()) or reg_covar > 0."
)


@dataclass(slots=True)
class Run:
    """The state of one EM run (one start), resumable: short runs from many starts are
    advanced together and only the promising ones are carried on. (Slots: select_em makes a
    few thousand of them on small data.)"""

    params: Params  # a batch of one
    label: str
    structure: CovarianceStructure
    trace: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    reason: str | None = None
    #: The run's own row weights (N,) on the shared data (a bootstrap replicate, a fold), or
    #: its own data set (N, D) of the batch's shape (a parametric replicate); None: the batch's.
    row_weight: np.ndarray | None = None
    data: np.ndarray | None = None
    #: Feature scales for SQUAREM's norm (D,), when the run has its own weights or data.
    scale: np.ndarray | None = None
    #: SQUAREM's bound on the step length |α|: it starts at 1 (the plain EM step), grows 4×
    #: each time the step is cut to it and succeeds, and shrinks 4× when such a step fails.
    step_max: float = 1.0
    #: SQUAREM's cycles that end before this many iterations make no trial (the run goes on
    #: from their second plain step): :data:`PLAIN_FIRST_ITER` for the starts of
    #: :data:`PLAIN_FIRST_LABELS`.
    plain_until: int = 0

    @property
    def finished(self) -> bool:
        return self.converged or self.reason is not None

    @property
    def loglik(self) -> float:
        return self.trace[-1] if self.trace else -np.inf

    @property
    def k(self) -> int:
        p = self.params
        return p.k if type(p) is BatchRow else int(p.weights.shape[1])


@dataclass(slots=True)
class StartPoint:
    """A start's first mixture as EM's arrays (a batch of one), without the checks and
    factorisation of building a GaussianMixture (the compiled first M-step made them).
    (Slots, not frozen: a frozen dataclass's construction took twice as long, for a few
    thousand starts a grid.)"""

    params: Params
    structure: CovarianceStructure


@dataclass(frozen=True)
class Resumed:
    """A fit that goes on from where it stopped, with its iterations, convergence and
    log-likelihood: a finished fit (converged, or at the iteration budget) competes as it
    stands (a cell's own fit beside its cross-starts; started again as a mixture, an
    unconverged fit ran another ``max_iter`` iterations whose outcome the cell then
    discarded)."""

    model: GaussianMixture
    n_iter: int
    converged: bool
    loglik: float

    @property
    def structure(self) -> CovarianceStructure:
        return self.model.structure


def new_run(
    model: GaussianMixture | StartPoint | Resumed,
    label: str,
    *,
    row_weight: np.ndarray | None = None,
    data: np.ndarray | None = None,
) -> Run:
    """A run starting at ``model``; with ``row_weight`` (N,) it weights the batch's rows its own
    way, with ``data`` (N, D) it runs on its own data set (all runs of a batch then do)."""
    if row_weight is None and data is None and type(model) is StartPoint:
        # (the grid's thousands of starts)
        return Run(model.params, label, model.structure, plain_until=_plain_until(label))
    if isinstance(model, Resumed):
        run = new_run(model.model, label, row_weight=row_weight, data=data)
        run.n_iter, run.converged = model.n_iter, model.converged
        # (The log-likelihood at the mixture itself, which the next pass computes: in the
        # trace of a run that goes on, it would end it there as converged.)
        run.trace = [model.loglik] if model.converged else []
        return run
    if isinstance(model, StartPoint):
        p = model.params
    else:
        p = Params(
            model.weights[None], model.means[None], model.covariances[None], model.cholesky[None]
        )
    scale = None
    if row_weight is not None or data is not None:
        if data is None:
            raise ValueError("a run with its own row weights needs its data to set its scale")
        scale = _data_scale(data, row_weight)
    return Run(
        p, label, model.structure, row_weight=row_weight, data=data, scale=scale,
        plain_until=_plain_until(label),
    )  # fmt: skip


def _plain_until(label: str) -> int:
    return PLAIN_FIRST_ITER if label in PLAIN_FIRST_LABELS else 0


def iterate(
    X: np.ndarray,
    runs: list[Run],
    until_iter: int,
    *,
    center: np.ndarray,
    w: np.ndarray | None,
    prior: ResolvedPrior | None,
    reg_covar: float,
    tol: float,
    accelerate: bool = False,
    missing: Missingness | None = None,
    labels: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    pause_at: int | None = None,
) -> None:
    """Advance every unfinished run until it converges, degenerates or has done ``until_iter``
    iterations (M-steps); all active runs share each pass over the data. With ``pause_at``, a
    run also stops, resumable, at the end of the first SQUAREM cycle (the first step, without
    ``accelerate``) that leaves it with at least that many iterations: called again, it goes on
    exactly as if it had not stopped (every decision on the way, such as whether a trial step
    still fits the budget, is taken against ``until_iter``).

    With ``accelerate``, every two EM steps θ0 → θ1 → θ2 are followed by a SQUAREM extrapolation
    (Varadhan & Roland 2008, scheme S3) θ' = θ0 − 2αr + α²v, r = θ1 − θ0, v = θ2 − 2θ1 + θ0,
    α = −‖r‖/‖v‖ in standardised units, cut to −1 ≥ α ≥ −(the run's step bound). θ' is
    evaluated by one more pass and kept, followed by its EM step, only when it is a valid
    mixture whose log-likelihood is at least that of θ1; otherwise the run goes on from θ2.
    Every log-likelihood recorded in the trace is therefore at least the previous one, exactly
    as for plain EM. The bound is SQUAREM's own step control (its ``step.max``, ``mstep = 4``):
    it starts at 1 and is multiplied by 4 after each step cut to it that succeeds and divided
    by 4 after one that fails, so that the overlong steps which fail (a covariance that is not
    positive definite, a lower log-likelihood: 6 in 7 of them, unbounded, on faithful's EEE,4)
    cost no pass. A cycle that ends before the run's ``plain_until`` iterations makes no trial
    (the first :data:`PLAIN_FIRST_ITER` of a hierarchical or given start).

    ``missing`` (the missingness of ``X``, when it has NaN) makes every pass the observed-data
    one (:func:`~bayesgmm.core._missing.missing_pass`); ``labels`` (N,) fixes the component of
    the rows where it is ≥ 0 (semi-supervised EM: their responsibilities are one-hot and their
    log-likelihood term is log p(x_n, z_n)). ``scale`` (D,), the features' standard
    deviations when the caller has them, spares the pass that computes them (a pass over the
    chunks, on a dask array).
    """
    stop = until_iter if pause_at is None else min(pause_at, until_iter)
    active = [r for r in runs if not r.finished and r.n_iter < stop]
    if not active:
        return
    ks = [r.k for r in active]
    # One batch per K when the MAP divisors depend on K, and per K and kind of statistics (full
    # or diagonal scatter) when the data are large enough that the padding's wasted arithmetic
    # outweighs the per-call cost that batching saves; there the structures of a kind share each
    # pass (a pass's fixed cost, the rows' features and the threads' hand-offs, is about half
    # of a one-cell pass at 10⁵ × 5: select_em's screened grid, its cells' runs until then
    # batched per structure, 27.0 -> 21.7 s at 10⁵ × 3, 47.0 -> 36.7 s at 50,000 × 6, 70.1 ->
    # 68.4 s at 60,000 × 10).
    # (On a dask array every batch costs a pass over the chunks, maybe read from their store:
    # one batch for all runs.)
    large = isinstance(X, np.ndarray) and X.shape[0] >= SHARED_PASS_MAX_ROWS
    # With missing values the per-pattern factorisations cost in proportion to the batch's
    # padded components: one batch per K there too (no padding to factorise), and per structure.
    split = len(set(ks)) > 1 and (prior is not None or large or missing is not None)
    tags = [
        (k if split else 0, r.structure.scatter_kind if large else r.structure.name)
        for r, k in zip(active, ks, strict=True)
    ]
    if (split or large) and len(set(tags)) > 1:
        for tag in sorted(set(tags)):
            group = [r for r, t in zip(active, tags, strict=True) if t == tag]
            iterate(
                X,
                group,
                until_iter,
                center=center,
                w=w,
                prior=prior,
                reg_covar=reg_covar,
                tol=tol,
                accelerate=accelerate,
                missing=missing,
                labels=labels,
                scale=scale,
                pause_at=pause_at,
            )
        return
    own_weights = {r.row_weight is not None for r in active}
    own_data = {r.data is not None for r in active}
    if len(own_weights) > 1 or len(own_data) > 1:
        raise ValueError("the runs of one batch have their own weights (or data) all or none")
    stacked = own_data == {True} and own_weights == {False}
    shapes = {r.data.shape for r in active if r.data is not None}
    if stacked and len(shapes) > 1:
        raise ValueError("the runs' own data sets must all have the same shape")
    if stacked and missing is not None:
        raise ValueError("runs on their own data sets take complete data only")
    if (
        isinstance(X, np.ndarray)
        and compiled_suits(*X.shape)
        and prior is None
        and missing is None
        and labels is None
        and not stacked
        and all(isinstance(r.row_weight, np.ndarray | None) for r in active)
        and compiled_ready()
    ):
        if own_weights == {False} and scale is None:  # (SQUAREM's units, the collapse rule's)
            scale = _data_scale(X, w)
        advance_runs(
            X, active, until_iter, w=w, reg_covar=reg_covar, tol=tol, accelerate=accelerate,
            scale=scale, center=center, pause_at=pause_at,
        )  # fmt: skip
        return
    params, mask = stack_padded([r.params for r in active], max(ks))
    batch = _Batch(
        X, center, w, prior, reg_covar, tol, until_iter, scale=None, stacked=stacked,
        missing=missing, labels=labels,
    )  # fmt: skip
    if own_weights == {False} and not stacked:
        batch.unit = scale if scale is not None else _data_scale(X, w)
        if accelerate:
            batch.scale = batch.unit
    mask_or_none = None if mask.all() else mask
    while active:
        if pause_at is not None:  # between SQUAREM cycles
            active, params, mask_or_none = batch.pause(active, params, mask_or_none, pause_at)
            if not active:
                break
        if not accelerate:
            active, params, mask_or_none = batch.plain_step(active, params, mask_or_none)
            continue
        theta0 = params
        active, theta1, mask_or_none, kept1 = batch.plain_step(
            active, params, mask_or_none, return_kept=True
        )
        if not active:
            break
        theta0 = theta0.take(kept1)
        active, theta2, mask_or_none, kept2 = batch.plain_step(
            active, theta1, mask_or_none, return_kept=True
        )
        if not active:
            break
        theta0, theta1 = theta0.take(kept2), theta1.take(kept2)
        params = batch.extrapolate(active, theta0, theta1, theta2, mask_or_none)


@dataclass
class _Batch:
    """The fixed settings of one batched EM loop, and its two kinds of step."""

    X: np.ndarray
    center: np.ndarray
    w: np.ndarray | None
    prior: ResolvedPrior | None
    reg_covar: float
    tol: float
    until_iter: int
    scale: np.ndarray | None
    stacked: bool = False
    missing: Missingness | None = None
    labels: np.ndarray | None = None
    _slots: dict[int, int] | None = None
    _own: dict[str, np.ndarray] | None = None
    #: The features' spreads for the collapse rule (runs with their own weights or data: each
    #: run's own).
    unit: np.ndarray | None = None

    def evaluate(self, active: list[Run], params: Params, mask: np.ndarray | None):
        """One pass at ``params``: log-likelihoods (R,) and the M-step's result, each run's
        under its own structure; a run whose new mixture has a collapsed component
        (:func:`collapsed_components`) fails there, as one with a singular covariance."""
        loglik, new, bad, reasons = self._evaluate(active, params, mask)
        unit = self.unit
        if active[0].scale is not None:  # each run its own
            unit = np.stack([r.scale for r in active if r.scale is not None])
        if unit is not None:
            comp, value = collapsed_components(new.covs, unit, mask)
            for i in np.flatnonzero((bad < 0) & (comp >= 0)):
                bad[i] = comp[i]
                reasons[i] = collapse_text(float(value[i]))
        return loglik, new, bad, reasons

    def _evaluate(self, active: list[Run], params: Params, mask: np.ndarray | None):
        groups: dict[str, list[int]] = {}
        for i, run in enumerate(active):
            groups.setdefault(run.structure.name, []).append(i)
        structures = {run.structure.name: run.structure for run in active}
        kind: Literal["full", "diag"] = (
            "diag" if all(s.scatter_kind == "diag" for s in structures.values()) else "full"
        )
        stats = self.pass_at(active, params, kind)
        if len(groups) == 1:
            st = next(iter(structures.values()))
            new, bad, reasons = m_step_batch(
                stats, self.center, st, self.prior, self.reg_covar, mask, params.covs
            )
            return stats.loglik, new, bad, reasons
        r = len(active)
        new = Params(
            np.empty_like(params.weights),
            np.empty_like(params.means),
            np.empty_like(params.covs),
            np.empty_like(params.chol),
        )
        bad = np.full(r, -1)
        reasons = [""] * r
        for name, rows in groups.items():
            idx = np.asarray(rows)
            st = structures[name]
            sub = stats.take(idx, diagonal=st.scatter_kind == "diag" and kind == "full")
            part, part_bad, part_reasons = m_step_batch(
                sub,
                self.center,
                st,
                self.prior,
                self.reg_covar,
                None if mask is None else mask[idx],
                params.covs[idx],
            )
            new.weights[idx], new.means[idx] = part.weights, part.means
            new.covs[idx], new.chol[idx] = part.covs, part.chol
            bad[idx] = part_bad
            for j, i in enumerate(rows):
                reasons[i] = part_reasons[j]
        return stats.loglik, new, bad, reasons

    def own(self, active: list[Run], name: str) -> np.ndarray:
        """The active runs' own row weights (R, N), data sets (R, N, D) or those data sets'
        feature matrices ("features:full" or "features:diag", (R, F, N): they do not change
        from pass to pass), stacked once for the batch (whose first pass has every run) and
        then taken by each run's slot in it."""
        if self._slots is None or self._own is None:
            self._slots = {id(r): i for i, r in enumerate(active)}
            self._own = {}
        own = self._own
        if name not in own:
            if name.startswith("features:"):
                data = self.own(active, "data") if "data" not in own else own["data"]
                own[name] = stacked_features(data, self.center, name == "features:diag")
            elif name == "row_weight" and not isinstance(active[0].row_weight, np.ndarray):
                # Bootstrap weights on a dask array, drawn chunk by chunk (never stored).
                from bayesgmm.core._dask import ChunkWeights

                own[name] = ChunkWeights.stack([r.row_weight for r in active])  # type: ignore[assignment,misc]
            else:
                own[name] = np.stack([getattr(r, name) for r in active])
        slots = self._slots
        idx = np.fromiter((slots[id(r)] for r in active), dtype=np.intp, count=len(active))
        full = own[name]
        if idx.size == full.shape[0] and (idx == np.arange(idx.size)).all():
            return full
        return full[idx]

    def pass_at(self, active: list[Run], params: Params, kind: Any) -> Any:
        """The pass of the active runs at ``params`` (statistics of ``kind``, or "none")."""
        diagonal = all(r.structure.scatter_kind == "diag" for r in active)
        if self.missing is not None:
            w = self.own(active, "row_weight") if active[0].row_weight is not None else self.w
            return missing_pass(
                self.missing, params.weights, params.means, params.covs, params.chol,
                diagonal, self.center, sample_weight=w, stats=kind, labels=self.labels,
            )  # fmt: skip
        dens = mixture_density(
            params.weights, params.means, params.chol, diagonal, self.center, not self.stacked
        )
        return self.run_pass(active, dens, kind)

    def run_pass(self, active: list[Run], dens: Any, kind: Any) -> Any:
        """The pass of the active runs: on the shared data with the shared weights, with each
        run's own weights (one (R, N) weight matrix), or each on its own data set."""
        w = self.own(active, "row_weight") if active[0].row_weight is not None else self.w
        if self.stacked:
            feats = self.own(active, f"features:{dens.kind}")
            return run_pass_stacked(feats, dens, sample_weight=w, stats=kind)
        return run_pass(self.X, dens, sample_weight=w, stats=kind, labels=self.labels)

    def pause(self, active, params, mask, at):
        """The runs with at least ``at`` iterations leave the batch at ``params``, resumable."""
        keep = [i for i, run in enumerate(active) if run.n_iter < at]
        if len(keep) == len(active):
            return active, params, mask
        for i, run in enumerate(active):
            if run.n_iter >= at:
                run.params = params.member(i, run.k)
        idx = np.asarray(keep, dtype=np.intp)
        return [active[i] for i in keep], params.take(idx), None if mask is None else mask[idx]

    def plain_step(self, active, params, mask, return_kept=False):
        """One EM step for every active run; runs that converge, degenerate or reach the
        iteration budget leave the batch."""
        loglik, new, bad, reasons = self.evaluate(active, params, mask)
        keep = []
        for i, run in enumerate(active):
            ll = float(loglik[i])
            prev = run.loglik
            run.trace.append(ll)
            if self.tol > 0 and np.isfinite(prev) and abs(ll - prev) <= self.tol * abs(ll):
                run.converged = True
                run.params = params.member(i, run.k)
            elif bad[i] >= 0:
                run.reason = f"component {bad[i]}: {reasons[i]}"
                run.params = params.member(i, run.k)
            else:
                run.n_iter += 1
                if run.n_iter >= self.until_iter:
                    run.params = new.member(i, run.k)
                else:
                    keep.append(i)
        idx = np.asarray(keep, dtype=np.intp)
        if len(keep) < len(active):
            active = [active[i] for i in keep]
            new = new.take(idx)
            if mask is not None:
                mask = mask[idx]
        if return_kept:
            return active, new, mask, idx
        return active, new, mask

    def extrapolate(self, active, theta0, theta1, theta2, mask):
        """The SQUAREM step for each run; returns the batch to continue from."""
        if active[0].scale is not None:  # each run its own (its weights' or data's)
            s = np.stack([r.scale for r in active])[:, None, :]  # (R, 1, D)
        elif self.scale is not None:
            s = self.scale
        else:
            s = np.ones(self.X.shape[1])
        scov = s[..., :, None] * s[..., None, :]

        def flat(p: Params) -> np.ndarray:
            r = p.weights.shape[0]
            means, covs = p.means / s, p.covs / scov
            if mask is not None:  # padding is not a parameter: it must not change the step
                means = np.where(mask[..., None], means, 0.0)
                covs = np.where(mask[..., None, None], covs, 0.0)
            return np.concatenate([p.weights, means.reshape(r, -1), covs.reshape(r, -1)], axis=1)

        f0, f1, f2 = flat(theta0), flat(theta1), flat(theta2)
        r_vec = f1 - f0
        v_vec = f2 - 2.0 * f1 + f0
        nr = np.sqrt((r_vec * r_vec).sum(axis=1))
        nv = np.sqrt((v_vec * v_vec).sum(axis=1))
        alpha = np.where(nv > 0, -nr / np.where(nv > 0, nv, 1.0), -1.0)
        bound = np.fromiter((r.step_max for r in active), dtype=np.float64, count=len(active))
        alpha = np.clip(alpha, -bound, -1.0)
        capped = alpha == -bound
        a1 = (-2.0 * alpha)[:, None]
        a2 = (alpha * alpha)[:, None]

        def combine(x0, x1, x2):
            shape = (-1,) + (1,) * (x0.ndim - 1)
            return x0 + a1.reshape(shape) * (x1 - x0) + a2.reshape(shape) * (x2 - 2 * x1 + x0)

        weights = combine(theta0.weights, theta1.weights, theta2.weights)
        means = combine(theta0.means, theta1.means, theta2.means)
        covs = combine(theta0.covs, theta1.covs, theta2.covs)
        covs = 0.5 * (covs + np.swapaxes(covs, -1, -2))
        if mask is not None:
            weights = np.where(mask, weights, 0.0)
        # Structures that are not closed under extrapolation (VEI, EVV, ...) are brought back
        # onto the structure, so that the trial's EM step cannot lower its log-likelihood.
        groups: dict[str, list[int]] = {}
        for i, run in enumerate(active):
            if not run.structure.linear:
                groups.setdefault(run.structure.name, []).append(i)
        for rows in groups.values():
            idx = np.asarray(rows)
            covs[idx] = active[rows[0]].structure.project(weights[idx], covs[idx])
            if mask is not None:
                covs[idx] = np.where(mask[idx][..., None, None], covs[idx], np.eye(covs.shape[-1]))
        chol, bad = batched_cholesky(covs)
        valid = (bad < 0) & (weights >= 0).all(axis=1) & (alpha < -1.0)
        # A cycle that ends before the run's plain_until makes no trial, and leaves the bound.
        plain = np.fromiter(
            (r.n_iter < r.plain_until for r in active), dtype=bool, count=len(active)
        )
        valid &= ~plain
        for i in np.flatnonzero(capped & ~valid & ~plain):
            # A step cut to the bound: the plain step (bound 1) lets the bound grow; an
            # invalid mixture (a covariance not positive definite, a negative weight) shrinks it.
            run = active[i]
            run.step_max = run.step_max * 4.0 if alpha[i] == -1.0 else max(1.0, run.step_max / 4)
        if not valid.any():
            return theta2
        out = Params(
            theta2.weights.copy(), theta2.means.copy(), theta2.covs.copy(), theta2.chol.copy()
        )
        idx = np.flatnonzero(valid)
        trial = Params(weights[idx], means[idx], covs[idx], chol[idx])
        trial.weights /= trial.weights.sum(axis=1, keepdims=True)
        loglik, new, bad_new, _ = self.evaluate(
            [active[i] for i in idx], trial, None if mask is None else mask[idx]
        )
        for j, i in enumerate(idx):
            run = active[i]
            # The trial is kept only when its EM step is valid, it improves on θ1 and the run
            # still has budget for one more M-step.
            ok = bad_new[j] < 0 and loglik[j] >= run.loglik
            if capped[i]:
                run.step_max = run.step_max * 4.0 if ok else max(1.0, run.step_max / 4.0)
            if ok and run.n_iter + 1 < self.until_iter:
                run.trace.append(float(loglik[j]))
                run.n_iter += 1
                out.weights[i], out.means[i] = new.weights[j], new.means[j]
                out.covs[i], out.chol[i] = new.covs[j], new.chol[j]
        return out


def _data_scale(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Standard deviation of each feature (1 where constant)."""
    if not isinstance(X, np.ndarray):  # a dask array: one pass over its chunks
        from bayesgmm.core._dask import moments

        _, var = moments(X, w)
    else:
        _, var = mean_cov(X, w, diagonal=True)
    return np.sqrt(np.where(var > 0, var, 1.0))


def _smallest_eigenvalues(std: np.ndarray, tol: float) -> np.ndarray:
    """The smallest eigenvalue of each (standardised) covariance of ``std`` (..., D, D) where
    it could be below ``tol``, inf elsewhere. λ_min ≥ det Σ / λ_max^(D−1) ≥ det Σ / (tr Σ)^(D−1),
    so a covariance whose bound clears twice the tolerance (far beyond rounding) is not
    decomposed: a determinant costs a fourth of an eigendecomposition, and almost every
    component passes. (One that is not finite is not judged: its M-step failed already.)"""
    d = std.shape[-1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        bound = np.linalg.det(std) / np.trace(std, axis1=-2, axis2=-1) ** (d - 1)
    unsure = ~(bound >= 2.0 * tol) & np.isfinite(std).all(axis=(-2, -1))
    eigen = np.full(std.shape[:-2], np.inf)
    if unsure.any():
        eigen[unsure] = np.linalg.eigvalsh(std[unsure])[:, 0]
    return eigen


def collapsed_components(
    covs: np.ndarray, scale: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each mixture of ``covs`` (R, K, D, D; ``mask`` (R, K) its real components), the
    component with the smallest eigenvalue below ``COLLAPSE_STOP_RTOL`` (where a run stops) once
    each feature is divided by its spread (``scale``: (D,), or (R, D) one per mixture), and that
    eigenvalue: (−1, 0) where none (the compiled loop's _collapse)."""
    s = scale if scale.ndim == 1 else scale[:, None, :]
    eigen = _smallest_eigenvalues(covs / (s[..., :, None] * s[..., None, :]), COLLAPSE_STOP_RTOL)
    if mask is not None:
        eigen[~mask] = np.inf
    comp = np.full(covs.shape[0], -1)
    value = np.zeros(covs.shape[0])
    for i in np.flatnonzero((eigen < COLLAPSE_STOP_RTOL).any(axis=1)):
        comp[i] = int(np.argmin(eigen[i]))
        value[i] = eigen[i, comp[i]]
    return comp, value


def _collapse_reason(covariances: np.ndarray, scale: np.ndarray) -> str | None:
    """Why a fitted mixture (its covariances, K × D × D) is degenerate, or None: a covariance
    with an eigenvalue that is a vanishing fraction of the data's variance in the same
    (standardised) direction."""
    return _collapse_reasons(covariances[None], scale)[0]


def _collapse_reasons(covariances: Any, scale: np.ndarray) -> list[str | None]:
    """:func:`_collapse_reason` of R mixtures at once (covariances (R, K, D, D), or a list of R
    (K_r, D, D) arrays of any K): one batched eigendecomposition of all their components (one
    per finished run, or per cell, cost a few percent of select_em on small data)."""
    blocks = list(covariances)
    if not blocks:
        return []
    std = np.concatenate(blocks) / (scale[:, None] * scale[None, :])
    eigen = _smallest_eigenvalues(std, DEGENERACY_RTOL)
    ends = np.cumsum([b.shape[0] for b in blocks]).tolist()
    out: list[str | None] = [None] * len(blocks)
    low = eigen < DEGENERACY_RTOL
    if not low.any():
        return out
    start = 0
    for r, end in enumerate(ends):
        if low[start:end].any():
            smallest = eigen[start:end]
            j = int(np.argmin(smallest))
            out[r] = (
                f"component {j} collapsed (its covariance has an eigenvalue {smallest[j]:.2g} "
                "times the data's variance, i.e. it sits on tied or duplicated points)"
            )
        start = end
    return out


@dataclass(frozen=True)
class Finished:
    """The end of many runs at once (:func:`finish_many`): what a replicate needs, without
    each run's responsibilities and criteria."""

    loglik: np.ndarray  # (R,) at each run's final mixture
    models: list[GaussianMixture]
    reasons: list[str | None]  # why each run is degenerate, or None


def finish_many(
    X: np.ndarray,
    runs: list[Run],
    center: np.ndarray,
    w: np.ndarray | None = None,
    missing: Missingness | None = None,
) -> Finished:
    """Final log-likelihood of every run in one pass (each on its own weights or data when it
    has them) and each run's degeneracy, as :func:`finish` judges it."""
    ks = [r.k for r in runs]
    params, _ = stack_padded([r.params for r in runs], max(ks))
    stacked = runs[0].data is not None and runs[0].row_weight is None
    batch = _Batch(X, center, w, None, 0.0, 0.0, 0, None, stacked=stacked, missing=missing)
    loglik = batch.pass_at(runs, params, "none").loglik
    models = [to_model(r.params, 0, r.structure, None) for r in runs]
    reasons: list[str | None] = []
    for run, model in zip(runs, models, strict=True):
        scale = run.scale if run.scale is not None else _data_scale(X, w)
        reason = (
            run.reason if run.reason is not None else _collapse_reason(model.covariances, scale)
        )
        reasons.append(None if reason is None else f"{reason}. {_REMEDY}")
    return Finished(np.asarray(loglik, dtype=np.float64), models, reasons)


def finish(
    X: np.ndarray,
    run: Run,
    names: tuple[str, ...] | None,
    w: np.ndarray | None,
    missing: Missingness | None = None,
    labels: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    lazy: bool = False,
) -> EMResult:
    """Final E-step at the run's mixture: log-likelihood, responsibilities and criteria (on the
    observed values of each row, with ``missing``; the joint log-likelihood of the labelled
    rows, with ``labels``). ``scale``: the features' spreads (:func:`_data_scale`), when the
    caller has them. With ``lazy``, the result computes its responsibilities again when they
    are first asked for instead of keeping this pass's (see EMResult)."""
    model = to_model(run.params, 0, run.structure, names)
    resp, final = _final_pass(X, model, w, missing, labels)
    loglik = float(final.loglik[0])
    n_obs = float(X.shape[0] if w is None else w.sum())
    p = model.n_parameters
    icl_value = icl(loglik, p, n_obs, resp, w)
    if scale is None:
        scale = _data_scale(X, w)
    held: Any = _Recompute(X, model, w, missing, labels) if lazy else resp
    return run_result(run, model, loglik, icl_value, held, n_obs, scale)


def finish_all(
    X: np.ndarray,
    runs: list[Run],
    names: tuple[str, ...] | None,
    w: np.ndarray | None,
    missing: Missingness | None = None,
    labels: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    lazy: bool = False,
    verdicts: Mapping[int, str | None] | None = None,
) -> list[EMResult]:
    """:func:`finish` for many runs: on complete data in memory whose responsibilities are kept,
    the final E-steps of the runs with the same kind of covariance (and, on large data, the
    same K) are one pass for all of them (select_em's grid finishes a few hundred runs: one
    pass each was a tenth of its time on the small data sets, one per K a twentieth of
    acidity's); otherwise one :func:`finish` per run. ``verdicts``: the runs' collapse tests
    already made, by run id (:func:`_collapse_reasons`' answers; the others are made here)."""
    if (
        lazy
        or missing is not None
        or labels is not None
        or len(runs) < 2
        or not isinstance(X, np.ndarray)
    ):
        return [finish(X, r, names, w, missing, labels, scale, lazy) for r in runs]
    if scale is None:
        scale = _data_scale(X, w)
    n_obs = float(X.shape[0] if w is None else w.sum())
    # One pass per kind of covariance (per K too on large data, where padding a K = 1 fit to the
    # largest K costs more than a pass: SHARED_PASS_MAX_ROWS, as iterate's batches): each
    # mixture padded with zero-weight components, which change none of its numbers.
    large = X.shape[0] >= SHARED_PASS_MAX_ROWS
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.k if large else 0, run.structure.scatter_kind == "diag"), []).append(
            i
        )
    center = X.mean(axis=0) if w is None else w @ X / w.sum()
    models: list[Any] = [None] * len(runs)
    passes = []
    for (_, diagonal), idx in groups.items():
        # The group's mixtures as stacked arrays, factorised in one call (a model and a
        # factorisation per run were a third of the time here on small data).
        ks = [runs[i].k for i in idx]
        k = max(ks)
        params_of = [runs[i].params for i in idx]
        padded, _ = stack_padded(params_of, k)
        weights, means, covs, chol = padded.weights, padded.means, padded.covs, padded.chol
        factors = _cholesky_many(covs)
        for j, (i, kj) in enumerate(zip(idx, ks, strict=True)):
            models[i] = GaussianMixture._trusted(
                weights[j, :kj], means[j, :kj], covs[j, :kj], runs[i].structure, names,
                None if factors is None else factors[j, :kj],
            )  # fmt: skip
        if factors is not None:
            chol = factors
        else:  # (each model factorised its own; the padding stays the identity)
            for j, i in enumerate(idx):
                chol[j, : ks[j]] = models[i].cholesky
        params = mixture_density(weights, means, chol, diagonal, center)
        wide = np.empty((X.shape[0], k * len(idx)))  # column c·R + r: mixture r's component c
        final = run_pass(X, params, sample_weight=w, resp_out=wide)
        # ICL's entropy terms of all R mixtures at once, when icl would take numpy's sum (each
        # row's sum over its contiguous N values: the same order as icl's; a padded
        # component's responsibility is 0, below every row's largest).
        ent = None
        if w is None and X.shape[0] < ICL_COMPILED_ROWS:
            top = wide.reshape(X.shape[0], k, len(idx)).max(axis=1).T  # (R, N)
            ent = np.log(np.maximum(np.ascontiguousarray(top), np.finfo(float).tiny)).sum(axis=1)
        passes.append((idx, ks, wide, final.loglik, ent))
    known = {} if verdicts is None else verdicts
    untested = [i for i, run in enumerate(runs) if id(run) not in known]
    tested = dict(
        zip(untested, _collapse_reasons([models[i].covariances for i in untested], scale),
            strict=True)
    )  # fmt: skip
    collapse = [tested[i] if i in tested else known[id(run)] for i, run in enumerate(runs)]
    out: list[EMResult | None] = [None] * len(runs)
    for idx, ks, wide, logliks, ent in passes:
        for j, i in enumerate(idx):
            model = models[i]
            resp = np.ascontiguousarray(wide[:, j :: len(idx)][:, : ks[j]])
            loglik = float(logliks[j])
            if ent is not None:
                icl_value = bic(loglik, model.n_parameters, n_obs) - 2.0 * float(ent[j])
            else:
                icl_value = icl(loglik, model.n_parameters, n_obs, resp, w)
            out[i] = run_result(runs[i], model, loglik, icl_value, resp, n_obs, scale, collapse[i])
    return [r for r in out if r is not None]


def _cholesky_many(covs: np.ndarray) -> np.ndarray | None:
    """The Cholesky factors of R mixtures' covariances (R, K, D, D) in one call, each the one
    GaussianMixture computes; None when some covariance is not positive definite (each model
    then factorises its own, and says which)."""
    try:
        chol = np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        return None
    if not (np.diagonal(chol, axis1=-2, axis2=-1) > 0).all():
        return None
    return chol


def _final_pass(
    X: np.ndarray,
    model: GaussianMixture,
    w: np.ndarray | None,
    missing: Missingness | None,
    labels: np.ndarray | None,
) -> tuple[np.ndarray, Any]:
    """The responsibilities (N, K) at ``model`` and the pass's statistics."""
    resp = np.empty((X.shape[0], model.n_components))
    if missing is None:
        final = run_pass(X, model._params, sample_weight=w, resp_out=resp, labels=labels)
    else:
        final = missing_pass(
            missing, model.weights[None], model.means[None], model.covariances[None],
            model.cholesky[None], model.structure.scatter_kind == "diag",
            model._params.center, sample_weight=w, resp_out=resp, labels=labels,
        )  # fmt: skip
    return resp, final


@dataclass(frozen=True, eq=False)
class _Recompute:
    """A finished fit's responsibilities, computed when called (the same pass as finish's)."""

    X: np.ndarray
    model: GaussianMixture
    w: np.ndarray | None
    missing: Missingness | None
    labels: np.ndarray | None

    def __call__(self) -> np.ndarray:
        return _final_pass(self.X, self.model, self.w, self.missing, self.labels)[0]


def run_result(
    run: Run,
    model: GaussianMixture,
    loglik: float,
    icl_value: float,
    responsibilities: Any,
    n_obs: float,
    scale: np.ndarray,
    collapse: Any = ...,
) -> EMResult:
    """A finished run's EMResult from its final pass (log-likelihood, ICL, responsibilities),
    degenerate when it failed or collapsed (in the data's standardised units, ``scale``;
    ``collapse``: :func:`_collapse_reason`'s answer when the caller has it)."""
    trace = list(run.trace)
    if not run.converged or not trace:
        trace.append(loglik)
    reason: str | None
    if run.reason is not None:
        reason = run.reason
    else:
        reason = _collapse_reason(model.covariances, scale) if collapse is ... else collapse
    p = model.n_parameters
    return EMResult(
        model=model,
        loglik=loglik,
        loglik_trace=np.asarray(trace),
        n_iter=run.n_iter,
        converged=run.converged,
        n_parameters=p,
        n_obs=n_obs,
        bic=bic(loglik, p, n_obs),
        aic=aic(loglik, p),
        icl=icl_value,
        responsibilities=responsibilities,
        degenerate=reason is not None,
        degenerate_reason=None if reason is None else f"{reason}. {_REMEDY}",
        init=run.label,
    )
