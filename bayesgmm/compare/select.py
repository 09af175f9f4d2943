"""``compare_k``: the number of components by every criterion, side by side."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.compare.bootstrap import progress_bar
from bayesgmm.compare.datatree import to_datatree
from bayesgmm.core._validation import as_data
from bayesgmm.core.bootstrap import LRTResult, bootstrap_lrt
from bayesgmm.core.result import EMResult
from bayesgmm.core.select import select_em

__all__ = ["CRITERIA", "KComparison", "compare_k", "loo_choice"]

#: "bic", "icl": EM's criteria (smaller is better); "lrt": the bootstrap likelihood-ratio test
#: of K against K + 1; "loo": the posterior's PSIS-LOO expected log predictive density;
#: "smc": the log marginal likelihood from sequential Monte Carlo.
CRITERIA = ("bic", "icl", "lrt", "loo", "smc")

#: LOO's parsimony rule: the smallest K whose ELPD is within max(LOO_MIN_GAP, LOO_SE_MULT · dse)
#: of the best, dse the standard error of the difference (Sivula, Magnusson & Vehtari 2020: a
#: difference under 4 is small; under two of its standard errors, indistinguishable).
LOO_MIN_GAP = 4.0
LOO_SE_MULT = 2.0
#: Pareto k above which PSIS-LOO's estimate for an observation is unreliable.
PARETO_K_BAD = 0.7


@dataclass(frozen=True, repr=False)
class KComparison:
    """The result of :func:`compare_k`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per K: EM's ``loglik``, ``n_parameters``, ``bic``, ``icl`` (smaller is better);
        ``lrt_stat`` and ``lrt_p`` for K against K + 1; ``elpd_loo``, ``se``, ``p_loo``,
        ``elpd_diff`` and ``dse`` (from the best K), ``weight`` (stacking), ``pareto_k_max`` and
        ``share_k_bad`` (share of observations with Pareto k > 0.7), ``posterior`` (the method
        that drew it) and ``posterior_ok`` (its diagnostics passed); ``log_ml`` and ``log_ml_sd``
        (SMC); ``chosen_by``, the criteria that pick this K. Columns of criteria not run are left
        out.
    choices : dict[str, int]
        The K each criterion picks (see :func:`compare_k` for the rules).
    fits : dict[int, EMResult]
        EM's fit at each K.
    posteriors : dict[int, DataTree]
        The posterior at each K (when LOO or SMC ran).
    loo : dict[int, arviz_stats.ELPDData]
    loo_compare : pandas.DataFrame or None
        ``arviz_stats.compare`` of the posteriors (stacking weights, dse).
    lrt : dict[int, LRTResult]
        The test of K against K + 1.
    failures : dict[tuple[str, int], str]
        Why a criterion has no value at some K.
    notes : list[str]
        Warnings in words (unreliable LOO, failed fits).
    """

    table: Any
    choices: dict[str, int]
    fits: dict[int, EMResult]
    posteriors: dict[int, Any] = field(default_factory=dict)
    loo: dict[int, Any] = field(default_factory=dict)
    loo_compare: Any = None
    lrt: dict[int, LRTResult] = field(default_factory=dict)
    failures: dict[tuple[str, int], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    covariance_type: str = "VVV"

    def em_tree(self, k: int) -> Any:
        """EM's fit at K as a DataTree (:func:`bayesgmm.to_datatree`)."""
        return to_datatree(self.fits[k])

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 120, "display.max_columns", 30):
            body = self.table.to_string(float_format=lambda v: f"{v:.4g}")
        picks = ", ".join(f"{c.upper()}: K={k}" for c, k in self.choices.items())
        lines = [f"KComparison({self.covariance_type}) — {picks}", body]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def loo_choice(elpd: Mapping[int, float], dse: Mapping[int, float]) -> int:
    """LOO's parsimony rule: the smallest K whose ELPD lies within max(4, 2·dse_K) of the best,
    where dse_K is the standard error of its difference from the best K."""
    best = max(elpd, key=lambda k: elpd[k])
    for k in sorted(elpd):
        gap = elpd[best] - elpd[k]
        if gap <= max(LOO_MIN_GAP, LOO_SE_MULT * float(np.nan_to_num(dse.get(k, 0.0)))):
            return k
    return best


def _parse_methods(methods: Any) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, Iterable):
        raise TypeError(f"methods must be names from {CRITERIA}; got {methods!r}.")
    out = [str(m).lower() for m in methods]
    bad = [m for m in out if m not in CRITERIA]
    if bad or not out:
        raise ValueError(f"methods must be a non-empty selection of {CRITERIA}; got {methods!r}.")
    return out


