"""Simulation-based calibration (SBC) of fit_bayes's posteriors: NUTS (nutpie), Laplace, ADVI.

For each simulation: θ from the prior, data from the model given θ (N rows), the posterior
from the EM estimate of those data, and the rank of each test quantity's true value among L
posterior draws (thinned). If the posterior is right, every rank is uniform on 0..L (Talts et
al. 2018); a sampler that is too narrow gives a U, too wide a hump, biased a slope.

The prior is the model's default (``Priors()``) with its data-scaled constants (centre, spread,
ordering axis, shape location) fixed once, from a reference data set, for every simulation:
SBC needs one prior for all data sets, so these constants are not recomputed from each
simulated data set as ``fit_bayes`` does. The components are identified by the ordered model
(means increasing along the ordering axis), so the quantities below are label-invariant:

* ``a0``, ``a1``: the standardised means projected on the ordering axis (in order);
* ``w0``: the weight of the first component in that order;
* ``logdet0``, ``logdet1``: log det Σ_k;
* ``logp_c``, ``logp_f``: the mixture's log density at two fixed points (the reference centre,
  and 2 spreads along the axis from it);
* ``loglik``: the log-likelihood of the simulated data (data-dependent, as Modrák et al. 2023
  recommend: it detects errors the parameters alone miss).

Uniformity of each rank is tested two ways: a χ² test on 10 equal bins, and the ECDF of the
fractional ranks against the simultaneous 99% band of a uniform ECDF (by Monte Carlo over
uniform rank sets), which is the ECDF-PIT test of Säilynoja, Bürkner and Vehtari (2022). The
script prints a table per structure and method and writes ECDF-difference plots.

    uv run --extra nutpie python benchmarks/sbc.py                        # VVV and VEI, K = 2
    uv run --extra nutpie python benchmarks/sbc.py --sims 50 --methods laplace
    uv run --extra nutpie python benchmarks/sbc.py --plots docs/images    # the docs' figures

NUTS is nutpie (2 chains × 5L draws after 500 tuning steps, thinned to L; compiled once);
Laplace and ADVI give L independent draws. Per simulation on the 2-core machine: see the
figures the script prints (docs/bayes.md has a run's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

import bayesgmm as bg
from bayesgmm.bayes import _compiled
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.fit import _advi, _Flat, _laplace, _nutpie, _Run
from bayesgmm.bayes.model import mixture_theta
from bayesgmm.bayes.structures import Parametrisation, parametrisation
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior

QUANTITIES = ("a0", "a1", "w0", "logdet0", "logdet1", "logp_c", "logp_f", "loglik")


def reference_constants(param: Parametrisation, k: int, seed: int) -> dict[str, np.ndarray]:
    """The prior's data-scaled constants, from a reference data set (N(0, diag(4, 1, ...)))."""
    rng = np.random.default_rng(seed)
    d = param.d
    ref = rng.normal(size=(1000, d)) * np.sqrt(np.linspace(4.0, 1.0, d))
    return param.constants(ref, k, None)


def mixtures(param: Parametrisation, c: dict, k: int, theta: np.ndarray) -> dict[str, np.ndarray]:
    """weights (S, K), means (S, K, D), covariances (S, K, D, D) for theta (S, P)."""
    out = evaluate(param, theta, k, np.zeros((0, param.d)), c, grad=False)
    return {name: out[name] for name in ("weights", "means", "covariances")}


def quantities(
    c: dict[str, np.ndarray],
    w: np.ndarray,
    mu: np.ndarray,
    cov: np.ndarray,
    X: np.ndarray,
) -> np.ndarray:
    """The test quantities (S, Q) of mixtures given as (S, ...) arrays (components in order)."""
    a = ((mu - c["center"]) / c["spread"]) @ c["axis"]
    _, logdet = np.linalg.slogdet(cov)
    points = np.stack([c["center"], c["center"] + 2.0 * c["spread"] * c["axis"]])
    logp = np.stack(
        [
            GaussianMixture(w[s], mu[s], cov[s]).log_prob(np.vstack([points, X]))
            for s in range(w.shape[0])
        ]
    )
    return np.column_stack(
        [a[:, 0], a[:, 1], w[:, 0], logdet[:, 0], logdet[:, 1], logp[:, 0], logp[:, 1],
         logp[:, 2:].sum(axis=1)]
    )  # fmt: skip


