"""Weighted mean and covariance of the data in bounded memory (no N × D temporary)."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_cov"]

_ROWS = 65_536


def mean_cov(
    X: np.ndarray, w: np.ndarray | None = None, *, diagonal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean (D,) and covariance (D, D), or variances (D,) with ``diagonal``.

    The covariance divides by Σ w (the maximum-likelihood estimate). Deviations are taken about
    the mean, chunk by chunk, so that the result is as accurate as the two-pass formula.

    With missing values (NaN), each mean and variance is over that feature's observed values,
    and each covariance is that of the data with every NaN replaced by its column's mean (its
    deviation 0): positive semi-definite, shrunk towards 0 where values are missing (a scale
    for priors, standardising and degeneracy checks, not an estimate).
    """
    if np.isnan(X).any():
        return _mean_cov_missing(X, w, diagonal)
    n, d = X.shape
    total = float(n if w is None else w.sum())
    mean = (X.sum(axis=0) if w is None else w @ X) / total
    acc = np.zeros(d if diagonal else (d, d))
    for lo in range(0, n, _ROWS):
        dev = X[lo : lo + _ROWS] - mean
        wdev = dev if w is None else dev * w[lo : lo + _ROWS, None]
        acc += np.einsum("ij,ij->j", wdev, dev) if diagonal else wdev.T @ dev
    return mean, acc / total


def _mean_cov_missing(
    X: np.ndarray, w: np.ndarray | None, diagonal: bool
) -> tuple[np.ndarray, np.ndarray]:
    observed = ~np.isnan(X)
    ww = np.ones(X.shape[0]) if w is None else w
    per_col = ww @ observed
    mean = (ww @ np.where(observed, X, 0.0)) / per_col
    dev = np.where(observed, X - mean, 0.0)
    var = (ww @ (dev * dev)) / per_col
    if diagonal:
        return mean, var
    cov = (dev * ww[:, None]).T @ dev / float(ww.sum())
    np.fill_diagonal(cov, var)  # ≥ the filled data's variances: still positive semi-definite
    return mean, cov
