"""The posterior on data with missing values: the PyMC model's likelihood is each row's observed
values' (the core's, itself tested against scipy), the numpy density's gradient is its exact
derivative, and fit_bayes returns the pointwise log-likelihood and imputations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

import bayesgmm as bg
from bayesgmm.bayes import to_pymc
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.structures import parametrisation
from bayesgmm.core._missing import missingness

pm = pytest.importorskip("pymc")


@pytest.fixture(scope="module")
def holes() -> np.ndarray:
    """Two 3-D clusters of 40 rows, a quarter of the cells missing (no row empty)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 3.0])
    x[rng.random(x.shape) < 0.25] = np.nan
    empty = np.isnan(x).all(axis=1)
    x[empty, 0] = 0.1
    return x


def _py_fn(model, outputs):
    # Python thunks only (no C or numba compilation) for a few evaluations.
    import pytensor
    from pytensor.compile.mode import Mode

    with pytensor.config.change_flags(cxx=""):
        return model.compile_fn(
            outputs, inputs=model.value_vars, mode=Mode(linker="py", optimizer="fast_compile")
        )


@pytest.mark.parametrize("structure", ["VVV", "VEI"])
def test_model_likelihood_is_the_observed_values(holes, structure):
    model = to_pymc(holes, 2, covariance_type=structure)
    assert model["x_patterns"].get_value().shape[1] == 3
    param, c = model.bayesgmm_param, model.bayesgmm_constants
    theta = model.rvs_to_values[model["theta"]]
    fn = _py_fn(model, [model.logp(vars=[model["x"]], sum=False)[0], model.logp(), model.dlogp()])
    point = 0.3 * np.random.default_rng(1).normal(size=param.size(2))
    rows, lp, grad = fn({theta.name: point})
    ours = evaluate(param, point, 2, holes, c, missing=missingness(holes))
    gm = bg.GaussianMixture(ours["weights"], ours["means"], ours["covariances"])
    # Reference: the core's log p(x_n,o) (tests/core/test_missing.py: scipy on the observed
    # coordinates) at the same mixture.
    np.testing.assert_allclose(rows, gm.log_prob(holes), rtol=1e-10)
    np.testing.assert_allclose(ours["logp"], lp, rtol=1e-10)
    # The numpy gradient (Fisher's identity on the expected points) is PyTensor's autodiff.
    np.testing.assert_allclose(ours["grad"], grad, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("structure", "family"), [("VEV", None), ("EII", "conjugate")])
def test_numpy_gradient_against_finite_differences(holes, structure, family):
    priors = bg.ConjugatePrior() if family else None
    param = parametrisation(structure, 3, priors=priors, identify=None)
    c = param.constants(holes, 2, priors)
    miss = missingness(holes)
    point = 0.3 * np.random.default_rng(2).normal(size=param.size(2))
    got = evaluate(param, point, 2, holes, c, missing=miss)["grad"]
    ref = approx_fprime(
        point, lambda t: evaluate(param, t, 2, holes, c, grad=False, missing=miss)["logp"], 1e-6
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.filterwarnings("ignore::bayesgmm.PosteriorWarning")  # its check: not the point
def test_laplace_posterior_with_missing_values(holes):
    tree = bg.fit_bayes(holes, 2, method="laplace", draws=200, chains=2, rng=3)
    post = tree["posterior"]
    gm = bg.GaussianMixture(
        post["weights"].values[0, 5], post["means"].values[0, 5], post["covariances"].values[0, 5]
    )
    np.testing.assert_allclose(
        tree["log_likelihood"]["x"].values[0, 5], gm.log_prob(holes), rtol=1e-10
    )
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, holes)
    imp = tree["imputations"]
    rows, cols = np.nonzero(np.isnan(holes))
    assert imp["x"].shape == (2, 200, rows.size)
    np.testing.assert_array_equal(imp["obs"].values, rows)
    assert np.isfinite(imp["x"].values).all()
    # The draws of a missing value centre on the conditional mean under the posterior mean
    # mixture (loosely: the posterior's spread adds to the conditional one).
    fit = bg.fit_em(holes, 2)
    filled = fit.impute(holes)
    mean = imp["x"].values.mean(axis=(0, 1))
    sd = imp["x"].values.std(axis=(0, 1))
    assert (np.abs(mean - filled[rows, cols]) < 4 * sd / np.sqrt(400) + 0.3).mean() > 0.9


def test_explicit_z_needs_complete_rows(holes):
    with pytest.raises(ValueError, match="explicit_z=True needs complete rows"):
        bg.fit_bayes(holes, 2, method="laplace", explicit_z=True)
    with pytest.raises(ValueError, match="explicit_z=True needs complete rows"):
        to_pymc(holes, 2, explicit_z=True)


def test_the_compiled_cache_keeps_missing_and_complete_apart(holes):
    from bayesgmm.bayes import _compiled

    param = parametrisation("EII", 3, identify=None)
    complete = holes[~np.isnan(holes).any(axis=1)]
    assert _compiled.key(param, 2, True) != _compiled.key(param, 2, False)
    _compiled.clear()
    a = _compiled.model_for(param, param.constants(holes, 2, None), holes, 2, "EII", None)
    b = _compiled.model_for(param, param.constants(complete, 2, None), complete, 2, "EII", None)
    assert a is not b and "x_patterns" in a.model.named_vars
    again = _compiled.model_for(param, param.constants(holes, 2, None), holes, 2, "EII", None)
    assert again is a
    _compiled.release(a)
    assert a.model["x_pattern_index"].get_value().shape == (0,)
    _compiled.clear()
