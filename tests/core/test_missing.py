"""Missing values (NaN, missing at random): the observed-data likelihood, EM on it, imputation.

Oracles: scipy's multivariate normal on each row's observed coordinates; the conditional
normal's textbook formulas row by row; a general optimiser (scipy) at EM's optimum; EM's
monotonicity; recovery of simulated parameters.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats
from scipy.special import logsumexp

import bayesgmm as bg
from bayesgmm.core._missing import Missingness, missing_pass, missingness
from bayesgmm.core._passes import mixture_density, run_pass, triu
from bayesgmm.core.structures import structure_names

pd = pytest.importorskip("pandas")


def _holes(x: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``x`` with a share of its cells set to NaN at random (completely at random), never a
    whole row."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    out[rng.random(x.shape) < share] = np.nan
    empty = np.isnan(out).all(axis=1)
    out[empty, 0] = x[empty, 0]
    return out


def _scipy_loglik(model: bg.GaussianMixture, x: np.ndarray) -> np.ndarray:
    """Reference: log Σ_k π_k N(x_o | μ_k,o, Σ_k,oo) row by row with scipy."""
    out = []
    for row in x:
        o = ~np.isnan(row)
        terms = [
            np.log(model.weights[k])
            + stats.multivariate_normal(
                model.means[k][o], model.covariances[k][np.ix_(o, o)]
            ).logpdf(row[o])
            for k in range(model.n_components)
        ]
        out.append(logsumexp(terms))
    return np.asarray(out)


@pytest.fixture(scope="module")
def three() -> tuple[np.ndarray, np.ndarray]:
    """Three 3-D clusters of 100 rows, and the same data with 15% of the cells missing."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 4.0, -1.0]])
    a = rng.normal(size=(3, 3, 3)) * 0.4 + np.eye(3)
    x = np.concatenate([rng.normal(size=(100, 3)) @ a[j] + centers[j] for j in range(3)])
    return x, _holes(x, 0.15, 1)


@pytest.mark.parametrize("structure", ["VVV", "EEE", "VEV", "VVI", "EII", "EVE"])
def test_em_loglik_is_the_observed_data_loglik(three, structure):
    _, xm = three
    fit = bg.fit_em(xm, 3, covariance_type=structure)
    ref = _scipy_loglik(fit.model, xm)
    np.testing.assert_allclose(fit.loglik, ref.sum(), rtol=1e-10)
    np.testing.assert_allclose(fit.model.log_prob(xm), ref, rtol=1e-10)
    # Never decreasing, as plain EM on the observed-data likelihood (SQUAREM keeps a trial only
    # when it does not lower it).
    assert np.diff(fit.loglik_trace).min() > -1e-9 * abs(fit.loglik)
    # BIC counts rows, not observed values (mclust's and every textbook's n).
    assert fit.n_obs == xm.shape[0]
    np.testing.assert_allclose(fit.bic, -2 * fit.loglik + fit.n_parameters * np.log(300))


def test_model_methods_on_rows_with_missing_values(three):
    x, xm = three
    model = bg.fit_em(x, 3).model
    lj = model.log_joint_all(xm)
    for n in np.flatnonzero(np.isnan(xm).any(axis=1))[:20]:
        o = ~np.isnan(xm[n])
        for k in range(3):
            ref = np.log(model.weights[k]) + stats.multivariate_normal(
                model.means[k][o], model.covariances[k][np.ix_(o, o)]
            ).logpdf(xm[n][o])
            np.testing.assert_allclose(lj[n, k], ref, rtol=1e-10)
    complete = ~np.isnan(xm).any(axis=1)
    np.testing.assert_array_equal(lj[complete], model.log_joint_all(xm[complete]))
    resp = model.responsibilities(xm)
    np.testing.assert_allclose(resp, np.exp(lj - logsumexp(lj, axis=1, keepdims=True)), atol=1e-12)
    np.testing.assert_array_equal(model.predict(xm), lj.argmax(axis=1))
    np.testing.assert_allclose(model.score(xm), _scipy_loglik(model, xm).sum(), rtol=1e-10)


