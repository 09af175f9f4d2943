"""The whole analysis behind ``bayesgmm report`` and ``bayesgmm demo``: EM selection over K and
structures, the posterior at the chosen model, the bootstrap, the comparison over K, and the
report that lays them out. Every number comes from the library; this module only composes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.cli.report import Report

__all__ = ["Settings", "run_analysis"]


@dataclass(frozen=True)
class Settings:
    ks: tuple[int, ...] = tuple(range(1, 10))
    structures: Any = "all"
    criterion: str = "bic"
    method: str = "auto"
    draws: int = 1000
    chains: int = 4
    n_boot: int = 199
    compare_ks: tuple[int, ...] | None = None
    loo: bool = True
    seed: int = 0
    progress: bool = True


def select_quietly(
    X: Any, ks: list[int], structures: Any, criterion: str, seed: int, show: bool
) -> Any:
    """``select_em`` without the per-cell degeneracy warnings (the table reports them), with a
    line saying what runs. No spinner: a display thread would stop select_em from forking its
    workers."""
    import time

    import bayesgmm as bg

    if show:
        n = len(ks) * (14 if structures == "all" else len(structures))
        print(f"EM over {n} (structure, K) cells ...", end=" ", flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.DegenerateFitWarning)
        sel = bg.select_em(X, ks, structures, criterion, rng=seed)
    if show:
        print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)
    return sel


def _bic_strength(diff: float) -> str:
    """Kass & Raftery's (1995) reading of a BIC difference."""
    if diff > 10:
        return "very strong"
    if diff > 6:
        return "strong"
    if diff > 2:
        return "positive"
    return "weak"


def run_analysis(
    X: Any, settings: Settings, title: str, notices: list[str] | None = None
) -> tuple[Report, dict[str, Any]]:
    """Run the pipeline on the DataFrame ``X``; return the report and the objects behind it."""
    report = Report(title)
    report.heading("Data")
    report.paragraph(
        f"{X.shape[0]} observations of {X.shape[1]} features: {', '.join(map(str, X.columns))}."
    )
    if notices:
        report.items(notices, css="notes")
    sel = _em_section(report, X, settings)  # 1. EM over K and structures
    chosen = sel.best
    # 2. the posterior at the chosen model (the PyMC model has every structure: always that of
    # the model EM chose), the bootstrap and the comparison over K
    post, cmp, boot, table = _posterior_bootstrap_comparison(X, chosen, settings)
    post, diagnosis, sensitivity = _posterior_section(report, chosen, post, boot, table, settings)
    structure, k = chosen.covariance_type, chosen.n_components
    compare_ks = settings.compare_ks or tuple(settings.ks)
    report.heading(f"How many components? ({structure}, K = {min(compare_ks)}..{max(compare_ks)})")
    report.table(cmp.table)
    report.figure(_plots().plot_criteria(cmp), "Each criterion against K; the chosen K starred.")
    if cmp.notes:
        report.items(cmp.notes, css="notes")
    report.heading("Reading")
    report.reading(
        _reading(sel, chosen, structure, k, cmp, table, settings, diagnosis, sensitivity)
    )
    used = diagnosis.method
    report.settings(
        {
            "K": list(settings.ks),
            "structures": settings.structures,
            "criterion": settings.criterion,
            "posterior method": settings.method
            + ("" if settings.method == used else f" (used: {used})"),
            "draws × chains": f"{settings.draws} × {settings.chains}",
            "bootstrap replicates": settings.n_boot,
            "K compared": list(compare_ks),
            "seed": settings.seed,
        }
    )
    return report, {
        "selection": sel,
        "fit": chosen,
        "posterior": post,
        "bootstrap": boot,
        "estimates": table,
        "comparison": cmp,
    }


def _plots() -> Any:
    from bayesgmm.compare import plots

    return plots


