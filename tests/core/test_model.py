"""The generative model: densities against scipy, invariants, sampling, validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import bayesgmm as bg
from bayesgmm.core.structures import STRUCTURES as ALL_STRUCTURES
from tests.conftest import random_mixture

STRUCTURES = [n for n, s in ALL_STRUCTURES.items() if not s.univariate]


def scipy_log_joint_all(gm: bg.GaussianMixture, X: np.ndarray) -> np.ndarray:
    """Independent oracle: scipy.stats.multivariate_normal, one component at a time."""
    return np.column_stack(
        [
            np.log(w) + stats.multivariate_normal(m, c).logpdf(X)
            for w, m, c in zip(gm.weights, gm.means, gm.covariances, strict=True)
        ]
    )


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("d", [1, 2, 5, 20])
def test_log_prob_matches_scipy(structure, d):
    rng = np.random.default_rng(d)
    gm = random_mixture(rng, 3, d, structure)
    X = rng.normal(scale=4.0, size=(200, d))
    oracle = scipy_log_joint_all(gm, X)
    np.testing.assert_allclose(gm.log_joint_all(X), oracle, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.log_prob(X), logsumexp(oracle, axis=1), rtol=1e-10)


def test_high_dimension_d100():
    rng = np.random.default_rng(100)
    gm = random_mixture(rng, 2, 100)
    X, _ = gm.sample(300, rng=1)
    np.testing.assert_allclose(gm.log_joint_all(X), scipy_log_joint_all(gm, X), rtol=1e-9)


def test_invariants(faithful):
    gm = bg.fit_em(faithful, 3, covariance_type="VVV").model
    lj = gm.log_joint_all(faithful)
    np.testing.assert_allclose(logsumexp(lj, axis=1), gm.log_prob(faithful), rtol=1e-12)
    resp = gm.responsibilities(faithful)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(faithful), resp.argmax(axis=1))
    z = gm.predict(faithful)
    np.testing.assert_allclose(gm.log_joint(faithful, z), lj[np.arange(len(z)), z])


def test_responsibilities_never_underflow():
    # Far in the tails every π_k N(x | μ_k, Σ_k) underflows to 0 in linear space.
    gm = bg.GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1e-4]], [[1e-4]]], "V")
    X = np.array([[-1e3], [1e3], [0.5]])
    resp = gm.responsibilities(X)
    assert np.isfinite(resp).all()
    np.testing.assert_allclose(resp.sum(axis=1), 1.0)
    np.testing.assert_allclose(resp[0], [1.0, 0.0])
    np.testing.assert_allclose(resp[1], [0.0, 1.0])
    assert np.isfinite(gm.log_prob(X)).all()


def test_scales_differing_by_1e12():
    # Σ = S C S with feature scales 1e-6 and 1e6: the exact density is that of the standardised
    # data under C, minus log|S| (a change of variables), computed here with scipy.
    rng = np.random.default_rng(0)
    base = random_mixture(rng, 3, 2)
    s = np.array([1e-6, 1e6])
    gm = bg.GaussianMixture(base.weights, base.means * s, base.covariances * np.outer(s, s), "VVV")
    Z = rng.normal(scale=3.0, size=(500, 2))
    X = Z * s
    oracle = scipy_log_joint_all(base, Z) - np.log(s).sum()
    np.testing.assert_allclose(gm.log_joint_all(X), oracle, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("structure", ["VVV", "VVI", "VII", "EEE"])
def test_sampling_recovers_parameters(structure):
    rng = np.random.default_rng(5)
    gm = random_mixture(rng, 3, 3, structure)
    n = 20_000
    X, z = gm.sample(n, rng=11)
    assert X.shape == (n, 3) and z.shape == (n,)
    freq = np.bincount(z, minlength=3) / n
    # Binomial standard error; 5 SE bounds make a false failure vanishingly rare.
    se = np.sqrt(gm.weights * (1 - gm.weights) / n)
    assert np.all(np.abs(freq - gm.weights) < 5 * se)
    for k in range(3):
        Xk = X[z == k]
        se_mean = np.sqrt(np.diag(gm.covariances[k]) / len(Xk))
        assert np.all(np.abs(Xk.mean(axis=0) - gm.means[k]) < 5 * se_mean)
        cov = np.cov(Xk.T)
        sd = np.sqrt(np.outer(np.diag(gm.covariances[k]), np.diag(gm.covariances[k])))
        # var(s_ij) ≈ (σ_ij² + σ_ii σ_jj) / n ≤ 2 σ_ii σ_jj / n.
        assert np.all(np.abs(cov - gm.covariances[k]) < 5 * np.sqrt(2 / len(Xk)) * sd)


def test_same_seed_same_sample():
    gm = random_mixture(np.random.default_rng(1), 2, 2)
    a, za = gm.sample(50, rng=3)
    b, zb = gm.sample(50, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(za, zb)


def test_immutable():
    gm = random_mixture(np.random.default_rng(1), 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gm.weights = np.array([0.5, 0.5])  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        gm.means[0, 0] = 1.0


def test_inputs_are_copied():
    w = np.array([0.5, 0.5])
    gm = bg.GaussianMixture(w, [[0.0], [1.0]], [[[1.0]], [[1.0]]], "V")
    w[0] = 0.9
    assert gm.weights[0] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [0.5, 0.6]}, "sum to 1"),
        ({"weights": [1.5, -0.5]}, "non-negative"),
        ({"means": [[0.0, 0.0]]}, r"means must have shape \(K, D\) = \(2, D\)"),
        ({"covariances": [[[1.0, 0.0], [0.0, 1.0]]] * 3}, r"shape \(K, D, D\) = \(2, 2, 2\)"),
        (
            {"covariances": [[[1.0, 2.0], [2.0, 1.0]], np.eye(2)]},
            r"covariances\[0\] is not positive",
        ),
        (
            {"covariances": [[[1.0, 0.5], [0.0, 1.0]], np.eye(2)]},
            r"covariances\[0\] is not symmetric",
        ),
        ({"means": [[np.nan, 0.0], [0.0, 0.0]]}, "NaN or inf"),
        ({"covariance_type": "XYZ"}, "valid: E, V, EII"),
        ({"covariance_type": "V"}, "is for one feature"),
    ],
)
def test_construction_errors(kwargs, match):
    args = {
        "weights": [0.5, 0.5],
        "means": [[0.0, 0.0], [1.0, 1.0]],
        "covariances": [np.eye(2), np.eye(2)],
        "covariance_type": "VVV",
    } | kwargs
    with pytest.raises(ValueError, match=match):
        bg.GaussianMixture(**args)


def test_wrong_number_of_features():
    gm = random_mixture(np.random.default_rng(1), 2, 2)
    with pytest.raises(ValueError, match="X has 3 features but the mixture has 2"):
        gm.log_prob(np.zeros((4, 3)))


@pytest.mark.parametrize(
    ("structure", "d", "g", "expected"),
    # mclust's nMclustParams for faithful (d = 2, G = 3), as quoted in issue 2 and stored as
    # "df" in tests/reference/mclust.json.
    [
        ("EII", 2, 3, 9),
        ("VII", 2, 3, 11),
        ("EEI", 2, 3, 10),
        ("VVI", 2, 3, 14),
        ("EEE", 2, 3, 11),
        ("VVV", 2, 3, 17),
        ("E", 1, 3, 6),
        ("V", 1, 3, 8),
    ],
)
def test_parameter_counts(structure, d, g, expected):
    gm = random_mixture(np.random.default_rng(0), g, d, structure)
    assert gm.n_parameters == expected


@pytest.mark.parametrize(
    ("structure", "covs", "match"),
    [
        ("EEE", [np.eye(2), 2 * np.eye(2)], "equal volumes"),
        ("VVI", [[[1.0, 0.2], [0.2, 1.0]], np.eye(2)], "diagonal"),
        ("VII", [np.diag([1.0, 2.0]), np.eye(2)], "spherical"),
        ("EII", [np.eye(2), 3 * np.eye(2)], "equal volumes"),
        ("VEI", [np.diag([1.0, 4.0]), np.diag([4.0, 1.0])], "equal shapes"),
        ("EVI", [np.diag([1.0, 4.0]), np.diag([1.0, 1.0])], "equal volumes"),
        ("VEE", [[[2.0, 1.0], [1.0, 2.0]], [[2.0, -1.0], [-1.0, 2.0]]], "Σ_k = λ_k C"),
        ("EVE", [[[2.0, 1.0], [1.0, 2.0]], np.diag([1.0, 3.0])], "one orientation"),
        ("EEV", [[[2.0, 1.0], [1.0, 2.0]], np.sqrt(3.0) * np.eye(2)], "equal shapes"),
        ("EVV", [[[2.0, 1.0], [1.0, 2.0]], np.eye(2)], "equal volumes"),
    ],
)
def test_covariances_must_have_the_structure(structure, covs, match):
    with pytest.raises(ValueError, match=match):
        bg.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], covs, structure)


def test_log_prob_many_is_log_prob_of_each():
    # One pass for S mixtures equals S calls of GaussianMixture.log_prob (itself tested against
    # scipy), for full and diagonal covariances.
    from bayesgmm.core.model import log_prob_many
    from tests.conftest import random_mixture

    rng = np.random.default_rng(21)
    X = rng.normal(scale=3.0, size=(150, 3))
    for structure in ("VVV", "VVI"):
        mixtures = [random_mixture(rng, 4, 3, structure) for _ in range(5)]
        out = log_prob_many(
            X,
            np.stack([m.weights for m in mixtures]),
            np.stack([m.means for m in mixtures]),
            np.stack([m.covariances for m in mixtures]),
        )
        expected = np.stack([m.log_prob(X) for m in mixtures])
        np.testing.assert_allclose(out, expected, rtol=1e-10)
