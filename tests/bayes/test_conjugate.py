"""The core's conjugate prior in PyMC: its density, and MAP-EM at the posterior mode."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayesgmm as bg
from bayesgmm.bayes import model_values, to_pymc
from bayesgmm.bayes.density import evaluate
from tests.conftest import random_mixture

pm = pytest.importorskip("pymc")

CONJUGATE_STRUCTURES = ("VVV", "EEE", "VVI", "EEI", "VII", "EII", "E", "V")


def _data(structure, n=80, seed=11):
    d = 1 if structure in ("E", "V") else 3
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, 2, d, structure)
    X, _ = gm.sample(n, rng=rng)
    return gm, X


def _unique(structure, w, mu, cov):
    """(π_1..π_{K−1}, μ, the structure's free covariance entries): the coordinates in which
    scipy's densities of the prior are written."""
    d = mu.shape[1]
    rows, cols = np.tril_indices(d)
    var = np.einsum("kii->ki", cov)
    covs = {
        "VVV": cov[:, rows, cols],
        "EEE": cov[:1, rows, cols],
        "VVI": var,
        "EEI": var[:1],
        "VII": var[:, :1],
        "V": var[:, :1],
    }.get(structure, var[:1, :1])
    return np.concatenate([w[:-1], mu.ravel(), covs.ravel()])


@pytest.mark.parametrize("structure", CONJUGATE_STRUCTURES)
def test_prior_density_is_the_cores_conjugate_prior(structure):
    gm, X = _data(structure)
    prior = bg.ConjugatePrior(shrinkage=0.05)
    resolved = prior.resolve(X, 2)
    model = to_pymc(X, 2, covariance_type=structure, priors=prior, identify=None)
    param, c = model.bayesgmm_param, model.bayesgmm_constants
    theta = model_values(model, gm)["theta"]
    empty = X[:0]  # no rows: the log density is the prior's alone

    def phi(t):
        out = evaluate(param, t, 2, empty, c, grad=False)
        return _unique(structure, out["weights"], out["means"], out["covariances"])

    # theta's density is the prior's density in (π, μ, Σ) times |det ∂(π, μ, Σ)/∂θ|.
    h = 1e-6
    jac = np.stack(
        [(phi(theta + h * e) - phi(theta - h * e)) / (2 * h) for e in np.eye(theta.size)], 1
    )
    ours = evaluate(param, theta, 2, empty, c, grad=False)["logp"] - np.linalg.slogdet(jac)[1]
    # Reference: scipy's densities of the same prior (Fraley & Raftery 2007; core/prior.py).
    kappa, mu_p = resolved.shrinkage, resolved.mean
    nu, lam = resolved.terms.dof, resolved.terms.scale
    d = X.shape[1]
    expected = stats.dirichlet.logpdf(gm.weights, np.ones(2))
    cov = gm.covariances
    if structure in ("VVV", "EEE"):
        shared = structure == "EEE"
        for j in range(2):
            if j == 0 or not shared:
                expected += stats.invwishart.logpdf(cov[j], df=nu, scale=lam)
            expected += stats.multivariate_normal.logpdf(gm.means[j], mu_p, cov[j] / kappa)
    else:
        var = np.einsum("kii->ki", cov)
        if structure in ("VVI", "EEI"):
            beta = np.diag(lam) / 2
        else:
            beta = np.full(d, np.trace(lam) / (2 * d))
        unique = {"VVI": var, "EEI": var[:1], "VII": var[:, :1], "V": var[:, :1]}.get(
            structure, var[:1, :1]
        )
        expected += stats.invgamma.logpdf(unique, a=nu / 2, scale=beta[: unique.shape[1]]).sum()
        expected += stats.norm.logpdf(gm.means, mu_p, np.sqrt(var / kappa)).sum()
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_inverse_wishart_prior_draws():
    # Prior draws of the packed factor are inverse-Wishart: their mean is Λ / (ν − d − 1)
    # (here ν = 8, d = 2; 4000 draws; tolerance 5 standard errors, measured at most 2).
    rng = np.random.default_rng(13)
    X = rng.normal(size=(50, 2))
    prior = bg.ConjugatePrior(dof=8.0, scale=np.array([[1.0, 0.3], [0.3, 0.5]]))
    model = to_pymc(X, 1, covariance_type="VVV", priors=prior, identify=None)
    draws = pm.draw(model["covariances"], draws=4000, random_seed=14)[:, 0]
    expected = prior.scale / (8 - 2 - 1)
    se = draws.std(axis=0) / np.sqrt(4000)
    assert np.all(np.abs(draws.mean(axis=0) - expected) < 5 * se)


def test_conjugate_prior_rejects_ordering():
    _, X = _data("VVV")
    with pytest.raises(ValueError, match="identify='ordered' is not available with a Conjugate"):
        to_pymc(X, 2, priors=bg.ConjugatePrior())
    with pytest.raises(ValueError, match="shrinkage > 0"):
        to_pymc(X, 2, priors=bg.ConjugatePrior(shrinkage=0.0), identify=None)


def test_fit_bayes_under_the_conjugate_prior(clusters):
    # fit_bayes starts from MAP-EM under the same prior (the posterior mode in (π, μ, Σ)), and
    # the relabelled posterior has the usual tree around it.
    from tests.bayes.conftest import check_tree

    prior = bg.ConjugatePrior()
    tree = bg.fit_bayes(clusters, 3, priors=prior, identify="relabel", draws=100, chains=2, rng=3)
    check_tree(tree, clusters, 2, 100, "laplace")

    def by_first_mean(model):
        order = np.argsort(model.means[:, 0] + 10 * model.means[:, 1])
        return model.covariances[order]

    em = tree["em"]
    em_means = em["means"].values[0, 0]
    em_covs = em["covariances"].values[0, 0][np.argsort(em_means[:, 0] + 10 * em_means[:, 1])]
    # fit_bayes's start is MAP-EM's fit with its settings (5 starts, tol=1e-6), near the MAP
    # optimum (fit_em's default tol=1e-8) and far from the ML one: 9.1e-3 against 0.107 (the
    # first 5 steps from the hierarchical start are plain EM steps, after which the relative
    # change falls below 1e-6 sooner than the optimum is reached).
    start = bg.fit_em(clusters, 3, prior=prior, n_init=5, rng=3, tol=1e-6).model
    np.testing.assert_allclose(em_covs, by_first_mean(start), rtol=1e-10)
    map_covs = by_first_mean(bg.fit_em(clusters, 3, prior=prior, rng=0).model)
    ml_covs = by_first_mean(bg.fit_em(clusters, 3, rng=0).model)
    np.testing.assert_allclose(em_covs, map_covs, atol=2e-2)
    assert np.abs(em_covs - ml_covs).max() > 5e-2
    post_means = tree["posterior"]["means"].mean(("chain", "draw")).values
    np.testing.assert_allclose(post_means, em_means, atol=0.4)
