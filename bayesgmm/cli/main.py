"""``bayesgmm`` command: ``bayesgmm demo`` runs the pipeline built so far on Old Faithful.

The command has no statistics of its own: it calls the library and prints what it returns.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import bayesgmm as bg

    X = bg.datasets.load_faithful()
    print(
        f"Old Faithful: {X.shape[0]} eruptions × {X.shape[1]} features ({', '.join(X.columns)}).",
        flush=True,
    )
    start = time.perf_counter()
    sel = bg.select_em(X, n_components=range(1, args.max_k + 1), rng=args.seed)
    elapsed = time.perf_counter() - start
    print()
    print(sel)
    if sel.failures:
        print()
        for (structure, k), reason in sel.failures.items():
            print(f"  {structure},{k}: {reason}")
    best = sel.best
    model = best.model
    print()
    print(f"Chosen model: {best.covariance_type} with K = {best.n_components} components")
    print(
        f"  loglik = {best.loglik:.3f}, {best.n_parameters} parameters, BIC = {best.bic:.2f}, "
        f"ICL = {best.icl:.2f} (mclust prints −BIC = {-best.bic:.2f})"
    )
    names = model.feature_names or tuple(f"x{j}" for j in range(model.n_features))
    with np.printoptions(precision=4, suppress=True):
        for k in range(model.n_components):
            sd = np.sqrt(np.diag(model.covariances[k]))
            corr = model.covariances[k] / np.outer(sd, sd)
            print(f"  component {k}: weight {model.weights[k]:.4f}")
            print(
                f"    mean  {dict(zip(names, np.round(model.means[k], 4).tolist(), strict=True))}"
            )
            print(f"    sd    {dict(zip(names, np.round(sd, 4).tolist(), strict=True))}")
            if model.n_features > 1:
                print(
                    f"    corr  {np.round(corr[np.triu_indices(model.n_features, 1)], 4).tolist()}"
                )
    print()
    print(f"Fitted {len(sel.results)} (structure, K) cells in {elapsed:.1f} s.")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayesgmm",
        description="Gaussian mixture models: EM with mclust's covariance structures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="select a mixture for the bundled Old Faithful data by BIC",
        description=(
            "Fit Old Faithful over K = 1..9 and every covariance structure, print the BIC table "
            "(rows K, columns structure; smaller is better) and the chosen model.\n\n"
            "example: bayesgmm demo --max-k 6"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--max-k", type=int, default=9, help="largest K to try (default 9)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random restarts")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "max_k", 1) < 1:
        parser.error(f"--max-k must be at least 1; got {args.max_k}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
