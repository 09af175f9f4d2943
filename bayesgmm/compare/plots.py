"""Figures: the fitted mixture over the data, EM against the posterior, the criteria against K.

Every function returns a matplotlib ``Figure``; nothing is shown or saved unless asked
(``show=True``, ``path=...``). The distribution and forest plots are arviz-plots' own, with the
EM estimate and bootstrap drawn in as references.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesgmm.compare.align import align_to
from bayesgmm.compare.datatree import (
    broadcast_estimate,
    feature_names,
    mixture_arrays,
    mixture_dataset,
    posterior_dataset,
)
from bayesgmm.core._validation import as_data
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.result import EMResult

__all__ = [
    "plot_bic",
    "plot_criteria",
    "plot_dendrogram",
    "plot_forest",
    "plot_mixture",
    "plot_partitions",
    "plot_posterior",
    "readable_dataset",
]

#: The variables of :func:`readable_dataset`, in the order the plots show them.
READABLE = ("weights", "means", "sds")


def _finish(fig: Any, path: Any, show: bool) -> Any:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def _model_of(fit: Any) -> GaussianMixture:
    if isinstance(fit, EMResult):
        return fit.model
    if isinstance(fit, GaussianMixture):
        return fit
    raise TypeError(
        f"fit must be an EMResult (from bayesgmm.fit_em) or a GaussianMixture; got "
        f"{type(fit).__name__}."
    )


def readable_dataset(ds: Any) -> Any:
    """``weights``, ``means`` and ``sds`` (component, feature) — the standard deviations, the
    scale users read — of a mixture Dataset, with its sample dims."""
    sds = np.sqrt(ds["covariances"].to_numpy().diagonal(axis1=-2, axis2=-1))
    out = ds[["weights", "means"]].copy()
    out["sds"] = (ds["means"].dims, sds)
    return out


def _aligned(source: Any, model: GaussianMixture) -> Any:
    """A posterior or bootstrap Dataset relabelled, draw by draw, to the EM components."""
    ds = posterior_dataset(source)
    arrays, _ = align_to(mixture_arrays(ds), model.means, model.covariances)
    out = mixture_dataset(*arrays, [str(f) for f in ds.coords["feature"].values])
    return out.assign_coords(chain=ds.coords["chain"].values, draw=ds.coords["draw"].values)


def _em_dataset(model: GaussianMixture, like: Any) -> Any:
    """The estimate broadcast to ``like``'s (chain, draw) shape, in EM's labels."""
    return broadcast_estimate(
        model.weights, model.means, model.covariances, like, feature_names(model)
    )


def _var_names(var_names: Any) -> list[str]:
    names = [var_names] if isinstance(var_names, str) else list(var_names)
    bad = [v for v in names if v not in READABLE]
    if bad or not names:
        raise ValueError(f"var_names must be a selection of {READABLE}; got {var_names!r}.")
    return names


def plot_forest(
    fit: EMResult | GaussianMixture,
    posterior: Any,
    *,
    bootstrap: Any = None,
    var_names: Any = READABLE,
    ci_prob: float = 0.94,
    standardise: bool = True,
    path: Any = None,
    show: bool = False,
) -> Any:
    """Forest plot, per parameter: the posterior's interval, the bootstrap's interval (when
    given) and the EM estimate, in the EM fit's labels (arviz-plots ``plot_forest``).

    With ``standardise`` (the default), every parameter is shown as standard errors from its
    EM estimate, (θ − θ_EM) / SE with SE the bootstrap's standard deviation (the posterior's
    without a bootstrap), so that parameters on scales that differ (Old Faithful's eruptions
    of 2–5 minutes, waits of 50–90) are all readable on one axis; the axis says so.
    ``standardise=False`` plots them in their own units."""
    import xarray as xr
    from arviz_plots import plot_forest as az_forest

    model = _model_of(fit)
    names = _var_names(var_names)
    post = readable_dataset(_aligned(posterior, model))
    trees = {"posterior": post}
    if bootstrap is not None:
        trees["bootstrap"] = readable_dataset(_aligned(bootstrap, model))
    trees["EM"] = readable_dataset(_em_dataset(model, post))
    scale_note = None
    if standardise:
        spread_source = "bootstrap" if bootstrap is not None else "posterior"
        em = trees["EM"][names].isel(chain=0, draw=0)
        se = trees[spread_source][names].std(("chain", "draw"))
        se = se.where(se > 0, 1.0)
        trees = {key: (ds[names] - em) / se for key, ds in trees.items()}
        scale_note = f"standard errors from the EM estimate ({spread_source} SE)"
    # arviz-plots joins the sources along a new "model" dim, padding unequal (chain, draw)
    # shapes with NaN, and then draws nothing for the padded source. The forest shows marginal
    # intervals only, so each source is given as the same number of its marginal quantiles.
    n = max(ds.sizes["chain"] * ds.sizes["draw"] for ds in trees.values())
    grid = (np.arange(n) + 0.5) / n
    pc = az_forest(
        {
            key: xr.DataTree.from_dict({"posterior": _as_quantiles(ds[names], grid)})
            for key, ds in trees.items()
        },
        combined=True,
        ci_probs=(0.5, ci_prob),
        backend="matplotlib",
    )
    pc.add_legend("model")
    figure = pc.viz["figure"].item()
    if scale_note is not None:
        figure.supxlabel(scale_note)
    return _finish(figure, path, show)


def _as_quantiles(ds: Any, grid: np.ndarray) -> Any:
    """Each variable's marginal quantiles at ``grid``, as one chain of ``grid.size`` draws."""
    q = ds.quantile(grid, dim=("chain", "draw")).rename(quantile="draw")
    return (
        q.assign_coords(draw=np.arange(grid.size))
        .expand_dims(chain=[0])
        .transpose("chain", "draw", ...)
    )


