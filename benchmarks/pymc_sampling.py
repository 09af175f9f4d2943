"""The posterior by NUTS: bayesgmm's model against the plain hand-written ``pm.Mixture`` model,
same data, same run, for PyMC's NUTS and nutpie; then issue 4's recovery checks.

Data: three separated 2-D clusters (N = 500 by default) from a known mixture. For each sampler
and model it prints the compile (and initialisation) time and the sampling time separately, the
smallest bulk ESS over the weights, means and component standard deviations, ESS per second of
sampling, the divergences, the largest r_hat, and the gradient evaluations of the kept draws
with the sampling time per gradient (about half the sampling is tuning, so that figure takes
the kept draws' gradients twice: a rough cost per gradient, comparable between the models).
The hand-written model is the one of PyMC's examples on the data's scale: Dirichlet weights,
Normal(x̄, 10 s) means, per-component ``LKJCholeskyCov`` with Exponential(1 / s) scales,
``pm.Mixture`` of ``MvNormal``s, PyMC's default initialisation; it does not identify the
labels, so its r_hat shows label switching across chains (and its ESS, hence ESS/s, is that
of a sampler stuck in one labelling per chain: compare the sampling times and the cost per
gradient for speed).

The recovery section (our model, PyMC NUTS, 4 chains × 1000 draws after 1000 tuning steps,
started from EM) checks: no divergences, r_hat < 1.01 and bulk ESS > 400 for every weight,
mean and standard deviation, the true values inside the 94% intervals (components matched to
the truth by the ordering), and the posterior of z (``explicit_z=True``) against EM's
responsibilities.

    uv run --extra nutpie python benchmarks/pymc_sampling.py              # everything
    uv run python benchmarks/pymc_sampling.py --only recovery
    uv run python benchmarks/pymc_sampling.py --only compare --samplers nuts --draws 500
    uv run --extra nutpie python benchmarks/pymc_sampling.py --only compare --faithful

Timings depend on the machine and on PyTensor's compile cache (the first run compiles, later
runs reuse it); run twice and read the second.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

import bayesgmm as bg
from bayesgmm.core.model import GaussianMixture

TRUTH = GaussianMixture(
    np.array([0.25, 0.35, 0.40]),
    np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]),
    np.array(
        [
            [[1.0, 0.3], [0.3, 0.8]],
            [[0.6, -0.2], [-0.2, 1.2]],
            [[1.5, 0.0], [0.0, 0.5]],
        ]
    ),
)


def data(n: int, seed: int) -> np.ndarray:
    X, _ = TRUTH.sample(n, rng=seed)
    return X


def hand_written(X: np.ndarray, k: int) -> Any:
    import pymc as pm

    d = X.shape[1]
    with pm.Model() as model:
        w = pm.Dirichlet("weights", a=np.ones(k))
        # PyMC's example priors, on the data's scale (Old Faithful's waiting times are in the
        # tens: a Normal(0, 10) prior on the means would sit 5 sds away from them).
        loc, scale = X.mean(axis=0), X.std(axis=0)
        mu = pm.Normal("means", loc, 10.0 * scale, shape=(k, d))
        chols = [
            pm.LKJCholeskyCov(
                f"chol_{j}",
                n=d,
                eta=2.0,
                sd_dist=pm.Exponential.dist(1.0 / scale, shape=d),
                compute_corr=True,
            )[0]
            for j in range(k)
        ]
        cov = pm.math.stack([c @ c.T for c in chols])
        pm.Deterministic("covariances", cov)
        comps = [pm.MvNormal.dist(mu=mu[j], chol=chols[j]) for j in range(k)]
        pm.Mixture("x", w=w, comp_dists=comps, observed=X)
    return model


def scalars(post: Any, reference: GaussianMixture | None = None) -> dict[str, np.ndarray]:
    """weights, means and component sds as (chain, draw, m) arrays; with a ``reference``,
    each draw's components relabelled to it first (the assignment fit_bayes's
    identify="relabel" uses)."""
    from bayesgmm.core.relabel import match_components, take_components

    w = post["weights"].values
    mu = post["means"].values
    cov = post["covariances"].values
    if reference is not None:
        perms = match_components(mu, cov, reference.means, reference.covariances)
        w, mu, cov = (take_components(v, perms) for v in (w, mu, cov))
    c, s = w.shape[:2]
    sd = np.sqrt(np.einsum("...kii->...ki", cov)).reshape(c, s, -1)
    return {"weights": w, "means": mu.reshape(c, s, -1), "sds": sd}


def diagnostics(post: Any, reference: GaussianMixture | None = None) -> tuple[float, float]:
    """(smallest bulk ESS, largest r_hat) over the weights, means and sds (relabelled to
    ``reference`` first, when given)."""
    import xarray as xr
    from arviz_stats import ess, rhat

    ds = xr.Dataset(
        {
            name: (("chain", "draw", f"{name}_dim"), v)
            for name, v in scalars(post, reference).items()
        }
    )
    e, r = ess(ds, method="bulk"), rhat(ds)
    return (
        min(float(e[v].min()) for v in e.data_vars),
        max(float(r[v].max()) for v in r.data_vars),
    )


def run_pymc(model: Any, draws: int, tune: int, chains: int, seed: int, **kw: Any) -> dict:
    import pymc as pm

    t0 = time.perf_counter()
    tree = pm.sample(
        draws=draws,
        tune=tune,
        chains=chains,
        model=model,
        random_seed=seed,
        progressbar=False,
        compute_convergence_checks=False,
        nuts_sampler="pymc",  # PyMC would pick nutpie by itself when it is installed
        # One process per chain up to the CPUs, as fit_bayes runs its chains (PyMC's own
        # default counts half the CPUs: one process on a 2-CPU machine).
        cores=max(1, min(chains, os.cpu_count() or 1)),
        **kw,
    )
    total = time.perf_counter() - t0
    sampling = float(tree["sample_stats"].attrs.get("sampling_time", np.nan))
    return {
        "tree": tree,
        "compile": total - sampling,
        "sampling": sampling,
        "divergences": int(tree["sample_stats"]["diverging"].sum()),
    }


def run_nutpie(model: Any, draws: int, tune: int, chains: int, seed: int) -> dict:
    import nutpie

    t0 = time.perf_counter()
    compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    tree = nutpie.sample(
        compiled, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=False
    )
    return {
        "tree": tree,
        "compile": compile_s,
        "sampling": time.perf_counter() - t1,
        "divergences": int(tree["sample_stats"]["diverging"].sum()),
    }


def compare(X: np.ndarray, samplers: list[str], draws: int, tune: int, chains: int) -> None:
    print(f"\n== NUTS on {X.shape[0]} rows, K = 3, {chains} chains × {draws} draws ({tune} tune)")
    header = (
        f"{'sampler':8} {'model':12} {'compile s':>9} {'sample s':>9} {'min ESS':>8} "
        f"{'ESS/s':>7} {'ESS/s+c':>7} {'diverg.':>7} {'max rhat':>8} {'grads':>8} {'µs/grad':>8} "
        f"{'ESS relab.':>10}"
    )
    print(header)
    fit = bg.fit_em(X, 3)
    rows = {}
    for sampler in samplers:
        for label in ("bayesgmm", "hand-written"):
            if label == "bayesgmm":
                t0 = time.perf_counter()
                tree = bg.fit_bayes(
                    X, 3, method=sampler, init=fit, draws=draws, tune=tune, chains=chains, rng=1
                )
                total = time.perf_counter() - t0
                stats = tree["sample_stats"].attrs
                if sampler == "nuts":
                    sampling = float(stats.get("sampling_time", np.nan))
                    compile_s = total - sampling
                else:
                    compile_s = float(stats["compile_seconds"])
                    sampling = tree.attrs["bayesgmm_seconds"] - compile_s
                res = {
                    "tree": tree,
                    "compile": compile_s,
                    "sampling": sampling,
                    "divergences": int(tree["sample_stats"]["diverging"].sum()),
                }
            elif sampler == "nuts":
                res = run_pymc(hand_written(X, 3), draws, tune, chains, seed=1)
            else:
                res = run_nutpie(hand_written(X, 3), draws, tune, chains, seed=1)
            min_ess, max_rhat = diagnostics(res["tree"]["posterior"])
            total = res["compile"] + res["sampling"]
            rows[sampler, label] = min_ess / total
            # The same draws relabelled to EM's estimate: the hand-written model's chains sit
            # in different labellings, which its ESS above measures more than its mixing.
            relabelled = diagnostics(res["tree"]["posterior"], fit.model)[0]
            rows[sampler, label, "relabelled"] = relabelled / total
            # Gradient evaluations of the kept draws (tuning excluded): cost per gradient
            # separates the model's arithmetic from the sampler's trajectory lengths.
            grads = int(res["tree"]["sample_stats"]["n_steps"].sum())
            print(
                f"{sampler:8} {label:12} {res['compile']:9.1f} {res['sampling']:9.1f} "
                f"{min_ess:8.0f} {min_ess / res['sampling']:7.1f} {min_ess / total:7.1f} "
                f"{res['divergences']:7d} "
                f"{max_rhat:8.3f} {grads:8d} {1e6 * res['sampling'] / (2 * grads):8.1f} "
                f"{relabelled:10.0f}"
            )
        ratio = rows[sampler, "bayesgmm"] / rows[sampler, "hand-written"]
        relabelled_ratio = (
            rows[sampler, "bayesgmm", "relabelled"] / rows[sampler, "hand-written", "relabelled"]
        )
        print(
            f"{sampler}: ESS/s (compile included) ratio bayesgmm / hand-written = {ratio:.2f}; "
            f"both relabelled to EM's estimate: {relabelled_ratio:.2f}"
        )


def recovery(X: np.ndarray, draws: int, tune: int, chains: int) -> None:
    print(f"\n== Recovery: {X.shape[0]} rows, NUTS {chains} × {draws} ({tune} tune), from EM")
    fit = bg.fit_em(X, 3)
    t0 = time.perf_counter()
    tree = bg.fit_bayes(
        X, 3, method="nuts", init=fit, draws=draws, tune=tune, chains=chains, rng=2,
        explicit_z=True,
    )  # fmt: skip
    print(f"wall {time.perf_counter() - t0:.1f} s")
    post = tree["posterior"]
    divergences = int(tree["sample_stats"]["diverging"].sum())
    min_ess, max_rhat = diagnostics(post)
    print(f"divergences {divergences}; max r_hat {max_rhat:.4f}; min bulk ESS {min_ess:.0f}")
    # The truth's components in the posterior's order: the model orders components along the
    # leading principal axis, so match each posterior component to the nearest true mean.
    from scipy.optimize import linear_sum_assignment

    post_means = post["means"].mean(("chain", "draw")).values
    cost = ((post_means[:, None, :] - TRUTH.means[None, :, :]) ** 2).sum(-1)
    _, order = linear_sum_assignment(cost)
    truth = {
        "weights": TRUTH.weights[order],
        "means": TRUTH.means[order].ravel(),
        "sds": np.sqrt(np.einsum("kii->ki", TRUTH.covariances[order])).ravel(),
    }
    inside, total = 0, 0
    for name, draws_ in scalars(post).items():
        flat = draws_.reshape(-1, draws_.shape[-1])
        lo, hi = np.quantile(flat, [0.03, 0.97], axis=0)
        ok = (truth[name] >= lo) & (truth[name] <= hi)
        inside += int(ok.sum())
        total += ok.size
        for i in np.flatnonzero(~ok):
            print(
                f"  outside: {name}[{i}] true {truth[name][i]:.3f}, 94% [{lo[i]:.3f}, {hi[i]:.3f}]"
            )
    print(f"true values inside the 94% intervals: {inside} of {total}")
    z = bg.bayes.z_probabilities(tree).values
    diff = np.abs(z - tree["em"]["responsibilities"].values).max()
    print(f"explicit z: max |P(z | x) − EM responsibilities| = {diff:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--samplers", default="nuts,nutpie")
    parser.add_argument("--only", choices=("compare", "recovery"))
    parser.add_argument(
        "--faithful", action="store_true", help="compare on Old Faithful (issue 12's floor)"
    )
    args = parser.parse_args()
    X = bg.datasets.load_faithful().to_numpy() if args.faithful else data(args.n, args.seed)
    if args.only in (None, "compare"):
        compare(X, args.samplers.split(","), args.draws, args.tune, args.chains)
    if args.only in (None, "recovery"):
        recovery(X, args.draws, args.tune, args.chains)


if __name__ == "__main__":
    main()