def _em_section(report: Report, X: Any, settings: Settings) -> Any:
    """EM over every structure and K: the top models, the BIC figure, the chosen model and the
    hierarchical tree it started from."""
    plots = _plots()
    sel = select_quietly(
        X, list(settings.ks), settings.structures, settings.criterion, settings.seed,
        settings.progress,
    )  # fmt: skip
    chosen = sel.best
    crit = settings.criterion.upper()
    report.heading(f"EM: model selection by {crit}")
    report.paragraph(
        f"Every covariance structure and K in {list(settings.ks)} fitted by EM from mclust's "
        f"hierarchical start with restarts; {crit} in the textbook sign (smaller is better; "
        "mclust prints −BIC)."
    )
    report.table(sel.top(5))
    report.figure(plots.plot_bic(sel), f"{crit} of every structure against K (smaller is better).")
    report.heading(f"The chosen model: {chosen.covariance_type}, K = {chosen.n_components}")
    report.table(_parameter_table(chosen.model))
    report.figure(plots.plot_mixture(chosen, X), "The fitted mixture over the data.")
    _tree_section(report, X, chosen, settings.seed)
    return sel


def _posterior_bootstrap_comparison(X: Any, fit: Any, settings: Settings) -> tuple[Any, ...]:
    """The chosen model's posterior by the cheapest method whose diagnostics pass ("auto"), the
    comparison over K (reusing it at K and, under "auto", Laplace at the other K: NUTS at
    every K would cost minutes; the notes say where Laplace failed its check), the bootstrap,
    and the table of estimates side by side."""
    import bayesgmm as bg

    structure, k = fit.covariance_type, fit.n_components
    if settings.progress:
        print(f"posterior at {structure}, K = {k} ({settings.method}) ...", end=" ", flush=True)
    with warnings.catch_warnings():
        # A failed diagnostic is said in the report.
        warnings.simplefilter("ignore", bg.PosteriorWarning)
        post = bg.fit_bayes(
            X, k, covariance_type=structure, method=settings.method, init=fit,
            draws=settings.draws, tune=settings.draws, chains=settings.chains, rng=settings.seed,
        )  # fmt: skip
    if settings.progress:
        print(
            f"{post.attrs['bayesgmm_method']}, {post.attrs['bayesgmm_seconds']:.1f} s", flush=True
        )
    cmp = bg.compare_k(
        X,
        settings.compare_ks or tuple(settings.ks),
        covariance_type=structure,
        methods=("bic", "icl", "loo") if settings.loo else ("bic", "icl"),
        bayes_method="laplace" if settings.method == "auto" else settings.method,
        posteriors={k: post},
        draws=settings.draws,
        tune=settings.draws,
        chains=settings.chains,
        rng=settings.seed,
        progressbar=settings.progress,
    )
    boot = bg.bootstrap_em(
        fit, X, n_boot=settings.n_boot, rng=settings.seed, progressbar=settings.progress
    )
    return post, cmp, boot, bg.compare_estimates(fit, post, bootstrap=boot)