def plot_posterior(
    fit: EMResult | GaussianMixture,
    posterior: Any,
    *,
    bootstrap: Any = None,
    var_names: Any = ("weights", "means"),
    ci_prob: float = 0.94,
    path: Any = None,
    show: bool = False,
) -> Any:
    """Posterior densities (arviz-plots ``plot_dist``) in the EM fit's labels, with the EM
    estimate as a vertical line and, when given, the bootstrap's ``ci_prob`` interval as a band."""
    import xarray as xr
    from arviz_plots import add_bands, add_lines
    from arviz_plots import plot_dist as az_dist

    model = _model_of(fit)
    names = _var_names(var_names)
    post = readable_dataset(_aligned(posterior, model))[names]
    pc = az_dist(xr.DataTree.from_dict({"posterior": post}), ci_prob=ci_prob, backend="matplotlib")
    em = readable_dataset(_em_dataset(model, post.isel(chain=[0], draw=[0])))[names]
    add_lines(pc, em.isel(chain=0, draw=0, drop=True), visuals={"ref_line": {"color": "C3"}})
    if bootstrap is not None:
        boot = readable_dataset(_aligned(bootstrap, model))[names]
        tails = [(1 - ci_prob) / 2, (1 + ci_prob) / 2]
        bands = (
            boot.quantile(tails, dim=("chain", "draw"))
            .rename(quantile="band_dim")
            .expand_dims(ref_dim=[0])
        )
        add_bands(pc, bands, visuals={"ref_band": {"color": "C3", "alpha": 0.15}})
    return _finish(pc.viz["figure"].item(), path, show)