def _lrt_choice(ks: list[int], lrt: dict[int, LRTResult], level: float) -> int | None:
    """mclust's sequential reading: starting at the smallest K, keep adding a component while
    the test of K against K + 1 rejects at ``level``."""
    for k in ks:
        if k not in lrt:
            return None if k == ks[0] else k
        if lrt[k].p_value > level:
            return k
    return ks[-1]


def compare_k(
    X: Any,
    n_components: Iterable[int] = range(1, 7),
    *,
    covariance_type: str = "VVV",
    methods: Iterable[str] = ("bic", "icl", "loo"),
    bayes_method: str = "auto",
    posteriors: Mapping[int, Any] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    smc_draws: int = 1000,
    smc_chains: int = 4,
    n_boot_lrt: int = 99,
    lrt_level: float = 0.05,
    n_init: int = 10,
    rng: Any = 0,
    n_jobs: int | None = None,
    progressbar: bool = False,
    **bayes_kwargs: Any,
) -> KComparison:
    """Compare K = ``n_components`` by EM's BIC and ICL, the bootstrap likelihood-ratio test,
    the posterior's PSIS-LOO and SMC's log marginal likelihood, side by side.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
    n_components : iterable of int, default range(1, 7)
    covariance_type : str, default "VVV"
        One structure for every K (for the posterior: VVV, EEE, VVI, EEI, VII, EII, E, V).
        To choose the structure too, use :func:`bayesgmm.select_em`.
    methods : iterable of str, default ("bic", "icl", "loo")
        Any of :data:`CRITERIA`. The rules:

        * "bic", "icl": the smallest (EM, ``n_init`` starts per K);
        * "lrt": parametric bootstrap test of K against K + 1 (``n_boot_lrt`` replicates, as
          mclust's ``mclustBootstrapLRT``); the first K, from the smallest, whose test does not
          reject at ``lrt_level``;
        * "loo": ELPD-LOO of the posterior (``arviz_stats.loo``). Raw ELPD keeps creeping up
          with K when the extra components fit noise, so the rule is parsimonious: the smallest
          K whose ELPD lies within max(4, 2·dse) of the best, dse the standard error of the
          difference. Observations with Pareto k > 0.7 make LOO unreliable; their share is in
          the table and a note says so in words;
        * "smc": the largest log marginal likelihood (mean over ``smc_chains`` independent SMC
          runs of ``smc_draws`` particles).
    bayes_method : str, default "auto"
        How :func:`bayesgmm.fit_bayes` draws the posterior for LOO ("smc" reuses the SMC run).
        "auto": at each K the cheapest method whose diagnostics pass (the Laplace
        approximation, else NUTS); the table's ``posterior`` column says which was used and
        ``posterior_ok`` whether its diagnostics passed (:func:`bayesgmm.bayes.diagnose`); a
        note says in words where they failed.
    posteriors : mapping K → DataTree, optional
        Posteriors already drawn (with a ``log_likelihood`` group); they are used for LOO
        instead of new fits.
    draws, tune, chains : int
        For :func:`bayesgmm.fit_bayes`.
    rng : int or numpy.random.Generator, default 0
    n_jobs : int, optional
        Worker processes for the bootstrap test's replicates (as :func:`bayesgmm.bootstrap_em`:
        -1 every core; None this process).
    progressbar : bool, default False
    **bayes_kwargs
        Passed to :func:`bayesgmm.fit_bayes` (``priors``, ``identify``, ...).

    Returns
    -------
    KComparison
        ``.table`` (rows K), ``.choices`` and the fits and DataTrees behind them.
    """
    import pandas as pd

    arr, names = as_data(X, allow_missing=True)  # NaN: missing values, as fit_em takes them
    data = pd.DataFrame(arr, columns=list(names)) if names is not None else arr
    wanted = _parse_methods(methods)
    gen = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    sel = select_em(
        data, n_components, [covariance_type], "bic", n_init=n_init, rng=int(gen.integers(2**31))
    )
    structure = sel.bic.columns[0]
    ks = [int(k) for k in sel.bic.index]
    failures: dict[tuple[str, int], str] = {}
    for (_, k), why in sel.failures.items():
        failures[("em", int(k))] = why
    fits = {k: sel.results[(structure, k)] for k in ks if (structure, k) in sel.results}
    good = [k for k in ks if k in fits and not fits[k].degenerate]
    rows: dict[int, dict[str, Any]] = {k: {} for k in ks}
    for k in good:
        f = fits[k]
        rows[k].update(n_parameters=f.n_parameters, loglik=f.loglik, bic=f.bic, icl=f.icl)
    choices: dict[str, int] = {}
    notes: list[str] = []
    if not good:
        raise ValueError(
            f"no K in {ks} gave a proper EM fit of {structure} "
            f"({next(iter(failures.values()), '')}); use fewer components or a more constrained "
            "covariance_type."
        )
    for crit in ("bic", "icl"):
        if crit in wanted:
            values = {k: float(getattr(fits[k], crit)) for k in good}
            choices[crit] = min(values, key=values.__getitem__)

    lrt: dict[int, LRTResult] = {}
    if "lrt" in wanted:
        lrt = _lrt_rows(arr, fits, good, rows, n_boot_lrt, gen, n_jobs, progressbar)
        pick = _lrt_choice(good, lrt, lrt_level) if lrt else None
        if pick is not None:
            choices["lrt"] = pick

    trees: dict[int, Any] = dict(posteriors or {})
    need_smc = "smc" in wanted
    need_loo = "loo" in wanted
    if need_smc or (need_loo and any(k not in trees for k in good)):
        todo = [k for k in good if (need_loo and k not in trees) or need_smc]
        settings = {
            "structure": structure, "method": bayes_method, "draws": draws, "tune": tune,
            "chains": chains, "smc_draws": smc_draws, "smc_chains": smc_chains,
            "need_smc": need_smc, "need_loo": need_loo, "kwargs": bayes_kwargs,
        }  # fmt: skip
        _posterior_rows(data, fits, todo, trees, rows, notes, failures, settings, gen, progressbar)
        if need_smc:
            smc_ks = [k for k in good if "log_ml" in rows[k]]
            if smc_ks:
                choices["smc"] = max(smc_ks, key=lambda k: rows[k]["log_ml"])

    loo: dict[int, Any] = {}
    loo_table = None
    if need_loo:
        loo, loo_table = _loo_rows(trees, [k for k in good if k in trees], rows, notes, failures)
        if loo:
            elpd = {k: rows[k]["elpd_loo"] for k in loo}
            dse = {k: rows[k]["dse"] for k in loo}
            choices["loo"] = loo_choice(elpd, dse)

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "K"
    table["chosen_by"] = [
        ", ".join(c for c, pick in choices.items() if pick == k) for k in table.index
    ]
    return KComparison(
        table=table,
        choices=choices,
        fits=fits,
        posteriors=trees,
        loo=loo,
        loo_compare=loo_table,
        lrt=lrt,
        failures=failures,
        notes=notes,
        covariance_type=structure,
    )


