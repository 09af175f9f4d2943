"""Every posterior checked, in one place: :func:`diagnose` reads a :func:`fit_bayes` tree and
says which of its method's diagnostics pass; :func:`reweight` turns a borderline
approximation (0.5 < k̂ ≤ 0.7) into importance-resampled draws.

The checks, by method (limits in :data:`LIMITS`):

* approximations (``laplace``, ``pathfinder``, ``advi``, ``fullrank_advi``): PSIS's Pareto k̂
  of the importance ratios p(θ | x) / q(θ) (Vehtari et al. 2024): ≤ 0.5 the draws are good,
  0.5–0.7 usable after :func:`reweight`, above 0.7 not to be trusted for tails or intervals;
* NUTS (``nuts``, ``nutpie``): rank-normalised split r̂ (≤ 1.01), bulk and tail ESS (at least
  100 per chain), divergent transitions (none), E-BFMI per chain (≥ 0.3), and the share of
  transitions that hit the maximum tree depth (under 1%), over the weights, means and
  covariances;
* SMC: the spread (sd) of the log marginal likelihood across chains (≤ 1 nat);
* NUTS with several chains: the modes the chains settled in (:func:`find_modes`; one passes),
  with each mode's share by stacking;
* every method: how far the posterior sits from the EM estimate it started from: the largest
  distance between a chain's mean of a component's mean and EM's, in the Mahalanobis metric
  of EM's component (its own standard deviations; ≤ 1: a posterior around EM's solution moves
  a mean by about σ_k/√n_k), and whether the components still match EM's in order (the
  posterior means' matching to EM's components,
  :func:`bayesgmm.core.relabel.match_components`, is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LIMITS",
    "Diagnosis",
    "diagnose",
    "find_modes",
    "prior_sensitivity",
    "reweight",
    "select_mode",
]

#: The limit of each check (pass: at most, except ess_* and ebfmi: at least).
LIMITS = {
    "pareto_k": 0.7,
    "rhat": 1.01,
    "ess_bulk": 100.0,  # per chain
    "ess_tail": 100.0,  # per chain
    "divergences": 0.0,
    "ebfmi": 0.3,
    "max_treedepth": 0.01,
    "log_ml_sd": 1.0,
    "em_gap": 1.0,
    "labels_match": 1.0,
    "modes": 1.0,
}
_AT_LEAST = {"ess_bulk", "ess_tail", "ebfmi", "labels_match"}

APPROXIMATIONS = ("laplace", "pathfinder", "advi", "fullrank_advi")
SAMPLERS = ("nuts", "nutpie")


@dataclass(frozen=True, repr=False)
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes
    ----------
    method : str
        The method that drew the posterior.
    table : pandas.DataFrame
        One row per check (index): ``value``, ``limit``, ``passed`` and ``meaning`` (in words).
    """

    method: str
    table: Any

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return bool(self.table["passed"].all())

    @property
    def failures(self) -> list[str]:
        """One line in words per failed check."""
        return [str(r.meaning) for r in self.table.itertuples() if not r.passed]

    def summary(self) -> str:
        """One line: the method, and what passed or failed."""
        ok = [str(i) for i, r in self.table.iterrows() if r["passed"]]
        if self.passed:
            return f"{self.method}: every diagnostic passed ({', '.join(ok)})."
        return f"{self.method}: failed — " + "; ".join(self.failures) + "."

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 140, "display.max_colwidth", 90):
            body = self.table.to_string(float_format=lambda v: f"{v:.4g}")
        state = "passed" if self.passed else "FAILED"
        return f"Diagnosis({self.method}: {state})\n{body}"


