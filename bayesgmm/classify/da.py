"""Discriminant analysis: the mixture's p(x, z) with z observed.

* ``kind="edda"``: one Gaussian per class, all classes under one covariance structure chosen by
  BIC over the structures (mclust's EDDA, Bensmail & Celeux 1996). Fitting it is
  :func:`bayesgmm.fit_em` with every row labelled: the class-wise estimates under the
  structure's M-step.
* ``kind="mixture"``: a Gaussian mixture per class, its K and structure chosen by BIC per class
  (mclust's MclustDA, Fraley & Raftery 2002).

A row is classified by Bayes' rule, p(c | x) ∝ p(c) p(x | c), with p(c) the training shares
of the classes unless given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core._validation import as_data, as_rng
from bayesgmm.core.fit import RowsStart, fit_em, fit_on_rows, start_on_rows
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.result import DegenerateFitWarning, EMResult
from bayesgmm.core.select import _structure_list, select_em

__all__ = ["ClassifierResult", "CrossValidation", "cross_validate_classifier", "fit_classifier"]

KINDS = ("edda", "mixture")


@dataclass(frozen=True, repr=False)
class ClassifierResult:
    """A fitted discriminant analysis.

    Attributes
    ----------
    classes : ndarray
        The class labels, in the order of every per-class array (sorted, as given).
    kind : str
        "edda" or "mixture".
    priors : ndarray (C,)
        p(c) used by Bayes' rule: the training shares unless given.
    models : dict
        For each class, its density p(x | c): a one-component GaussianMixture (EDDA) or the
        class's mixture.
    table : pandas.DataFrame
        The models chosen: per class its structure, K and BIC (EDDA: one structure for all;
        the BIC of the joint fit, and every structure's BIC in ``selection``).
    fits : dict
        The EMResult behind each model (EDDA: the one joint fit, under key "all").
    selection : pandas.DataFrame or None
        EDDA: the BIC of every structure tried.
    """

    classes: np.ndarray
    kind: str
    priors: np.ndarray
    models: dict[Any, GaussianMixture]
    table: Any
    fits: dict[Any, EMResult]
    selection: Any = None
    feature_names: tuple[str, ...] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def log_joint(self, X: Any) -> np.ndarray:
        """log p(c) + log p(x_n | c), shape (n, C) (NaN in X: each row's observed values)."""
        arr, _ = as_data(X, allow_missing=True)
        out = np.empty((arr.shape[0], self.classes.size))
        for j, c in enumerate(self.classes):
            out[:, j] = np.log(self.priors[j]) + self.models[c].log_prob(arr)
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(c | x_n) by Bayes' rule, shape (n, C), computed in log space."""
        lj = self.log_joint(X)
        lj -= lj.max(axis=1, keepdims=True)
        p = np.exp(lj)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes[self.log_joint(X).argmax(axis=1)]

    def error(self, X: Any, y: Any) -> float:
        """The share of rows of ``X`` misclassified against their classes ``y``."""
        return float(np.mean(self.predict(X) != np.asarray(y)))

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 120):
            body = self.table.to_string()
        shares = dict(zip(self.classes.tolist(), np.round(self.priors, 4).tolist(), strict=True))
        return (
            f"ClassifierResult(kind={self.kind!r}, {self.classes.size} classes)\n{body}\n"
            f"priors: {shares}"
        )


def _classes(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted classes and each row's class index."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"y must hold one class per row of X, shape ({n},); got {arr.shape}.")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(
            "y has missing classes (NaN); fit_classifier needs every row's class. For rows "
            "without a class use semi-supervised EM: bayesgmm.fit_em(X, K, labels=...)."
        )
    classes, codes = np.unique(arr, return_inverse=True)
    if classes.size < 2:
        raise ValueError(
            f"y has one class ({classes.tolist()[0]!r}); discriminant analysis needs at least two. "
            "To model one group's density, use bayesgmm.select_em on its rows."
        )
    return classes, codes.reshape(-1)


def _check_priors(priors: Any, classes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if priors is None:
        return np.bincount(codes, minlength=classes.size) / codes.size
    p = np.asarray(priors, dtype=np.float64)
    if p.shape != (classes.size,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(
            f"priors must be {classes.size} positive numbers, one per class in the order "
            f"{classes.tolist()}; got {priors!r}."
        )
    return p / p.sum()


def fit_classifier(
    X: Any,
    y: Any,
    *,
    kind: str = "edda",
    n_components: Any = range(1, 6),
    covariance_types: Any = "all",
    priors: Any = None,
    rng: Any = 0,
) -> ClassifierResult:
    """Discriminant analysis with Gaussian (mixture) class densities, as mclust's ``MclustDA``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        NaN marks a missing value (each row's observed values are used).
    y : array_like (n_obs,)
        Each row's class: numbers or text (the classes are kept, sorted, in ``.classes``).
    kind : {"edda", "mixture"}, default "edda"
        "edda": one Gaussian per class, one covariance structure for all classes, chosen by
        BIC; "mixture": a mixture per class, K in ``n_components`` and the structure chosen by
        BIC for each class.
    n_components : int or iterable of int, default range(1, 6)
        The K tried per class ("mixture" only; mclust's default G = 1:5).
    covariance_types : "all" or iterable of str, default "all"
        The structures tried.
    priors : array_like (C,), optional
        p(c) for Bayes' rule; default the training shares.
    rng : int or Generator, default 0
        Seeds the restarts of the per-class selections ("mixture").
    """
    arr, names = as_data(X, allow_missing=True)
    classes, codes = _classes(y, arr.shape[0])
    kind = str(kind).lower()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}; got {kind!r}.")
    structures = _structure_list(covariance_types, arr.shape[1])
    p = _check_priors(priors, classes, codes)
    settings = {"n_components": n_components, "covariance_types": structures}
    if kind == "edda":
        return _fit_edda(arr, names, classes, codes, structures, p, settings)
    return _fit_mixture(arr, names, classes, codes, structures, n_components, p, rng, settings)


def _class_sizes_check(classes: np.ndarray, codes: np.ndarray, d: int) -> None:
    counts = np.bincount(codes, minlength=classes.size)
    small = np.flatnonzero(counts < 2)
    if small.size:
        c = classes.tolist()[small[0]]  # (a plain number or string, not np.float64(...))
        raise ValueError(
            f"class {c!r} has {counts[small[0]]} row; every class needs at least 2 (and more "
            f"than {d} for a full covariance of its own). Merge or drop that class."
        )


def _fit_edda(
    arr: np.ndarray,
    names: tuple[str, ...] | None,
    classes: np.ndarray,
    codes: np.ndarray,
    structures: list[str],
    p: np.ndarray,
    settings: dict[str, Any],
    fixed: str | None = None,
) -> ClassifierResult:
    import pandas as pd

    _class_sizes_check(classes, codes, arr.shape[1])
    k = classes.size
    fits: dict[str, EMResult] = {}
    reasons: dict[str, str] = {}
    for s in [fixed] if fixed else structures:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateFitWarning)
                fit = fit_em(arr, k, covariance_type=s, labels=codes)
        except ValueError as err:
            reasons[s] = str(err)
            continue
        if fit.degenerate:
            reasons[s] = fit.degenerate_reason or "degenerate"
            continue
        fits[s] = fit
    if not fits:
        first = next(iter(reasons.items()))
        counts = np.bincount(codes, minlength=k)
        d = arr.shape[1]
        small = [f"'{classes[j]}' ({counts[j]} rows)" for j in np.flatnonzero(counts <= d)]
        which = (
            f"class {', '.join(small)} has no more rows than the {d} features a covariance of "
            "its own needs"
            if small
            else f"{first[0]}: {first[1]}"
        )
        raise ValueError(
            f"no covariance structure gave a valid fit for every class ({which}). Use a "
            "structure shared across classes (e.g. covariance_types=['EEE', 'EII']) or more "
            "rows for that class."
        )
    bic = pd.Series({s: f.bic for s, f in fits.items()}, name="bic")
    best = str(bic.idxmin())
    fit = fits[best]
    models = _class_models(fit.model, classes, names)
    table = pd.DataFrame(
        {
            "structure": [best] * k,
            "n_components": [1] * k,
            "n_obs": np.bincount(codes, minlength=k),
        },
        index=pd.Index(classes, name="class"),
    )
    selection = pd.DataFrame({"bic": bic, "failure": pd.Series(reasons, dtype=object)})
    return ClassifierResult(
        classes, "edda", p, models, table, {"all": fit}, selection, names,
        {**settings, "structure": best},
    )  # fmt: skip


def _class_models(
    model: GaussianMixture, classes: np.ndarray, names: tuple[str, ...] | None
) -> dict[Any, GaussianMixture]:
    """EDDA's class densities: each component of the fit with every row labelled, on its own."""
    return {
        c: GaussianMixture(
            np.ones(1), model.means[j : j + 1], model.covariances[j : j + 1], "VVV", names
        )
        for j, c in enumerate(classes)
    }


def _fit_mixture(
    arr: np.ndarray,
    names: tuple[str, ...] | None,
    classes: np.ndarray,
    codes: np.ndarray,
    structures: list[str],
    n_components: Any,
    p: np.ndarray,
    rng: Any,
    settings: dict[str, Any],
    fixed: dict[Any, tuple[str, int]] | None = None,
) -> ClassifierResult:
    import pandas as pd

    _class_sizes_check(classes, codes, arr.shape[1])
    gen = as_rng(rng)
    models: dict[Any, GaussianMixture] = {}
    fits: dict[Any, EMResult] = {}
    rows = []
    for j, c in enumerate(classes):
        part = arr[codes == j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateFitWarning)
            if fixed is not None:
                s, k = fixed[c]
                fit = fit_em(part, k, covariance_type=s, rng=gen)
            else:
                shown = np.asarray(c).tolist()  # (a plain number or string, not np.float64(...))
                ks = [k for k in _ks(n_components) if k <= part.shape[0]]
                if not ks:
                    raise ValueError(
                        f"class {shown!r} has {part.shape[0]} rows, fewer than every K in "
                        f"n_components ({_ks(n_components)}). Include smaller K (e.g. "
                        "n_components=range(1, 6)) or merge the class."
                    )
                try:
                    fit = select_em(part, ks, structures, rng=gen).best
                except ValueError as err:
                    raise ValueError(
                        f"class {shown!r} ({part.shape[0]} rows): no valid model ({err}). Use "
                        "fewer components or constrained structures for it, or more rows."
                    ) from None
        models[c], fits[c] = fit.model, fit
        rows.append(
            {
                "class": c,
                "structure": fit.covariance_type,
                "n_components": fit.n_components,
                "n_obs": part.shape[0],
                "bic": fit.bic,
            }
        )
    table = pd.DataFrame(rows).set_index("class")
    return ClassifierResult(classes, "mixture", p, models, table, fits, None, names, settings)


def _ks(n_components: Any) -> list[int]:
    if isinstance(n_components, int | np.integer):
        return [int(n_components)]
    return sorted({int(k) for k in n_components})


@dataclass(frozen=True, repr=False)
class CrossValidation:
    """Cross-validated classification error and Brier score (mclust's ``cvMclustDA``).

    Attributes
    ----------
    error, brier : float
        Over all rows (each predicted by the fit without its fold).
    folds : pandas.DataFrame
        Per fold: rows, error, Brier score.
    predicted : ndarray
        Each row's predicted class; ``proba`` (n, C) its class probabilities.
    """

    error: float
    brier: float
    folds: Any
    predicted: np.ndarray
    proba: np.ndarray
    classes: np.ndarray

    def __repr__(self) -> str:
        return (
            f"CrossValidation({len(self.folds)} folds): error {self.error:.4f}, "
            f"Brier score {self.brier:.4f}"
        )


def brier_score(proba: np.ndarray, codes: np.ndarray) -> float:
    """mclust's (scaled) Brier score: Σ_n Σ_c (p_nc − [y_n = c])² / (2n), in [0, 1]."""
    onehot = np.zeros_like(proba)
    onehot[np.arange(codes.size), codes] = 1.0
    return float(((proba - onehot) ** 2).sum() / (2 * codes.size))


def _folds(codes: np.ndarray, n_folds: int, gen: np.random.Generator) -> np.ndarray:
    """Each row's fold, balanced within each class (as mclust's ``balancedFolds``)."""
    fold = np.empty(codes.size, dtype=np.int64)
    start = 0
    for c in np.unique(codes):
        rows = gen.permutation(np.flatnonzero(codes == c))
        fold[rows] = (start + np.arange(rows.size)) % n_folds
        start += rows.size
    return fold


def cross_validate_classifier(
    X: Any,
    y: Any,
    *,
    kind: str = "edda",
    n_folds: int = 10,
    fit: ClassifierResult | None = None,
    rng: Any = 0,
    **kwargs: Any,
) -> CrossValidation:
    """``n_folds``-fold cross-validation of :func:`fit_classifier`, as mclust's
    ``cvMclustDA``: the model chosen on all the data (its structure, and per class its K, or
    ``fit``'s) is refitted without each fold and classifies the fold. Folds are balanced
    within classes; ``n_folds`` equal to the number of rows is leave-one-out (no randomness).
    The folds' refits run as one batched EM (for a mixture per class, one per class): each
    fold is a run weighting its training rows 1 and the fold's 0, and ends where ``fit_em`` on
    the training rows alone ends (:func:`~bayesgmm.core.fit.fit_on_rows`).
    Returns the error and the Brier score per fold and over all rows."""
    import pandas as pd

    arr, names = as_data(X, allow_missing=True)
    classes, codes = _classes(y, arr.shape[0])
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer):
        raise TypeError(f"n_folds must be an integer; got {n_folds!r}.")
    if not 2 <= n_folds <= arr.shape[0]:
        raise ValueError(f"n_folds must be in 2..{arr.shape[0]} (the rows); got {n_folds}.")
    full = fit if fit is not None else fit_classifier(arr, classes[codes], kind=kind, **kwargs)
    gen = as_rng(rng)
    fold = _folds(codes, int(n_folds), gen) if n_folds < arr.shape[0] else np.arange(codes.size)
    trains = []
    for f in range(int(n_folds)):
        train = fold != f
        if np.unique(codes[train]).size < classes.size:
            raise ValueError(f"fold {f} leaves a class without training rows; use fewer folds.")
        trains.append(train)
    p = full.priors if fit is not None and kwargs.get("priors") is not None else None
    if full.kind == "edda":
        models = _cv_edda(arr, names, classes, codes, trains, full.settings["structure"], p)
    else:
        fixed = {c: (m.covariance_type, m.n_components) for c, m in full.models.items()}
        models = _cv_mixture(arr, names, classes, codes, trains, fixed, p, gen)
    proba = np.empty((arr.shape[0], classes.size))
    for train, model in zip(trains, models, strict=True):
        proba[~train] = model.predict_proba(arr[~train])
    predicted_codes = proba.argmax(axis=1)
    rows = []
    for f in range(int(n_folds)):
        m = fold == f
        rows.append(
            {
                "fold": f,
                "n_obs": int(m.sum()),
                "error": float(np.mean(predicted_codes[m] != codes[m])),
                "brier": brier_score(proba[m], codes[m]),
            }
        )
    return CrossValidation(
        error=float(np.mean(predicted_codes != codes)),
        brier=brier_score(proba, codes),
        folds=pd.DataFrame(rows).set_index("fold"),
        predicted=classes[predicted_codes],
        proba=proba,
        classes=classes,
    )