def plot_criteria(comparison: Any, *, path: Any = None, show: bool = False) -> Any:
    """Each criterion of :func:`bayesgmm.compare_k` against K, one panel each, the K it picks
    marked: BIC and ICL (smaller is better), the bootstrap test's p-values, ELPD-LOO ± SE and
    the SMC log marginal likelihood ± its spread across runs."""
    import matplotlib.pyplot as plt

    table = comparison.table
    panels = []
    if {"bic", "icl"} & set(table.columns):
        panels.append("em")
    for col, name in (("lrt_p", "lrt"), ("elpd_loo", "loo"), ("log_ml", "smc")):
        if col in table.columns and table[col].notna().any():
            panels.append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    ks = np.asarray(table.index, dtype=int)
    picks = comparison.choices
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "em":
            for col, marker in (("bic", "o"), ("icl", "s")):
                if col in table.columns:
                    ax.plot(ks, table[col], marker=marker, label=col.upper())
                    if col in picks:
                        ax.plot(picks[col], table.loc[picks[col], col], "k*", ms=14)
            ax.set_ylabel("criterion (smaller is better)")
            ax.legend()
            ax.set_title("EM: BIC and ICL")
        elif panel == "lrt":
            ax.plot(ks, table["lrt_p"], "o-")
            ax.axhline(0.05, color="grey", ls="--", lw=1)
            ax.set_ylabel("p-value of K vs K+1")
            ax.set_title("bootstrap LRT")
        elif panel == "loo":
            ax.errorbar(ks, table["elpd_loo"], yerr=table["se"], fmt="o-", capsize=3)
            bad = table["share_k_bad"] > 0
            ax.plot(
                ks[bad.to_numpy()], table.loc[bad, "elpd_loo"], "rx", ms=10, label="Pareto k > 0.7"
            )
            if bad.any():
                ax.legend()
            ax.set_ylabel("ELPD-LOO (larger is better)")
            ax.set_title("posterior: PSIS-LOO")
        else:
            yerr = table["log_ml_sd"] if "log_ml_sd" in table.columns else None
            ax.errorbar(ks, table["log_ml"], yerr=yerr, fmt="o-", capsize=3)
            ax.set_ylabel("log marginal likelihood")
            ax.set_title("SMC evidence")
        if panel in picks:
            col = {"lrt": "lrt_p", "loo": "elpd_loo", "smc": "log_ml"}[panel]
            ax.plot(picks[panel], table.loc[picks[panel], col], "k*", ms=14)
        ax.set_xlabel("K")
        ax.set_xticks(ks)
    fig.tight_layout()
    return _finish(fig, path, show)


def plot_bic(selection: Any, *, path: Any = None, show: bool = False) -> Any:
    """The criterion of every structure against K from :func:`bayesgmm.select_em` (mclust's BIC
    plot, in the textbook sign: smaller is better), the chosen cell starred."""
    import matplotlib.pyplot as plt

    table = selection.table
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = np.asarray(table.index, dtype=int)
    markers = "os^vD<>phH8*xP+"
    for i, structure in enumerate(table.columns):
        ax.plot(
            ks, table[structure], marker=markers[i % len(markers)], ms=4, lw=1, label=str(structure)
        )
    best = selection.best
    ax.plot(best.n_components, table.loc[best.n_components, best.covariance_type], "k*", ms=16)
    # The worst structures can sit far above the rest; the view keeps the best three quarters.
    values = table.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if values.size > 4:
        low, high = values.min(), np.percentile(values, 75)
        ax.set_ylim(low - 0.05 * (high - low), high)
    ax.set_xlabel("K")
    ax.set_xticks(ks)
    ax.set_ylabel(f"{selection.criterion.upper()} (smaller is better)")
    ax.legend(ncol=2, fontsize=8, loc="best")
    fig.tight_layout()
    return _finish(fig, path, show)


def _ellipse(ax: Any, mean: np.ndarray, cov: np.ndarray, color: Any, scales=(1.0, 2.0)) -> None:
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    for s in scales:
        width, height = 2 * s * np.sqrt(vals[::-1])
        ax.add_patch(
            Ellipse(
                (float(mean[0]), float(mean[1])),
                width,
                height,
                angle=angle,
                fill=False,
                color=color,
                lw=1.5,
                alpha=1.0 if s == scales[0] else 0.6,
            )
        )
    ax.plot(*mean, "+", color=color, ms=10, mew=2)


