"""Matching the components of one mixture (or of many draws) to a reference mixture.

A mixture's labels are arbitrary: two fits of the same data, a bootstrap replicate and the
estimate, or a posterior draw and EM can name the same cluster differently. Components are
matched by the symmetrised Kullback–Leibler divergence between their Gaussians, which is
invariant to the units of each feature and tells apart components that share a mean but not a
spread; the assignment minimising the total divergence is scipy's ``linear_sum_assignment``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["component_divergence", "match_components", "take_components"]


def component_divergence(
    means: np.ndarray,
    covariances: np.ndarray,
    ref_means: np.ndarray,
    ref_covariances: np.ndarray,
) -> np.ndarray:
    """Symmetrised KL divergence between every component and every reference component.

    Parameters
    ----------
    means : (..., K, D), covariances : (..., K, D, D)
        The mixtures to match; any leading dimensions (draws, replicates).
    ref_means : (K, D), ref_covariances : (K, D, D)

    Returns
    -------
    (..., K, K) array: ``[..., j, k]`` is KL(j‖k) + KL(k‖j) between component j and reference
    component k (twice Jeffreys' divergence's half, so 0 only for identical Gaussians).
    """
    means = np.asarray(means, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    d = means.shape[-1]
    inv = np.linalg.inv(covariances)  # (..., K, D, D): D is small, this is a matching cost
    ref_inv = np.linalg.inv(ref_covariances)  # (K, D, D)
    # tr(Σ_ref_k⁻¹ Σ_j) and tr(Σ_j⁻¹ Σ_ref_k), for every pair (j, k)
    tr_a = np.einsum("kab,...jba->...jk", ref_inv, covariances)
    tr_b = np.einsum("...jab,kba->...jk", inv, ref_covariances)
    diff = means[..., :, None, :] - ref_means[None, :, :]  # (..., K, K, D)
    precision = inv[..., :, None, :, :] + ref_inv[None, :, :, :]
    quad = np.einsum("...a,...ab,...b->...", diff, precision, diff)
    return 0.5 * (tr_a + tr_b + quad) - d


def match_components(
    means: np.ndarray,
    covariances: np.ndarray,
    ref_means: np.ndarray,
    ref_covariances: np.ndarray,
) -> np.ndarray:
    """The relabelling of each mixture that best matches the reference.

    Returns ``perms`` of shape (..., K): reference component k corresponds to component
    ``perms[..., k]``, so ``means[..., perms, :]`` (taken along the component axis) is in the
    reference's labels.
    """
    from scipy.optimize import linear_sum_assignment

    cost = component_divergence(means, covariances, ref_means, ref_covariances)
    k = cost.shape[-1]
    flat = cost.reshape(-1, k, k)
    perms = np.empty((flat.shape[0], k), dtype=np.int64)
    for i, c in enumerate(flat):
        rows, cols = linear_sum_assignment(np.nan_to_num(c, nan=1e300, posinf=1e300))
        perms[i, cols] = rows
    return perms.reshape(cost.shape[:-2] + (k,))


def take_components(values: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``values`` (..., K, ...) reordered along the component axis (the one after the leading
    dimensions of ``perms``) by ``perms`` (..., K)."""
    lead = perms.ndim - 1
    index = perms.reshape(perms.shape + (1,) * (values.ndim - lead - 1))
    return np.take_along_axis(values, index, axis=lead)
