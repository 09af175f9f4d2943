"""Model-based agglomerative hierarchical clustering (Banfield & Raftery 1993; Fraley 1998).

Start from singletons (or from groups of duplicated rows, as mclust's ``dupPartition``) and
repeatedly merge the two clusters whose union costs the least classification log-likelihood. For the
unconstrained Gaussian model (VVV), a cluster C with n_C points and scatter W_C contributes

    c(C) = n_C log( det(W_C / n_C) + (tr W_C + α) / n_C ),     α = tr(XᵀX) / (n d),

the classification log-likelihood term n_C log det(W_C / n_C) regularised as in Fraley (1998) and
mclust's ``hcVVV`` (α = β = 1 there), so that singletons and groups of at most d points, whose
scatter is singular, still have finite terms (their determinant counts as 0).
The merge cost is c(A ∪ B) − c(A) − c(B), with the rank-one update

    W_{A∪B} = W_A + W_B + n_A n_B / (n_A + n_B) (x̄_A − x̄_B)(x̄_A − x̄_B)ᵀ.

As mclust does by default, the data are first put through a scaled SVD (centred, standardised,
rotated onto the principal axes and divided by the square root of the singular values), which
makes the tree invariant to the features' units. One tree serves every K: cutting it at K
clusters gives the starting partition for K components.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HierarchicalTree", "hierarchical_tree", "scaled_svd"]


def scaled_svd(X: np.ndarray) -> np.ndarray:
    """mclust's ``hcUse = "SVD"`` transform: standardise, rotate by the SVD, scale by 1/√d_i."""
    Xc = X - X.mean(axis=0)
    sd = Xc.std(axis=0, ddof=1) if X.shape[0] > 1 else np.ones(X.shape[1])
    Xs = Xc / np.where(sd > 0, sd, 1.0)
    _, sing, vt = np.linalg.svd(Xs, full_matrices=False)
    keep = sing > sing.max() * 1e-12 if sing.size else sing.astype(bool)
    return (Xs @ vt[keep].T) / np.sqrt(sing[keep])


@dataclass(frozen=True)
class HierarchicalTree:
    """The merge sequence of an agglomeration.

    Attributes
    ----------
    initial_labels : ndarray (n,)
        Cluster of each observation before any merge (duplicated rows share one).
    merges : ndarray (m − 1, 2)
        Pairs of initial-cluster ids merged at each stage (the survivor keeps the first id).
    """

    initial_labels: np.ndarray
    merges: np.ndarray

    @property
    def n_initial(self) -> int:
        return int(self.merges.shape[0] + 1)

    def cut(self, n_clusters: int) -> np.ndarray:
        """Labels 0..n_clusters−1 of the partition with ``n_clusters`` clusters."""
        m = self.n_initial
        if not 1 <= n_clusters <= m:
            raise ValueError(f"the tree has partitions of 1..{m} clusters; got {n_clusters}.")
        parent = np.arange(m)
        for a, b in self.merges[: m - n_clusters]:
            parent[parent == b] = a
        _, labels = np.unique(parent[self.initial_labels], return_inverse=True)
        return labels


def _cost(n: np.ndarray, W: np.ndarray, alpha: float) -> np.ndarray:
    """Cluster terms n log(det(W/n) + (tr W + α)/n) for a batch: n (B,), W (B, d, d).

    The determinant is taken as 0 while n ≤ d (the scatter is then singular)."""
    d = W.shape[-1]
    log_reg = np.log((np.trace(W, axis1=1, axis2=2) + alpha) / n)
    sign, logdet = np.linalg.slogdet(W / n[:, None, None])
    full_rank = (n > d) & (sign > 0)
    log_term = np.where(full_rank, np.logaddexp(np.where(full_rank, logdet, 0.0), log_reg), log_reg)
    return n * log_term


def hierarchical_tree(Z: np.ndarray, alpha: float = 1.0) -> HierarchicalTree:
    """Agglomerate the rows of ``Z`` (n, d) with the regularised VVV criterion.

    Cost: O(m² d³) time and O(m²) memory for m distinct rows; callers subsample large data.
    """
    uniq, initial = np.unique(Z, axis=0, return_inverse=True)
    initial = initial.reshape(-1)
    m, d = uniq.shape
    counts = np.bincount(initial, minlength=m).astype(np.float64)
    means = np.zeros((m, d))
    np.add.at(means, initial, Z)
    means /= counts[:, None]
    W = np.zeros((m, d, d))  # duplicated rows have no scatter
    total = Z - Z.mean(axis=0)
    ridge = alpha * float(np.sum(total * total)) / (Z.shape[0] * d)
    if ridge <= 0:
        ridge = 1.0  # all rows identical: any positive α gives the same (trivial) tree
    own = _cost(counts, W, ridge)

    def merge_costs(i: int, others: np.ndarray) -> np.ndarray:
        n_i, n_o = counts[i], counts[others]
        n = n_i + n_o
        delta = means[others] - means[i]
        Wm = (
            W[i]
            + W[others]
            + (n_i * n_o / n)[:, None, None] * delta[:, :, None] * delta[:, None, :]
        )
        return _cost(n, Wm, ridge) - own[i] - own[others]

    cost = np.full((m, m), np.inf)
    for i in range(m - 1):
        others = np.arange(i + 1, m)
        cost[i, others] = merge_costs(i, others)
        cost[others, i] = cost[i, others]
    active = np.ones(m, dtype=bool)
    row_arg = np.argmin(cost, axis=1)
    row_min = cost[np.arange(m), row_arg]
    merges = np.empty((max(m - 1, 0), 2), dtype=np.int64)
    for stage in range(m - 1):
        i = int(np.argmin(np.where(active, row_min, np.inf)))
        j = int(row_arg[i])
        a, b = min(i, j), max(i, j)
        merges[stage] = (a, b)
        # b joins a: update a's sufficient statistics.
        n_a, n_b = counts[a], counts[b]
        delta = means[b] - means[a]
        W[a] = W[a] + W[b] + (n_a * n_b / (n_a + n_b)) * np.outer(delta, delta)
        means[a] = (n_a * means[a] + n_b * means[b]) / (n_a + n_b)
        counts[a] = n_a + n_b
        own[a] = _cost(counts[a : a + 1], W[a : a + 1], ridge)[0]
        active[b] = False
        cost[b, :] = np.inf
        cost[:, b] = np.inf
        others = np.flatnonzero(active)
        others = others[others != a]
        if others.size == 0:
            continue
        new = merge_costs(a, others)
        cost[a, :] = np.inf
        cost[a, others] = new
        cost[others, a] = new
        row_arg[a] = others[np.argmin(new)]
        row_min[a] = cost[a, row_arg[a]]
        # Rows whose best partner was a or b must be re-scanned; others may improve via a.
        stale = others[(row_arg[others] == a) | (row_arg[others] == b)]
        for r in stale:
            row_arg[r] = int(np.argmin(cost[r]))
            row_min[r] = cost[r, row_arg[r]]
        better = others[new < row_min[others]]
        row_arg[better] = a
        row_min[better] = cost[better, a]
        row_min[b] = np.inf
    return HierarchicalTree(initial_labels=initial, merges=merges)