def in_order(c: dict[str, np.ndarray], m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each draw's components sorted along the ordering axis (the ordered model's labels)."""
    a = ((m["means"] - c["center"]) / c["spread"]) @ c["axis"]
    order = np.argsort(a, axis=1, kind="stable")
    return {name: np.take_along_axis(v, order.reshape(order.shape + (1,) * (v.ndim - 2)), 1)
            for name, v in m.items()}  # fmt: skip


def em_start(X: np.ndarray, k: int, structure: str, seed: int) -> tuple[GaussianMixture, bool]:
    """EM's estimate from the data alone (5 starts); where plain EM degenerates (a component
    on one or two points), MAP-EM under mclust's conjugate prior. Returns (start, fell back).

    One data set at a time, not batched with the other simulations': 13 ms a simulation at
    N = 200 (VVV and VEI, K = 2), against seconds for NUTS, so a batch would save under 1% of
    a run; and fit_em's restarts (short round, set-aside runs) batch on shared data only."""
    try:
        return bg.fit_em(X, k, covariance_type=structure, n_init=5, rng=seed).model, False
    except Exception:
        fit = bg.fit_em(X, k, covariance_type=structure, n_init=5, rng=seed, prior=ConjugatePrior())
        return fit.model, True


def simulate(param: Parametrisation, c: dict, k: int, n: int, rng: np.random.Generator) -> Any:
    theta = param.sample_prior(c, k, rng, 1)
    m = mixtures(param, c, k, theta)
    truth = GaussianMixture(m["weights"][0], m["means"][0], m["covariances"][0])
    X, _ = truth.sample(n, rng=rng)
    return m, X


