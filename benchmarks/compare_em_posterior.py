"""EM against the posterior, and the choice of K by every criterion: issue 5's checks.

1. Three simulated 2-D clusters (N = 500 by default; centres (0, 0), (5, 0), (0, 5), unit
   covariances, weights 0.3, 0.3, 0.4): ``compare_k`` over K = 1..5 with BIC, ICL and LOO (NUTS,
   4 chains × 1000 draws by default) and the K each picks; raw ELPD's argmax beside LOO's
   parsimonious choice; at K = 3, whether the EM estimate lies in the posterior's 94% interval
   for every weight and mean, and the ratio bootstrap SE / posterior sd of every mean
   (``bootstrap_em``, 999 nonparametric replicates) with the time the bootstrap took (and with
   ``n_jobs=2``).
2. Galaxies (``../shared/reference/galaxies.csv``, velocities / 1000, mclust's univariate V
   model): BIC's and LOO's choice for K = 1..7 with the Pareto-k diagnostics (optionally SMC's
   log evidence with ``--smc``).

    uv run python benchmarks/compare_em_posterior.py
    uv run python benchmarks/compare_em_posterior.py --only galaxies --smc
    uv run python benchmarks/compare_em_posterior.py --method laplace --draws 500   # quick

Times depend on the machine and on PyTensor's compile cache; run twice, read the second.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayesgmm as bg

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def three_clusters(args: argparse.Namespace) -> None:
    truth = bg.GaussianMixture(
        [0.3, 0.3, 0.4], [[0, 0], [5, 0], [0, 5]], np.array([np.eye(2)] * 3), covariance_type="VVV"
    )
    X, _ = truth.sample(args.n, rng=args.seed)
    t0 = time.perf_counter()
    cmp = bg.compare_k(
        X,
        range(1, 6),
        methods=("bic", "icl", "loo"),
        bayes_method=args.method,
        draws=args.draws,
        tune=args.draws,
        chains=args.chains,
        rng=args.seed,
        progressbar=args.progress,
    )
    print(
        f"\n== three clusters, N = {args.n}: compare_k over K = 1..5 ({args.method}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    print(cmp)
    raw = int(cmp.table["elpd_loo"].idxmax())
    print(f"raw ELPD-LOO argmax: K = {raw}; LOO with the parsimony rule: K = {cmp.choices['loo']}")
    k3 = cmp.table.loc[[3, 4]]
    print(
        f"ELPD K=3 {k3.loc[3, 'elpd_loo']:.2f}, K=4 {k3.loc[4, 'elpd_loo']:.2f}; "
        f"K=4 − K=3 = {k3.loc[4, 'elpd_loo'] - k3.loc[3, 'elpd_loo']:.2f}"
    )

    fit, post = cmp.fits[3], cmp.posteriors[3]
    t0 = time.perf_counter()
    boot = bg.bootstrap_em(fit, X, n_boot=args.n_boot, rng=args.seed)
    t_boot = time.perf_counter() - t0
    t0 = time.perf_counter()
    bg.bootstrap_em(fit, X, n_boot=args.n_boot, rng=args.seed, n_jobs=2)
    t_boot2 = time.perf_counter() - t0
    print(
        f"\nbootstrap_em: {args.n_boot} replicates in {t_boot:.1f} s (one process), "
        f"{t_boot2:.1f} s (n_jobs=2); failed: {boot.attrs['n_failed']}"
    )
    tab = bg.compare_estimates(fit, post, bootstrap=boot)
    print(tab.round(3).to_string())
    print("alignment:", tab.attrs["alignment"])
    wm = tab[tab["parameter"].isin(["weight", "mean"])]
    print(
        f"EM inside the posterior 94% interval: {int(wm['em_in_interval'].sum())} of "
        f"{len(wm)} weights and means"
    )
    means = tab[tab["parameter"] == "mean"]
    ratio = means["boot_se"] / means["post_sd"]
    print(f"bootstrap SE / posterior sd of the means: min {ratio.min():.3f}, max {ratio.max():.3f}")


def galaxies(args: argparse.Namespace) -> None:
    path = SHARED / "galaxies.csv"
    if not path.exists():
        print(f"skipping galaxies: {path} not found")
        return
    frame = pd.read_csv(path)
    x = frame.select_dtypes("number").iloc[:, -1].to_numpy() / 1000
    methods = ("bic", "icl", "loo") + (("smc",) if args.smc else ())
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.DegenerateFitWarning)
        cmp = bg.compare_k(
            x,
            range(1, 8),
            covariance_type="V",
            methods=methods,
            bayes_method=args.method,
            draws=args.draws,
            tune=args.draws,
            chains=args.chains,
            smc_draws=args.draws,
            rng=args.seed,
            progressbar=args.progress,
        )
    print(
        f"\n== galaxies (N = {x.size}, V): compare_k over K = 1..7 in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(cmp)
    if cmp.failures:
        print("failures:", cmp.failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["three", "galaxies"])
    parser.add_argument("--method", default="nuts")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n-boot", type=int, default=999)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smc", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.only in (None, "three"):
        three_clusters(args)
    if args.only in (None, "galaxies"):
        galaxies(args)


if __name__ == "__main__":
    main()
