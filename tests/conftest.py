"""Shared fixtures: the bundled data sets and mclust 6.0.0's published results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import bayesgmm as bg

# Property-based tests draw the same examples on every run ("ci", the default), so that CI's
# verdict does not depend on the run: a fresh clone has no example database, and a random new
# example once failed a submission for a reason older than the change under test.
# HYPOTHESIS_PROFILE=explore draws fresh examples (locally, to look for new counter-examples;
# put any that fail in the test as @example).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: mclust's published results, kept in the repository (tests/reference/README.md), so that a
#: clone with nothing beside it runs every test against them.
REFERENCE = Path(__file__).resolve().parent / "reference"


@pytest.fixture(scope="session")
def mclust() -> dict:
    """mclust 6.0.0 ``mclustBIC(X, G = 1:9)`` results (tests/reference/README.md)."""
    return json.loads((REFERENCE / "mclust.json").read_text())


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
    """A random, well-conditioned mixture whose covariances have ``structure``: built from the
    decomposition Σ_k = λ_k D_k A_k D_kᵀ, each letter drawn once (E), per component (V) or
    fixed (I: unit shape or the axes)."""
    weights = rng.dirichlet(np.full(k, 3.0))
    means = rng.normal(scale=4.0, size=(k, d))
    code = {"E": "EII", "V": "VII"}.get(structure, structure)
    volume, shape, orient = code

    def draw(letter, make, fixed):
        if letter == "I":
            return [fixed] * k
        if letter == "E":
            return [make()] * k
        return [make() for _ in range(k)]

    def shape_draw():
        a = rng.uniform(0.4, 2.5, size=d)
        return a / np.exp(np.log(a).mean())

    def rotation():
        q, r = np.linalg.qr(rng.normal(size=(d, d)))
        return q * np.sign(np.diag(r))

    vols = draw("E" if volume == "E" else "V", lambda: rng.uniform(0.3, 2.0), None)
    shapes = draw(shape, shape_draw, np.ones(d))
    rots = draw(orient, rotation, np.eye(d))
    covs = np.stack([v * (r * a) @ r.T for v, a, r in zip(vols, shapes, rots, strict=True)])
    covs = 0.5 * (covs + covs.transpose(0, 2, 1))
    return bg.GaussianMixture(weights, means, covs, covariance_type=structure)
