"""Covariance structures: registry, parsing, parameter counts and fitted constraints."""

from __future__ import annotations

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.core.structures import STRUCTURES, get_structure, structure_names
from tests.conftest import random_mixture


def mclust_n_cov(name: str, d: int, g: int) -> int:
    """Covariance parameters as mclust's nMclustParams (Fraley & Raftery, mclust manual)."""
    return {
        "E": 1,
        "V": g,
        "EII": 1,
        "VII": g,
        "EEI": d,
        "VVI": g * d,
        "EEE": d * (d + 1) // 2,
        "VVV": g * d * (d + 1) // 2,
    }[name]


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("g", [1, 3, 9])
def test_parameter_counts_match_mclust(name, d, g):
    s = STRUCTURES[name]
    if s.univariate and d != 1:
        return
    assert s.n_parameters(g, d) == (g - 1) + g * d + mclust_n_cov(name, d, g)


@pytest.mark.parametrize(
    ("alias", "code"),
    [
        ("full", "VVV"),
        ("tied", "EEE"),
        ("diag", "VVI"),
        ("spherical", "VII"),
        ("vvv", "VVV"),
        (" EEE ", "EEE"),
    ],
)
def test_aliases(alias, code):
    assert get_structure(alias).name == code


def test_unknown_lists_valid():
    with pytest.raises(
        ValueError, match=r"valid: E, V, EII, VII, EEI, VVI, EEE, VVV, .*full \(=VVV\)"
    ):
        get_structure("VEV")


def test_names_by_dimension():
    assert structure_names(1) == ["E", "V"]
    assert structure_names(3) == ["EII", "VII", "EEI", "VVI", "EEE", "VVV"]


@pytest.mark.parametrize("name", ["EII", "VII", "EEI", "VVI", "EEE", "VVV"])
def test_fitted_covariances_have_the_constraints(name):
    # Data from an unconstrained mixture: the fit must still obey the structure's constraints.
    rng = np.random.default_rng(7)
    X, _ = random_mixture(rng, 3, 3, "VVV").sample(400, rng=rng)
    covs = bg.fit_em(X, 3, covariance_type=name, init="kmeans++", rng=1).model.covariances
    off = covs - np.einsum("kii->ki", covs)[:, :, None] * np.eye(3)
    diag = np.einsum("kii->ki", covs)
    if name in ("EII", "VII", "EEI", "VVI"):
        np.testing.assert_array_equal(off, 0.0)  # axis-aligned
    if name in ("EII", "VII"):
        np.testing.assert_allclose(diag, diag[:, :1] * np.ones(3), rtol=1e-12)  # spherical
    if name[0] == "E":
        np.testing.assert_allclose(covs, np.broadcast_to(covs[0], covs.shape), rtol=1e-12)
    if name in ("VVV", "VII", "VVI"):
        assert not np.allclose(covs[0], covs[1])  # free per component
