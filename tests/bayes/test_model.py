"""The PyMC model is the core's model, for every structure: same log-likelihood at the same
parameters, the same density in numpy and PyTensor, and theta ↔ mixture round trips."""

from __future__ import annotations

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.bayes import SUPPORTED_STRUCTURES, model_values, to_pymc
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.model import component_order
from bayesgmm.bayes.structures import CONJUGATE_STRUCTURES, _log_orientation_const
from tests.conftest import random_mixture

pm = pytest.importorskip("pymc")

CASES = [(s, "ordered", None) for s in SUPPORTED_STRUCTURES] + [
    ("VVV", None, None),
    ("VEV", None, None),
    ("V", None, None),
] + [(s, None, "conjugate") for s in CONJUGATE_STRUCTURES]  # fmt: skip


def _case(structure, identify, family, seed=4):
    d = 1 if structure in ("E", "V") else 3
    rng = np.random.default_rng(seed)
    gm = random_mixture(rng, 3, d, structure)
    X, _ = gm.sample(60, rng=rng)
    priors = bg.ConjugatePrior(shrinkage=0.05) if family else None
    model = to_pymc(X, 3, covariance_type=structure, identify=identify, priors=priors)
    return gm, X, model


def _py_fn(model, outputs):
    # The Python linker: no compilation for a few evaluations (numba's cold compile is slow).
    import pytensor
    from pytensor.compile.mode import Mode

    # No C compilation either (inner graphs would compile C thunks: tens of seconds cold).
    with pytensor.config.change_flags(cxx=""):
        return model.compile_fn(
            outputs, inputs=model.value_vars, mode=Mode(linker="py", optimizer="fast_compile")
        )