def diagnose(tree: Any) -> Diagnosis:
    """The diagnostics of a :func:`bayesgmm.fit_bayes` posterior (module docstring): a
    :class:`Diagnosis` with one row per check, whether it passed, and what it means."""
    import pandas as pd

    _check_tree(tree)
    method = str(tree.attrs.get("bayesgmm_method", ""))
    rows: dict[str, dict[str, Any]] = {}
    stats = tree["sample_stats"] if "sample_stats" in tree.children else None
    if method in APPROXIMATIONS:
        k_hat = stats.attrs.get("pareto_k") if stats is not None else None
        if k_hat is not None:
            _row(rows, "pareto_k", float(k_hat), _pareto_meaning(float(k_hat)))
    elif method in SAMPLERS:
        _sampler_rows(tree, rows)
        if stats is not None and "n_modes" in stats.attrs:
            n = int(stats.attrs["n_modes"])
            shares = ", ".join(f"{v:.2f}" for v in np.ravel(stats.attrs["mode_shares"]))
            _row(
                rows,
                "modes",
                float(n),
                "the chains agree on one mode"
                if n == 1
                else f"the chains settled in {n} modes (shares by stacking: {shares}): the "
                "posterior is multimodal, and summaries pooled over chains average across "
                "modes (bayesgmm.bayes.select_mode takes one)",
            )
    elif method == "smc" and stats is not None and "log_marginal_likelihood_sd" in stats.attrs:
        sd = float(stats.attrs["log_marginal_likelihood_sd"])
        _row(
            rows,
            "log_ml_sd",
            sd,
            f"the log marginal likelihood varies by {sd:.2f} (sd) across SMC's chains"
            + (" > 1 nat: too few draws for the evidence to be read" if sd > 1 else ""),
        )
    if "em" in tree.children:
        _em_rows(tree, rows)
    table = pd.DataFrame.from_dict(
        rows, orient="index", columns=["value", "limit", "passed", "meaning"]
    )
    table.index.name = "check"
    return Diagnosis(method, table)


def _check_tree(tree: Any) -> None:
    """A clear error for anything that is not a fit_bayes posterior."""
    children = getattr(tree, "children", None)
    if children is None or "posterior" not in children or "means" not in tree["posterior"]:
        raise TypeError(
            "tree must be the DataTree of a posterior from bayesgmm.fit_bayes (a posterior "
            f"group with weights, means and covariances); got {type(tree).__name__}"
            + (f" with groups {sorted(children)}" if children is not None else "")
            + ". An EM fit's tree (to_datatree) has no posterior to diagnose."
        )


