"""Model selection over the number of components and the covariance structure (mclust's grid).

pandas is imported here only to build the table the user reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._validation import as_data, as_rng, check_sample_weight, count_distinct_rows
from bayesgmm.core.em import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Degenerate,
    DegenerateFitWarning,
    EMResult,
    fit_em,
)
from bayesgmm.core.init import hc_tree
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.structures import get_structure, structure_names

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
        Why each NaN cell is NaN.
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


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label vectors define the same partition (up to renaming the labels)."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


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
    n_init: int = 3,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    reg_covar: float = 0.0,
    prior: ConjugatePrior | None = None,
    sample_weight: Any = None,
    rng: Any = 0,
    cross_starts: bool = True,
) -> SelectionResult:
    """Fit every (structure, K) cell by EM and choose by BIC or ICL, as mclust's ``Mclust``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
    n_components : int or iterable of int, default range(1, 10)
    covariance_types : "all" or iterable of str, default "all"
        "all" is every structure built (E and V for one feature, as mclust).
    criterion : {"bic", "icl"}, default "bic"
        Textbook sign: the smallest wins.
    init : {"hc", "kmeans++", "random"}, default "hc"
        With "hc", one hierarchical tree is built for the whole grid and cut at each K.
    n_init : int, default 3
        Starts per cell: the hierarchical one plus ``n_init − 1`` k-means++ restarts, because EM
        finds local optima (mclust's default hierarchical start alone misses galaxies' V,3).
    tol, max_iter, reg_covar, prior, sample_weight
        As :func:`fit_em`.
    rng : int or numpy.random.Generator, default 0
        Seeds the restarts; the default makes the table reproducible.
    cross_starts : bool, default True
        After the first pass, rerun each cell from the partitions the other structures found at
        the same K (short EM, keeping the best). Never makes a cell worse.

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
    import pandas as pd

    arr, names = as_data(X)
    w = check_sample_weight(sample_weight, arr.shape[0])
    crit = str(criterion).lower()
    if crit not in _CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not one of {list(_CRITERIA)}.")
    ks = _parse_ks(n_components)
    d = arr.shape[1]
    if isinstance(covariance_types, str) and covariance_types.lower() == "all":
        structures = structure_names(d)
    else:
        types = [covariance_types] if isinstance(covariance_types, str) else list(covariance_types)
        structures = list(dict.fromkeys(get_structure(t, d).name for t in types))
    gen = as_rng(rng)
    Xfit = arr if names is None else pd.DataFrame(arr, columns=list(names))
    n_distinct = count_distinct_rows(arr)
    tree = hc_tree(arr if w is None else arr[w > 0], gen) if init == "hc" else None

    results: dict[tuple[str, int], EMResult] = {}
    failures: dict[tuple[str, int], str] = {}
    for structure in structures:
        for k in ks:
            if k > n_distinct:
                failures[(structure, k)] = f"K={k} exceeds the {n_distinct} distinct rows"
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DegenerateFitWarning)
                    fit = fit_em(
                        Xfit,
                        k,
                        covariance_type=structure,
                        init=init,
                        n_init=n_init,
                        tol=tol,
                        max_iter=max_iter,
                        reg_covar=reg_covar,
                        prior=prior,
                        sample_weight=w,
                        rng=gen,
                        _hc=tree,
                    )
            except (Degenerate, ValueError, np.linalg.LinAlgError) as err:
                failures[(structure, k)] = str(err)
                continue
            results[(structure, k)] = fit
            if fit.degenerate:
                failures[(structure, k)] = fit.degenerate_reason or "degenerate"

    # Cross-starts: EM is run again in every cell from the partitions that the other structures
    # found at the same K. A cell's optimum is often reached from a neighbour's partition that
    # its own start missed; the grid becomes consistent and never worse.
    if cross_starts and len(structures) > 1:
        for k in ks:
            fits_k = {
                s: results[(s, k)]
                for s in structures
                if (s, k) in results and not results[(s, k)].degenerate
            }
            partitions: list[tuple[str, np.ndarray]] = []
            for s, fit in fits_k.items():
                labels = fit.predict()
                if len(np.unique(labels)) == k and not any(
                    _same_partition(labels, other) for _, other in partitions
                ):
                    partitions.append((f"from {s},{k}", labels))
            for structure in structures:
                current = results.get((structure, k))
                if current is None or current.degenerate:
                    continue
                own = current.predict()
                extra = [(lab, part) for lab, part in partitions if not _same_partition(own, part)]
                if not extra:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DegenerateFitWarning)
                    refit = fit_em(
                        Xfit,
                        k,
                        covariance_type=structure,
                        init=current.model,
                        tol=tol,
                        max_iter=max_iter,
                        reg_covar=reg_covar,
                        prior=prior,
                        sample_weight=w,
                        rng=gen,
                        _extra_starts=extra,
                    )
                if not refit.degenerate and refit.loglik > current.loglik:
                    results[(structure, k)] = refit

    def frame(attr: str) -> pd.DataFrame:
        data = {
            s: [
                getattr(results[(s, k)], attr)
                if (s, k) in results and (s, k) not in failures
                else np.nan
                for k in ks
            ]
            for s in structures
        }
        df = pd.DataFrame(data, index=pd.Index(ks, name="K"))
        df.columns.name = "structure"
        return df

    bic_t, icl_t, ll_t = frame("bic"), frame("icl"), frame("loglik")
    table = bic_t if crit == "bic" else icl_t
    if table.isna().all().all():
        raise ValueError(
            "no cell of the grid gave a valid fit: "
            + "; ".join(f"{s},{k}: {r}" for (s, k), r in list(failures.items())[:3])
        )
    k_best, s_best = table.stack().idxmin()
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