def _posterior_section(
    report: Report, fit: Any, post: Any, boot: Any, table: Any, settings: Settings
) -> tuple[Any, Any, Any]:
    """EM against the posterior: the method and its diagnostics, the modes, the prior
    sensitivity, the table and the forest plot. Returns the posterior (one mode of it when the
    chains found several), its diagnosis and the prior sensitivity."""
    from bayesgmm.bayes import diagnose, select_mode

    diagnosis = diagnose(post)
    used = diagnosis.method
    modes_note = ""
    stats = post["sample_stats"] if "sample_stats" in post.children else None
    if stats is not None and int(stats.attrs.get("n_modes", 1)) > 1:
        # Never average across modes: the table below is the mode of the chains started at
        # EM's estimate (chain 0's), and the report says what the others hold.
        shares = np.ravel(stats.attrs["mode_shares"])
        first = int(stats["mode"].values[0])
        modes_note = (
            f"The chains settled in {len(shares)} modes (shares by stacking: "
            + ", ".join(f"{v:.2f}" for v in shares)
            + f"); the table and the forest plot show mode {first}, the one of the chain "
            f"started at EM's estimate (share {shares[first]:.2f}), not an average over modes."
        )
        post = select_mode(post, first)
    structure, k = fit.covariance_type, fit.n_components
    report.heading(f"EM against the posterior ({structure}, K = {k})")
    report.paragraph(
        f"Posterior by {_METHOD_NAMES.get(used, used)} ({settings.chains} × {settings.draws} "
        f"draws), started from EM; bootstrap: {boot['posterior'].sizes['draw']} nonparametric "
        f"replicates ({boot.attrs['n_failed']} failed). Intervals are equal-tailed 94%."
    )
    report.paragraph(_method_account(post, diagnosis, settings.method))
    report.table(diagnosis.table)
    if modes_note:
        report.paragraph(modes_note)
    sensitivity = _prior_sensitivity(post)
    if sensitivity is not None:
        report.paragraph(
            "Prior sensitivity: power-scaling the prior and the likelihood (Kallioinen et al. "
            "2023), the largest sensitivity per parameter family; above 0.05 is flagged."
        )
        report.table(sensitivity)
    if not diagnosis.passed:
        report.paragraph(
            "Warning: this posterior failed its own diagnostics (the rows marked False above), "
            "so the posterior columns below are rough."
            + (
                " Rerun with --method nuts (or nutpie) for draws to trust."
                if used in ("laplace", "pathfinder", "advi", "fullrank_advi")
                else " Longer chains (--draws, --tune) would tell whether the sampler or the "
                "posterior is at fault."
            )
        )
    report.table(table.drop(columns=["parameter", "component", "feature", "feature_bis"]))
    report.figure(
        _plots().plot_forest(fit, post, bootstrap=boot),
        "Posterior, bootstrap and EM per parameter (in EM's labels), each in standard errors "
        "from its EM estimate (the bootstrap's SE), so that every feature's scale is readable; "
        "the table above has them in their own units.",
    )
    return post, diagnosis, sensitivity


def _tree_section(report: Report, X: Any, chosen: Any, seed: int) -> None:
    """The model-based tree (mclust's start) at the chosen K, and how far EM moved from its
    cut."""
    import bayesgmm as bg
    from bayesgmm.compare import plots

    k = chosen.n_components
    if X.shape[1] < 2 or k < 2:
        return  # one feature: mclust's start is quantile classes, no tree; K = 1: no cut
    from bayesgmm.core._engine import start_data

    arr = np.asarray(X, dtype=np.float64)
    filled = start_data(arr, None)  # as EM's start: each missing value at its column's mean
    tree = bg.hierarchical(filled, rng=seed)
    labels = tree.labels_for(filled, k)
    ari = bg.adjusted_rand_index(labels, chosen.predict())
    sub = "" if tree.n_initial == tree.n_obs else f" (built on {tree.n_initial} sampled rows)"
    if np.isnan(arr).any():
        sub += ", on the data with each missing value at its column's mean, as EM's start"
    report.heading("The hierarchical tree")
    report.paragraph(
        f"mclust's model-based agglomeration (VVV criterion, scaled-SVD coordinates){sub}, the "
        f"start EM's selection began from, cut at K = {k}: clusters of "
        f"{', '.join(str(int(n)) for n in np.bincount(labels, minlength=k))} rows. The "
        f"adjusted Rand index between this cut and EM's final clusters is {ari:.3f} (1: the "
        "same partition; EM moves rows where the Gaussian model fits them better)."
    )
    report.figure(
        plots.plot_dendrogram(tree, k=k),
        f"The top of the tree; the cut at K = {k} in colours (docs/hierarchical.md).",
    )


