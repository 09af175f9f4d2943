"""Agglomerative hierarchical clustering as a tool of its own: :func:`hierarchical`.

Merge the two closest groups, again and again, from singletons to one cluster. Two families:

* ``linkage="model"``: mclust's model-based criteria (Banfield & Raftery 1993; Fraley 1998):
  merge the pair whose union costs the least classification log-likelihood under a Gaussian
  model of each cluster. "VVV" (each cluster its own covariance) is
  :func:`bayesgmm.core.hc.hierarchical_tree`, mclust's ``hcVVV`` with its regularisation and
  its order among equal costs; "VII" (spherical clusters, each its own volume) the same
  agglomeration with mclust's ``hcVII`` criterion; "EEE" (one covariance shared by every
  cluster) :func:`bayesgmm.core.hc.eee_tree`, mclust's ``hcEEE`` (the pooled scatter's
  log-determinant, its trace while it is singular); "EII" (spherical clusters of one volume)
  is Ward's criterion, since the EII classification likelihood depends on the partition only
  through the pooled within-cluster sum of squares; scipy's Ward linkage computes it (checked
  against mclust's ``hc(X, "EII")`` partitions, which it reproduces).
* the classical linkages ``"ward"``, ``"average"``, ``"complete"``, ``"single"``: scipy's
  ``scipy.cluster.hierarchy.linkage`` (Euclidean distances), not written again here.

The coordinates (``use``) are mclust's ``hcUse`` choices: "svd" (centred, standardised, rotated
onto the principal axes and divided by the square root of the singular values: invariant to
units and rotations; mclust's default), "standardised" (each feature centred and divided by
its standard deviation) or "raw".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core._validation import as_data, as_rng
from bayesgmm.core.hc import HierarchicalTree, eee_tree, hierarchical_tree

__all__ = [
    "LINKAGES",
    "MODEL_CRITERIA",
    "USES",
    "HierarchicalResult",
    "hierarchical",
    "tree_start",
]

#: Linkages: the model-based criterion, then scipy's classical ones.
LINKAGES = ("model", "ward", "average", "complete", "single")
#: The model-based criteria available (mclust's hcVVV, hcVII, hcEEE, and hcEII as Ward's).
MODEL_CRITERIA = ("VVV", "VII", "EEE", "EII")
#: ... and for one feature (mclust's hcV and hcE).
MODEL_CRITERIA_1D = ("V", "E")
#: The coordinates the tree is built in (mclust's hcUse: "SVD", "STD", "VARS").
USES = ("svd", "standardised", "raw")

#: Rows the tree is built on by default: mclust's ``subset`` (2000) for the model-based tree,
#: whose cost grows as n² d³; scipy's linkages need n² / 2 distances (10,000 rows: 400 MB).
#: The EEE tree re-scores every pair at every stage (as mclust's hcEEE), n³ d³ in all: 272 rows
#: take 1.5 s, 500 about 10 s, 2000 more than 4 minutes.
DEFAULT_MAX_ROWS = {"model": 2000, "EEE": 500, "classical": 10_000}


@dataclass(frozen=True)
class _Coordinates:
    """The map from data to the tree's coordinates (fitted on the tree's rows)."""

    use: str
    center: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray | None  # (d, r) for "svd", already divided by √(singular values)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.use == "raw":
            return X
        Z = (X - self.center) / self.scale
        if self.use == "svd":
            assert self.rotation is not None
            return Z @ self.rotation
        return Z


def _coordinates(X: np.ndarray, use: str) -> _Coordinates:
    center = X.mean(axis=0)
    sd = (X - center).std(axis=0, ddof=1) if X.shape[0] > 1 else np.ones(X.shape[1])
    scale = np.where(sd > 0, sd, 1.0)
    rotation = None
    if use == "svd":
        # as bayesgmm.core.hc.scaled_svd (mclust's hcUse = "SVD")
        _, sing, vt = np.linalg.svd((X - center) / scale, full_matrices=False)
        keep = sing > sing.max() * 1e-12
        rotation = vt[keep].T / np.sqrt(sing[keep])
    return _Coordinates(use, center, scale, rotation)


@dataclass(frozen=True)
class HierarchicalResult:
    """An agglomeration's tree (:func:`hierarchical`).

    Attributes
    ----------
    linkage : str
        "model" or one of scipy's linkages.
    covariance_type : str or None
        The model-based criterion ("VVV", "VII", "EEE" or "EII"); None for the classical
        linkages.
    use : str
        The coordinates: "svd", "standardised" or "raw".
    rows : ndarray (m,)
        The rows of the data the tree was built on (all of them unless subsampled).
    n_obs : int
        Rows of the data given.
    merges : ndarray (m − 1, 2)
        The two clusters joined at each stage, in scipy's numbering: ids below m are the
        tree's rows (positions in ``rows``), id m + s the cluster formed at stage s.
    heights : ndarray (m − 1,)
        The cost of each merge: for the model-based VVV and VII trees the increase of mclust's
        regularised classification criterion, for EEE the criterion after the merge (the log
        pooled trace, log(det + trace), then log det of the pooled scatter), neither monotone
        (a merge can cost less than an earlier one); for EII and Ward the increase of the
        within-cluster sum of squares, as scipy's Ward distance √(2 Δ); for the other linkages
        scipy's merge distance.
    """

    linkage: str
    covariance_type: str | None
    use: str
    rows: np.ndarray
    n_obs: int
    merges: np.ndarray
    heights: np.ndarray
    _sizes: np.ndarray = field(repr=False)
    _tree: HierarchicalTree | None = field(repr=False)
    _coords: _Coordinates = field(repr=False)
    _data: np.ndarray = field(repr=False)

    @property
    def n_initial(self) -> int:
        """Rows in the tree (partitions of 1..n_initial clusters exist)."""
        return int(self.rows.shape[0])

    def cut(self, k: Any) -> Any:
        """Labels 0..k−1 of the tree's rows at k clusters; for several k (an iterable), a
        DataFrame with one column per k, as mclust's ``hclass``."""
        if isinstance(k, bool):
            raise TypeError(f"k must be an int or an iterable of ints; got {k!r}.")
        if not isinstance(k, int | np.integer):
            import pandas as pd

            try:
                ks = [int(v) for v in k]
            except TypeError:
                raise TypeError(f"k must be an int or an iterable of ints; got {k!r}.") from None
            return pd.DataFrame({v: self.cut(v) for v in ks}, index=pd.Index(self.rows, name="row"))
        k = int(k)
        m = self.n_initial
        if not 1 <= k <= m:
            raise ValueError(
                f"k must lie in 1..{m} (the tree has {m} rows); got {k}. Use a k in that range."
            )
        if self._tree is not None:
            return self._tree.cut(k)
        # The partition after the first m − k merges (as scipy's cut_tree, which is quadratic
        # in m: 17 s at 10,000 rows): each cluster formed then hands its label to its two
        # children, from the last merge back to the first.
        done = m - k
        label = np.full(2 * m - 1, -1, dtype=np.int64)
        children = np.zeros(2 * m - 1, dtype=bool)
        children[self.merges[:done].ravel()] = True
        roots = np.flatnonzero(~children[: m + done])
        label[roots] = np.arange(roots.size)
        for s in range(done - 1, -1, -1):
            label[self.merges[s]] = label[m + s]
        _, labels = np.unique(label[:m], return_inverse=True)
        return labels

    def to_scipy(self) -> np.ndarray:
        """A linkage matrix (m − 1, 4) that scipy's ``dendrogram``, ``fcluster`` and
        ``is_valid_linkage`` accept: the merges, a height and the new cluster's size.

        For the classical linkages and EII the height is scipy's. For the model-based VVV, VII
        and EEE trees it is the running maximum of the merge costs, shifted to start at 0:
        monotone, so that the dendrogram draws without crossings, and equal to the merge cost
        wherever a merge costs more than every earlier one."""
        h = self.heights
        if self.linkage == "model" and self.covariance_type in ("VVV", "VII", "EEE", "V"):
            h = np.maximum.accumulate(h - h.min()) if h.size else h
        return np.column_stack([self.merges.astype(np.float64), h, self._sizes])

    def assign(self, X: Any, k: int) -> np.ndarray:
        """Labels 0..k−1 for the rows of ``X`` (for example the rows left out of a subsampled
        tree), from the cut at k: for the model-based tree, the Gaussian mixture that EM fits
        to the tree's rows from that cut (``fit_em``, its criterion's structure); for the
        classical linkages, the nearest centroid of the cut's clusters in the tree's
        coordinates."""
        arr, _ = as_data(X)
        if arr.shape[1] != self._data.shape[1]:
            raise ValueError(
                f"X has {arr.shape[1]} features; the tree was built on {self._data.shape[1]}."
            )
        labels = self.cut(k)
        if self.linkage == "model":
            from bayesgmm.core.fit import fit_em

            structure = self.covariance_type or "VVV"
            return fit_em(self._data, k, covariance_type=structure, init=labels).model.predict(arr)
        Z = self._coords(self._data)
        centroids = np.stack([Z[labels == j].mean(axis=0) for j in range(k)])
        Y = self._coords(arr)
        d2 = ((Y[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
        return np.argmin(d2, axis=1)

    def labels_for(self, X: np.ndarray, k: int) -> np.ndarray:
        """Labels of every row of ``X`` (the data the tree was built from) at k clusters: the
        cut where the tree holds every row, else the cut's rows and :meth:`assign` for the
        others."""
        if X.shape[0] != self.n_obs:
            raise ValueError(
                f"the tree was built on {self.n_obs} rows; X has {X.shape[0]}. Build the tree "
                "on the data being fitted."
            )
        if self.n_initial == self.n_obs:
            out = np.empty(self.n_obs, dtype=np.int64)
            out[self.rows] = self.cut(k)
            return out
        out = self.assign(X, k)
        out[self.rows] = self.cut(k)
        return out


def _check_choice(name: str, value: Any, valid: tuple[str, ...], upper: bool = False) -> str:
    key = (value.upper() if upper else value.lower()) if isinstance(value, str) else value
    if key not in valid:
        raise ValueError(f"{name}={value!r} is not one of {list(valid)}.")
    return str(key)


def hierarchical(
    X: Any,
    linkage: str = "model",
    *,
    covariance_type: str | None = None,
    use: str | None = None,
    max_rows: int | None = None,
    rng: Any = 0,
) -> HierarchicalResult:
    """Agglomerative hierarchical clustering of the rows of ``X``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        Complete rows of numbers (hierarchical clustering cannot place a row with a missing
        value: drop such rows first).
    linkage : {"model", "ward", "average", "complete", "single"}, default "model"
        "model": mclust's model-based criterion for ``covariance_type``; the others scipy's.
    covariance_type : {"VVV", "VII", "EEE", "EII"} or, for one feature, {"V", "E"}, optional
        The model-based criterion (``linkage="model"`` only); default "VVV", or "V" for one
        feature. mclust's one-feature trees: "V" (its own variance per cluster: the VII
        criterion with mclust's ``hcV`` regularisation, α = machine ε) and "E" (Ward's).
    use : {"svd", "standardised", "raw"}, optional
        The coordinates the tree is built in; default "svd" for the model-based tree on several
        features (mclust's default), "raw" for one feature (mclust's) and for the classical
        linkages (scipy's).
    max_rows : int, optional
        Build the tree on a random subsample of this many rows (default 2000 for the
        model-based tree, as mclust's ``subset``, 500 for EEE, whose tree costs n³ d³, and
        10,000 for the classical linkages);
        :meth:`HierarchicalResult.assign` places the other rows.
    rng : int or numpy.random.Generator, default 0
        Draws the subsample.

    Returns
    -------
    HierarchicalResult

    Examples
    --------
    >>> import numpy as np
    >>> import bayesgmm as bg
    >>> tree = bg.hierarchical(bg.datasets.load_faithful())
    >>> np.bincount(tree.cut(3)).tolist()
    [40, 97, 135]
    """
    from scipy.cluster import hierarchy

    arr, _ = _complete_rows(X)
    link = _check_choice("linkage", linkage, LINKAGES)
    one = arr.shape[1] == 1
    structure = None
    if link == "model":
        valid = MODEL_CRITERIA_1D if one else MODEL_CRITERIA
        given = covariance_type if covariance_type is not None else valid[0]
        if one and isinstance(given, str) and given.upper() in MODEL_CRITERIA:
            raise ValueError(
                f"covariance_type={given!r} is for several features; X has one. Use 'V' (its "
                "own variance per cluster) or 'E' (one variance), as mclust."
            )
        structure = _check_choice("covariance_type", given, valid, upper=True)
    coords_use = _check_choice("use", use, USES) if use is not None else (
        "svd" if link == "model" and not one else "raw"
    )  # fmt: skip
    n = arr.shape[0]
    if n < 2:
        raise ValueError(f"X has {n} row; hierarchical clustering needs at least 2.")
    cap = DEFAULT_MAX_ROWS[
        "classical" if link != "model" else ("EEE" if structure == "EEE" else "model")
    ]
    if max_rows is not None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int | np.integer) or max_rows < 2:
            raise ValueError(f"max_rows must be an integer ≥ 2; got {max_rows!r}.")
        cap = int(max_rows)
    rows = np.arange(n)
    if n > cap:
        rows = np.sort(as_rng(rng).choice(n, size=cap, replace=False))
    data = arr[rows]
    coords = _coordinates(data, coords_use)
    Z = coords(data)
    tree = None
    if link == "model" and structure in ("VVV", "VII", "V"):
        # mclust's hcV takes α = min(α, ε): no regularisation to speak of
        alpha = 0.0 if structure == "V" else 1.0
        criterion = "VII" if structure == "V" else structure
        tree = hierarchical_tree(Z, alpha=alpha, criterion=criterion)
        merges, heights, sizes = _scipy_merges(tree, Z, criterion, alpha)
    elif link == "model" and structure == "EEE":
        tree, heights = eee_tree(Z)
        merges, _, sizes = _scipy_merges(tree, Z, "VII", 1.0)  # ids, sizes; EEE's own heights
    else:
        method = "ward" if link == "model" else link
        L = hierarchy.linkage(Z, method=method, metric="euclidean")
        merges, heights, sizes = L[:, :2].astype(np.int64), L[:, 2].copy(), L[:, 3].copy()
    return HierarchicalResult(
        linkage=link,
        covariance_type=structure,
        use=coords_use,
        rows=rows,
        n_obs=n,
        merges=merges,
        heights=heights,
        _sizes=sizes,
        _tree=tree,
        _coords=coords,
        _data=data,
    )


def _complete_rows(X: Any) -> tuple[np.ndarray, Any]:
    """as_data, with a message for missing values that says what hierarchical clustering
    needs."""
    try:
        return as_data(X)
    except ValueError as err:
        if "NaN" in str(err) or "missing" in str(err) or "finite" in str(err):
            raise ValueError(
                f"{err} Hierarchical clustering needs complete rows: drop the rows with missing "
                "values first (e.g. X.dropna() for a DataFrame)."
            ) from None
        raise


def _scipy_merges(
    tree: HierarchicalTree, Z: np.ndarray, criterion: str, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tree's merges in scipy's numbering, each merge's cost (the regularised criterion's
    increase, recomputed along the merges) and the new clusters' sizes."""
    from bayesgmm.core.hc import _COSTS

    _cost = _COSTS[criterion]

    m, d = Z.shape
    centered = Z - Z.mean(axis=0)
    ridge = alpha * float(np.sum(centered * centered)) / (max(m, 1) * d)
    ridge = max(ridge, np.finfo(np.float64).eps)
    current = np.arange(m)  # the scipy id of the cluster each initial row's survivor heads
    counts = np.ones(m)
    means = Z.astype(np.float64).copy()
    W = np.zeros((m, d, d))
    own = _cost(counts, W, ridge)
    merges = np.empty((m - 1, 2), dtype=np.int64)
    heights = np.empty(m - 1)
    sizes = np.empty(m - 1)
    for s, (a, b) in enumerate(tree.merges):
        merges[s] = sorted((current[a], current[b]))
        n_a, n_b = counts[a], counts[b]
        delta = means[b] - means[a]
        W[a] = W[a] + W[b] + (n_a * n_b / (n_a + n_b)) * np.outer(delta, delta)
        means[a] = (n_a * means[a] + n_b * means[b]) / (n_a + n_b)
        counts[a] = n_a + n_b
        new = _cost(counts[a : a + 1], W[a : a + 1], ridge)[0]
        heights[s] = new - own[a] - own[b]
        own[a] = new
        sizes[s] = counts[a]
        current[a] = m + s
    return merges, heights, sizes


def tree_start(init: Any, X: np.ndarray, rng: Any) -> tuple[HierarchicalResult, np.ndarray] | None:
    """For EM's ``init``: a :class:`HierarchicalResult` of these data, or a name "hc:<linkage>"
    ("hc:ward", "hc:average", "hc:complete", "hc:single") or "hc:<criterion>" ("hc:vvv",
    "hc:vii", "hc:eee", "hc:eii"), as (tree, its rows); None for any other ``init``."""
    if isinstance(init, HierarchicalResult):
        if init.n_obs != X.shape[0] or init._data.shape[1] != X.shape[1]:
            raise ValueError(
                f"init is a tree of {init.n_obs} rows × {init._data.shape[1]} features; the "
                f"data have {X.shape[0]} × {X.shape[1]}. Build the tree on the data being fitted."
            )
        return init, init.rows
    if isinstance(init, str) and init.lower().startswith("hc:"):
        spec = init[3:].lower()
        if spec in ("vvv", "vii", "eee", "eii", "v", "e"):
            tree = hierarchical(X, "model", covariance_type=spec, rng=rng)
        elif spec in LINKAGES[1:]:
            tree = hierarchical(X, spec, rng=rng)
        else:
            raise ValueError(
                f"init={init!r}: after 'hc:' give a linkage ({', '.join(LINKAGES[1:])}) or a "
                "model-based criterion (vvv, vii, eee, eii; v, e for one feature)."
            )
        return tree, tree.rows
    return None
