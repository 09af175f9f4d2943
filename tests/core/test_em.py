"""EM: monotone steps, agreement with scikit-learn, weights, prior, degeneracy, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bayesgmm as bg
from bayesgmm.core import e_step, m_step, step
from bayesgmm.core._loop import DEGENERACY_RTOL
from bayesgmm.core.em import Degenerate
from bayesgmm.core.structures import STRUCTURES as ALL_STRUCTURES
from tests.conftest import random_mixture

STRUCTURES = [n for n, s in ALL_STRUCTURES.items() if not s.univariate]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(structure="VVE", k=4, d=4, n=40, seed=40)  # a collapse hypothesis found
@given(
    structure=st.sampled_from(STRUCTURES),
    k=st.integers(1, 4),
    d=st.integers(1, 4),
    n=st.integers(40, 150),
    seed=st.integers(0, 2**16),
)
def test_loglik_never_decreases(structure, k, d, n, seed):
    rng = np.random.default_rng(seed)
    X, _ = random_mixture(rng, k, d, structure).sample(n, rng=rng)
    resp = rng.dirichlet(np.ones(k), size=n)
    try:
        model = m_step(X, resp, structure)
    except Degenerate:
        return
    previous = -np.inf
    scale = np.sqrt(X.var(axis=0))
    for _ in range(25):
        try:
            model, ll = step(X, model)
        except Degenerate:
            return
        # Until a component collapses: once a covariance is singular to rounding (the
        # criterion by which a fit is reported degenerate, _loop.DEGENERACY_RTOL) the
        # likelihood is unbounded and its steps are rounding (hypothesis found VVE, K = 4,
        # D = 4, n = 40, seed 40: eigenvalue ratio 4e-16 at step 16, a drop at step 18).
        std = model.covariances / (scale[:, None] * scale[None, :])
        if np.linalg.eigvalsh(std).min() < DEGENERACY_RTOL:
            return
        assert ll >= previous - 1e-9 * abs(ll)
        previous = ll


def test_step_pieces_agree(faithful):
    model = bg.fit_em(faithful, 3, max_iter=5, accelerate=False).model
    ll, resp = e_step(faithful, model)
    fused, ll_fused = step(faithful, model)
    separate = m_step(faithful, resp, "VVV")
    assert ll == pytest.approx(ll_fused, rel=1e-13)
    np.testing.assert_allclose(fused.covariances, separate.covariances, rtol=1e-10)
    np.testing.assert_allclose(fused.means, separate.means, rtol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_accelerated_trace_is_monotone(faithful, structure):
    fit = bg.fit_em(faithful, 4, covariance_type=structure, init="kmeans++", rng=2)
    assert np.all(np.diff(fit.loglik_trace) >= -1e-9 * abs(fit.loglik))
    assert fit.loglik == pytest.approx(fit.model.score(faithful), rel=1e-12)


@pytest.mark.parametrize(
    ("ours", "theirs"), [("VVV", "full"), ("EEE", "tied"), ("VVI", "diag"), ("VII", "spherical")]
)
def test_same_start_as_scikit_learn(ours, theirs):
    sklearn = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(0)
    X, _ = random_mixture(rng, 3, 3, ours).sample(600, rng=1)
    start = bg.fit_em(X, 3, covariance_type=ours, init="kmeans++", rng=3, max_iter=2).model
    precisions = np.linalg.inv(start.covariances)
    if theirs == "tied":
        precisions = precisions[0]
    elif theirs == "diag":
        precisions = np.diagonal(precisions, axis1=1, axis2=2)
    elif theirs == "spherical":
        precisions = precisions[:, 0, 0]
    ref = sklearn.GaussianMixture(
        3,
        covariance_type=theirs,
        weights_init=start.weights,
        means_init=start.means,
        precisions_init=precisions,
        tol=1e-14,
        reg_covar=0.0,
        max_iter=5000,
    ).fit(X)
    fit = bg.fit_em(
        X, 3, covariance_type=ours, init=start, tol=1e-14, max_iter=5000, accelerate=False
    )
    sk_loglik = ref.score(X) * X.shape[0]
    assert fit.loglik == pytest.approx(sk_loglik, rel=1e-6)
    order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(np.sort(fit.model.means[:, 0]), ref.means_[order, 0], rtol=1e-4)


def test_tol_zero_runs_exactly_max_iter(faithful):
    fit = bg.fit_em(faithful, 2, tol=0, max_iter=37, accelerate=False)
    assert fit.n_iter == 37 and not fit.converged
    assert len(fit.loglik_trace) == 38


def test_default_tol_reaches_eee3_optimum(faithful):
    # The optimum of faithful EEE,3: mclust 6.0.0's fit (loglik -1126.3262 reported, -1126.3219
    # recomputed from its parameters, tests/reference/mclust.json) polished by 10^4 plain EM
    # steps at tol=0, which moves it to -1126.31593.
    polished = bg.fit_em(
        faithful, 3, covariance_type="EEE", tol=0, max_iter=10_000, accelerate=False
    )
    fit = bg.fit_em(faithful, 3, covariance_type="EEE")
    assert fit.converged
    assert fit.loglik == pytest.approx(polished.loglik, abs=1e-4)


def test_same_seed_same_result(monkeypatch, faithful):
    # One code path for both calls: on a cold numba cache a stage of the compiled code can
    # become ready between them, and its sums agree with numpy's to rounding only.
    monkeypatch.setenv("BAYESGMM_COMPILED", "0")
    a = bg.fit_em(faithful, 4, init="random", n_init=3, rng=5)
    b = bg.fit_em(faithful, 4, init="random", n_init=3, rng=np.random.default_rng(5))
    assert a.loglik == b.loglik
    np.testing.assert_array_equal(a.model.means, b.model.means)


def test_integer_weights_equal_repeated_rows(faithful):
    rng = np.random.default_rng(0)
    w = rng.integers(0, 4, size=faithful.shape[0])
    w[0] = 1
    repeated = np.repeat(faithful, w, axis=0)
    start = bg.fit_em(faithful, 3, max_iter=3).model
    weighted = bg.fit_em(faithful, 3, init=start, sample_weight=w, accelerate=False)
    plain = bg.fit_em(repeated, 3, init=start, accelerate=False)
    assert weighted.n_obs == repeated.shape[0]
    assert weighted.loglik == pytest.approx(plain.loglik, rel=1e-10)
    assert weighted.bic == pytest.approx(plain.bic, rel=1e-10)
    assert weighted.icl == pytest.approx(plain.icl, rel=1e-10)
    np.testing.assert_allclose(weighted.model.means, plain.model.means, rtol=1e-8)
    np.testing.assert_allclose(weighted.model.covariances, plain.model.covariances, rtol=1e-7)


def test_prior_single_component_closed_form(faithful):
    # With K = 1 the MAP estimate has a closed form (derivation in bayesgmm.core.prior):
    # μ = (n x̄ + κ μ_p)/(n + κ), Σ = (Λ + W + κn/(κ+n) (x̄−μ_p)(x̄−μ_p)ᵀ)/(n + ν + d + 2).
    X = faithful
    n, d = X.shape
    kappa, nu = 0.5, 7.0
    mu_p = np.array([3.0, 60.0])
    lam = np.diag([0.5, 40.0])
    prior = bg.ConjugatePrior(shrinkage=kappa, mean=mu_p, dof=nu, scale=lam)
    fit = bg.fit_em(X, 1, prior=prior)
    xbar = X.mean(axis=0)
    W = (X - xbar).T @ (X - xbar)
    diff = xbar - mu_p
    mu = (n * xbar + kappa * mu_p) / (n + kappa)
    sigma = (lam + W + kappa * n / (kappa + n) * np.outer(diff, diff)) / (n + nu + d + 2)
    np.testing.assert_allclose(fit.model.means[0], mu, rtol=1e-12)
    np.testing.assert_allclose(fit.model.covariances[0], sigma, rtol=1e-12)


def test_prior_fixed_point(faithful):
    fit = bg.fit_em(faithful, 3, covariance_type="VVV", prior=bg.ConjugatePrior(), tol=1e-12)
    resolved = bg.ConjugatePrior().resolve(faithful, 3)
    again = m_step(faithful, fit.responsibilities, "VVV", prior=resolved)
    np.testing.assert_allclose(again.means, fit.model.means, rtol=1e-6)
    np.testing.assert_allclose(again.covariances, fit.model.covariances, rtol=1e-5)


def test_prior_resolved_for_many_k_is_resolved_for_each(faithful):
    # resolve_many (the data's moments once) gives resolve's prior for every K: the default
    # scale var(X) / K^(2/D) (mclust's priorControl), and a scale of the user's for all K.
    X = np.asarray(faithful, dtype=float)
    w = np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0])
    for prior in (bg.ConjugatePrior(), bg.ConjugatePrior(scale=2.0, dof=5.0, mean=[3.0, 70.0])):
        for weights in (None, w):
            many = prior.resolve_many(X, [1, 3, 9], weights)
            assert list(many) == [1, 3, 9]
            for k, got in many.items():
                want = prior.resolve(X, k, weights)
                assert got.shrinkage == want.shrinkage and got.terms.dof == want.terms.dof
                np.testing.assert_array_equal(got.mean, want.mean)
                np.testing.assert_array_equal(got.terms.scale, want.terms.scale)
    cov = np.cov(X.T)
    np.testing.assert_allclose(
        bg.ConjugatePrior().resolve_many(X, [4])[4].terms.scale, cov / 4.0, rtol=1e-12
    )


def test_collapse_on_duplicated_points_is_degenerate():
    rng = np.random.default_rng(0)
    X = np.vstack(
        [
            rng.normal(size=(60, 2)),
            np.tile([[5.0, 5.0]], (8, 1)),
            rng.normal(size=(60, 2)) + [0.0, 8.0],
        ]
    )
    labels = np.r_[np.zeros(60, int), np.ones(8, int), np.full(60, 2)]
    with pytest.warns(bg.DegenerateFitWarning, match="component 1"):
        fit = bg.fit_em(X, 3, init=labels)
    assert fit.degenerate
    assert "component 1" in fit.degenerate_reason
    assert "reg_covar" in fit.degenerate_reason  # the remedy is named
    assert np.isfinite(fit.loglik) and np.isfinite(fit.model.covariances).all()


def test_tied_feature_collapse_is_degenerate():
    # A component on points sharing one coordinate (faithful's tied "waiting"): singular in that
    # direction only.
    rng = np.random.default_rng(1)
    X = np.vstack(
        [
            rng.normal(size=(100, 2)) * [1.0, 10.0],
            np.column_stack([rng.normal(size=12) + 6.0, np.full(12, 30.0)]),
        ]
    )
    labels = np.r_[np.zeros(100, int), np.ones(12, int)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.DegenerateFitWarning)
        fit = bg.fit_em(X, 2, covariance_type="VVI", init=labels)
    assert fit.degenerate and "component 1" in fit.degenerate_reason
    shared = bg.fit_em(X, 2, covariance_type="EEI", init=labels)
    assert not shared.degenerate  # a shared covariance cannot collapse on one component


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        # NaN is a missing value (tests/core/test_missing.py); a row or a column of nothing
        # but NaN, and inf, are errors.
        (np.array([[np.nan, np.nan], [2.0, 3.0], [0.0, 1.0]]), {}, ValueError, "row 0 has every"),
        (np.array([[np.nan, 1.0], [np.nan, 3.0], [np.nan, 1.0]]), {}, ValueError, "feature 0 has"),
        (np.array([[1.0, np.inf], [2.0, 3.0], [0.0, 1.0]]), {}, ValueError, "contains inf"),
        (np.zeros((3, 2, 2)), {}, ValueError, "got 3-D input"),
        (np.array([["a", "b"], ["c", "d"]]), {}, TypeError, "not numbers"),
        (pd.DataFrame({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "c"]}), {}, TypeError, r"\['s'\]"),
        (np.arange(10.0), {"n_components": 0}, ValueError, "at least 1"),
        (np.arange(10.0), {"n_components": 2.5}, TypeError, "positive integer"),
        (
            np.r_[np.zeros(5), np.ones(5)],
            {"n_components": 3},
            ValueError,
            r"distinct rows of X \(2\)",
        ),
        (np.arange(10.0), {"sample_weight": -np.ones(10)}, ValueError, "non-negative"),
        (np.arange(10.0), {"sample_weight": np.zeros(10)}, ValueError, "zero everywhere"),
        (np.arange(10.0), {"sample_weight": np.ones(9)}, ValueError, r"shape \(10,\)"),
        (np.arange(10.0), {"covariance_type": "foo"}, ValueError, "valid: E, V, EII"),
        (np.arange(10.0), {"init": np.zeros((10, 3))}, ValueError, r"\(10, 2\)"),
        (np.arange(10.0), {"init": np.zeros(9, int)}, ValueError, r"shape \(10,\)"),
        (np.arange(10.0), {"init": np.full(10, 5)}, ValueError, "lie in 0..1"),
        (np.arange(10.0), {"init": "kmeans"}, ValueError, "not a known method"),
        (np.column_stack([np.arange(10.0), np.ones(10)]), {}, ValueError, "constant"),
        (np.arange(10.0), {"rng": "seed"}, TypeError, "rng must be"),
        (np.arange(10.0), {"n_init": 0}, ValueError, "n_init"),
    ],
)
def test_bad_input_errors(X, kwargs, error, match):
    args = {"n_components": 2} | kwargs
    k = args.pop("n_components")
    with pytest.raises(error, match=match):
        bg.fit_em(X, k, **args)


def test_dataframe_names_and_series(faithful):
    df = bg.datasets.load_faithful()
    fit = bg.fit_em(df, 2)
    assert fit.model.feature_names == ("eruptions", "waiting")
    series = bg.fit_em(df["waiting"], 2, covariance_type="V")
    assert series.model.feature_names == ("waiting",)


def test_repr_mentions_mclust_sign(faithful):
    text = repr(bg.fit_em(faithful, 2))
    assert "BIC" in text and "mclust prints −BIC" in text


@pytest.mark.parametrize("direct", [False, True])
def test_both_evaluation_paths_agree(direct, monkeypatch):
    # Full covariances are evaluated either through quadratic features or whitened coordinates
    # (chosen by size); both must give the same step.
    from bayesgmm.core import _passes

    rng = np.random.default_rng(3)
    gm = random_mixture(rng, 3, 6)
    X, _ = gm.sample(3000, rng=rng)
    reference, ll_ref = step(X, gm)
    monkeypatch.setattr(_passes, "_use_direct", lambda m, d: direct)
    gm2 = bg.GaussianMixture(gm.weights, gm.means, gm.covariances, "VVV")
    assert gm2._params.kind == ("direct" if direct else "full")
    new, ll = step(X, gm2)
    assert ll == pytest.approx(ll_ref, rel=1e-12)
    np.testing.assert_allclose(new.covariances, reference.covariances, rtol=1e-9)
    np.testing.assert_allclose(new.means, reference.means, rtol=1e-10, atol=1e-12)


def test_too_few_rows_per_component_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="too few observations per component"):
        bg.fit_em(rng.normal(size=(8, 10)), 2, covariance_type="VVV")
    with pytest.raises(ValueError, match="too few observations per component"):
        bg.fit_em([[1.0, 2.0], [3.0, 1.0]], 2)


def test_select_records_cells_without_a_valid_start():
    rng = np.random.default_rng(0)
    sel = bg.select_em(rng.normal(size=(8, 10)), n_components=range(1, 3))
    assert ("VVV", 2) in sel.failures
    assert not sel.best.degenerate


def test_predict_on_the_fitted_rows_and_on_new_rows(faithful):
    fit = bg.fit_em(faithful, 3, covariance_type="EEE")
    np.testing.assert_array_equal(fit.predict(), fit.responsibilities.argmax(axis=1))
    np.testing.assert_array_equal(fit.predict(faithful[:10]), fit.model.predict(faithful[:10]))
    # rng defaults to 0: a fit with restarts is reproducible unless asked otherwise.
    a = bg.fit_em(faithful, 3, n_init=3)
    b = bg.fit_em(faithful, 3, n_init=3)
    assert a.loglik == b.loglik


def test_the_best_run_skips_collapsed_ones(monkeypatch):
    # _best_runs ranks each cell's finished runs without finishing them: the best by
    # log-likelihood among those that did not collapse (the first of equal ones), else the best
    # of all; the collapse test (an eigendecomposition) runs only as far down each ranking as
    # needed, the cells' tests together; it says whether the run it returns is valid.
    from bayesgmm.core import _engine
    from bayesgmm.core._loop import Run
    from bayesgmm.core.em import Params
    from bayesgmm.core.structures import get_structure

    fine, flat = np.eye(2), np.diag([1.0, 1e-12])  # the second collapsed

    def run(loglik: float, cov: np.ndarray, k: int = 2) -> Run:
        covs = np.stack([np.eye(2)] * (k - 1) + [cov])[None]
        params = Params(np.full((1, k), 1 / k), np.zeros((1, k, 2)), covs, np.linalg.cholesky(covs))
        return Run(params, "start", get_structure("VVV"), trace=[loglik], converged=True)

    scale = np.ones(2)
    X = np.zeros((4, 2))
    center = np.zeros(2)
    runs = [run(-10.0, fine), run(-5.0, flat), run(-7.0, fine), run(-7.0, fine)]
    collapsed = [run(-9.0, flat, 3), run(-3.0, flat, 3), run(-3.0, flat, 3)]
    lone = [run(-1.0, flat)]
    checked = []
    real = _engine._collapse_reasons
    monkeypatch.setattr(
        _engine, "_collapse_reasons", lambda c, s: checked.append(len(c)) or real(c, s)
    )
    cells = {"a": runs, "b": collapsed, "c": lone}
    chosen = _engine._best_runs(X, cells, None, None, center, scale)
    assert list(chosen) == ["a", "b", "c"]
    assert chosen["a"] == (runs[2], True)
    best, valid = chosen["b"]
    assert best is collapsed[1] and not valid
    assert chosen["c"] == (lone[0], True)  # a lone run is only checked for failure
    # Round 1: both cells' best (a's collapsed at -5, b's first at -3); round 2: a's first of
    # the two at -7 and b's second at -3; round 3: b's last.
    assert checked == [2, 2, 1]
    # Verdicts already made (run_cells shares them between the fallback, this choice and the
    # finishing) are not made again, and new ones are recorded: the same choice, one round.
    verdicts = {id(runs[1]): "collapsed", id(collapsed[1]): "collapsed", id(collapsed[2]): "c"}
    checked.clear()
    again = _engine._best_runs(X, cells, None, None, center, scale, verdicts)
    assert again == chosen
    assert checked == [2]  # a's -7 and b's -9, in one call
    assert verdicts[id(runs[2])] is None and verdicts[id(collapsed[0])] is not None


def test_finishing_many_runs_as_one_at_a_time(faithful):
    # finish_all batches the final E-steps of runs with the same kind of covariance into one
    # pass (each mixture padded to the largest K); each result must be finish's for that run
    # alone (weights too).
    from bayesgmm.core._loop import finish, finish_all, new_run

    X = np.asarray(faithful, dtype=float)
    w = np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0])
    runs = []
    for structure, k in [("VVV", 2), ("EEE", 2), ("VVI", 2), ("EII", 3), ("VVV", 3), ("VEV", 3)]:
        fit = bg.fit_em(X, k, covariance_type=structure, max_iter=5, tol=0.0)
        run = new_run(fit.model, fit.init)
        run.trace, run.n_iter = list(fit.loglik_trace), fit.n_iter
        runs.append(run)
    for weights in (None, w):
        together = finish_all(X, runs, None, weights)
        for run, got in zip(runs, together, strict=True):
            alone = finish(X, run, None, weights)
            assert got.loglik == pytest.approx(alone.loglik, rel=1e-12)
            assert got.icl == pytest.approx(alone.icl, rel=1e-10)
            assert got.bic == pytest.approx(alone.bic, rel=1e-12)
            assert got.degenerate == alone.degenerate
            np.testing.assert_allclose(got.responsibilities, alone.responsibilities, atol=1e-12)


@pytest.mark.parametrize("compiled", ["1", "0"])
@pytest.mark.parametrize("label", ["x", "hc"])
def test_a_paused_run_resumes_on_the_path_it_takes_without_the_pause(compiled, label,
                                                                       monkeypatch):  # fmt: skip
    # iterate(pause_at=n) stops runs between SQUAREM cycles: resumed, each run's trace is the
    # uninterrupted one (what lets a short round leave the runs that go on untouched). Oracle:
    # the same runs advanced in one call. Stopping at the budget instead (until_iter=n, mid
    # cycle) restarts the cycle: some resumed traces then differ. ("hc": the hierarchical
    # start's run, whose first PLAIN_FIRST_ITER iterations make no trial, paused before and after.)
    from bayesgmm.core._compiled import ready
    from bayesgmm.core._loop import iterate, new_run

    monkeypatch.setenv("BAYESGMM_COMPILED", compiled)
    if compiled == "1" and not ready(wait=900):
        pytest.skip("the compiled loop is not available")
    X = bg.datasets.load_faithful().to_numpy()
    cases = [(3, "VVV"), (4, "EEE"), (5, "VVE"), (4, "EVI"), (6, "VEV")]
    starts = [bg.fit_em(X, k, covariance_type=s, max_iter=2).model for k, s in cases]
    settings = {"center": X.mean(axis=0), "w": None, "prior": None, "reg_covar": 0.0,
                "tol": 1e-8, "scale": X.std(axis=0)}  # fmt: skip
    split_cycles = 0
    for accelerate in (True, False):
        whole = [new_run(m, label) for m in starts]
        iterate(X, whole, 1000, accelerate=accelerate, **settings)
        for at in (1, 4, 5, 6, 7):
            paused = [new_run(m, label) for m in starts]
            iterate(X, paused, 1000, accelerate=accelerate, pause_at=at, **settings)
            for run in paused:
                assert run.finished or at <= run.n_iter <= at + (2 if accelerate else 0)
            iterate(X, paused, 1000, accelerate=accelerate, **settings)
            cut = [new_run(m, label) for m in starts]
            iterate(X, cut, at, accelerate=accelerate, **settings)
            iterate(X, cut, 1000, accelerate=accelerate, **settings)
            for a, b, c in zip(whole, paused, cut, strict=True):
                assert b.n_iter == a.n_iter and b.converged == a.converged
                np.testing.assert_allclose(b.trace, a.trace, rtol=1e-12)
                split_cycles += len(c.trace) != len(a.trace) or c.trace != a.trace
    assert split_cycles > 0


def test_collapse_reasons_of_many_mixtures_as_one_at_a_time():
    # The batched collapse test (finish_all's) says what the one-mixture test says, mixture by
    # mixture: None for sound covariances, the component and its eigenvalue ratio otherwise.
    from bayesgmm.core._loop import _collapse_reason, _collapse_reasons

    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 3, 2, 2))
    covs = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(2)
    covs[2, 1] = [[1.0, 1.0], [1.0, 1.0 + 1e-14]]  # a collapsed component
    covs[4, 0] = [[1e-14, 0.0], [0.0, 1.0]]
    scale = np.array([1.5, 0.7])
    got = _collapse_reasons(covs, scale)
    assert got == [_collapse_reason(c, scale) for c in covs]
    assert [g is not None for g in got] == [False, False, True, False, True, False]
    assert got[2].startswith("component 1 collapsed") and got[4].startswith("component 0")


@pytest.mark.parametrize("d", [1, 2, 3, 6])
def test_collapse_reasons_screen_by_determinant_says_what_the_eigenvalues_say(d):
    # _collapse_reasons decomposes only the components whose determinant bound does not clear
    # the tolerance; the verdicts and messages are those of the definition (the smallest
    # eigenvalue of every standardised component), here with smallest eigenvalues spread
    # around the tolerance (1e-10 to 1e-6 of the data's variance).
    from bayesgmm.core._loop import DEGENERACY_RTOL, _collapse_reasons

    rng = np.random.default_rng(d)
    q, _ = np.linalg.qr(rng.normal(size=(400, d, d)))
    values = rng.uniform(0.1, 3.0, size=(400, d))
    values[:, 0] = 10.0 ** rng.uniform(-10, -6, size=400)
    covs = (q * values[:, None, :]) @ np.swapaxes(q, 1, 2)
    covs = covs.reshape(100, 4, d, d)
    scale = rng.uniform(0.5, 2.0, size=d)
    got = _collapse_reasons(covs, scale)
    std = covs / (scale[:, None] * scale[None, :])
    smallest = np.linalg.eigvalsh(std)[..., 0]  # (100, 4)
    for g, low in zip(got, smallest, strict=True):
        if low.min() >= DEGENERACY_RTOL:
            assert g is None
        else:
            j = int(np.argmin(low))
            assert g is not None and g.startswith(f"component {j} collapsed ("), (g, low)
            assert f"{low[j]:.2g} times" in g
    assert 0 < sum(g is not None for g in got) < len(got)


def test_a_resumed_fit_goes_on_from_where_it_stopped(faithful):
    # select_em's cross-starts run beside each cell's own fit: that fit competes as it stands
    # (its log-likelihood, iterations and convergence), is not run again when converged or
    # at its budget, and otherwise goes on counting from its own iterations.
    from bayesgmm.core._loop import Resumed, iterate, new_run

    X = faithful
    settings = {"center": X.mean(axis=0), "w": None, "prior": None, "reg_covar": 0.0,
                "tol": 1e-8, "scale": X.std(axis=0), "accelerate": True}  # fmt: skip
    done = bg.fit_em(X, 4, covariance_type="VVV", n_init=1)
    short = bg.fit_em(X, 4, covariance_type="VVV", n_init=1, max_iter=4)
    assert done.converged and done.n_iter > 10 and not short.converged and short.n_iter == 4
    runs = [
        new_run(Resumed(f.model, f.n_iter, f.converged, f.loglik), "own") for f in (done, short)
    ]
    for run, fit in zip(runs, (done, short), strict=True):
        assert run.n_iter == fit.n_iter and run.converged == fit.converged
        assert run.structure.name == "VVV"
    # (A converged fit's trace ends at its log-likelihood; one that goes on gets it from its
    # next pass, which must not look like convergence.)
    assert runs[0].trace == [done.loglik] and runs[1].trace == []
    iterate(X, runs, 4, **settings)  # the budget the short fit had: neither moves
    assert [r.n_iter for r in runs] == [done.n_iter, 4] and runs[1].trace == []
    iterate(X, runs, 1000, **settings)
    assert runs[0].n_iter == done.n_iter and runs[0].trace == [done.loglik]
    assert runs[1].converged and runs[1].n_iter > 4
    assert runs[1].trace[0] == pytest.approx(short.loglik, rel=1e-12)
    assert np.all(np.diff(runs[1].trace) >= 0)
    assert runs[1].loglik == pytest.approx(done.loglik, abs=1e-3)  # (the same optimum)


@pytest.mark.parametrize("compiled", ["1", "0"])
@pytest.mark.parametrize("structure", ["VEI", "VVV"])
def test_a_start_in_fortran_order_is_the_same_start(compiled, structure, monkeypatch, faithful):
    # A mixture whose arrays are in Fortran order (pandas' to_numpy of a frame of means gives
    # one) starts the same run as the same numbers in C order. The compiled loop wrote each
    # run's parameters back through flat views, which such an array only copied: the fit came
    # back with its start's means and its last covariances, and a log-likelihood below its own
    # trace's last (MASS's UScereal, VEI,9 from mclust's fit: -1703.44 against -1699.15).
    monkeypatch.setenv("BAYESGMM_COMPILED", compiled)
    X = np.asarray(faithful, dtype=float)
    start = bg.fit_em(X, 3, covariance_type=structure, max_iter=2).model
    fortran = bg.GaussianMixture(
        np.asfortranarray(start.weights),
        np.asfortranarray(start.means),
        np.asfortranarray(start.covariances),
        covariance_type=structure,
    )
    assert not fortran.means.flags["C_CONTIGUOUS"]
    ours = bg.fit_em(X, 3, covariance_type=structure, init=fortran)
    plain = bg.fit_em(X, 3, covariance_type=structure, init=start)
    assert ours.loglik == plain.loglik
    np.testing.assert_array_equal(ours.model.means, plain.model.means)
    # (The fit is the mixture its trace's last log-likelihood was computed at.)
    assert ours.loglik == pytest.approx(ours.loglik_trace[-1], rel=1e-10)


@pytest.mark.parametrize("compiled", ["1", "0"])
def test_a_mixture_of_another_structure_starts_from_its_e_step(compiled, monkeypatch, faithful):
    # A start whose covariances lack the fit's constraint (a VVV fit to start VEV) is no error:
    # EM starts from its responsibilities, as mclust's em() from given parameters; it was
    # "covariance_type='VEV' does not match the covariances" (mclust's own VEV fit of Boston's
    # 11 columns, whose shapes agree to mclust's inner tolerance only, failed the same way).
    monkeypatch.setenv("BAYESGMM_COMPILED", compiled)
    X = np.asarray(faithful, dtype=float)
    vvv = bg.fit_em(X, 3, covariance_type="VVV").model
    with pytest.raises(ValueError, match="does not match the covariances"):
        bg.GaussianMixture(vvv.weights, vvv.means, vvv.covariances, covariance_type="VEV")
    fit = bg.fit_em(X, 3, covariance_type="VEV", init=vvv)
    same = bg.fit_em(X, 3, covariance_type="VEV", init=vvv.responsibilities(X))
    assert fit.model.covariance_type == "VEV" and not fit.degenerate
    assert fit.loglik == pytest.approx(same.loglik, rel=1e-12)


@pytest.mark.parametrize("compiled", ["1", "0"])
@pytest.mark.parametrize(("structure", "k"), [("VVV", 4), ("EEE", 3), ("VEI", 3), ("EII", 4)])
def test_the_hierarchical_start_takes_plain_em_steps_first(compiled, structure, k, monkeypatch,
                                                           faithful):  # fmt: skip
    # From the hierarchical start (mclust's), the first PLAIN_FIRST_ITER iterations are plain EM
    # steps: the trace is plain EM's from that start until the first trial, after the cycle
    # that ends past them (faithful, iteration 6). Without them the second cycle's trial, at
    # iteration 4, was kept, and the traces parted by 0.08-6.6 there (an early extrapolation
    # carried MASS's UScereal VEI,9 to -1703.66 where EM from the same start reaches -1699.15).
    from bayesgmm.core._compiled import ready
    from bayesgmm.core._loop import PLAIN_FIRST_ITER

    monkeypatch.setenv("BAYESGMM_COMPILED", compiled)
    if compiled == "1" and not ready(wait=900):
        pytest.skip("the compiled loop is not available")
    X = np.asarray(faithful, dtype=float)
    fast = bg.fit_em(X, k, covariance_type=structure)
    plain = bg.fit_em(X, k, covariance_type=structure, accelerate=False)
    # The start's log-likelihood, then the iterations to the end of the first cycle (2
    # iterations each) that ends past PLAIN_FIRST_ITER: 7 entries for 5.
    first = 2 * ((PLAIN_FIRST_ITER + 1) // 2) + 1
    assert first >= 5  # (the second cycle's trial, where the traces parted without the rule)
    np.testing.assert_allclose(fast.loglik_trace[:first], plain.loglik_trace[:first], rtol=1e-13)
    assert fast.n_iter < plain.n_iter  # (SQUAREM goes on from there)
