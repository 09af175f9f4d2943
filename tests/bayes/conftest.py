"""Shared data and checks for the PyMC tests."""

from __future__ import annotations

import numpy as np
import pytest

from bayesgmm.core.model import GaussianMixture


@pytest.fixture(scope="module")
def clusters() -> np.ndarray:
    """Three separated 2-D clusters of 60 rows each, centres (0, 0), (5, 0), (0, 5)."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    return np.concatenate([rng.normal(size=(60, 2)) + c for c in centers])


def check_tree(tree, X, chains, draws, method):
    """The shape every fit_bayes tree has (K = 3, D = 2), and its pointwise log-likelihood."""
    post = tree["posterior"]
    assert post["weights"].shape == (chains, draws, 3)
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["covariances"].shape == (chains, draws, 3, 2, 2)
    ll = tree["log_likelihood"]["x"]
    assert ll.shape == (chains, draws, X.shape[0])
    gm = GaussianMixture(
        post["weights"].values[0, 1], post["means"].values[0, 1], post["covariances"].values[0, 1]
    )
    # Reference: the core's log p(x_n) (tested against scipy) at that draw's parameters.
    np.testing.assert_allclose(ll.values[0, 1], gm.log_prob(X), rtol=1e-8)
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, X)
    assert tree["em"]["means"].dims == post["means"].dims
    assert tree["em"]["means"].shape == (1, 1, 3, 2)
    assert tree.attrs["bayesgmm_method"] == method
