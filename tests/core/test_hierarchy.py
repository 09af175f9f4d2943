"""bayesgmm.hierarchical: trees, cuts, scipy's linkage matrix, starts for EM, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.cluster import hierarchy as sch

import bayesgmm as bg

REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def _same_partition(a, b) -> bool:
    return bg.adjusted_rand_index(np.asarray(a), np.asarray(b)) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    iris = np.asarray(json.loads((REFERENCE / "mclust_hc.json").read_text())["iris_x"]).T
    return {"faithful": bg.datasets.load_faithful().to_numpy(), "iris": iris}


@pytest.mark.parametrize("name", ["faithful", "iris"])
@pytest.mark.parametrize("structure", ["VVV", "VII", "EEE", "EII"])
def test_model_based_trees_cut_as_mclusts(data, name, structure):
    # Reference: mclust 6.0.0's hclass(hc(X, modelName, use = "SVD"), G) (tests/reference:
    # VVV from make_mclust_hc.R, the others from make_mclust_hc_models.R), G = 1..9.
    if structure == "VVV":
        ref = json.loads((REFERENCE / "mclust_hc.json").read_text())[f"{name}_hc"][:9]
    else:
        ref = json.loads((REFERENCE / "mclust_hc_models.json").read_text())[f"{name}_{structure}"]
    tree = bg.hierarchical(data[name], covariance_type=structure)
    assert tree.linkage == "model" and tree.use == "svd"
    for g, theirs in enumerate(ref, start=1):
        assert _same_partition(tree.cut(g), theirs), (structure, name, g)


@pytest.mark.parametrize("structure", ["V", "E"])
def test_one_feature_trees_cut_as_mclusts(structure):
    # Reference: mclust 6.0.0's hclass(hc(x, modelName), G) for galaxies / 1000, G = 1..9
    # (make_mclust_hc_models.R): mclust builds these on the raw values, "V" with α = ε.
    ref = json.loads((REFERENCE / "mclust_hc_models.json").read_text())[f"galaxies_{structure}"]
    x = bg.datasets.load_galaxies()
    tree = bg.hierarchical(x, covariance_type=structure)
    assert tree.use == "raw"
    for g, theirs in enumerate(ref, start=1):
        assert _same_partition(tree.cut(g), theirs), (structure, g)
    assert bg.hierarchical(x).covariance_type == "V"  # the default for one feature
    with pytest.raises(ValueError, match="'VVV' is for several features; X has one"):
        bg.hierarchical(x, covariance_type="VVV")


@pytest.mark.parametrize("linkage", ["ward", "average", "complete", "single"])
def test_classical_linkages_are_scipys(data, linkage):
    # Reference: scipy's linkage and fcluster on the same coordinates (the wrapper adds none).
    X = data["iris"]
    tree = bg.hierarchical(X, linkage)
    L = sch.linkage(X, method=linkage)
    np.testing.assert_allclose(tree.to_scipy(), L)
    for k in range(1, 8):
        theirs = sch.fcluster(L, k, criterion="maxclust")
        if len(np.unique(theirs)) == k:  # fcluster gives fewer where heights tie
            assert _same_partition(tree.cut(k), theirs), (linkage, k)
        assert len(np.unique(tree.cut(k))) == k


@pytest.mark.parametrize(
    ("linkage", "structure"),
    [("model", "VVV"), ("model", "VII"), ("model", "EEE"), ("model", "EII"), ("ward", None)],
)
def test_linkage_matrix_is_valid_and_reproduces_the_cuts(data, linkage, structure):
    X = data["faithful"]
    tree = bg.hierarchical(X, linkage, covariance_type=structure or "VVV")
    L = tree.to_scipy()
    assert sch.is_valid_linkage(L) and sch.is_monotonic(L)
    assert L[-1, 3] == X.shape[0]
    sch.dendrogram(L, no_plot=True)
    for k in (2, 3, 5):  # the matrix's own cut is the tree's
        assert _same_partition(sch.cut_tree(L, n_clusters=k)[:, 0], tree.cut(k))


def test_vvv_heights_are_the_criterions_increase(data):
    # Derivation: merging two singletons a, b (n = 2 ≤ d = 2: no determinant term) costs
    # 2 log((‖a − b‖²/2 + α)/2) − 2 log(α), α = tr(ZᵀZ)/(n d) on the tree's coordinates.
    from bayesgmm.core.hc import scaled_svd

    X = data["faithful"]
    tree = bg.hierarchical(X)
    Z = scaled_svd(X)
    alpha = float(((Z - Z.mean(axis=0)) ** 2).sum()) / Z.size
    a, b = tree.merges[0]
    assert a < X.shape[0] and b < X.shape[0]
    gap = float(((Z[a] - Z[b]) ** 2).sum())
    expected = 2 * np.log((gap / 2 + alpha) / 2) - 2 * np.log(alpha)
    assert tree.heights[0] == pytest.approx(expected, rel=1e-10)


def test_cut_table_and_bounds(data):
    tree = bg.hierarchical(data["faithful"][:40], "average")
    table = tree.cut(range(1, 5))
    assert list(table.columns) == [1, 2, 3, 4] and table.shape == (40, 4)
    assert (table.nunique() == [1, 2, 3, 4]).all()
    with pytest.raises(ValueError, match=r"k must lie in 1\.\.40"):
        tree.cut(41)
    with pytest.raises(ValueError, match=r"k must lie in 1\.\.40"):
        tree.cut(0)


def test_subsample_and_assign(data):
    # The rows outside a subsampled tree get the label its definition gives: for the
    # model-based tree, EM's mixture fitted to the tree's rows from the cut (fit_em, the same
    # call); for a classical linkage, the nearest centroid of the cut in the tree's coordinates
    # (computed here directly).
    X = data["faithful"]
    model = bg.hierarchical(X, max_rows=120, rng=1)
    assert model.n_initial == 120 and model.n_obs == X.shape[0]
    labels = model.labels_for(X, 2)
    np.testing.assert_array_equal(labels[model.rows], model.cut(2))
    others = np.setdiff1d(np.arange(X.shape[0]), model.rows)
    em = bg.fit_em(X[model.rows], 2, covariance_type="VVV", init=model.cut(2))
    np.testing.assert_array_equal(labels[others], em.model.predict(X[others]))
    ward = bg.hierarchical(X, "ward", max_rows=120, rng=1)
    labels = ward.labels_for(X, 2)
    cut = ward.cut(2)
    centroids = np.stack([X[ward.rows][cut == j].mean(axis=0) for j in range(2)])
    nearest = np.argmin(((X[others, None, :] - centroids) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(labels[others], nearest)


def test_em_starts_from_a_tree(data):
    X = data["faithful"]
    tree = bg.hierarchical(X, "ward")
    fit = bg.fit_em(X, 3, covariance_type="EEE", init=tree)
    same = bg.fit_em(X, 3, covariance_type="EEE", init=tree.cut(3))
    assert fit.loglik == pytest.approx(same.loglik, abs=1e-9)
    named = bg.fit_em(X, 3, covariance_type="EEE", init="hc:ward")
    assert named.loglik == pytest.approx(fit.loglik, abs=1e-9)
    sel = bg.select_em(X, range(1, 4), ["EEE", "VVV"], init="hc:average", n_init=1, n_jobs=1)
    assert sel.best.n_components in (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"linkage": "centroid"}, ValueError, r"linkage='centroid' is not one of \['model'"),
        ({"covariance_type": "VEV"}, ValueError, r"covariance_type='VEV' is not one of \['VVV'"),
        ({"use": "pca"}, ValueError, r"use='pca' is not one of \['svd'"),
        ({"max_rows": 1}, ValueError, "max_rows must be an integer"),
    ],
)
def test_bad_settings_are_named(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        bg.hierarchical(data["faithful"], **kwargs)


def test_missing_values_say_what_to_do(data):
    X = data["faithful"].copy()
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="needs complete rows"):
        bg.hierarchical(X)
    with pytest.raises(ValueError, match="the tree was built on 272 rows"):
        bg.hierarchical(data["faithful"]).labels_for(X[:10], 2)


def test_cuts_follow_the_merges():
    # A cut relabels each merge's second cluster as its first, in order (the definition,
    # written as a pass over all ids per merge), then numbers the clusters by their ids; merge
    # sequences with repeated or vanished ids included.
    from bayesgmm.core.hc import HierarchicalTree

    def by_definition(tree: HierarchicalTree, k: int) -> np.ndarray:
        parent = np.arange(tree.n_initial)
        for a, b in tree.merges[: tree.n_initial - k]:
            parent[parent == b] = a
        return np.unique(parent[tree.initial_labels], return_inverse=True)[1]

    rng = np.random.default_rng(5)
    for _ in range(200):
        m = int(rng.integers(1, 30))
        alive, merges = list(range(m)), []
        for _ in range(m - 1):
            if rng.random() < 0.15 or len(alive) < 2:  # any ids, even vanished or equal ones
                a, b = (int(v) for v in rng.integers(m, size=2))
            else:
                a, b = (alive[int(i)] for i in rng.choice(len(alive), 2, replace=False))
                alive.remove(b)
            merges.append((a, b))
        tree = HierarchicalTree(
            rng.integers(0, m, size=40), np.array(merges, dtype=np.int64).reshape(-1, 2)
        )
        for k in range(1, m + 1):
            np.testing.assert_array_equal(tree.cut(k), by_definition(tree, k))
