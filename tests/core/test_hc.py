"""Model-based hierarchical agglomeration and the other starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.core.hc import hierarchical_tree, scaled_svd
from bayesgmm.core.init import QuantileClasses, kmeans_plus_plus_labels


def _rand_index_perfect(a, b):
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def test_recovers_separated_groups():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 30)
    X = rng.normal(size=(90, 2)) * 0.3 + np.array([[0, 0], [6, 0], [0, 6]])[truth]
    tree = hierarchical_tree(scaled_svd(X))
    assert _rand_index_perfect(tree.cut(3), truth)
    assert np.unique(tree.cut(1)).size == 1
    assert np.unique(tree.cut(90)).size == 90


def test_duplicates_merge_first():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.1, 5.0], [0.1, 0.0]])
    tree = hierarchical_tree(X)
    assert tree.n_initial == 5  # every row starts alone, as in mclust
    assert sorted(tree.merges[0]) == [0, 1]  # the duplicated rows cost least
    labels = tree.cut(4)
    assert labels[0] == labels[1]


def test_scaled_svd_is_unit_free():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    a = hierarchical_tree(scaled_svd(X)).cut(4)
    b = hierarchical_tree(scaled_svd(X * [1e-6, 1.0, 1e6] + 100.0)).cut(4)
    assert _rand_index_perfect(a, b)


def test_kmeans_plus_plus_partition():
    rng = np.random.default_rng(2)
    truth = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 2)) + np.array([[0, 0], [10, 10]])[truth]
    labels = kmeans_plus_plus_labels(X, 2, np.random.default_rng(0), n_lloyd=5)
    assert _rand_index_perfect(labels, truth)


def test_kmeans_plus_plus_draws_as_generator_choice():
    # The seeding draws each new centre as numpy's Generator.choice(n, p=...) does (without its
    # checks of p): the same rows from the same seed, and the generator left in the same state.
    # Reference: the textbook loop written with rng.choice.
    def reference(X, k, rng):
        sd = X.std(axis=0)
        Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        centers = [Z[rng.integers(Z.shape[0])]]
        closest = ((Z - centers[0]) ** 2).sum(axis=1)
        for _ in range(1, k):
            c = Z[rng.choice(Z.shape[0], p=closest / closest.sum())]
            centers.append(c)
            closest = np.minimum(closest, ((Z - c) ** 2).sum(axis=1))
        return (((Z[:, None, :] - np.array(centers)[None]) ** 2).sum(axis=2)).argmin(axis=1)

    data = np.random.default_rng(5)
    for seed in range(20):
        X = data.normal(size=(int(data.integers(10, 300)), int(data.integers(1, 5))))
        X[: X.shape[0] // 3] = X[0]  # tied rows: zero probabilities in p
        k = int(data.integers(2, 9))
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(kmeans_plus_plus_labels(X, k, a), reference(X, k, b))
        assert a.random() == b.random()


# -- mclust's own partitions (tests/reference/mclust_hc.json, written by make_mclust_hc.R) -----

MCLUST_HC = Path(__file__).resolve().parents[1] / "reference" / "mclust_hc.json"


def _same_partition(a, b) -> bool:
    return _rand_index_perfect(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def mclust_hc() -> dict:
    return json.loads(MCLUST_HC.read_text())


@pytest.mark.parametrize("name", ["faithful", "iris"])
def test_hierarchical_start_is_mclusts(mclust_hc, name):
    # mclust 6.0.0's hclass(hc(X, "VVV", use = "SVD"), G), G = 1..30: the same partitions,
    # including where equal merge costs (faithful's whole-minute waiting times, iris's rounded
    # lengths) are decided by mclust's ordering rule.
    if name == "faithful":
        X = bg.datasets.load_faithful().to_numpy()
    else:
        X = np.asarray(mclust_hc["iris_x"]).T
    tree = hierarchical_tree(scaled_svd(X))
    for g, theirs in enumerate(mclust_hc[f"{name}_hc"], start=1):
        assert _same_partition(tree.cut(g), theirs), g


def test_one_dimensional_start_is_mclusts_qclass(mclust_hc):
    x = bg.datasets.load_galaxies().to_numpy()[:, 0]
    classes = QuantileClasses(x)
    for g, theirs in enumerate(mclust_hc["galaxies_qclass"], start=1):
        np.testing.assert_array_equal(classes.cut(g) + 1, theirs)
