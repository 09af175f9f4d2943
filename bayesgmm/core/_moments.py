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
    """
    n, d = X.shape
    total = float(n if w is None else w.sum())
    mean = (X.sum(axis=0) if w is None else w @ X) / total
    acc = np.zeros(d if diagonal else (d, d))
    for lo in range(0, n, _ROWS):
        dev = X[lo : lo + _ROWS] - mean
        wdev = dev if w is None else dev * w[lo : lo + _ROWS, None]
        acc += np.einsum("ij,ij->j", wdev, dev) if diagonal else wdev.T @ dev
    return mean, acc / total