def _lrt_rows(
    arr: np.ndarray,
    fits: dict[int, EMResult],
    good: list[int],
    rows: dict[int, dict[str, Any]],
    n_boot: int,
    gen: np.random.Generator,
    n_jobs: int | None,
    progressbar: bool,
) -> dict[int, LRTResult]:
    """The bootstrap likelihood-ratio test of K against K + 1 for each K whose K + 1 was
    fitted, its statistic and p-value written into ``rows``."""
    lrt: dict[int, LRTResult] = {}
    pairs = [k for k in good if k + 1 in good]
    with progress_bar(len(pairs) * n_boot, "bootstrap LRT", progressbar) as advance:
        for k in pairs:
            lrt[k] = bootstrap_lrt(
                arr, fits[k], fits[k + 1], n_boot=n_boot, rng=gen, n_jobs=n_jobs,
                progress=advance,
            )  # fmt: skip
            rows[k].update(lrt_stat=lrt[k].statistic, lrt_p=lrt[k].p_value)
    return lrt


def _posterior_rows(
    data: Any,
    fits: dict[int, EMResult],
    todo: list[int],
    trees: dict[int, Any],
    rows: dict[int, dict[str, Any]],
    notes: list[str],
    failures: dict[tuple[str, int], str],
    settings: dict[str, Any],
    gen: np.random.Generator,
    progressbar: bool,
) -> None:
    """The posterior at each K of ``todo``, from its EM fit: SMC's log evidence into ``rows``
    (``need_smc``), and the posterior for LOO into ``trees`` (``need_loo``); a K whose
    posterior cannot be drawn becomes a note and a failure."""
    from bayesgmm.bayes import PosteriorWarning, fit_bayes

    common = {"covariance_type": settings["structure"], "rng": gen, **settings["kwargs"]}
    method = settings["method"]
    with (
        progress_bar(len(todo), f"posterior per K ({method})", progressbar) as advance,
        warnings.catch_warnings(),
    ):
        # A failed diagnostic becomes a note per K, in words (compare_k's notes).
        warnings.simplefilter("ignore", PosteriorWarning)
        for k in todo:
            try:
                if settings["need_smc"]:
                    smc = fit_bayes(
                        data, k, method="smc", draws=settings["smc_draws"],
                        chains=settings["smc_chains"], init=fits[k], **common,
                    )  # fmt: skip
                    stats = smc["sample_stats"]
                    rows[k].update(
                        log_ml=stats.attrs["log_marginal_likelihood"],
                        log_ml_sd=stats.attrs["log_marginal_likelihood_sd"],
                    )
                    if method == "smc" and k not in trees:
                        trees[k] = smc
                if settings["need_loo"] and k not in trees:
                    trees[k] = fit_bayes(
                        data, k, method=method, init=fits[k], draws=settings["draws"],
                        tune=settings["tune"], chains=settings["chains"], **common,
                    )  # fmt: skip
            except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
                failures[("posterior", k)] = str(err)
                notes.append(f"K={k}: the posterior could not be drawn ({err}).")
            if advance is not None:
                advance(1)