def _mahalanobis(diff: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """|diff_k| in the metric of covs_k: diff (..., K, D), covs (K, D, D) → (..., K)."""
    z = np.linalg.solve(np.linalg.cholesky(covs), diff[..., None])[..., 0]
    return np.sqrt((z**2).sum(axis=-1))


def _row(rows: dict[str, dict[str, Any]], name: str, value: float, meaning: str) -> None:
    limit = LIMITS[name]
    passed = bool(np.isfinite(value)) and (value >= limit if name in _AT_LEAST else value <= limit)
    rows[name] = {"value": value, "limit": limit, "passed": passed, "meaning": meaning}


def _pareto_meaning(k_hat: float) -> str:
    if k_hat <= 0.5:
        return f"Pareto k̂ {k_hat:.2f} ≤ 0.5: the approximation's draws are good"
    if k_hat <= 0.7:
        return (
            f"Pareto k̂ {k_hat:.2f} in (0.5, 0.7]: usable after importance reweighting "
            "(bayesgmm.bayes.reweight)"
        )
    return (
        f"the Pareto k̂ of its importance ratios p(θ | x) / q(θ) is {k_hat:.2f} > 0.7: its "
        "draws cannot be trusted for tails and intervals"
    )


def _sampler_rows(tree: Any, rows: dict[str, dict[str, Any]]) -> None:
    import warnings

    from arviz_stats import bfmi, ess, rhat

    post = tree["posterior"]
    names = [n for n in ("weights", "means", "covariances") if n in post.data_vars]
    chains = int(post.sizes["chain"])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        r = rhat(tree, var_names=names)
        bulk = ess(tree, var_names=names, method="bulk")
        tail = ess(tree, var_names=names, method="tail")

    def extreme(ds: Any, fn: Any) -> float:
        vals = np.concatenate([np.ravel(ds[n].values) for n in names])
        vals = vals[np.isfinite(vals)]
        return float(fn(vals)) if vals.size else np.nan

    # Constant entries (a diagonal structure's zero covariances) have no r̂ or ESS.
    r_max = extreme(r, np.max) if chains > 1 else np.nan
    if chains > 1:
        _row(
            rows,
            "rhat",
            r_max,
            f"r̂ reaches {r_max:.3f}"
            + (
                " > 1.01: the chains disagree (too short, or several modes)" if r_max > 1.01 else ""
            ),
        )
    for name, ds in (("ess_bulk", bulk), ("ess_tail", tail)):
        v = extreme(ds, np.min) / chains
        what = "bulk" if name == "ess_bulk" else "tail"
        _row(
            rows,
            name,
            v,
            f"the smallest {what} ESS is {v:.0f} per chain"
            + (" < 100: too few effective draws (draw more)" if v < 100 else ""),
        )
    stats = tree["sample_stats"]
    if "diverging" in stats.data_vars:
        n_div = float(np.asarray(stats["diverging"].values, dtype=bool).sum())
        _row(
            rows,
            "divergences",
            n_div,
            f"{n_div:.0f} divergent transitions"
            + (
                ": the sampler missed part of the posterior (raise target_accept, or the "
                "posterior has regions it cannot reach)"
                if n_div
                else ""
            ),
        )
    if "energy" in stats.data_vars:
        ebfmi = float(np.min(bfmi(tree)["energy"].values))
        _row(
            rows,
            "ebfmi",
            ebfmi,
            f"the lowest E-BFMI over chains is {ebfmi:.2f}"
            + (" < 0.3: the momentum resampling explores the energy poorly" if ebfmi < 0.3 else ""),
        )
    depth = next(
        (stats[n] for n in ("reached_max_treedepth", "maxdepth_reached") if n in stats.data_vars),
        None,
    )
    if depth is not None:
        share = float(np.asarray(depth.values, dtype=bool).mean())
        _row(
            rows,
            "max_treedepth",
            share,
            f"{100 * share:.1f}% of transitions hit the maximum tree depth"
            + (
                " (over 1%: slow exploration, often a badly scaled posterior)"
                if share > 0.01
                else ""
            ),
        )


def mixture_distance(means_a: np.ndarray, means_b: np.ndarray, covs_a: np.ndarray) -> float:
    """The largest distance between matched component means of two mixtures (K, D), in the
    Mahalanobis metric of ``covs_a`` (the first mixture's components' own sds), after
    matching b's components to a's (:func:`bayesgmm.core.relabel.match_components`)."""
    from bayesgmm.core.relabel import match_components

    covs_b = np.broadcast_to(covs_a, covs_a.shape)
    perm = match_components(means_b[None], covs_b[None], means_a, covs_a)[0]
    return float(_mahalanobis(means_b[perm] - means_a, covs_a).max())


def find_modes(tree: Any) -> list[list[int]]:
    """The chains grouped by the mode they settled in: two chains share a mode when their
    means of the component means lie within one of EM's component standard deviations of each
    other (the ``em_gap`` metric; components matched), joined transitively. One group when
    every chain agrees."""
    _check_tree(tree)
    post = tree["posterior"]
    means = post["means"].transpose("chain", "draw", "component", "feature").values.mean(axis=1)
    covs = tree["em"]["covariances"].values[0, 0]
    n = means.shape[0]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if mixture_distance(means[i], means[j], covs) <= LIMITS["em_gap"]:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def select_mode(tree: Any, mode: int) -> Any:
    """The posterior restricted to the chains of one mode (``sample_stats.mode``), every group
    with a chain dimension cut the same way: a mode's own summaries, never averaged with
    another's."""
    stats = tree["sample_stats"]
    if "mode" not in stats.data_vars:
        raise ValueError(
            "tree has no modes (sample_stats.mode): fit_bayes finds them for method='nuts' or "
            "'nutpie' with chains ≥ 2."
        )
    chains = np.flatnonzero(stats["mode"].values == mode)
    if chains.size == 0:
        n = int(stats["mode"].values.max()) + 1
        raise ValueError(f"mode must be one of 0..{n - 1}; got {mode!r}.")
    out = tree.copy()
    for name, child in tree.children.items():
        if "chain" in child.dims and name != "em":
            out[name] = child.isel(chain=chains)
    out.attrs = {**tree.attrs, "bayesgmm_mode": int(mode)}
    return out


def label_modes(tree: Any) -> None:
    """Find the chains' modes (:func:`find_modes`) and write them into ``sample_stats``:
    ``mode`` (chain), and in the attrs ``n_modes`` and ``mode_shares`` (stacking weights of
    the modes on their pointwise log-likelihood, Yao et al. 2022; equal to the modes' shares
    of chains without a ``log_likelihood`` group)."""
    import warnings

    import xarray as xr

    groups = find_modes(tree)
    n_chains = int(tree["posterior"].sizes["chain"])
    mode = np.empty(n_chains, dtype=np.int64)
    for m, chains in enumerate(groups):
        mode[chains] = m
    shares = [len(g) / n_chains for g in groups]
    if len(groups) > 1 and "log_likelihood" in tree.children:
        from arviz_stats import compare, loo

        sub = {}
        for m, chains in enumerate(groups):
            part = xr.DataTree()
            for name in ("posterior", "log_likelihood"):
                part[name] = tree[name].isel(chain=chains)
            sub[f"mode {m}"] = part
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = compare({name: loo(part) for name, part in sub.items()}, round_to="none")
        shares = [float(table.loc[f"mode {m}", "weight"]) for m in range(len(groups))]
    stats = tree["sample_stats"].to_dataset()
    stats["mode"] = (("chain",), mode)
    stats.attrs["n_modes"] = len(groups)
    stats.attrs["mode_shares"] = shares
    tree["sample_stats"] = xr.DataTree(stats)


def _em_rows(tree: Any, rows: dict[str, dict[str, Any]]) -> None:
    from bayesgmm.core.relabel import match_components

    post, em = tree["posterior"], tree["em"]
    if "means" in post.data_vars and "covariances" in em.data_vars:
        # Each chain's mean of each component's mean, in the Mahalanobis metric of EM's own
        # component: how far the posterior moved it, in that component's standard deviations.
        chain_means = post["means"].transpose("chain", "draw", "component", "feature").values
        chain_means = chain_means.mean(axis=1)  # (chain, K, D)
        diff = chain_means - em["means"].values[0, 0]
        g = float(_mahalanobis(diff, em["covariances"].values[0, 0]).max())
        _row(
            rows,
            "em_gap",
            g,
            f"the posterior's component means sit up to {g:.2f} of EM's component standard "
            "deviations from the EM estimate it started from"
            + (
                " (> 1: it describes another mode, a solution EM's estimate is not)"
                if g > LIMITS["em_gap"]
                else ""
            ),
        )
    if (
        "means" in post.data_vars
        and "covariances" in post.data_vars
        and post.sizes.get("component", 1) > 1
    ):
        means = post["means"].mean(("chain", "draw")).values
        covs = post["covariances"].mean(("chain", "draw")).values
        perm = match_components(
            means[None], covs[None], em["means"].values[0, 0], em["covariances"].values[0, 0]
        )[0]
        same = bool(np.array_equal(perm, np.arange(perm.size)))
        _row(
            rows,
            "labels_match",
            float(same),
            "the posterior's components match EM's in order"
            if same
            else "the posterior's components no longer match EM's in order (label switching, "
            "or another mode)",
        )


def reweight(tree: Any, *, rng: Any = None) -> Any:
    """Importance-resampled draws of an approximation whose check is borderline
    (0.5 < k̂ ≤ 0.7): its draws, resampled with their Pareto-smoothed weights
    (``sample_stats.log_weight``), as one chain; the log-likelihood and log-prior groups
    follow.

    Raises
    ------
    ValueError
        When the tree has no importance weights (not a Laplace, ADVI or full-rank ADVI
        posterior; Pathfinder's draws are resampled already), or when k̂ > 0.7: then no
        reweighting makes the draws trustworthy (use method='nuts').
    """
    import xarray as xr

    from bayesgmm.core._validation import as_rng

    stats = tree["sample_stats"] if "sample_stats" in tree.children else None
    if stats is None or "log_weight" not in stats.data_vars:
        raise ValueError(
            "tree has no importance weights (sample_stats.log_weight): reweight takes a "
            "posterior from method='laplace', 'advi' or 'fullrank_advi'."
        )
    k_hat = float(stats.attrs.get("pareto_k", np.inf))
    if k_hat > LIMITS["pareto_k"]:
        raise ValueError(
            f"the approximation's Pareto k̂ is {k_hat:.2f} > 0.7: importance weights with "
            "(nearly) infinite variance, which no reweighting rescues; use method='nuts'."
        )
    log_w = stats["log_weight"].transpose("chain", "draw").values.ravel()
    checked = np.flatnonzero(np.isfinite(log_w))
    w = np.exp(log_w[checked] - log_w[checked].max())
    gen = as_rng(rng)
    idx = checked[gen.choice(checked.size, size=checked.size, replace=True, p=w / w.sum())]
    out = tree.copy()
    for group in ("posterior", "log_likelihood", "log_prior"):
        if group not in tree.children:
            continue
        ds = tree[group].to_dataset()
        flat = ds.stack(sample=("chain", "draw")).isel(sample=idx)
        flat = flat.drop_vars(["sample", "chain", "draw"], errors="ignore")
        new = flat.rename_dims(sample="draw").expand_dims(chain=1).transpose("chain", "draw", ...)
        new = new.assign_coords(chain=[0], draw=np.arange(idx.size))
        new.attrs = {**ds.attrs, "bayesgmm_reweighted": f"PSIS resampling, k̂ = {k_hat:.2f}"}
        out[group] = xr.DataTree(new)
    # The per-draw statistics belong to the draws before resampling: only their attrs (the
    # Pareto k̂ among them) stay.
    out["sample_stats"] = xr.DataTree(xr.Dataset(attrs=dict(stats.attrs)))
    out.attrs = {**tree.attrs, "bayesgmm_reweighted": 1}
    return out


def prior_sensitivity(tree: Any) -> Any:
    """Power-scaling sensitivity of the posterior to the prior and to the likelihood
    (Kallioinen et al. 2023; ``arviz_stats.psense_summary``), one row per parameter family
    (weights, means, covariances): the largest sensitivity over the family's entries, and
    the diagnosis ("prior-data conflict", "strong prior / weak likelihood", or "✓") of its
    worst entry. The prior scaled is the one stated on theta, Jacobians included (the
    ``log_prior`` group that :func:`bayesgmm.fit_bayes` writes with the log-likelihood).
    Sensitivities above 0.05 are flagged, as arviz-stats does."""
    import warnings

    import pandas as pd
    from arviz_stats import psense_summary

    if "log_prior" not in tree.children or "log_likelihood" not in tree.children:
        raise ValueError(
            "tree has no log_prior or log_likelihood group: draw the posterior with "
            "fit_bayes(..., log_likelihood=True) (the default)."
        )
    import xarray as xr

    names = [n for n in ("weights", "means", "covariances") if n in tree["posterior"].data_vars]
    # psense_summary stacks its two results along a dimension it calls "component": ours is
    # renamed in a light copy of the three groups it reads.
    light = xr.DataTree()
    light["posterior"] = xr.DataTree(
        tree["posterior"].to_dataset()[names].rename({"component": "k"})
    )
    light["log_prior"] = tree["log_prior"]
    light["log_likelihood"] = tree["log_likelihood"]
    import logging

    log = logging.getLogger("arviz_stats.psense")  # it logs a pointer to its docs
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            table = psense_summary(light, var_names=names, round_to=6)
    finally:
        log.setLevel(level)
    rows = {}
    for name in names:
        part = table[[str(i).split("[")[0] == name for i in table.index]]
        # Constant entries (one component's weight, a diagonal's zero covariances) have none.
        part = part[np.isfinite(part["prior"].astype(float))]
        if part.empty:
            continue
        worst = part["prior"].astype(float).idxmax()
        flagged = part[part["diagnosis"] != "✓"]
        rows[name] = {
            "prior": float(part["prior"].astype(float).max()),
            "likelihood": float(part["likelihood"].astype(float).max()),
            "diagnosis": str(flagged["diagnosis"].iloc[0]) if len(flagged) else "✓",
            "most_sensitive": str(worst),
            "n_flagged": len(flagged),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "family"
    return out
