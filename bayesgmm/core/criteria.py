"""Information criteria, in the textbook sign: smaller is better.

mclust reports BIC and ICL with the opposite sign (``2 loglik − p log n``, larger is better); the
numbers are the same up to that sign.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aic", "bic", "icl"]


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
    top = resp.max(axis=1)
    logs = np.log(np.maximum(top, np.finfo(float).tiny))
    ent = float(logs.sum() if sample_weight is None else sample_weight @ logs)
    return bic(loglik, n_parameters, n_obs) - 2.0 * ent