def _loo_rows(
    trees: Mapping[int, Any],
    ks: list[int],
    rows: dict[int, dict[str, Any]],
    notes: list[str],
    failures: dict[tuple[str, int], str],
) -> tuple[dict[int, Any], Any]:
    """PSIS-LOO of each posterior into ``rows``; arviz_stats.compare of them all."""
    from arviz_stats import compare, loo

    from bayesgmm.bayes import diagnose

    out: dict[int, Any] = {}
    for k in ks:
        tree = trees[k]
        diagnosis = diagnose(tree)
        checked = not diagnosis.table.empty  # a tree from elsewhere may carry no diagnostics
        rows[k].update(
            posterior=diagnosis.method or "given",
            posterior_ok=diagnosis.passed if checked else np.nan,
        )
        if checked and not diagnosis.passed:
            remedy = (
                "bayes_method='auto' or 'nuts' gives draws to trust"
                if diagnosis.method in ("laplace", "pathfinder", "advi", "fullrank_advi")
                else "longer chains would tell"
            )
            notes.append(
                f"K={k}: the {diagnosis.method} posterior failed its own diagnostics — "
                + "; ".join(diagnosis.failures)
                + f" — so its draws (and the LOO computed from them) are rough; {remedy}."
            )
        if "log_likelihood" not in tree.children:
            failures[("loo", k)] = "the posterior has no log_likelihood group"
            notes.append(f"K={k}: no LOO, the posterior was drawn with log_likelihood=False.")
            continue
        with warnings.catch_warnings():
            # Our own note below says it in words, with the share of bad observations.
            warnings.simplefilter("ignore")
            res = loo(tree, pointwise=True)
        kvals = np.asarray(res.pareto_k, dtype=np.float64).ravel()
        # A k that could not be estimated (NaN) is no more trustworthy than a large one.
        n_nan = int(np.count_nonzero(np.isnan(kvals)))
        n_bad = int(np.count_nonzero(kvals > PARETO_K_BAD)) + n_nan
        rows[k].update(
            elpd_loo=float(res.elpd),
            se=float(res.se),
            p_loo=float(res.p),
            pareto_k_max=float(np.nanmax(kvals)) if n_nan < kvals.size else np.nan,
            share_k_bad=n_bad / kvals.size,
        )
        if n_bad:
            nan_text = f", {n_nan} of them with a k that could not be estimated" if n_nan else ""
            notes.append(
                f"K={k}: LOO is unreliable — {n_bad} of {kvals.size} observations "
                f"({100 * n_bad / kvals.size:.1f}%) have Pareto k > {PARETO_K_BAD}{nan_text}, "
                "so their leave-one-out densities rest on importance weights with infinite "
                "variance; the ELPD there is likely too optimistic. Longer chains rarely help; "
                "K-fold cross-validation or moment matching would."
            )
        out[k] = res
    table = None
    if len(out) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = compare({f"K={k}": res for k, res in out.items()}, round_to="none")
        for k in out:
            r = table.loc[f"K={k}"]
            rows[k].update(
                elpd_diff=float(r["elpd_diff"]), dse=float(r["dse"]), weight=float(r["weight"])
            )
    elif len(out) == 1:
        (k,) = out
        rows[k].update(elpd_diff=0.0, dse=0.0, weight=1.0)
    return out, table