def _panel_2d(
    ax: Any,
    X: np.ndarray,
    model: GaussianMixture,
    i: int,
    j: int,
    labels: np.ndarray,
    uncertainty: np.ndarray,
) -> None:
    colors = [f"C{c % 10}" for c in labels]
    # mclust's uncertainty plot: the less certain the classification, the larger and darker.
    sizes = 6 + 60 * uncertainty / max(float(uncertainty.max()), 1e-12)
    ax.scatter(X[:, i], X[:, j], c=colors, s=sizes, alpha=0.6, linewidths=0)
    for k in range(model.n_components):
        sub = model.covariances[k][np.ix_([i, j], [i, j])]
        _ellipse(ax, model.means[k, [i, j]], sub, f"C{k % 10}")


def _panel_1d(ax: Any, x: np.ndarray, model: GaussianMixture, j: int, bins: Any) -> None:
    from scipy.stats import norm

    x = x[~np.isnan(x)]  # the feature's observed values
    ax.hist(x, bins=bins, density=True, color="0.8", edgecolor="white")
    grid = np.linspace(x.min() - 0.1 * np.ptp(x), x.max() + 0.1 * np.ptp(x), 400)
    total = np.zeros_like(grid)
    for k in range(model.n_components):
        dens = model.weights[k] * norm.pdf(
            grid, model.means[k, j], np.sqrt(model.covariances[k, j, j])
        )
        total += dens
        ax.plot(grid, dens, color=f"C{k % 10}", lw=1.5)
    ax.plot(grid, total, color="k", lw=2)


def plot_mixture(
    fit: EMResult | GaussianMixture,
    X: Any,
    *,
    features: Any = None,
    bins: Any = "auto",
    max_features: int = 6,
    path: Any = None,
    show: bool = False,
) -> Any:
    """The fitted mixture over the data.

    * One feature: the histogram with each weighted component density and their sum.
    * Two features: the points coloured by their MAP component, sized by their classification
      uncertainty 1 − max_k γ_nk (as mclust's uncertainty plot), with each component's 1- and
      2-sd covariance ellipses.
    * More: pairwise panels (scatter below the diagonal, marginal densities on it) over the first
      ``max_features`` features, or one panel for the chosen pair ``features=(a, b)`` (names or
      column indices).

    With missing values (NaN), each histogram shows the feature's observed values and a scatter
    panel the rows observed on both of its features.
    """
    import matplotlib.pyplot as plt

    model = _model_of(fit)
    arr, _ = as_data(X, allow_missing=True)  # a point with a missing coordinate is not drawn
    if arr.shape[1] != model.n_features:
        raise ValueError(
            f"X has {arr.shape[1]} features but the mixture has {model.n_features}; pass the "
            "data the fit was made on."
        )
    names = feature_names(model)
    resp = model.responsibilities(arr)
    labels, uncertainty = resp.argmax(axis=1), 1.0 - resp.max(axis=1)
    if features is not None:
        cols = [_feature_index(f, names) for f in features]
        if len(cols) not in (1, 2):
            raise ValueError(f"features must name one or two features; got {features!r}.")
    else:
        cols = list(range(min(arr.shape[1], max_features)))
    if len(cols) == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        _panel_1d(ax, arr[:, cols[0]], model, cols[0], bins)
        ax.set_xlabel(names[cols[0]])
        ax.set_ylabel("density")
    elif len(cols) == 2:
        fig, ax = plt.subplots(figsize=(6, 5))
        _panel_2d(ax, arr, model, cols[0], cols[1], labels, uncertainty)
        ax.set_xlabel(names[cols[0]])
        ax.set_ylabel(names[cols[1]])
    else:
        m = len(cols)
        fig, axes = plt.subplots(m, m, figsize=(2.4 * m, 2.4 * m), squeeze=False)
        for r, i in enumerate(cols):
            for c, j in enumerate(cols):
                ax = axes[r, c]
                if r == c:
                    _panel_1d(ax, arr[:, i], model, i, bins)
                elif r > c:
                    _panel_2d(ax, arr, model, j, i, labels, uncertainty)
                else:
                    ax.set_axis_off()
                if r == m - 1:
                    ax.set_xlabel(names[j])
                if c == 0 and r > 0:
                    ax.set_ylabel(names[i])
    title = f"{model.covariance_type}, K = {model.n_components}"
    fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path, show)


