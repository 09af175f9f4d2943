"""EM with missing values against EM on the same data complete: the cost of one iteration.

Simulates N rows (default 10⁵) of D = 10 features from a K = 5 VVV mixture, removes a share of
the cells completely at random (default 20%: about 11% of the rows stay complete, the rest
fall into hundreds of missingness patterns), and times EM iterations of ``fit_em`` (VVV, plain
EM, ``tol=0``) from the same mixture on the complete data and on the data with holes. One
iteration is (time of 1 + ``--iters`` iterations − time of 1) / ``--iters``, so that the start,
the final E-step and the result's assembly cancel; the best of ``--repeat`` runs. Prints both
and the ratio (issue 14's floor: at most 3).

    uv run python benchmarks/missing_values.py
    uv run python benchmarks/missing_values.py --n 20000 --share 0.3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayesgmm as bg
from bayesgmm.core._missing import missingness


def _simulate(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, bg.GaussianMixture]:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) * 0.3 + np.eye(d)
    truth = bg.GaussianMixture(np.full(k, 1.0 / k), means, a @ np.swapaxes(a, 1, 2))
    x, _ = truth.sample(n, rng=rng)
    return x, truth


def _per_iteration(x: np.ndarray, start: bg.GaussianMixture, iters: int, repeat: int) -> float:
    def run(m: int) -> float:
        t0 = time.perf_counter()
        bg.fit_em(x, start.n_components, init=start, max_iter=m, tol=0, accelerate=False)
        return time.perf_counter() - t0

    one = min(run(1) for _ in range(repeat))
    many = min(run(1 + iters) for _ in range(repeat))
    return (many - one) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    x, truth = _simulate(args.n, args.d, args.k, 0)
    holes = x.copy()
    holes[np.random.default_rng(1).random(x.shape) < args.share] = np.nan
    empty = np.isnan(holes).all(axis=1)
    holes[empty, 0] = x[empty, 0]
    miss = missingness(holes)
    n_patterns = 0 if miss is None else len(miss.patterns)
    n_complete = x.shape[0] if miss is None else miss.complete.size
    print(
        f"N = {args.n}, D = {args.d}, K = {args.k}, VVV; {args.share:.0%} of cells missing: "
        f"{n_complete} complete rows, {n_patterns} patterns of missingness"
    )
    full = _per_iteration(x, truth, args.iters, args.repeat)
    gaps = _per_iteration(holes, truth, args.iters, args.repeat)
    print(f"one EM iteration, complete data:      {1e3 * full:8.1f} ms")
    print(f"one EM iteration, with missing values: {1e3 * gaps:8.1f} ms")
    print(f"ratio: {gaps / full:.2f} (floor: at most 3)")


if __name__ == "__main__":
    main()
