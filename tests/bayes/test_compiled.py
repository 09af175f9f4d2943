"""Compile once: fit_bayes's PyMC methods reuse one model (and what each sampler compiled) per
(parametrisation, structure, D, identify, K); new data and prior constants go in as data."""

from __future__ import annotations

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.bayes import _compiled, to_pymc
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.structures import parametrisation
from tests.bayes.conftest import check_tree

pm = pytest.importorskip("pymc")


@pytest.fixture
def shifted(clusters):
    """Other data of the same D: 150 of the rows, moved by (10, -10) and stretched."""
    return clusters[:150] * np.array([1.5, 0.7]) + np.array([10.0, -10.0])


def test_the_cached_model_takes_new_data_and_prior_constants(clusters, shifted):
    _compiled.clear()
    param = parametrisation("EEV", 2, identify="ordered")
    first = _compiled.model_for(param, param.constants(clusters, 2, None), clusters, 2, "EEV", None)
    priors = bg.bayes.Priors(mean_scale=3.0, volume_scale=0.8)
    consts = param.constants(shifted, 2, priors)
    again = _compiled.model_for(param, consts, shifted, 2, "EEV", priors)
    assert again is first  # one model per key, not rebuilt
    theta = np.random.default_rng(3).normal(size=param.size(2))
    logp = again.model.compile_logp()({"theta": theta})
    # Reference: a model built afresh on the new data and priors, and the numpy density
    # (itself tested against the core's log_prob and scipy).
    fresh = to_pymc(shifted, 2, covariance_type="EEV", priors=priors)
    np.testing.assert_allclose(logp, fresh.compile_logp()({"theta": theta}), rtol=1e-10)
    np.testing.assert_allclose(logp, evaluate(param, theta, 2, shifted, consts)["logp"], rtol=1e-10)
    # Another K, structure or identification is another model.
    other = _compiled.model_for(param, param.constants(clusters, 3, None), clusters, 3, "EEV", None)
    assert other is not first
    assert len(_compiled._ENTRIES) == 2


@pytest.mark.parametrize(
    ("method", "options"),
    [("nuts", {"tune": 150}), ("nutpie", {"tune": 150}), ("advi", {"n": 2000})],
)
def test_a_second_call_samples_the_new_data(monkeypatch, clusters, shifted, method, options):
    if method == "nutpie":
        pytest.importorskip("nutpie")
    # The EM start in numpy for every call: on a cold numba cache the core's compiled code
    # becomes ready in the background, between two calls or not, and its sums agree with
    # numpy's to rounding only, which would move the draws compared below by ~1e-9.
    monkeypatch.setenv("BAYESGMM_COMPILED", "0")
    _compiled.clear()
    options = {"draws": 100, "chains": 2, "log_likelihood": False, **options}
    first = bg.fit_bayes(clusters, 3, covariance_type="EII", method=method, rng=1, **options)
    if method == "nutpie":
        # nutpie's tree has the shape of every other method's (the one nutpie test: nutpie
        # compiles its own code with numba, tens of seconds on a cold machine).
        check_tree(
            bg.fit_bayes(clusters, 3, covariance_type="EII", method=method, rng=1,
                         **{**options, "log_likelihood": True}),
            clusters, 2, 100, "nutpie",
        )  # fmt: skip
        assert "diverging" in first["sample_stats"]
    entry = next(iter(_compiled._ENTRIES.values()))
    compiled = dict(entry.compiled)
    assert len(compiled) == 1
    tree = bg.fit_bayes(shifted, 3, covariance_type="EII", method=method, rng=2, **options)
    assert next(iter(_compiled._ENTRIES.values())).compiled == compiled  # nothing recompiled
    # The posterior is that of the new data: its means sit at the new EM estimate (the old
    # data's clusters are 10 or more away), and its rows are the new data's.
    post = tree["posterior"]["means"].mean(("chain", "draw")).values
    np.testing.assert_allclose(post, tree["em"]["means"].values[0, 0], atol=0.5)
    assert tree["observed_data"]["x"].shape == shifted.shape
    # Nothing of the earlier calls carries over (adapted step sizes, optimiser state, random
    # streams): the first data and seed again give the first call's draws exactly.
    again = bg.fit_bayes(clusters, 3, covariance_type="EII", method=method, rng=1, **options)
    np.testing.assert_array_equal(
        again["posterior"]["means"].values, first["posterior"]["means"].values
    )


def test_sampler_options_that_fit_bayes_sets(clusters):
    with pytest.raises(TypeError, match="method='nuts' sets PyMC's step and nuts_sampler"):
        bg.fit_bayes(clusters, 3, method="nuts", nuts_sampler="numpyro")


def test_no_blas_warning(clusters):
    """PyTensor's "could not link to a BLAS installation" concerns its C backend; on the
    default Numba backend to_pymc tells it there is none, so a fresh process building and
    compiling a model shows no such warning (the search itself would have shown it here,
    where no system BLAS is installed, and on every pip or uv install)."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import numpy as np, bayesgmm as bg\n"
        "X = np.random.default_rng(0).normal(size=(30, 2))\n"
        "model = bg.to_pymc(X, 2, covariance_type='EII')\n"
        "model.compile_logp()(model.initial_point())\n"
        "import pytensor; print(repr(pytensor.config.blas__ldflags))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTENSOR_FLAGS"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "BLAS" not in run.stderr, run.stderr
    # A user's own setting is left alone.
    env["PYTENSOR_FLAGS"] = "blas__ldflags=-lmyblas"
    run = subprocess.run(
        [sys.executable, "-c", code.replace("model.compile_logp()(model.initial_point())\n", "")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert run.stdout.strip() == "'-lmyblas'"


def test_the_cache_keeps_no_data_after_a_fit(clusters):
    _compiled.clear()
    param = parametrisation("EII", 2, identify="ordered")
    entry = _compiled.model_for(param, param.constants(clusters, 2, None), clusters, 2, "EII", None)
    assert entry.model["x_data"].get_value().shape == clusters.shape
    _compiled.release(entry)
    # Up to CACHE_SIZE models stay in memory: with their compiled code, not users' data.
    assert entry.model["x_data"].get_value().shape == (0, 2)
    assert entry.model.bayesgmm_spec["X"].shape == (0, 2)