def _cv_edda(
    arr: np.ndarray,
    names: tuple[str, ...] | None,
    classes: np.ndarray,
    codes: np.ndarray,
    trains: list[np.ndarray],
    structure: str,
    priors: Any,
) -> list[ClassifierResult]:
    """The EDDA model refitted on each training fold (its rows a boolean mask), all folds as
    one batched EM (:func:`~bayesgmm.core.fit.fit_on_rows`: each fold is ``fit_em`` on its
    rows, every row labelled). A fold whose fit fails is refitted alone, for its error."""
    d = arr.shape[1]
    gen = np.random.default_rng(0)  # (the labelled start draws nothing)

    def alone(train: np.ndarray) -> ClassifierResult:
        tc = codes[train]
        return _fit_edda(
            arr[train], names, classes, tc, [], _check_priors(priors, classes, tc), {},
            fixed=structure,
        )  # fmt: skip

    starts: list[RowsStart] = []
    for train in trains:
        _class_sizes_check(classes, codes[train], d)
        try:
            starts.append(start_on_rows(arr, train, classes.size, structure, gen, codes))
        except ValueError:
            alone(train)  # raises the fit's own error
            raise
    out = []
    for train, (model, reason) in zip(trains, fit_on_rows(arr, starts, codes), strict=True):
        if reason is not None:
            out.append(alone(train))
            continue
        p = _check_priors(priors, classes, codes[train])
        models = _class_models(model, classes, names)
        out.append(ClassifierResult(classes, "edda", p, models, None, {}, None, names))
    return out