def test_expected_statistics_row_by_row():
    # Reference: for every row and component, x̂ = x with x_m := μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o)
    # and E[x xᵀ] = x̂ x̂ᵀ + [0 0; 0 Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om], weighted by w_n γ_nk.
    rng = np.random.default_rng(3)
    n, d, k = 80, 4, 3
    x = _holes(rng.normal(size=(n, d)), 0.3, 4)
    w = rng.random(n)
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    covs = a @ np.swapaxes(a, 1, 2) + np.eye(d)
    center = np.nanmean(x, axis=0)
    miss = missingness(x)
    assert miss is not None
    got = missing_pass(
        miss, weights[None], means[None], covs[None], np.linalg.cholesky(covs)[None], False,
        center, sample_weight=w, stats="full",
    )  # fmt: skip
    counts, sum_x, second = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d))
    loglik = 0.0
    for i in range(n):
        o = ~np.isnan(x[i])
        m = ~o
        lj = np.array(
            [
                np.log(weights[j])
                + stats.multivariate_normal(means[j][o], covs[j][np.ix_(o, o)]).logpdf(x[i][o])
                for j in range(k)
            ]
        )
        loglik += w[i] * logsumexp(lj)
        g = w[i] * np.exp(lj - logsumexp(lj))
        for j in range(k):
            xh, c = x[i].copy(), np.zeros((d, d))
            if m.any():
                b = covs[j][np.ix_(m, o)] @ np.linalg.inv(covs[j][np.ix_(o, o)])
                xh[m] = means[j][m] + b @ (x[i][o] - means[j][o])
                c[np.ix_(m, m)] = covs[j][np.ix_(m, m)] - b @ covs[j][np.ix_(o, m)]
            xc = xh - center
            counts[j] += g[j]
            sum_x[j] += g[j] * xc
            second[j] += g[j] * (np.outer(xc, xc) + c)
    iu, ju = triu(d)
    np.testing.assert_allclose(got.loglik[0], loglik, rtol=1e-12)
    np.testing.assert_allclose(got.counts[0], counts, rtol=1e-10)
    np.testing.assert_allclose(got.sum_x[0], sum_x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.scatter[0], second[:, iu, ju], rtol=1e-9, atol=1e-12)


def test_complete_rows_take_the_ordinary_pass_exactly(three):
    # A Missingness with every row complete gives the complete-data pass's numbers bit for bit
    # (and data without NaN never reach the missing-value pass at all).
    x, _ = three
    model = bg.fit_em(x, 3).model
    none = np.zeros(0, dtype=np.intp)
    miss = Missingness(
        np.ones(x.shape, bool), np.arange(x.shape[0]), x, [], [], none, np.zeros(1, dtype=np.intp),
        np.empty((0, 3)), [],
    )  # fmt: skip
    center = x.mean(axis=0)
    args = (model.weights[None], model.means[None], model.covariances[None], model.cholesky[None])
    got = missing_pass(miss, *args, False, center, stats="full")
    ref = run_pass(x, mixture_density(*args[:2], args[3], False, center, False), stats="full")
    for name in ("loglik", "counts", "sum_x", "scatter"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert missingness(x) is None


def _unpack(theta: np.ndarray, k: int, d: int):
    """VVV parameters from an unconstrained vector: softmax weights, means, Cholesky factors
    with log diagonals."""
    logits = np.r_[0.0, theta[: k - 1]]
    weights = np.exp(logits - logsumexp(logits))
    pos = k - 1
    means = theta[pos : pos + k * d].reshape(k, d)
    pos += k * d
    iu = np.tril_indices(d)
    covs = []
    for _ in range(k):
        low = np.zeros((d, d))
        low[iu] = theta[pos : pos + len(iu[0])]
        pos += len(iu[0])
        low[np.diag_indices(d)] = np.exp(np.diag(low))
        covs.append(low @ low.T)
    return weights, means, np.asarray(covs)


def test_em_optimum_is_a_stationary_point_of_the_observed_data_likelihood():
    # A general optimiser (scipy's BFGS on every VVV parameter, unconstrained) started at EM's
    # answer finds nothing better, and one more EM step moves nothing.
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) * 0.7 + [3.0, 1.0]])
    xm = _holes(x, 0.25, 6)
    fit = bg.fit_em(xm, 2, tol=1e-12)
    k, d = 2, 2
    w0, m0, c0 = fit.model.weights, fit.model.means, fit.model.covariances
    low = np.linalg.cholesky(c0)
    parts = [np.log(w0[1:] / w0[0]), m0.ravel()]
    for j in range(k):
        lj = low[j].copy()
        lj[np.diag_indices(d)] = np.log(np.diag(lj))
        parts.append(lj[np.tril_indices(d)])
    theta0 = np.concatenate(parts)

    def negll(theta):
        weights, means, covs = _unpack(theta, k, d)
        return -bg.GaussianMixture(weights, means, covs).score(xm)

    assert negll(theta0) == pytest.approx(-fit.loglik, rel=1e-12)
    best = optimize.minimize(negll, theta0, method="BFGS", options={"gtol": 1e-9})
    assert -best.fun <= fit.loglik + 1e-6
    again = bg.fit_em(xm, 2, init=fit.model, max_iter=1, tol=0)
    np.testing.assert_allclose(again.model.means, fit.model.means, atol=1e-6)
    np.testing.assert_allclose(again.model.covariances, fit.model.covariances, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    share=st.floats(0.05, 0.5),
    structure=st.sampled_from(structure_names(3)),
    k=st.integers(1, 3),
)
def test_plain_em_never_lowers_the_observed_data_loglik(seed, share, structure, k):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3)) + (rng.random(60) < 0.5)[:, None] * [3.0, 0.0, 1.0]
    xm = _holes(x, share, seed + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.DegenerateFitWarning)  # a collapse is not the point
        fit = bg.fit_em(
            xm, k, covariance_type=structure, accelerate=False, max_iter=40, init="kmeans++",
            rng=seed,
        )  # fmt: skip
    # Until a component collapses (the likelihood is unbounded there, and the fit says so).
    assume(not fit.degenerate)
    assert np.diff(fit.loglik_trace).min() >= -1e-9 * abs(fit.loglik_trace[-1])


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_simulated_parameters_recovered(share):
    # Two well-separated 3-D components, 2000 rows; truth within a few standard errors
    # (of a mean: sd/√(n_k), here about 0.03-0.04 with complete data).
    rng = np.random.default_rng(7)
    truth = bg.GaussianMixture(
        [0.4, 0.6],
        [[0.0, 0.0, 0.0], [4.0, 2.0, -2.0]],
        [
            [[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.0]],
            [[0.5, 0.0, 0.1], [0.0, 2.0, -0.6], [0.1, -0.6, 1.0]],
        ],
    )
    x, _ = truth.sample(2000, rng=rng)
    xm = _holes(x, share, 8)
    fit = bg.fit_em(xm, 2, init="kmeans++", rng=0)  # (the hc tree of 2000 rows costs 3 s)
    order = np.argsort(fit.model.means[:, 0])
    np.testing.assert_allclose(fit.model.weights[order], truth.weights, atol=0.03)
    np.testing.assert_allclose(fit.model.means[order], truth.means, atol=0.15)
    np.testing.assert_allclose(fit.model.covariances[order], truth.covariances, atol=0.25)
    complete = bg.fit_em(x, 2, init="kmeans++", rng=0)
    # Missing values cost information, never bias: the fits agree within their noise.
    np.testing.assert_allclose(
        fit.model.means[order], complete.model.means[np.argsort(complete.model.means[:, 0])],
        atol=0.15,
    )  # fmt: skip


