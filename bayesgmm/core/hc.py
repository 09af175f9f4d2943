"""Model-based agglomerative hierarchical clustering (Banfield & Raftery 1993; Fraley 1998).

Start from singletons, as mclust does, and repeatedly merge the two clusters whose union costs
the least classification log-likelihood. For the
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

from bayesgmm.core import _compiled

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
        Cluster of each observation before any merge (each row its own here).
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
        # Each merge relabels cluster b's members as a (the members kept per cluster: a pass
        # over all m ids per merge made the cuts of a small grid's tree 3 ms).
        members = {i: [i] for i in range(m)}
        for a, b in self.merges[: m - n_clusters].tolist():
            if a != b and (moved := members.pop(b, None)) is not None:
                members.setdefault(a, []).extend(moved)
        parent = np.arange(m)
        for c, ids in members.items():
            parent[ids] = c
        _, labels = np.unique(parent[self.initial_labels], return_inverse=True)
        return labels


def _cost(n: np.ndarray, W: np.ndarray, alpha: float) -> np.ndarray:
    """Cluster terms n log(det(W/n) + (tr W + α)/n) for a batch: n (B,), W (B, d, d).

    The determinant is taken as 0 while n ≤ d (the scatter is then singular), as mclust's
    ``vvvtij``; only the other clusters pay for a determinant."""
    d = W.shape[-1]
    log_term = np.log((np.trace(W, axis1=1, axis2=2) + alpha) / n)
    big = np.flatnonzero(n > d)
    if big.size:
        sign, logdet = np.linalg.slogdet(W[big] / n[big, None, None])
        ok = sign > 0
        log_term[big[ok]] = np.logaddexp(logdet[ok], log_term[big[ok]])
    return n * log_term


def _cost_vii(n: np.ndarray, W: np.ndarray, alpha: float) -> np.ndarray:
    """Cluster terms n log((tr W + α)/n) of the spherical model with its own volume per cluster
    (mclust's ``hcVII``; a singleton's term is log α)."""
    return n * np.log((np.trace(W, axis1=1, axis2=2) + alpha) / n)


_COSTS = {"VVV": _cost, "VII": _cost_vii}


def hierarchical_tree(
    Z: np.ndarray, alpha: float = 1.0, criterion: str = "VVV"
) -> HierarchicalTree:
    """Agglomerate the rows of ``Z`` (n, d) with the regularised VVV criterion, as mclust's
    ``hcVVV`` (or, with ``criterion="VII"``, the spherical one of ``hcVII``, whose
    bookkeeping and regularisation α are the same).

    As mclust (whose ``hc()`` passes no initial partition to ``hcVVV``), every row starts as its
    own cluster; duplicated rows merge first because their merges cost least. The order of the
    merges follows mclust's bookkeeping, which decides between merges of equal cost: clusters sit
    in positions 1..g; the pair (i < j) of least cost is merged into position i, the cluster in
    the last position g moves into position j, and among equal costs the pair that comes last in
    the order (j, then i) wins. Equal costs are common in rounded data (faithful's ``waiting`` is
    whole minutes), and this rule is what makes the partitions mclust's.

    Cost: O(n²) memory and about n² d³ / 2 + n³ / 3 operations; callers subsample large data.
    """
    cost_of = _COSTS[criterion]
    m, d = Z.shape
    means = np.array(Z, dtype=np.float64, copy=True)
    centered = Z - Z.mean(axis=0)
    ridge = alpha * float(np.sum(centered * centered)) / (max(m, 1) * d)
    ridge = max(ridge, np.finfo(np.float64).eps)  # as mclust: α = max(α, ε)
    if criterion == "VVV" and m > 1 and _compiled.ready(stage="hc"):
        # The same agglomeration compiled (bayesgmm.core._compiled.hc_merges): on wreath's
        # 1,000 rows about 0.7 s here, a fraction of that compiled.
        return HierarchicalTree(np.arange(m), _compiled.hc_merges(means, ridge))
    counts = np.ones(m)
    W = np.zeros((m, d, d))
    own = cost_of(counts, W, ridge)
    rep = np.arange(m)  # the initial cluster (row) that stands for the cluster in each position

    def merge_costs(i: int, others: np.ndarray) -> np.ndarray:
        n_i, n_o = counts[i], counts[others]
        n = n_i + n_o
        delta = means[others] - means[i]
        Wm = (
            W[i]
            + W[others]
            + (n_i * n_o / n)[:, None, None] * delta[:, :, None] * delta[:, None, :]
        )
        return cost_of(n, Wm, ridge) - (own[i] + own[others])

    # cost[i, j] for positions i < j (+inf elsewhere), and for each column j its least cost and
    # the last row that has it, so that each stage finds mclust's pair without a full scan.
    cost = np.full((m, m), np.inf)
    for j in range(1, m):
        cost[:j, j] = merge_costs(j, np.arange(j))
    col_min = np.full(m, np.inf)
    col_arg = np.zeros(m, dtype=np.int64)

    def rescan(j: int) -> None:
        if j == 0:
            col_min[0], col_arg[0] = np.inf, 0
            return
        vals = cost[:j, j]
        k = j - 1 - int(np.argmin(vals[::-1]))
        col_min[j], col_arg[j] = vals[k], k

    for j in range(m):
        rescan(j)
    merges = np.empty((max(m - 1, 0), 2), dtype=np.int64)
    for stage in range(m - 1):
        g = m - stage  # clusters left, in positions 0..g−1
        best = col_min[:g]
        j = g - 1 - int(np.argmin(best[::-1]))  # the largest j, then (col_arg) the largest i
        i = int(col_arg[j])
        merges[stage] = (rep[i], rep[j])
        n_i, n_j = counts[i], counts[j]
        delta = means[j] - means[i]
        W[i] = W[i] + W[j] + (n_i * n_j / (n_i + n_j)) * np.outer(delta, delta)
        means[i] = (n_i * means[i] + n_j * means[j]) / (n_i + n_j)
        counts[i] = n_i + n_j
        own[i] = cost_of(counts[i : i + 1], W[i : i + 1], ridge)[0]
        top = g - 1
        if j != top:  # the cluster in the last position moves into position j
            counts[j], means[j], W[j], own[j], rep[j] = (
                counts[top], means[top], W[top], own[top], rep[top],
            )  # fmt: skip
            cost[:j, j] = cost[:j, top]
            cost[j, j + 1 : top] = cost[j + 1 : top, top]
        cost[:, top] = np.inf
        cost[top, :] = np.inf
        col_min[top] = np.inf
        if g <= 2:
            continue
        others = np.delete(np.arange(top), i)
        new = merge_costs(i, others)
        below = others < i
        cost[others[below], i] = new[below]
        cost[i, others[~below]] = new[~below]
        # Columns i and j changed throughout; every other column y changed only in rows i and j
        # (when below y): rescan it if one of those held its minimum, else compare.
        changed = [i] if j == top else [i, j]
        for y in changed:
            rescan(y)
        lo = min(changed)
        ys = np.arange(lo + 1, top)
        ys = ys[(ys != i) & (ys != j)]
        if ys.size == 0:
            continue
        held = np.isin(col_arg[ys], changed)
        for y in ys[held]:
            rescan(int(y))
        ys = ys[~held]
        for r in sorted(changed):  # ascending, so that a later (larger) row wins a tie
            mask = ys > r
            yy = ys[mask]
            vals = cost[r, yy]
            take = (vals < col_min[yy]) | ((vals == col_min[yy]) & (r > col_arg[yy]))
            col_min[yy[take]] = vals[take]
            col_arg[yy[take]] = r
    return HierarchicalTree(initial_labels=np.arange(m), merges=merges)


_FLMAX = float(np.finfo(np.float64).max)
_EPSMIN = 1.1102230246251565e-16


def eee_tree(Z: np.ndarray) -> tuple[HierarchicalTree, np.ndarray]:
    """Agglomerate the rows of ``Z`` (n, d) with mclust's EEE criterion (``hcEEE``): clusters
    sharing one covariance, so a merge's cost is the log-determinant of the pooled
    within-cluster scatter W after it. While W is singular the pooled trace decides (first the
    d − 1 merges that leave W of rank below d, by Ward's increase of the trace; then
    log(det W + tr W) while log det W stays below log of the data's total scatter trace per
    feature); after that log det W alone. Scatters are of the rows scaled by 1/√n, as mclust's;
    among equal costs the pair that comes last in the order (j, then i) wins, and the cluster
    in the last position moves into the merged pair's second position, as mclust's
    bookkeeping does. Cost: O(n²) pairs per stage, each a d × d determinant.

    Returns the tree and each merge's criterion value (the log of the pooled trace, then
    log(det W + tr W), then log det W, as the phase decides)."""
    m, d = Z.shape
    x = np.array(Z, dtype=np.float64) / np.sqrt(m)  # √(n_c) × mean_c, of the scaled rows
    mean = x.mean(axis=0)
    trc0 = float((((x - mean) / np.sqrt(d)) ** 2).sum())
    delog = np.log(trc0 + _EPSMIN)
    counts = np.ones(m)
    rep = np.arange(m)
    W = np.zeros((d, d))
    trcw = 0.0
    rank = 1  # mclust's q: rank-one updates made to W's factor, plus one
    detw = -_FLMAX
    phase = 1
    merges = np.empty((max(m - 1, 0), 2), dtype=np.int64)
    heights = np.empty(max(m - 1, 0))
    for stage in range(m - 1):
        g = m - stage
        jj, ii = np.nonzero(np.tril(np.ones((g, g), dtype=bool), k=-1))  # j > i, j-major
        n_i, n_j = counts[ii], counts[jj]
        nij = n_i + n_j
        si, sj = np.sqrt(n_i / nij), np.sqrt(n_j / nij)
        v = sj[:, None] * x[ii] - si[:, None] * x[jj]
        gain = (v * v).sum(axis=1)
        if phase == 1 and rank >= d:
            phase = 2 if detw < delog else 3
        if phase == 1:
            z = np.maximum(trcw + gain, _EPSMIN)
            pick = len(z) - 1 - int(np.argmin(z[::-1]))
            trcw = float(z[pick])
            heights[stage] = np.log(trcw)
        else:
            sign, logdet = np.linalg.slogdet(W[None] + v[:, :, None] * v[:, None, :])
            dij = np.where(sign > 0, logdet, -_FLMAX)
            if phase == 2:
                tij = trcw + gain
                zt = np.maximum(tij, _EPSMIN)
                with np.errstate(over="ignore"):
                    zij = np.where(
                        dij == -_FLMAX,
                        np.log(zt),
                        np.where(
                            dij <= 0,
                            np.log(np.exp(np.minimum(dij, 0.0)) + zt),
                            np.log1p(zt * np.exp(-np.maximum(dij, 0.0))) + dij,
                        ),
                    )
                zij = np.where(tij == 0, -_FLMAX, zij)
                pz = len(zij) - 1 - int(np.argmin(zij[::-1]))
                pd = len(dij) - 1 - int(np.argmin(dij[::-1]))
                if dij[pd] < delog:
                    pick = pz
                else:
                    pick = pd
                trcw, detw = float(tij[pick]), float(dij[pick])
                heights[stage] = zij[pick] if pick == pz else detw
            else:
                pick = len(dij) - 1 - int(np.argmin(dij[::-1]))
                detw = float(dij[pick])
                trcw += float(gain[pick])
                heights[stage] = detw
        i, j = int(ii[pick]), int(jj[pick])
        W = W + np.outer(v[pick], v[pick])
        rank += 1
        merges[stage] = (rep[i], rep[j])
        x[i] = si[pick] * x[i] + sj[pick] * x[j]
        counts[i] = nij[pick]
        top = g - 1
        if j != top:
            x[j], counts[j], rep[j] = x[top], counts[top], rep[top]
        if phase == 2 and detw >= delog:
            phase = 3
    return HierarchicalTree(initial_labels=np.arange(m), merges=merges), heights