def _cv_mixture(
    arr: np.ndarray,
    names: tuple[str, ...] | None,
    classes: np.ndarray,
    codes: np.ndarray,
    trains: list[np.ndarray],
    fixed: dict[Any, tuple[str, int]],
    priors: Any,
    gen: np.random.Generator,
) -> list[ClassifierResult]:
    """Each class's mixture (its structure and K in ``fixed``) refitted on each training fold:
    per class, its folds as one batched EM on its rows (:func:`~bayesgmm.core.fit.fit_on_rows`,
    each ``fit_em`` on the fold's rows of the class from its hierarchical start; the starts
    drawn from ``gen`` fold by fold and class by class, as one fit after another draws them)."""
    d = arr.shape[1]
    members = [codes == j for j in range(classes.size)]
    starts: list[list[RowsStart]] = [[] for _ in classes]
    for train in trains:
        _class_sizes_check(classes, codes[train], d)
        for j, c in enumerate(classes):
            s, k = fixed[c]
            starts[j].append(start_on_rows(arr[members[j]], train[members[j]], k, s, gen))
    fits = [fit_on_rows(arr[members[j]], starts[j]) for j in range(classes.size)]
    out = []
    for f, train in enumerate(trains):
        # (a degenerate fit classifies as it stands, as _fit_mixture keeps it)
        models = {c: fits[j][f][0] for j, c in enumerate(classes)}
        p = _check_priors(priors, classes, codes[train])
        out.append(ClassifierResult(classes, "mixture", p, models, None, {}, None, names))
    return out
