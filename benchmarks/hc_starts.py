"""Which hierarchical start reaches EM's best optimum how often (bayesgmm.hierarchical).

For each bundled data set, every covariance structure and K = 2..6, EM runs once from each
start: mclust's (init="hc": the model-based VVV tree, quantile classes for one feature), the
model-based EII tree ("hc:eii", Ward's criterion), scipy's Ward, average, complete and single
linkages, and one k-means++ seeding. A start "reaches the best" in a cell when its
log-likelihood is within 1e-6 (relative) of the best any start, or the default select_em, found
there; degenerate fits do not count. Prints, per data set, the share of cells each start
reaches.

    uv run python benchmarks/hc_starts.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np

import bayesgmm as bg
from bayesgmm.core.structures import structure_names

STARTS = ("hc", "hc:eii", "hc:ward", "hc:average", "hc:complete", "hc:single", "kmeans++")


def main() -> None:
    sets = {
        "faithful": bg.datasets.load_faithful(),
        "iris": bg.datasets.load_iris().select_dtypes("number"),
        "galaxies": bg.datasets.load_galaxies(),
    }
    ks = range(2, 7)
    for name, X in sets.items():
        t0 = time.perf_counter()
        arr = X.to_numpy()
        structures = structure_names(arr.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = bg.select_em(X, ks, structures)
            trees = {s: s for s in STARTS}
            for s in STARTS[1:-1]:  # each tree built once per data set
                if s == "hc:eii":
                    trees[s] = bg.hierarchical(arr, covariance_type="EII")
                else:
                    trees[s] = bg.hierarchical(arr, s[3:])
            reached = dict.fromkeys(STARTS, 0)
            cells = 0
            for structure in structures:
                for k in ks:
                    lls = {}
                    for s in STARTS:
                        try:
                            fit = bg.fit_em(arr, k, covariance_type=structure, init=trees[s], rng=0)
                        except ValueError:
                            continue
                        if not fit.degenerate:
                            lls[s] = fit.loglik
                    ref = sel.results.get((structure, k))
                    best = max(
                        [
                            *lls.values(),
                            ref.loglik if ref is not None and not ref.degenerate else -np.inf,
                        ]
                    )
                    if not np.isfinite(best):
                        continue
                    cells += 1
                    for s, ll in lls.items():
                        reached[s] += ll >= best - 1e-6 * abs(best)
        shares = "  ".join(f"{s} {reached[s] / cells:.2f}" for s in STARTS)
        print(f"{name} ({cells} cells, {time.perf_counter() - t0:.0f} s): {shares}")


if __name__ == "__main__":
    main()