def run(
    structure: str,
    methods: list[str],
    sims: int,
    k: int,
    n: int,
    ndraws: int,
    tune: int,
    seed: int,
    nuts_options: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Ranks (sims, Q) per method, in 0..ndraws."""
    d = 2
    param = parametrisation(structure, d, identify="ordered")
    free = parametrisation(structure, d, identify=None)
    c = reference_constants(param, k, seed)
    rng = np.random.default_rng(seed)
    ranks = {m: np.full((sims, len(QUANTITIES)), -1) for m in methods}
    failed = dict.fromkeys(methods, 0)
    seconds = dict.fromkeys(methods, 0.0)
    fallbacks = 0
    divergent = 0
    coords = {"component": np.arange(k), "feature": ["x0", "x1"], "feature_bis": ["x0", "x1"]}
    for i in range(sims):
        m, X = simulate(param, c, k, n, rng)
        true_q = quantities(c, m["weights"], m["means"], m["covariances"], X)[0]
        start, fell = em_start(X, k, structure, seed + i)
        fallbacks += fell
        for method in methods:
            t0 = time.perf_counter()
            if method == "nuts":
                # As fit_bayes does: the free-label model, its draws put in order afterwards
                # (the ordered model's hard boundary a_0 < a_1 would split one mode in two).
                entry = _compiled.model_for(free, c, X, k, structure, None)
                x0 = mixture_theta(free, c, start)
                starts = [{"theta": x0 + 0.01 * rng.normal(size=x0.size)} for _ in range(2)]
                run_ = _Run(5 * ndraws, tune, 2, seed + i, False, dict(nuts_options))
                tree = _nutpie(entry, starts, run_)
                theta = tree["posterior"]["theta"].values.reshape(-1, x0.size)
                divergent += int(tree["sample_stats"]["diverging"].sum() > 0)
                post = in_order(c, mixtures(free, c, k, theta[:: len(theta) // ndraws][:ndraws]))
            else:
                flat = _Flat(param, c, X, k, start, coords)
                if method == "laplace":
                    try:
                        tree = _laplace(flat, ndraws, 1, np.random.default_rng(seed + i))
                    except ValueError:  # no positive definite Hessian at the mode
                        failed[method] += 1
                        continue
                    p = tree["posterior"]
                else:
                    entry = _compiled.model_for(param, c, X, k, structure, None)
                    run_ = _Run(ndraws, 0, 1, seed + i, False, {})
                    tree = _advi(entry, {"theta": flat.x0}, "advi", run_)
                    p = flat.tree(tree["posterior"]["theta"].values, None, "advi")["posterior"]
                post = {
                    name: p[name].values.reshape(ndraws, *p[name].shape[2:])
                    for name in ("weights", "means", "covariances")
                }
            seconds[method] += time.perf_counter() - t0
            q = quantities(c, post["weights"], post["means"], post["covariances"], X)
            ranks[method][i] = (q < true_q).sum(axis=0)
        if (i + 1) % 25 == 0:
            print(f"  {structure}: {i + 1}/{sims} simulations", flush=True)
    for method in methods:
        print(
            f"  {structure} {method}: {seconds[method] / sims:.2f} s per simulation; "
            f"failed on {failed[method]} data sets (left out of its ranks)"
        )
    print(
        f"  {structure}: EM fell back to MAP-EM on {fallbacks} of {sims} data sets; NUTS had "
        f"a divergence in {divergent} of {sims} fits"
    )
    return ranks


def ecdf_band(sims: int, ndraws: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """The simultaneous ``level`` band's half-width per grid point, for the ECDF of ``sims``
    uniform ranks on 0..ndraws (Monte Carlo: the quantile of the largest standardised
    deviation over the grid)."""
    grid = (np.arange(ndraws + 1) + 1) / (ndraws + 1)
    u = rng.integers(0, ndraws + 1, size=(4000, sims))
    ecdf = (u[:, :, None] < np.arange(1, ndraws + 2)[None, None, :]).mean(axis=1)
    sd = np.sqrt(grid * (1 - grid) / sims)
    sd[-1] = 1.0  # the last point is always exact
    z = np.abs(ecdf - grid) / sd
    return np.quantile(z.max(axis=1), level) * sd


def uniformity(r: np.ndarray, ndraws: int, band: np.ndarray) -> tuple[float, bool]:
    """(χ² p-value on 10 bins, ECDF inside the simultaneous band)."""
    bins = np.minimum((r * 10) // (ndraws + 1), 9)
    p = stats.chisquare(np.bincount(bins, minlength=10)).pvalue
    grid = (np.arange(ndraws + 1) + 1) / (ndraws + 1)
    ecdf = (r[:, None] < np.arange(1, ndraws + 2)[None, :]).mean(axis=0)
    return float(p), bool(np.all(np.abs(ecdf - grid) <= band + 1e-12))


def plot(all_ranks: dict, ndraws: int, bands: dict[int, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = (np.arange(ndraws + 1) + 1) / (ndraws + 1)
    for (structure, method), ranks in all_ranks.items():
        band = bands[len(ranks)]
        fig, axes = plt.subplots(2, 4, figsize=(12, 5), sharex=True, sharey=True)
        for j, ax in enumerate(axes.ravel()):
            ecdf = (ranks[:, j, None] < np.arange(1, ndraws + 2)[None, :]).mean(axis=0)
            # (the last point, rank ≤ L, is 1 for every ECDF: left out)
            ax.fill_between(grid[:-1], -band[:-1], band[:-1], color="0.85", step="post")
            ax.step(grid[:-1], (ecdf - grid)[:-1], where="post", color="C0")
            ax.axhline(0, color="0.5", lw=0.5)
            ax.set_title(QUANTITIES[j], fontsize=9)
        fig.suptitle(
            f"SBC, {structure}, K = 2, D = 2, {method}: ECDF − uniform of the fractional ranks "
            f"({ranks.shape[0]} simulations; grey: simultaneous 99% band)",
            fontsize=10,
        )
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"sbc_{structure}_{method}.png", dpi=90)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structures", default="VVV,VEI")
    parser.add_argument("--methods", default="nuts,laplace,advi")
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--draws", type=int, default=99, help="L: posterior draws per rank")
    parser.add_argument("--tune", type=int, default=500, help="NUTS tuning steps per chain")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--nuts-options", default="{}", help="nutpie.sample options, JSON")
    parser.add_argument("--plots", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None, help="write the ranks (.npz)")
    parser.add_argument("--load", type=Path, default=None, help="read ranks saved before")
    args = parser.parse_args()
    methods = args.methods.split(",")
    all_ranks = {}
    if args.load is not None:
        with np.load(args.load) as saved:
            all_ranks = {tuple(name.split("_")): saved[name] for name in saved.files}
    else:
        for structure in args.structures.split(","):
            ranks = run(
                structure,
                methods,
                args.sims,
                2,
                args.n,
                args.draws,
                args.tune,
                args.seed,
                json.loads(args.nuts_options),
            )
            for method in methods:
                all_ranks[structure, method] = ranks[method]
    if args.save is not None:
        np.savez(args.save, **{f"{s}_{m}": r for (s, m), r in all_ranks.items()})
    sims = max(len(r) for r in all_ranks.values())
    print(f"\n== SBC, K = 2, D = 2, N = {args.n}, {sims} simulations, L = {args.draws}")
    print(f"{'structure':9} {'method':8} " + " ".join(f"{q:>9}" for q in QUANTITIES))
    bands = {}
    for key, ranks in list(all_ranks.items()):
        all_ranks[key] = ranks = ranks[ranks[:, 0] >= 0]
        if len(ranks) not in bands:
            bands[len(ranks)] = ecdf_band(len(ranks), args.draws, 0.99, np.random.default_rng(1))
    for (structure, method), ranks in all_ranks.items():
        cells = []
        for j in range(len(QUANTITIES)):
            p, inside = uniformity(ranks[:, j], args.draws, bands[len(ranks)])
            cells.append(f"{p:8.3f}{'' if inside else '*'}")
        print(f"{structure:9} {method:8} " + " ".join(f"{c:>9}" for c in cells))
    print("χ² p-values on 10 bins; * the ECDF leaves the simultaneous 99% band (rejects).")
    if args.plots is not None:
        plot(all_ranks, args.draws, bands, args.plots)
        print(f"plots in {args.plots}")


if __name__ == "__main__":
    main()