def _parameter_table(model: Any) -> Any:
    import pandas as pd

    from bayesgmm.compare.datatree import feature_names

    names = feature_names(model)
    rows = {}
    for k in range(model.n_components):
        sd = np.sqrt(np.diag(model.covariances[k]))
        row = {"weight": model.weights[k]}
        row.update({f"mean {n}": m for n, m in zip(names, model.means[k], strict=True)})
        row.update({f"sd {n}": s for n, s in zip(names, sd, strict=True)})
        rows[f"component {k}"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


_METHOD_NAMES = {
    "laplace": "the Laplace approximation",
    "pathfinder": "Pathfinder",
    "nuts": "NUTS (PyMC)",
    "nutpie": "NUTS (nutpie)",
    "advi": "mean-field ADVI",
    "fullrank_advi": "full-rank ADVI",
    "smc": "SMC",
}


def _method_account(post: Any, diagnosis: Any, requested: str) -> str:
    """Which method drew the posterior, why, and what its diagnostics say, in words."""
    used = _METHOD_NAMES.get(diagnosis.method, diagnosis.method)
    if requested == "auto":
        reason = post.attrs.get("bayesgmm_method_reason", "")
        if diagnosis.method == "laplace":
            text = f"Method: {used}, the cheapest, because it passed its own check"
            text += (
                " (its draws importance-resampled, as its Pareto k̂ lies in (0.5, 0.7])."
                if post.attrs.get("bayesgmm_reweighted")
                else "."
            )
        else:
            why = reason.split("(", 1)[1].rsplit(")", 1)[0] if "(" in reason else reason
            text = f"Method: {used}, because the Laplace approximation failed its check ({why})."
    else:
        text = f"Method: {used}, as asked (--method {requested})."
    if diagnosis.passed:
        return text + " Its diagnostics all passed (table below)."
    return text + " Its diagnostics did not all pass: " + "; ".join(diagnosis.failures) + "."


def _prior_sensitivity(post: Any) -> Any:
    """``bayesgmm.bayes.prior_sensitivity`` of the posterior, or None where it cannot be
    computed (no log-likelihood group)."""
    from bayesgmm.bayes import prior_sensitivity

    try:
        return prior_sensitivity(post)
    except ValueError:
        return None


def _same_mode(diagnosis: Any) -> str:
    """Whether EM's estimate and the posterior describe the same mode, from the em_gap and
    labels_match checks."""
    table = diagnosis.table
    if "em_gap" not in table.index:
        return ""
    gap = float(table.loc["em_gap", "value"])
    match = "labels_match" not in table.index or bool(table.loc["labels_match", "passed"])
    if table.loc["em_gap", "passed"] and match:
        return (
            f"EM's estimate and the posterior describe the same mode: each chain's component "
            f"means sit within {gap:.2f} of EM's component standard deviations of EM's, with "
            "the components in EM's order."
        )
    return (
        f"EM's estimate and the posterior do not describe the same mode: the posterior's "
        f"component means sit up to {gap:.2f} of EM's component standard deviations from EM's"
        + ("" if match else ", and its components no longer match EM's")
        + "; the table compares two different solutions."
    )


def _reading(
    sel: Any,
    chosen: Any,
    structure: str,
    k: int,
    cmp: Any,
    table: Any,
    settings: Settings,
    diagnosis: Any,
    sensitivity: Any = None,
) -> list[str]:
    """A short account in words of what the numbers say."""
    lines = []
    stacked = sel.table.stack().dropna().sort_values()
    crit = settings.criterion.upper()
    if len(stacked) > 1:
        (k2, s2), v2 = stacked.index[1], stacked.iloc[1]
        diff = float(v2 - stacked.iloc[0])
        lines.append(
            f"{crit} prefers {chosen.covariance_type} with {chosen.n_components} components. The "
            f"runner-up, {s2} with {k2}, is {diff:.1f} worse: {_bic_strength(diff)} evidence "
            "for the choice (Kass & Raftery's scale)."
        )
    picks = cmp.choices
    agree = [c.upper() for c, kk in picks.items() if kk == k]
    differ = [f"{c.upper()} picks K = {kk}" for c, kk in picks.items() if kk != k]
    verb = "agrees" if len(agree) == 1 else "agree"
    text = f"Over K for {structure}: " + (f"{', '.join(agree)} {verb} on K = {k}" if agree else "")
    if differ:
        text += ("; " if agree else "") + "; ".join(differ)
    lines.append(text + ".")
    if "loo" in picks and cmp.table["elpd_loo"].notna().any():
        raw = int(cmp.table["elpd_loo"].idxmax())
        if raw != picks["loo"]:
            lines.append(
                f"The largest ELPD-LOO is at K = {raw}, but within the noise of K = "
                f"{picks['loo']}'s (difference under max(4, 2 standard errors)), so LOO's "
                "parsimonious choice is the smaller model."
            )
    if cmp.notes:
        lines.append(f"Caution: {len(cmp.notes)} note(s) on the comparison, listed above.")
    used = _METHOD_NAMES.get(diagnosis.method, diagnosis.method)
    if diagnosis.passed:
        lines.append(
            f"The posterior at {structure}, K = {k} was drawn by {used}, and every one of its "
            f"diagnostics passed ({', '.join(diagnosis.table.index)})."
        )
    else:
        failed = [str(i) for i, r in diagnosis.table.iterrows() if not r["passed"]]
        tried = (
            "neither the Laplace approximation nor NUTS passed its diagnostics: "
            if settings.method == "auto" and diagnosis.method != "laplace"
            else "its diagnostics did not all pass: "
        )
        lines.append(
            f"The posterior at {structure}, K = {k} was drawn by {used}, and {tried}{used} "
            f"failed {', '.join(failed)}. Read its intervals as rough."
        )
    same = _same_mode(diagnosis)
    if same:
        lines.append(same)
    if "modes" in diagnosis.table.index and not diagnosis.table.loc["modes", "passed"]:
        lines.append(
            "The posterior has several modes (its chains disagree; see above): the intervals "
            "describe one of them, and the others are solutions the data also support."
        )
    if sensitivity is not None and len(sensitivity):
        flagged = sensitivity[sensitivity["diagnosis"] != "✓"]
        if flagged.empty:
            lines.append(
                "No parameter family is sensitive to the prior (power-scaling sensitivity at "
                f"most {sensitivity['prior'].max():.3f}): the data, not the prior, decide."
            )
        else:
            lines.append(
                "Prior sensitivity: "
                + "; ".join(
                    f"{name}: {row['diagnosis']} (prior sensitivity {row['prior']:.3f}, "
                    f"most at {row['most_sensitive']})"
                    for name, row in flagged.iterrows()
                )
                + ". There the prior shapes the posterior, and a different prior would move it."
            )
    oks = cmp.table["posterior_ok"] if "posterior_ok" in cmp.table else {}
    rough = [int(kk) for kk, ok in oks.items() if isinstance(ok, bool | np.bool_) and not ok]
    if rough:
        lines.append(
            f"Over K, the posterior failed its diagnostics at K = {', '.join(map(str, rough))}: "
            "LOO there rests on rough draws (notes above)."
        )
    inside = table["em_in_interval"]
    worst = table["std_diff"].abs().idxmax()
    lines.append(
        f"At {structure}, K = {k}, the EM estimate lies inside the posterior's 94% interval for "
        f"{int(inside.sum())} of {len(inside)} parameters; the largest gap is "
        f"{abs(table.loc[worst, 'std_diff']):.2f} posterior sds ({worst})."
    )
    ratio = (table["boot_se"] / table["post_sd"]).replace([np.inf, -np.inf], np.nan).dropna()
    if len(ratio):
        lines.append(
            f"Bootstrap standard errors are {ratio.min():.2f} to {ratio.max():.2f} times the "
            "posterior sds: EM's sampling uncertainty and the posterior's agree "
            + ("closely." if 0.67 <= ratio.min() and ratio.max() <= 1.5 else "only roughly.")
        )
    return lines
