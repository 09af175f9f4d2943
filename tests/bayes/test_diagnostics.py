"""The approximations' own diagnostic: PSIS's Pareto k of the importance ratios p(θ | x) / q(θ),
stored with the draws and raised as a PosteriorWarning when it fails (k > 0.7)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayesgmm as bg


def test_laplace_on_a_nearly_normal_posterior_passes():
    # One Gaussian, 2000 rows: three parameters and a posterior close to normal
    # (Bernstein–von Mises), so the Laplace normal is a good importance proposal
    # (measured: k = 0.33).
    X = np.random.default_rng(0).normal(size=(2000, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", bg.PosteriorWarning)
        tree = bg.fit_bayes(X, 1, covariance_type="E", rng=1, log_likelihood=False)
    assert tree["sample_stats"].attrs["pareto_k"] <= 0.5


def test_laplace_on_a_small_sample_fails_and_says_so():
    # Eight rows: the variance's posterior is skewed (inverse-gamma-like, few degrees of
    # freedom), which a normal at the mode cannot follow in its tails (measured: k = 1.4).
    X = np.random.default_rng(0).normal(size=(8, 1))
    with pytest.warns(bg.PosteriorWarning, match=r"Laplace approximation's importance ratios"):
        tree = bg.fit_bayes(X, 1, covariance_type="E", rng=1, log_likelihood=False)
    assert tree["sample_stats"].attrs["pareto_k"] > 0.7


def test_compare_k_says_which_posteriors_failed():
    X = np.random.default_rng(0).normal(size=(8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", bg.PosteriorWarning)  # said in a note, not raised
        res = bg.compare_k(
            X, [1], covariance_type="E", methods=("bic", "loo"), bayes_method="laplace", rng=1
        )
    assert any("K=1: the laplace posterior failed its own diagnostic" in n for n in res.notes)
