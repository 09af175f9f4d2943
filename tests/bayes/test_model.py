"""The PyMC model is the core's model: same log-likelihood at the same parameters."""

from __future__ import annotations

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.bayes import SUPPORTED_STRUCTURES, model_values, to_pymc
from tests.conftest import random_mixture

pm = pytest.importorskip("pymc")


def _observed_logp(model, values):
    """log p(x_n) of the observed ``x`` with the free variables fixed at ``values``."""
    fixed = pm.do(model, values)
    # FAST_COMPILE: no C compilation for a one-off evaluation (cold caches made these slow).
    fn = fixed.compile_fn(
        fixed.logp(vars=[fixed["x"]], sum=False)[0], inputs=[], mode="FAST_COMPILE"
    )
    return np.asarray(fn({}))


@pytest.mark.parametrize(
    ("structure", "identify"),
    [(s, "ordered") for s in SUPPORTED_STRUCTURES] + [("VVV", None), ("V", None)],
)
def test_log_likelihood_equals_the_core(structure, identify):
    d = 1 if structure in ("E", "V") else 3
    rng = np.random.default_rng(4)
    gm = random_mixture(rng, 3, d, structure)
    X, _ = gm.sample(60, rng=rng)
    model = to_pymc(X, 3, covariance_type=structure, identify=identify)
    pointwise = _observed_logp(model, model_values(model, gm))
    # Reference: the core's log p(x_n) (itself tested against scipy) at the same parameters.
    np.testing.assert_allclose(pointwise, gm.log_prob(X), rtol=1e-10, atol=1e-10)


def test_coords_and_names():
    X = bg.datasets.load_faithful()
    model = to_pymc(X, 2)
    assert list(model.coords["feature"]) == ["eruptions", "waiting"]
    assert len(model.coords["obs"]) == 272
    for name in ("weights", "means", "covariances", "x"):
        assert name in model.named_vars
    assert model.named_vars_to_dims["covariances"] == ("component", "feature", "feature_bis")


def test_unsupported_structure_says_what_is():
    X = bg.datasets.load_faithful()
    with pytest.raises(ValueError, match=r"'EVE' has no PyMC model yet; supported: VVV, EEE"):
        to_pymc(X, 2, covariance_type="EVE")


def test_bad_input_is_the_cores_error():
    with pytest.raises(ValueError, match="NaN"):
        to_pymc(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="identify"):
        to_pymc(np.random.default_rng(0).normal(size=(20, 2)), 2, identify="sorted")


def test_lkj_prior_correlations_follow_their_marginal():
    # LKJ(η) in d dimensions: each correlation r has (r + 1)/2 ~ Beta(η − 1 + d/2, η − 1 + d/2)
    # (Lewandowski, Kurowicka & Joe 2009). PyMC 6.3's LKJCorr broke this for d ≥ 3; the prior we
    # ship (LKJCholeskyCov) must follow it.
    from scipy import stats

    rng = np.random.default_rng(8)
    X = rng.normal(size=(30, 3))
    eta = 2.0
    model = to_pymc(X, 2, priors=bg.Priors(lkj_eta=eta))
    prior = pm.sample_prior_predictive(draws=4000, model=model, var_names=["chol_0_corr"])
    corr = prior["prior"]["chol_0_corr"].values.reshape(-1, 3, 3)
    a = eta - 1 + 3 / 2
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        r = corr[:, i, j]
        assert stats.kstest((r + 1) / 2, stats.beta(a, a).cdf).pvalue > 1e-3, (i, j)
    # A wrong η would be caught: the same draws against LKJ(1)'s marginal are rejected.
    assert stats.kstest((corr[:, 0, 1] + 1) / 2, stats.beta(1.5, 1.5).cdf).pvalue < 1e-3