def _feature_index(f: Any, names: list[str]) -> int:
    if isinstance(f, int | np.integer) and not isinstance(f, bool):
        if not 0 <= f < len(names):
            raise ValueError(f"feature index {f} is out of range for {len(names)} features.")
        return int(f)
    if str(f) in names:
        return names.index(str(f))
    raise ValueError(f"features: {f!r} is not one of {names}; pass feature names or indices.")


def plot_dendrogram(
    tree: Any,
    k: int | None = None,
    *,
    max_leaves: int = 60,
    path: Any = None,
    show: bool = False,
) -> Any:
    """The top of a :func:`bayesgmm.hierarchical` tree (scipy's ``dendrogram`` of
    ``tree.to_scipy()``): beyond ``max_leaves`` rows only the last ``max_leaves`` merges are
    drawn, each leaf labelled with its cluster's size; with ``k``, the k clusters of the cut in
    colours (where the heights tie, scipy's colouring by height can show fewer)."""
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    L = tree.to_scipy()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    options: dict[str, Any] = {"ax": ax, "no_labels": tree.n_initial > max_leaves}
    if tree.n_initial > max_leaves:
        options.update(truncate_mode="lastp", p=max_leaves, show_contracted=True)
        options["no_labels"] = False
    if k is not None and 1 < k <= tree.n_initial:
        # a threshold between the heights of the merges that leave k clusters and k − 1
        h = L[:, 2]
        options["color_threshold"] = 0.5 * (h[-k] + h[-k + 1]) if k < tree.n_initial else h[0]
        ax.axhline(options["color_threshold"], color="0.4", lw=0.8, ls="--")
    else:
        options["color_threshold"] = 0.0
        options["above_threshold_color"] = "0.3"
    dendrogram(L, **options)
    if tree.linkage == "model":
        what = f"model-based, {tree.covariance_type}"
    else:
        what = f"{tree.linkage} linkage"
    title = f"Agglomerative clustering ({what}, {tree.use} coordinates, {tree.n_initial} rows)"
    if k is not None:
        title += f"; cut at {k}"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(
        "running maximum of the merge cost"
        if tree.linkage == "model" and tree.covariance_type in ("VVV", "VII")
        else "merge height"
    )
    fig.tight_layout()
    return _finish(fig, path, show)


def plot_partitions(
    X: Any,
    partitions: dict[str, Any],
    *,
    features: tuple[Any, Any] = (0, 1),
    path: Any = None,
    show: bool = False,
) -> Any:
    """Partitions of the same rows side by side (for example a tree's cut, EM's clusters and a
    known label), on two features, each panel titled with its adjusted Rand index against the
    first partition."""
    import matplotlib.pyplot as plt

    from bayesgmm.core.criteria import adjusted_rand_index

    arr, names = as_data(X)
    d = arr.shape[1]
    labels = [str(n) for n in names] if names is not None else [f"x{j}" for j in range(d)]
    i, j = (_feature_index(f, labels) for f in features)
    items = list(partitions.items())
    if not items:
        raise ValueError("partitions is empty; pass a mapping of names to label vectors.")
    ref = np.asarray(items[0][1])
    fig, axes = plt.subplots(1, len(items), figsize=(4 * len(items), 3.8), squeeze=False)
    for ax, (name, part) in zip(axes[0], items, strict=True):
        part = np.asarray(part)
        if part.shape != (arr.shape[0],):
            raise ValueError(
                f"partition {name!r} has shape {part.shape}; it needs one label per row "
                f"({arr.shape[0]},)."
            )
        _, codes = np.unique(part, return_inverse=True)
        ax.scatter(arr[:, i], arr[:, j], c=codes, cmap="tab10", s=10, vmin=0, vmax=9)
        ari = adjusted_rand_index(ref, part)
        ax.set_title(f"{name} (ARI with {items[0][0]}: {ari:.3f})", fontsize=9)
        ax.set_xlabel(labels[i])
        ax.set_ylabel(labels[j])
    fig.tight_layout()
    return _finish(fig, path, show)
