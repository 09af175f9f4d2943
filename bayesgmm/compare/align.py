"""Putting draws of a mixture (posterior draws, bootstrap replicates) in a reference's labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesgmm.core.relabel import match_components, take_components

__all__ = ["align_to", "describe_alignment"]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def align_to(
    arrays: Arrays, ref_means: np.ndarray, ref_covariances: np.ndarray
) -> tuple[Arrays, np.ndarray]:
    """Each draw of (weights (..., K), means (..., K, D), covariances (..., K, D, D)) relabelled
    to the reference components; also returns the permutations (..., K) used (reference
    component k ← draw component perms[..., k])."""
    w, mu, cov = arrays
    perms = match_components(mu, cov, ref_means, ref_covariances)
    return (
        take_components(w, perms),
        take_components(mu, perms),
        take_components(cov, perms),
    ), perms


def describe_alignment(perms: np.ndarray, labels: Any) -> dict[str, Any]:
    """What the relabelling did: the permutation most draws needed (reference label ← draw label)
    and the share of draws relabelled at all and relabelled differently from that majority."""
    k = perms.shape[-1]
    flat = perms.reshape(-1, k)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    modal = values[np.argmax(counts)]
    labels = list(np.asarray(labels).tolist())
    return {
        "mapping": {labels[int(modal[j])]: labels[j] for j in range(k)},
        "share_relabelled": float((flat != np.arange(k)).any(axis=1).mean()),
        "share_off_majority": float((flat != modal).any(axis=1).mean()),
        "n_draws": int(flat.shape[0]),
    }
