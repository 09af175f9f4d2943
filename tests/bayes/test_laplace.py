"""The Laplace approximation's coordinates (:mod:`bayesgmm.bayes.laplace`): the Cayley chart of
the orientations, its Haar density and gradient, and the exact part (R) kept out of the ratio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.laplace import Chart
from bayesgmm.bayes.structures import parametrisation
from bayesgmm.core.model import GaussianMixture


def _chart(structure: str, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
    param = parametrisation(structure, d)
    consts = param.constants(X, k, None)
    theta0 = rng.normal(size=param.size(k))
    return param, consts, X, Chart(param, k, theta0), rng


@pytest.mark.parametrize("d", [2, 3, 4])
def test_haar_density_in_cayley_coordinates(d):
    # Reference (a derivation): the Haar volume at Q(s) is |det J|, J's columns the skew
    # coordinates of Qᵀ ∂Q/∂s_ab (orthonormal up to a constant); its log must differ from
    # log_haar by one constant wherever s is.
    _, _, _, chart, rng = _chart("EEV", d, 2)
    iu = chart.iu
    eye = np.eye(d)

    def q_of(s):
        return np.linalg.solve(eye - s, eye + s)

    logs = []
    for _ in range(4):
        u = np.zeros(chart.n_u)
        # The first orientation moves; the others stay at S = 0 (log Haar 0 there).
        u[chart.other.size : chart.other.size + chart.m] = rng.normal(size=chart.m)
        s = chart.skew(u)[0]
        q = q_of(s)
        cols = []
        for a, b in zip(*iu, strict=True):
            e = np.zeros((d, d))
            e[a, b], e[b, a] = 1.0, -1.0
            h = 1e-6
            dq = (q_of(s + h * e) - q_of(s - h * e)) / (2 * h)
            w = q.T @ dq
            cols.append(w[iu])
        logj = np.log(abs(np.linalg.det(np.array(cols).T)))
        logs.append(logj - float(chart.log_haar(u)))
    np.testing.assert_allclose(logs, logs[0], atol=1e-6)


@pytest.mark.parametrize("structure", ["VVV", "EEE", "VEV"])
def test_chart_gradient_matches_finite_differences(structure):
    param, consts, X, chart, rng = _chart(structure, 3, 2)
    u = rng.normal(size=chart.n_u) * 0.3

    def h(v):
        return float(evaluate(param, chart.theta(v), 2, X, consts)["logp"] + chart.log_haar(v))

    grad = chart.grad_u(u, evaluate(param, chart.theta(u), 2, X, consts)["grad"])
    step = 1e-6
    fd = [(h(u + step * e) - h(u - step * e)) / (2 * step) for e in np.eye(chart.n_u)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


def test_ratio_does_not_depend_on_r():
    # p(θ | x) over the orientation block's R is its prior, exactly: log p(θ(u, R)) minus the
    # R terms is the same for any R (what lets q draw R exactly).
    param, consts, X, chart, rng = _chart("VVV", 3, 2)
    u = rng.normal(size=chart.n_u) * 0.3
    r = chart.sample_r(rng, 5)
    theta = chart.theta(np.tile(u, (5, 1)), r)
    lp = evaluate(param, theta, 2, X, consts, grad=False)["logp"] - chart.log_r_prior(r)
    np.testing.assert_allclose(lp, lp[0], rtol=0, atol=1e-9)
    # And the map leaves the mixture unchanged when only R changes.
    covs = evaluate(param, theta, 2, X[:0], consts, grad=False)["covariances"]
    np.testing.assert_allclose(covs, np.broadcast_to(covs[0], covs.shape), atol=1e-10)


def test_laplace_passes_where_the_model_is_well_determined():
    # Old Faithful, K = 1 and 2 with rotated covariances. A normal in G's own coordinates gave
    # k̂ 0.45 (EEE,1), 0.56 (EEE,2) and 0.54 (VVV,2) over 4000 draws (measured 2026-12-01);
    # in the chart's, 0.29, 0.18 and 0.34: good draws (k̂ ≤ 0.5), no warning.
    X = bg.datasets.load_faithful()
    for structure, k in [("EEE", 1), ("EEE", 2), ("VVV", 2)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", bg.PosteriorWarning)
            tree = bg.fit_bayes(X, k, covariance_type=structure, rng=1, log_likelihood=False)
        assert tree["sample_stats"].attrs["pareto_k"] <= 0.5
        # The draws sit around EM's estimate: the posterior means of the component means
        # within 3 posterior sds of EM's.
        post = tree["posterior"]["means"]
        gap = np.abs(post.mean(("chain", "draw")) - tree["em"]["means"][0, 0]) / post.std(
            ("chain", "draw")
        )
        assert float(gap.max()) < 3


def test_laplace_draws_keep_the_orientation_exact_part():
    # A covariance drawn by Laplace is a valid one however far the draw: symmetric positive
    # definite, and the mixture's log density is finite at every draw.
    X = bg.datasets.load_faithful().to_numpy()
    tree = bg.fit_bayes(X, 2, covariance_type="VVV", rng=3, draws=200, chains=2)
    covs = tree["posterior"]["covariances"].values.reshape(-1, 2, 2, 2)
    assert np.all(np.linalg.eigvalsh(covs) > 0)
    gm = GaussianMixture(
        tree["posterior"]["weights"].values[0, 0],
        tree["posterior"]["means"].values[0, 0],
        covs[0],
    )
    assert np.isfinite(gm.log_prob(X)).all()
