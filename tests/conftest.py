"""Shared fixtures: the bundled data sets and mclust 6.0.0's published results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bayesgmm as bg

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def mclust() -> dict:
    """mclust 6.0.0 ``mclustBIC(X, G = 1:9)`` results (see ../shared/reference/README.md)."""
    path = REFERENCE / "mclust.json"
    if not path.exists():
        pytest.skip(f"reference file {path} not found")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def faithful() -> np.ndarray:
    X = bg.datasets.load_faithful().to_numpy()
    assert X.shape == (272, 2)
    return X


@pytest.fixture(scope="session")
def galaxies() -> np.ndarray:
    X = bg.datasets.load_galaxies().to_numpy()
    assert X.shape == (82, 1)
    return X


def random_mixture(rng: np.random.Generator, k: int, d: int, structure: str = "VVV"):
    """A random, well-conditioned mixture whose covariances have ``structure``."""
    weights = rng.dirichlet(np.full(k, 3.0))
    means = rng.normal(scale=4.0, size=(k, d))
    covs = np.empty((k, d, d))
    shared = None
    for j in range(k):
        a = rng.normal(size=(d, d))
        full = a @ a.T / d + 0.5 * np.eye(d)
        if structure in ("VVV",):
            covs[j] = full
        elif structure == "EEE":
            shared = full if shared is None else shared
            covs[j] = shared
        elif structure in ("VVI",):
            covs[j] = np.diag(rng.uniform(0.3, 2.0, size=d))
        elif structure == "EEI":
            shared = np.diag(rng.uniform(0.3, 2.0, size=d)) if shared is None else shared
            covs[j] = shared
        elif structure in ("VII", "V"):
            covs[j] = rng.uniform(0.3, 2.0) * np.eye(d)
        elif structure in ("EII", "E"):
            shared = rng.uniform(0.3, 2.0) * np.eye(d) if shared is None else shared
            covs[j] = shared
        else:
            raise ValueError(structure)
    return bg.GaussianMixture(weights, means, covs, covariance_type=structure)
