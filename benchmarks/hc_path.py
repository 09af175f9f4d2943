"""EM from the hierarchical start: where the accelerated fit ends against plain EM's optimum.

mclust's EM, from its hierarchical start, climbs to one optimum of each cell; ours from the same
start (``fit_em``'s default) runs SQUAREM, whose extrapolated steps can leap into another basin.
For every cell (structure × K = 2..9) of the public R data sets of ``select_vs_mclust.py``'s
panels (the main 25 and the extra 31, up to ``--max-rows`` rows), this runs plain EM from the
hierarchical start (``accelerate=False``, up to 20,000 iterations) and ``fit_em`` as users call
it, and counts the cells where the fit ends at plain EM's optimum (within 0.01 + 1e-6 relative
in the log-likelihood), higher, lower, or degenerate, among the cells where plain EM ends valid.
``--plain-steps N`` sets the plain EM steps the hierarchical start's run takes before its first
extrapolation (``bayesgmm.core._loop.PLAIN_FIRST_ITER``, 5; 0 extrapolates from the first
cycle on).
Needs ``Rscript`` for the data.

    uv run python benchmarks/hc_path.py
    uv run python benchmarks/hc_path.py --plain-steps 0
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

import bayesgmm as bg
from bayesgmm.core import _loop

sys.path.insert(0, str(Path(__file__).parent))
from select_vs_mclust import PANEL, PANEL_EXTRA, r_data

STRUCTURES = ["EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV",
              "VEV", "EVV", "VVV"]  # fmt: skip


def cell(X: np.ndarray, structure: str, k: int) -> tuple[float | None, float | None]:
    """Plain EM's log-likelihood from the hierarchical start and ``fit_em``'s (None where the
    fit is degenerate or cannot start)."""
    out: list[float | None] = []
    for accelerate in (False, True):
        try:
            fit = bg.fit_em(
                X, k, covariance_type=structure, accelerate=accelerate,
                max_iter=1000 if accelerate else 20_000,
            )  # fmt: skip
        except ValueError:
            out.append(None)
            continue
        out.append(None if fit.degenerate else float(fit.loglik))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain-steps", type=int, default=_loop.PLAIN_FIRST_ITER)
    parser.add_argument("--max-rows", type=int, default=1200)
    args = parser.parse_args()
    _loop.PLAIN_FIRST_ITER = args.plain_steps
    counts = {"same": 0, "higher": 0, "lower": 0, "degenerate": 0}
    lower: list[tuple[float, str]] = []
    for name, expression in {**PANEL, **PANEL_EXTRA}.items():
        X = r_data(expression).to_numpy(dtype=float)
        if X.shape[0] > args.max_rows:
            continue
        structures = ["E", "V"] if X.shape[1] == 1 else STRUCTURES
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for structure in structures:
                for k in range(2, 10):
                    plain, fast = cell(X, structure, k)
                    if plain is None:
                        continue
                    if fast is None:
                        counts["degenerate"] += 1
                    elif abs(fast - plain) <= 0.01 + 1e-6 * abs(plain):
                        counts["same"] += 1
                    elif fast > plain:
                        counts["higher"] += 1
                    else:
                        counts["lower"] += 1
                        lower.append((fast - plain, f"{name} {structure},{k}"))
        print(f"{name:<18} {X.shape[0]:>5} × {X.shape[1]:<2} {counts}", flush=True)
    total = sum(counts.values())
    print(f"\nplain steps first: {args.plain_steps}; cells where plain EM ends valid: {total}")
    print(", ".join(f"{key} {value}" for key, value in counts.items()))
    print("lowest:", "; ".join(f"{what} {gap:.2f}" for gap, what in sorted(lower)[:8]))


if __name__ == "__main__":
    main()
