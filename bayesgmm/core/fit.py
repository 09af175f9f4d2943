"""``fit_em``: one Gaussian mixture by EM (the engine it runs on is
:mod:`bayesgmm.core._engine`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._engine import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    best_result,
    check_settings,
    labelled_start,
    make_starts,
    prepare_data,
    run_cells,
    start_data,
    start_model,
)
from bayesgmm.core._validation import as_rng, check_n_components
from bayesgmm.core.em import Degenerate
from bayesgmm.core.init import parse_init
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.result import DegenerateFitWarning, EMResult
from bayesgmm.core.structures import CovarianceStructure, get_structure

__all__ = ["DEFAULT_MAX_ITER", "DEFAULT_TOL", "fit_em"]


def fit_em(
    X: Any,
    n_components: int,
    *,
    covariance_type: str | CovarianceStructure = "VVV",
    init: Any = "hc",
    n_init: int = 1,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    reg_covar: float = 0.0,
    prior: ConjugatePrior | None = None,
    sample_weight: Any = None,
    rng: Any = 0,
    accelerate: bool = True,
    labels: Any = None,
) -> EMResult:
    """Fit a Gaussian mixture by EM (maximum likelihood, or MAP under ``prior``).

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        The data; a 1-D array is one feature; DataFrame column names become feature names.
        NaN marks a missing value (missing at random): EM then maximises the observed-data
        likelihood, each row's density being that of its observed coordinates, and the starts
        are computed on the data with each NaN at its column's mean (docs/missing.md).
        A dask array, a dask DataFrame or an xarray object backed by dask is fitted without
        gathering it: one pass over its chunks per EM iteration, on dask's threads or on a
        ``distributed.Client`` when one is active; the starts are computed on a seeded
        subsample of 20,000 rows, and ``responsibilities`` is a lazy dask array
        (docs/scale.md). There, ``labels``, ``prior`` and missing values are not available
        yet.
    n_components : int
        K, at least 1 and at most the number of distinct rows.
    covariance_type : str, default "VVV"
        One of mclust's 14 codes (EII, VII, EEI, VEI, EVI, VVI, EEE, VEE, EVE, VVE, EEV, VEV,
        EVV, VVV; E or V for one feature) or a scikit-learn alias (spherical, diag, tied, full).
    init : {"hc", "kmeans++", "random"}, array or GaussianMixture, default "hc"
        "hc": mclust's default start, its model-based agglomerative hierarchical clustering
        (the same tree as mclust's ``hc(X, "VVV", use = "SVD")``, on up to 2000 random rows) cut
        at K, or for one feature its quantile classes (``qclass``);
        "kmeans++": k-means++ seeding, each row joining its nearest seed; "random": random
        responsibilities; a tree of these data (:func:`bayesgmm.hierarchical`) or its name,
        "hc:ward", "hc:average", "hc:complete", "hc:single", "hc:vvv", "hc:eii", cut at K;
        or an (n,) label vector, an (n, K) responsibility matrix, or a mixture to start from
        (one whose covariances lack ``covariance_type``'s constraint, another structure's fit
        say, starts from its responsibilities: its E-step, then this structure's M-step).
    n_init : int, default 1
        Number of starts: the first from ``init``, the others from k-means++ with fresh random
        seeds (random responsibilities when ``init="random"``). With several starts each runs
        20 iterations first (to the end of a SQUAREM cycle: the runs that go on are not
        moved by it); the first start and the two best restarts then run to
        convergence ("short EM", Biernacki, Celeux & Govaert 2003). The best non-degenerate
        log-likelihood wins; when all three end degenerate, the restarts set aside go on too.
    tol : float, default 1e-8
        Stop when |ℓ_t − ℓ_{t−1}| ≤ tol·|ℓ_t|. ``tol=0`` runs exactly ``max_iter`` iterations.
    max_iter : int, default 1000
    reg_covar : float, default 0
        Added to every covariance's diagonal after each M-step (scikit-learn's regulariser).
    prior : ConjugatePrior, optional
        MAP-EM under the conjugate normal / inverse-Wishart prior (mclust's ``priorControl``).
        The reported ``loglik`` and BIC are still the log-likelihood's, as in mclust.
    sample_weight : array_like (n_obs,), optional
        Observation n counts w_n times; integer weights give exactly the fit of repeated rows.
    rng : int, numpy.random.Generator or None, default 0
        Seeds the random starts (and the row subset of the hierarchical start for large data);
        the default makes the fit reproducible, None draws fresh entropy.
    accelerate : bool, default True
        Follow every two EM steps by a SQUAREM extrapolation (Varadhan & Roland 2008), kept only
        when it is a valid mixture that raises the log-likelihood, so the recorded
        log-likelihoods still never decrease. EM's linear convergence is slow where components
        overlap; this typically cuts the iterations several-fold and reaches the optimum that
        plain EM stops short of. From the hierarchical start, or a partition or mixture given
        as ``init``, the first 5 iterations are plain EM steps, so that an early extrapolation
        does not carry the fit away from the optimum EM climbs to from that start (k-means++
        and random restarts extrapolate from the start). ``False`` runs plain EM, one M-step
        per iteration.
    labels : array_like (n_obs,) of int, optional
        Semi-supervised EM: the component of each row whose label is known (0..K−1), −1 where
        it is not. Known rows keep their one-hot responsibilities in every E-step, and every
        component needs at least one. The log-likelihood maximised and reported (and BIC,
        ICL) is then the joint one, Σ log p(x_n, z_n) over the labelled rows plus
        Σ log p(x_n) over the others. EM starts from the M-step on the labelled rows (or
        from a GaussianMixture passed as ``init``); ``n_init`` must be 1. With every row
        labelled, this is the class-wise estimate of discriminant analysis.

    Returns
    -------
    EMResult

    Examples
    --------
    >>> import bayesgmm as bg
    >>> X = bg.datasets.load_faithful()
    >>> fit = bg.fit_em(X, 3, covariance_type="EEE")
    >>> round(fit.bic, 2)
    2314.3
    """
    from bayesgmm.core._dask import is_dask

    if is_dask(X):
        if labels is not None:
            raise ValueError("labels= is not available for dask input yet; fit in memory.")
        from bayesgmm.core._dask import fit_em_chunked

        best = fit_em_chunked(
            X, n_components, covariance_type, init=init, n_init=n_init, tol=tol,
            max_iter=max_iter, reg_covar=reg_covar, prior=prior, sample_weight=sample_weight,
            rng=rng, accelerate=accelerate,
        )  # fmt: skip
        _warn_if_degenerate(best)
        return best
    arr, names, w, lab, k, resolved, models = _prepared(
        X, n_components, covariance_type, init, n_init, tol, max_iter, reg_covar, prior,
        sample_weight, as_rng(rng), labels,
    )  # fmt: skip
    results = run_cells(
        arr,
        names,
        w,
        {k: models},
        priors={k: resolved},
        reg_covar=float(reg_covar),
        tol=float(tol),
        max_iter=int(max_iter),
        accelerate=bool(accelerate),
        labels=lab,
    )[k]
    best = best_result(results)
    _warn_if_degenerate(best)
    return best


def _prepared(
    X: Any,
    n_components: int,
    covariance_type: str | CovarianceStructure,
    init: Any,
    n_init: int,
    tol: float,
    max_iter: int,
    reg_covar: float,
    prior: ConjugatePrior | None,
    sample_weight: Any,
    gen: np.random.Generator,
    labels: Any,
) -> tuple[Any, ...]:
    """fit_em's checks and starts (in memory): (data, feature names, weights, labels, K, the
    resolved prior, the starts as (label, mixture)), with fit_em's errors."""
    if labels is None:
        arr, names, w = prepare_data(X, sample_weight)
        lab = None
    else:
        arr, names, w, lab = prepare_data(X, sample_weight, labels)
    k = check_n_components(n_components, arr)
    structure = get_structure(covariance_type, arr.shape[1])
    check_settings(n_init, tol, max_iter, reg_covar, prior)
    from bayesgmm.core.hierarchy import tree_start

    filled = start_data(arr, w)
    resolved = None if prior is None else prior.resolve(arr, k, w)
    if lab is not None:
        starts = [labelled_start(lab, k, init, n_init)]
    else:
        tree = tree_start(init, filled, gen)
        parsed = "hc" if tree is not None else parse_init(init, filled, k)
        starts = make_starts(parsed, filled, k, gen, n_init, tree)
    try:
        models = [
            (label, start_model(filled, st, structure, w, resolved, float(reg_covar), names))
            for label, st in starts
        ]
    except Degenerate as err:
        raise ValueError(
            f"no valid starting mixture for n_components={k}, covariance_type="
            f"{structure.name!r} on {arr.shape[0]} rows × {arr.shape[1]} features ({err}): too "
            "few observations per component. Use fewer components, a more constrained "
            "covariance_type (e.g. 'VVI' or 'EEE'), a prior (prior=ConjugatePrior()) or "
            "reg_covar > 0."
        ) from None
    return arr, names, w, lab, k, resolved, models


def _warn_if_degenerate(best: EMResult) -> None:
    if best.degenerate:
        warnings.warn(
            f"fit_em({best.covariance_type}, K={best.n_components}) is degenerate: "
            f"{best.degenerate_reason}",
            DegenerateFitWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class RowsStart:
    """The start of one fit to a subset of the rows (:func:`start_on_rows`)."""

    rows: np.ndarray  # (N,) bool: the rows fitted
    label: str
    model: GaussianMixture


def start_on_rows(
    X: np.ndarray,
    rows: np.ndarray,
    n_components: int,
    covariance_type: str | CovarianceStructure,
    gen: np.random.Generator,
    labels: np.ndarray | None = None,
) -> RowsStart:
    """The start ``fit_em(X[rows], n_components, covariance_type=..., rng=gen,
    labels=labels[rows])`` makes (its single start, drawing from ``gen`` as it draws), with
    its checks and errors, for :func:`fit_on_rows`."""
    _, _, _, _, _, _, models = _prepared(
        X[rows], n_components, covariance_type, "hc", 1, DEFAULT_TOL, DEFAULT_MAX_ITER, 0.0,
        None, None, gen, None if labels is None else labels[rows],
    )  # fmt: skip
    [(label, model)] = models
    return RowsStart(np.asarray(rows, dtype=bool), label, model)


def fit_on_rows(
    X: np.ndarray, starts: list[RowsStart], labels: np.ndarray | None = None
) -> list[tuple[GaussianMixture, str | None]]:
    """Many fits to subsets of the rows of ``X`` (cross-validation's training folds, a class's
    rows in each fold) as batched EM: each subset is a run weighting its rows 1 and the others
    0, the runs of a batch sharing each pass (one product with the feature matrix for all),
    each converging and leaving the batch on its own; as many runs a batch as
    :func:`~bayesgmm.core._loop.batch_ranges` allows (their weight matrix is runs × rows).
    Each run ends where ``fit_em`` on its rows from the same start ends
    (:func:`start_on_rows`): to rounding, 1e-10 in the
    log-likelihood, where EM converges cleanly (where it crawls for hundreds of iterations on a
    flat likelihood, rounding can move the iteration its tolerance stops at, alone or here).
    ``labels`` (N,): the rows' known components (semi-supervised EM), as ``fit_em``'s.
    Returns each fit's mixture and why it is degenerate (None when it is not)."""
    from bayesgmm.core._loop import batch_ranges, finish_many, iterate, new_run
    from bayesgmm.core._missing import missingness
    from bayesgmm.core._moments import mean_cov

    missing = missingness(X)
    center = X.mean(axis=0) if missing is None else mean_cov(X, None, diagonal=True)[0]
    out: list[tuple[GaussianMixture, str | None]] = []
    # (a batch's weight matrix is runs × rows: leave-one-out on many rows takes several)
    for batch in batch_ranges(len(starts), X.shape[0]):
        runs = [
            new_run(s.model, s.label, row_weight=s.rows.astype(np.float64), data=X)
            for s in (starts[i] for i in batch)
        ]
        iterate(
            X, runs, DEFAULT_MAX_ITER, center=center, w=None, prior=None, reg_covar=0.0,
            tol=DEFAULT_TOL, accelerate=True, missing=missing, labels=labels,
        )  # fmt: skip
        done = finish_many(X, runs, center, missing=missing)
        out.extend(zip(done.models, done.reasons, strict=True))
    return out