def test_impute_conditional_mean_and_draws(three):
    x, xm = three
    model = bg.fit_em(x, 3).model
    filled = model.impute(xm)
    observed = ~np.isnan(xm)
    np.testing.assert_array_equal(filled[observed], xm[observed])
    resp = model.responsibilities(xm)
    for n in np.flatnonzero((~observed).any(axis=1))[:15]:
        o, m = observed[n], ~observed[n]
        ref = np.zeros(m.sum())
        for k in range(3):
            cov = model.covariances[k]
            b = cov[np.ix_(m, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
            ref += resp[n, k] * (model.means[k][m] + b @ (xm[n][o] - model.means[k][o]))
        np.testing.assert_allclose(filled[n, m], ref, rtol=1e-10)
    # Multiple imputation: the draws' mean is the conditional mean (Monte Carlo, 4000 draws:
    # within 5 standard errors), and the observed values are never touched.
    row = int(np.flatnonzero((~observed).sum(axis=1) == 1)[0])
    draws = model.impute(xm[row : row + 1], draws=4000, rng=0)
    assert draws.shape == (4000, 1, 3)
    m = ~observed[row]
    values = draws[:, 0, m][:, 0]
    se = values.std() / np.sqrt(values.size)
    assert abs(values.mean() - filled[row, m][0]) < 5 * se
    np.testing.assert_array_equal(draws[:, 0, ~m], np.broadcast_to(xm[row, ~m], (4000, 2)))
    # A DataFrame in, DataFrames out (one per draw), index and columns kept.
    df = pd.DataFrame(xm, columns=["a", "b", "c"], index=np.arange(300) + 10)
    out = bg.fit_em(df, 3).impute(df)
    assert list(out.columns) == ["a", "b", "c"] and out.index[0] == 10
    assert not out.isna().any().any()
    many = model.impute(df, draws=2, rng=1)
    assert len(many) == 2 and many[0].shape == df.shape
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        model.impute(xm, draws=0)


def test_multiple_imputations_follow_the_conditional_distribution():
    # One component, one missing coordinate: x_2 | x_1 is N(μ_2 + ρ σ_2/σ_1 (x_1 − μ_1),
    # σ_2² (1 − ρ²)) (textbook). 20,000 draws: mean and variance within a few percent.
    model = bg.GaussianMixture([1.0], [[1.0, -2.0]], [[[4.0, 1.2], [1.2, 1.0]]])
    x = np.array([[3.0, np.nan]])
    draws = model.impute(x, draws=20_000, rng=2)[:, 0, 1]
    rho = 1.2 / (2.0 * 1.0)
    mean = -2.0 + rho * 1.0 / 2.0 * (3.0 - 1.0)
    var = 1.0 * (1 - rho**2)
    assert abs(draws.mean() - mean) < 4 * np.sqrt(var / draws.size)
    assert draws.var() == pytest.approx(var, rel=0.05)


def test_select_em_and_weights_with_missing_values(three):
    _, xm = three
    sel = bg.select_em(xm, range(1, 5), ["EII", "VVV", "EEE"], rng=0)
    assert sel.best.n_components == 3
    for (structure, k), fit in sel.results.items():
        if not fit.degenerate:
            np.testing.assert_allclose(
                fit.loglik,
                _scipy_loglik(fit.model, xm).sum(),
                rtol=1e-9,
                err_msg=f"{structure},{k}",
            )
    # Integer weights are repeated rows, with missing values too.
    w = np.random.default_rng(9).integers(1, 3, size=xm.shape[0])
    weighted = bg.fit_em(xm, 3, sample_weight=w, init=sel.best.model, tol=1e-12)
    repeated = bg.fit_em(np.repeat(xm, w, axis=0), 3, init=sel.best.model, tol=1e-12)
    np.testing.assert_allclose(weighted.loglik, repeated.loglik, rtol=1e-9)
    np.testing.assert_allclose(weighted.model.means, repeated.model.means, atol=1e-6)


def test_prior_and_one_feature_with_missing_values(three):
    _, xm = three
    fit = bg.fit_em(xm, 3, prior=bg.ConjugatePrior())
    assert np.isfinite(fit.loglik) and not fit.degenerate
    one = np.r_[
        np.random.default_rng(1).normal(size=50),
        np.nan,
        5 + np.random.default_rng(2).normal(size=50),
    ]
    # A row of one feature that is missing has nothing observed: refused, naming the row.
    with pytest.raises(ValueError, match="row 50 has every value missing"):
        bg.fit_em(one, 2, covariance_type="V")


def test_starts_on_mean_filled_data_are_good(three):
    # The hierarchical start is built on the data with each NaN replaced by its column mean,
    # and so is the first M-step; EM then runs on the observed values. On these data it reaches
    # the best optimum that 20 k-means++ starts find.
    _, xm = three
    hc = bg.fit_em(xm, 3)
    many = bg.fit_em(xm, 3, init="kmeans++", n_init=20, rng=0)
    assert hc.loglik >= many.loglik - 1e-6 * abs(many.loglik)


def test_bootstrap_with_missing_values(three):
    # Batched replicates on data with holes give what each replicate gives alone (the same
    # weights, fit_em from the estimate); parametric replicates carry the data's holes.
    from bayesgmm.core.bootstrap import _refit, _refit_batch, _replicate_data

    _, xm = three
    fit = bg.fit_em(xm, 3, covariance_type="EEE")
    payload = {
        "X": xm, "estimate": fit.model, "kind": "weighted", "prior": None, "tol": 1e-10,
        "max_iter": 1000,
    }  # fmt: skip
    seeds = np.random.SeedSequence(5).spawn(3)
    for seed, batched in zip(seeds, _refit_batch(payload, seeds), strict=True):
        alone = _refit(payload, np.random.default_rng(seed))
        np.testing.assert_allclose(batched.loglik, alone.loglik, rtol=1e-10)
        np.testing.assert_allclose(batched.model.means, alone.model.means, atol=1e-7)
    _, data = _replicate_data("parametric", xm, fit.model, np.random.default_rng(0))
    np.testing.assert_array_equal(np.isnan(data), np.isnan(xm))
    tree = bg.bootstrap_em(fit, xm, n_boot=8, kind="parametric", rng=0)
    assert tree["posterior"]["means"].sizes["draw"] + tree.attrs["n_failed"] == 8
    from bayesgmm.core.bootstrap import bootstrap_lrt

    lrt = bootstrap_lrt(xm, bg.fit_em(xm, 2, covariance_type="EEE"), fit, n_boot=4, rng=0)
    assert lrt.replicates.size + len(lrt.failed) == 4 and 0 < lrt.p_value <= 1