@pytest.mark.parametrize(("structure", "identify", "family"), CASES)
def test_log_likelihood_and_density_equal_the_core_and_numpy(structure, identify, family):
    gm, X, model = _case(structure, identify, family)
    values = model_values(model, gm)
    theta = model.rvs_to_values[model["theta"]]
    fn = _py_fn(model, [model.logp(vars=[model["x"]], sum=False)[0], model.logp(), model.dlogp()])
    rows, lp, grad = fn(values)
    # Reference: the core's log p(x_n) (itself tested against scipy) at the same parameters.
    np.testing.assert_allclose(rows, gm.log_prob(X), rtol=1e-10, atol=1e-10)
    # The numpy density (Laplace, Pathfinder) is PyMC's, in value and gradient, here and at a
    # point away from the mixture.
    param, c = model.bayesgmm_param, model.bayesgmm_constants
    moved = values["theta"] + 0.1 * np.random.default_rng(1).normal(size=values["theta"].size)
    for point in (values["theta"], moved):
        lp, grad = fn({theta.name: point})[1:]
        ours = evaluate(param, point, 3, X, c)
        np.testing.assert_allclose(ours["logp"], lp, rtol=1e-10)
        np.testing.assert_allclose(ours["grad"], grad, rtol=1e-8, atol=1e-8)
    # Many points at once (the draws of an approximation) give each point's values.
    many = evaluate(param, np.stack([values["theta"], moved]), 3, X, c, grad=False)
    for i, point in enumerate((values["theta"], moved)):
        one = evaluate(param, point, 3, X, c, grad=False)
        for name in ("logp", "rows", "weights", "means", "covariances"):
            np.testing.assert_allclose(many[name][i], one[name], rtol=1e-12, atol=1e-12)
    # Reference for the gradient: central differences of the numpy log density.
    h = 1e-6
    fd = [
        (evaluate(param, moved + h * e, 3, X, c, grad=False)["logp"]
         - evaluate(param, moved - h * e, 3, X, c, grad=False)["logp"]) / (2 * h)
        for e in np.eye(moved.size)
    ]  # fmt: skip
    np.testing.assert_allclose(evaluate(param, moved, 3, X, c)["grad"], fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure", ["EEV", "VEE", "EVI", "VVE"])
def test_theta_round_trips_the_mixture(structure):
    gm, X, model = _case(structure, "ordered", None, seed=7)
    theta = model_values(model, gm)["theta"]
    assert theta.size == model.bayesgmm_param.size(3)
    out = evaluate(model.bayesgmm_param, theta, 3, X, model.bayesgmm_constants, grad=False)
    order = component_order(model, gm)
    np.testing.assert_allclose(out["weights"], gm.weights[order], rtol=1e-10)
    np.testing.assert_allclose(out["means"], gm.means[order], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["covariances"], gm.covariances[order], rtol=1e-10, atol=1e-12)
    # The structure's constraint holds at any theta, not only at the round trip's.
    moved = theta + 0.3 * np.random.default_rng(2).normal(size=theta.size)
    covs = evaluate(model.bayesgmm_param, moved, 3, X, model.bayesgmm_constants)["covariances"]
    assert bg.core.structures.get_structure(structure).constraint_violation(covs) is None


def test_coords_and_names():
    X = bg.datasets.load_faithful()
    model = to_pymc(X, 2)
    assert list(model.coords["feature"]) == ["eruptions", "waiting"]
    assert len(model.coords["obs"]) == 272
    for name in ("weights", "means", "covariances", "x", "theta"):
        assert name in model.named_vars
    assert model.named_vars_to_dims["covariances"] == ("component", "feature", "feature_bis")


def test_bad_input_is_the_cores_error():
    # (NaN is a missing value: tests/bayes/test_missing.py; inf and an empty row are errors.)
    with pytest.raises(ValueError, match="inf"):
        to_pymc(np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="row 1 has every value missing"):
        to_pymc(np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="identify"):
        to_pymc(np.random.default_rng(0).normal(size=(20, 2)), 2, identify="sorted")
    with pytest.raises(ValueError, match="'EVE' has no conjugate prior in PyMC"):
        to_pymc(bg.datasets.load_faithful(), 2, covariance_type="EVE", priors=bg.ConjugatePrior())


@pytest.mark.parametrize("d", [2, 3])
def test_orientation_density_is_normalised(d):
    # ∫ c_D |det G|^{ν−D} e^{−‖G‖²/2} dG = 1 (ν − D = 25), by Monte Carlo over standard normal
    # G: E[c_D |det G|^{ν−D} (2π)^{D²/2}]. Reference: exact E|det G|^m for a standard normal
    # square G is Π_i 2^{m/2} Γ((D − i + 1 + m)/2) / Γ((D − i + 1)/2) (Bartlett), so the check
    # is done in closed form on the log scale rather than by a noisy average.
    from scipy.special import gammaln

    from bayesgmm.bayes.structures import ORIENTATION_EXCESS

    m = ORIENTATION_EXCESS
    i = np.arange(1, d + 1)
    log_moment = float(np.sum(0.5 * m * np.log(2) + gammaln((d - i + 1 + m) / 2)
                              - gammaln((d - i + 1) / 2)))  # fmt: skip
    total = _log_orientation_const(d) + 0.5 * d * d * np.log(2 * np.pi) + log_moment
    assert abs(total) < 1e-10


def test_orientations_from_the_prior_are_uniform():
    # In 2-D a uniform rotation has a uniform angle: Kolmogorov–Smirnov on prior draws.
    from scipy import stats

    X = np.random.default_rng(3).normal(size=(40, 2))
    model = to_pymc(X, 2, covariance_type="VVV", identify=None)
    draws = pm.draw(model["covariances"], draws=2000, random_seed=5)
    _, vecs = np.linalg.eigh(draws.reshape(-1, 2, 2))
    v = vecs[:, :, 1] * np.sign(vecs[:, 1:, 1])  # leading axis, upper half-plane
    angle = np.arctan2(v[:, 1], v[:, 0])
    assert stats.kstest(angle, stats.uniform(0, np.pi).cdf).pvalue > 1e-3
