"""Starting points for EM: hierarchical, k-means++, random, or what the user already has.

Every start is turned into responsibilities (n, K) or a :class:`GaussianMixture`; EM then begins
with an M-step from the responsibilities (as mclust's ``me``) or an E-step from the mixture.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from bayesgmm.core._validation import integer_valued
from bayesgmm.core.hc import HierarchicalTree, hierarchical_tree, scaled_svd
from bayesgmm.core.model import GaussianMixture

__all__ = [
    "INIT_METHODS",
    "QuantileClasses",
    "hc_tree",
    "kmeans_plus_plus_labels",
    "kmeans_plus_plus_many",
    "parse_init",
    "random_resp",
    "split_components",
    "split_halves",
    "split_mixtures",
]

INIT_METHODS = ("hc", "kmeans++", "random")


def hc_max_rows(n_features: int) -> int:
    """Rows used by the hierarchical start: mclust's default ``subset`` (2000) up to 10
    features; its cost grows as m² d³, so fewer rows beyond."""
    if n_features <= 10:
        return 2000
    if n_features <= 30:
        return 1000
    return 500


class QuantileClasses:
    """mclust's start for one feature (``qclass``; mclust builds no tree in one dimension):
    K classes between quantiles of the data.

    The K + 1 boundaries are the distinct sample quantiles at equally spaced probabilities (R's
    default type 7, numpy's "linear"), taking more probabilities until K + 1 distinct ones
    exist and then dropping the left end of the narrowest gaps; class k holds the values in
    [q_k, q_k+1), the outer boundaries widened by sd·√ε.
    """

    #: The probability grids of 2..this many points are evaluated together on first use (one
    #: call of np.quantile, whose per-call cost was most of a grid's nine cuts; each value is
    #: an order statistic or the same interpolation between two, whatever else is asked).
    PREFETCH = 20

    def __init__(self, x: np.ndarray):
        self.x = np.asarray(x, dtype=np.float64).reshape(-1)
        self.n_initial = int(np.unique(self.x).size)
        self._quantiles: dict[int, np.ndarray] = {}

    def _at(self, m: int) -> np.ndarray:
        """The sample quantiles at ``m`` equally spaced probabilities."""
        if m not in self._quantiles:
            grid = range(2, self.PREFETCH + 1) if m <= self.PREFETCH else [m]
            probs = [np.linspace(0.0, 1.0, g) for g in grid]
            values = np.quantile(self.x, np.concatenate(probs))
            ends = np.cumsum([len(p) for p in probs])
            for g, part in zip(grid, np.split(values, ends[:-1]), strict=True):
                self._quantiles[g] = part
        return self._quantiles[m]

    def cut(self, n_clusters: int) -> np.ndarray:
        k = n_clusters
        if not 1 <= k <= self.n_initial:
            raise ValueError(
                f"the data have {self.n_initial} distinct values, so 1..{self.n_initial} "
                f"quantile classes; got {k}."
            )
        x = self.x
        m = k
        q = np.empty(0)
        while q.size < k + 1:
            m += 1
            q = np.unique(self._at(m))
        if q.size > k + 1:
            gaps = np.argsort(np.diff(q), kind="stable")[: q.size - k - 1]
            q = np.delete(q, gaps)
        q[0], q[-1] = self._ends
        return np.searchsorted(q, x, side="right") - 1

    @functools.cached_property
    def _ends(self) -> tuple[float, float]:
        """The outer boundaries: the data's range widened by sd·√ε."""
        x = self.x
        eps = x.std(ddof=1) * np.sqrt(np.finfo(np.float64).eps) if x.size > 1 else 0.0
        return float(x.min() - eps), float(x.max() + eps)


def hc_tree(
    X: np.ndarray, rng: np.random.Generator, max_rows: int | None = None
) -> tuple[HierarchicalTree | QuantileClasses, np.ndarray]:
    """mclust's default start: the hierarchical tree of ``X`` (on a random subset of rows when
    ``X`` is large, as mclust), or quantile classes for one feature.

    Returns the tree and the indices of the rows it was built on.
    """
    rows = np.arange(X.shape[0])
    if X.shape[1] == 1:
        return QuantileClasses(X[:, 0]), rows
    cap = hc_max_rows(X.shape[1]) if max_rows is None else max_rows
    if X.shape[0] > cap:
        rows = np.sort(rng.choice(X.shape[0], size=cap, replace=False))
    return hierarchical_tree(scaled_svd(X[rows])), rows


def standardise(X: np.ndarray) -> np.ndarray:
    """Each feature centred and scaled to unit standard deviation (a constant one only
    centred): what k-means++ seeds on, so that the partition does not depend on units."""
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def kmeans_plus_plus_labels(
    X: np.ndarray, k: int, rng: np.random.Generator, n_lloyd: int = 0, *, standardised: bool = False
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each row joins its nearest seed.

    As scikit-learn's ``init_params="k-means++"``, no Lloyd iterations follow by default: they
    pull every start towards the same few k-means optima and cost the restarts their diversity.
    Features are standardised first (:func:`standardise`) so that the partition does not depend
    on units; ``standardised=True`` says ``X`` already is (a caller seeding many restarts on the
    same data standardises it once, and draws them with :func:`kmeans_plus_plus_many`).
    """
    Z = X if standardised else standardise(X)
    labels = kmeans_plus_plus_many(Z, k, rng, 1)[0]
    centers = np.zeros((k, Z.shape[1]))
    for _ in range(n_lloyd):
        for j in range(k):
            members = labels == j
            if members.any():  # (an emptied cluster keeps its centre)
                centers[j] = Z[members].mean(axis=0)
        new = _nearest(Z, centers)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def kmeans_plus_plus_many(
    Z: np.ndarray, k: int, rng: np.random.Generator, count: int
) -> np.ndarray:
    """``count`` k-means++ seedings of the standardised rows ``Z`` (each row's label, (count,
    N)), drawn one after another from ``rng`` as :func:`kmeans_plus_plus_labels` draws them.

    Each new seed is drawn as numpy's ``Generator.choice(n, p=...)`` draws it (without its checks
    of p: the same cumulative sums and the same one uniform draw, so the same row and the same
    stream; tested), p proportional to each row's squared distance to its nearest seed so far.
    Distances are sums over the features of (z − c)², in order. With the compiled functions
    loaded, every draw is made first (a row, then K − 1 uniforms, per seeding) and the seedings
    run in one compiled call, with the same arithmetic; should some seeding find every row on
    a seed already (fewer distinct rows than K), the draws are taken back and the seedings made
    here one draw at a time, as that case draws a row instead of a uniform (a restart's seeding
    on small data was a quarter of select_em's time for one feature)."""
    from bayesgmm.core import _compiled

    n = Z.shape[0]
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    if _compiled.ready(stage="hc"):
        state = rng.bit_generator.state
        firsts = np.empty(count, dtype=np.int64)
        uniforms = np.empty((count, max(k - 1, 0)))
        for r in range(count):
            firsts[r] = rng.integers(n)
            uniforms[r] = rng.random(k - 1)
        labels = np.empty((count, n), dtype=np.int64)
        if _compiled.kmeans_seeds(Z, firsts, uniforms, labels):
            return labels
        rng.bit_generator.state = state
    return np.stack([_seeded_labels(Z, k, rng) for _ in range(count)])


def _sq_distances(Z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each row's squared distance to ``c``: Σ over the features of (z − c)², in order (the
    compiled seeding's arithmetic exactly)."""
    out = (Z[:, 0] - c[0]) ** 2
    for d in range(1, Z.shape[1]):
        out += (Z[:, d] - c[d]) ** 2
    return out


def _nearest(Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Each row's nearest centre (the first of equally near ones)."""
    return np.stack([_sq_distances(Z, c) for c in centers], axis=1).argmin(axis=1)


def _seeded_labels(Z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One k-means++ seeding of ``Z``, drawing from ``rng`` as it goes (see
    :func:`kmeans_plus_plus_many`)."""
    n = Z.shape[0]
    centers = np.empty((k, Z.shape[1]))
    centers[0] = Z[rng.integers(n)]
    closest = _sq_distances(Z, centers[0])
    for j in range(1, k):
        cdf = np.cumsum(closest)
        total = cdf[-1]
        if total <= 0:
            centers[j] = Z[rng.integers(n)]
        else:
            cdf = np.cumsum(closest / total)
            cdf /= cdf[-1]
            centers[j] = Z[int(np.searchsorted(cdf, rng.random(), side="right"))]
        np.minimum(closest, _sq_distances(Z, centers[j]), out=closest)
    return _nearest(Z, centers)


def random_resp(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random responsibilities: uniform draws normalised by row (as scikit-learn's "random")."""
    r = rng.uniform(size=(n, k))
    return r / r.sum(axis=1, keepdims=True)


def labels_to_resp(labels: np.ndarray, k: int) -> np.ndarray:
    resp = np.zeros((labels.shape[0], k))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp


def split_components(model: GaussianMixture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every split of one component of ``model`` in two: S = K mixtures of K + 1 components,
    as ``weights`` (S, K + 1), ``means`` (S, K + 1, D), ``covariances`` (S, K + 1, D, D).

    Split ``s`` replaces component ``s`` (π, μ, Σ, with Σ's largest eigenpair λ, v) by two
    halves along its principal axis, a = ½√λ v: weights π/2, means μ ± a, covariance Σ − a aᵀ
    (the moment-preserving split of Richardson & Green 1997 with u = ½): the pair has the
    component's weight, mean and covariance. A start for K + 1 from a fit at K that finds the
    optimum a start from scratch misses, when the K + 1-th component belongs inside one of
    the K (on large data the subsample tree alone, on one feature the quantile classes).
    """
    return split_mixtures(model.weights[None], model.means[None], model.covariances[None])


def split_halves(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For covariances (..., D, D): the half-axis a = ½√λ v of each (its largest eigenpair),
    (..., D), and the halves' covariance Σ − a aᵀ, (..., D, D) (:func:`split_components`: the
    halves have means μ ∓ a and weights π/2)."""
    lam, vec = np.linalg.eigh(cov)  # ascending: the principal pair is the last
    half = 0.5 * np.sqrt(np.maximum(lam[..., -1], 0.0))[..., None] * vec[..., :, -1]
    return half, cov - half[..., :, None] * half[..., None, :]


def split_mixtures(
    w: np.ndarray, mu: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_components` of R mixtures of K components at once (weights (R, K), means
    (R, K, D), covariances (R, K, D, D)): R·K mixtures of K + 1, mixture r's split s at row
    r·K + s (select_em's cross-starts split every structure's fit at each K: one call per fit
    was a few percent of its time on small data)."""
    r, k, d = mu.shape
    half, inner = split_halves(cov)
    keep = ~np.eye(k, dtype=bool)  # row s: the components other than s
    weights = np.concatenate(
        [
            np.broadcast_to(w[:, None], (r, k, k))[:, keep].reshape(r, k, k - 1),
            np.repeat(w[:, :, None] / 2, 2, axis=2),
        ],
        axis=2,
    )
    means = np.concatenate(
        [
            np.broadcast_to(mu[:, None], (r, k, k, d))[:, keep].reshape(r, k, k - 1, d),
            (mu - half)[:, :, None],
            (mu + half)[:, :, None],
        ],
        axis=2,
    )
    covariances = np.concatenate(
        [
            np.broadcast_to(cov[:, None], (r, k, k, d, d))[:, keep].reshape(r, k, k - 1, d, d),
            np.repeat(inner[:, :, None], 2, axis=2),
        ],
        axis=2,
    )
    return (
        weights.reshape(r * k, k + 1),
        means.reshape(r * k, k + 1, d),
        covariances.reshape(r * k, k + 1, d, d),
    )


def parse_init(init: Any, X: np.ndarray, k: int) -> str | np.ndarray | GaussianMixture:
    """Validate ``init``: a method name, labels (n,), responsibilities (n, K) or a mixture."""
    n, d = X.shape
    if isinstance(init, str):
        key = init.lower()
        if key not in INIT_METHODS:
            raise ValueError(
                f"init={init!r} is not a known method; use one of {list(INIT_METHODS)}, an (n,) "
                "label vector, an (n, K) responsibility matrix or a GaussianMixture."
            )
        return key
    if isinstance(init, GaussianMixture):
        if init.n_components != k or init.n_features != d:
            raise ValueError(
                f"init is a mixture with {init.n_components} components in {init.n_features} "
                f"dimensions, but the fit asks for {k} components in {d}; pass a matching one."
            )
        return init
    arr = np.asarray(init)
    if arr.ndim == 1:
        if arr.shape[0] != n:
            raise ValueError(
                f"init labels must have shape ({n},), one per row of X; got {arr.shape}."
            )
        as_int = integer_valued(arr)
        if as_int is None:
            raise ValueError(f"init labels must be integers 0..{k - 1}; got dtype {arr.dtype}.")
        arr = as_int
        if arr.min() < 0 or arr.max() >= k:
            raise ValueError(
                f"init labels must lie in 0..{k - 1}; got values {arr.min()}..{arr.max()}."
            )
        return labels_to_resp(arr, k)
    if arr.ndim == 2:
        if arr.shape != (n, k):
            raise ValueError(
                f"init responsibilities must have shape (n_obs, n_components) = ({n}, {k}); got "
                f"{arr.shape}."
            )
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError("init responsibilities must be finite and non-negative.")
        sums = arr.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-6):
            raise ValueError(
                "init responsibilities must sum to 1 in each row; normalise them with "
                "resp / resp.sum(axis=1, keepdims=True)."
            )
        return arr / sums[:, None]
    raise ValueError(
        f"init of shape {arr.shape} is not understood; pass a method name, an (n,) label vector, "
        "an (n, K) responsibility matrix or a GaussianMixture."
    )
