"""Information criteria, in the textbook sign: smaller is better.

mclust reports BIC and ICL with the opposite sign (``2 loglik − p log n``, larger is better); the
numbers are the same up to that sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["adjusted_rand_index", "aic", "bic", "icl"]

#: From this many rows, ICL's entropy term is one compiled sweep (when loaded), not numpy's.
ICL_COMPILED_ROWS = 10_000


def bic(loglik: float, n_parameters: int, n_obs: float) -> float:
    """Bayesian information criterion −2 ℓ + p log n (Schwarz 1978)."""
    return float(-2.0 * loglik + n_parameters * np.log(n_obs))


def aic(loglik: float, n_parameters: int) -> float:
    """Akaike information criterion −2 ℓ + 2p."""
    return float(-2.0 * loglik + 2.0 * n_parameters)


def icl(
    loglik: float,
    n_parameters: int,
    n_obs: float,
    resp: np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> float:
    """Integrated completed likelihood as mclust (Biernacki et al. 2000):
    BIC − 2 Σ_n w_n log γ_{n, MAP(n)}, the BIC penalised by the entropy of the hard assignment."""
    from bayesgmm.core import _compiled

    if (
        resp.shape[0] >= ICL_COMPILED_ROWS
        and resp.dtype == np.float64
        and resp.flags.c_contiguous
        and _compiled.ready(stage="pass")
    ):
        w = np.empty(0) if sample_weight is None else np.ascontiguousarray(sample_weight, float)
        ent = float(_compiled.log_map_sum(resp, w))
    else:
        top = resp.max(axis=1)
        logs = np.log(np.maximum(top, np.finfo(float).tiny))
        ent = float(logs.sum() if sample_weight is None else sample_weight @ logs)
    return bic(loglik, n_parameters, n_obs) - 2.0 * ent


def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index of two partitions of the same rows (Hubert & Arabie 1985; mclust's
    ``adjustedRandIndex``): 1 for the same partition up to renaming, about 0 for independent
    ones. Labels may be any hashable values (species names, component numbers)."""
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"labels_a and labels_b must be 1-D and of the same length; got shapes {a.shape} "
            f"and {b.shape}."
        )
    if a.size < 2:
        raise ValueError(f"the adjusted Rand index needs at least 2 rows; got {a.size}.")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1.0)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = a.size * (a.size - 1) / 2
    expected = rows * cols / total
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one class each, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)
