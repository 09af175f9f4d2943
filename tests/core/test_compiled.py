"""The compiled EM loop (bayesgmm.core._compiled) against the numpy loop it replaces on small
data: from the same start, every structure must end in the same state (the numpy loop is the
reference; both implement _loop's rules), and its small linear algebra must match numpy's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.core import _compiled
from bayesgmm.core.structures import STRUCTURES

MULTIVARIATE = [n for n, s in STRUCTURES.items() if not s.univariate]


@pytest.fixture(scope="module")
def iris_X() -> np.ndarray:
    return bg.datasets.load_iris().select_dtypes("number").to_numpy()


@pytest.fixture(scope="module")
def compiled():
    """The compiled loop, loaded (compiled first when its cache is cold: up to minutes)."""
    if not _compiled.AVAILABLE:  # pragma: no cover - numba comes with pytensor
        pytest.skip("numba is not installed")
    assert _compiled.ready(wait=900), "the compiled EM loop did not become ready"
    return _compiled


def _fit_both(monkeypatch, X, **kwargs):
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("BAYESGMM_COMPILED", flag)
        out[flag] = bg.fit_em(X, **kwargs)
    return out["1"], out["0"]


def _same_run(a, b, rtol=1e-10):
    assert a.n_iter == b.n_iter
    assert a.converged == b.converged
    assert a.degenerate == b.degenerate
    assert a.loglik == pytest.approx(b.loglik, rel=rtol)
    # Along the way the two differ by rounding, which a slow path (a hundred SQUAREM steps on a
    # nearly flat ridge) can amplify to 1e-8 before both settle on the same optimum.
    np.testing.assert_allclose(a.loglik_trace, b.loglik_trace, rtol=1e-6)
    np.testing.assert_allclose(a.model.weights, b.model.weights, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(a.model.means, b.model.means, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.model.covariances, b.model.covariances, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("structure", MULTIVARIATE)
def test_every_structure_as_the_numpy_loop(compiled, monkeypatch, faithful, structure):
    # SQUAREM on (the default), K = 4 from the hierarchical start: the whole trace agrees.
    a, b = _fit_both(monkeypatch, faithful, n_components=4, covariance_type=structure, n_init=1)
    _same_run(a, b)


@pytest.mark.parametrize("structure", ["VEI", "EVE", "VVE", "VEV", "EEI", "VVV"])
def test_weights_regularisation_and_plain_em(compiled, monkeypatch, iris_X, structure):
    w = np.random.default_rng(3).uniform(0.5, 2.0, iris_X.shape[0])
    kwargs = dict(n_components=3, covariance_type=structure, n_init=1, sample_weight=w)
    _same_run(*_fit_both(monkeypatch, iris_X, **kwargs, reg_covar=1e-4))
    _same_run(*_fit_both(monkeypatch, iris_X, **kwargs, accelerate=False, max_iter=40))


@pytest.mark.parametrize("structure", ["EII", "VVI", "EVE", "VVV"])
def test_three_features(compiled, monkeypatch, iris_X, structure):
    # D = 3 (D = 1 and 2 are galaxies' and faithful's, above and below; 4 iris's).
    kwargs = dict(n_components=3, covariance_type=structure, n_init=1)
    _same_run(*_fit_both(monkeypatch, iris_X[:, 1:], **kwargs))


@pytest.mark.parametrize("d", [5, 6, 7])
def test_five_to_seven_features(compiled, monkeypatch, iris_X, d):
    # The E-step takes each component in one sweep over the rows up to D = 6, written out for
    # each D (7: the general loop): iris with products of its columns as further features.
    X = np.column_stack([iris_X, iris_X[:, 0] * iris_X[:, 1], iris_X[:, 2] * iris_X[:, 3],
                         iris_X[:, 0] * iris_X[:, 3]])[:, :d]  # fmt: skip
    for structure in ("EII", "VVV"):
        kwargs = dict(n_components=3, covariance_type=structure, n_init=1)
        _same_run(*_fit_both(monkeypatch, X, **kwargs))


@pytest.mark.parametrize("structure", ["E", "V"])
def test_one_feature(compiled, monkeypatch, galaxies, structure):
    _same_run(*_fit_both(monkeypatch, galaxies, n_components=4, covariance_type=structure))


def test_restarts_and_bootstrap_weights(compiled, monkeypatch, faithful):
    # Several starts (short round, then the best on) and a batch of replicates with their own
    # row weights.
    _same_run(*_fit_both(monkeypatch, faithful, n_components=3, covariance_type="VVV", n_init=5))
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("BAYESGMM_COMPILED", flag)
        fit = bg.fit_em(faithful, n_components=2, covariance_type="EEE")
        out[flag] = bg.bootstrap_em(fit, faithful, n_boot=20, rng=5)
    np.testing.assert_allclose(
        out["1"]["sample_stats"]["loglik"], out["0"]["sample_stats"]["loglik"], rtol=1e-10
    )
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            out["1"]["posterior"][name], out["0"]["posterior"][name], rtol=1e-6, atol=1e-8
        )


def test_degenerate_run_ends_the_same_way(compiled, monkeypatch):
    # Three tight clusters of two tied points each plus spread: VVV at K = 4 collapses.
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(40, 2)), np.repeat([[5.0, 5.0], [9.0, -3.0]], 3, axis=0)]
    with pytest.warns(bg.DegenerateFitWarning):
        a, b = _fit_both(monkeypatch, X, n_components=4, covariance_type="VVV", n_init=1)
    assert a.degenerate and b.degenerate
    assert a.degenerate_reason.split(":")[0] == b.degenerate_reason.split(":")[0]


def _tied_levels(seed: int) -> np.ndarray:
    """DNase's shape: the first feature at 8 levels (6 rows each), the second continuous."""
    rng = np.random.default_rng(seed)
    x1 = np.repeat([0.05, 0.2, 0.4, 0.8, 1.6, 3.1, 6.2, 12.5], 6)
    return np.c_[x1, np.log(x1) + rng.normal(scale=0.3, size=x1.size)]


@pytest.mark.parametrize(("seed", "structure", "k"), [(3, "VEI", 7), (0, "VEI", 7), (1, "VVV", 5)])
def test_run_on_tied_points_stops_where_it_collapses(compiled, monkeypatch, seed, structure, k):
    # A component that lands on one level's tied rows has a variance at rounding level along
    # the first feature: still positive definite to the Cholesky test, its density unbounded.
    # Both loops stop the run there (before this rule, the compiled loop ran seed 3's 1,000
    # iterations to a log-likelihood of 48,882 and seed 0's 273 to NaN, while the numpy loop
    # stopped at 6 and 8 on an emptied component).
    X = _tied_levels(seed)
    with pytest.warns(bg.DegenerateFitWarning):
        a, b = _fit_both(
            monkeypatch, X, n_components=k, covariance_type=structure, init="kmeans++", rng=seed
        )
    for fit in (a, b):
        assert fit.degenerate and not fit.converged
        assert "its covariance collapsed (an eigenvalue" in fit.degenerate_reason
        assert fit.n_iter < 10
    assert a.n_iter == b.n_iter
    assert a.degenerate_reason.split("(")[0] == b.degenerate_reason.split("(")[0]
    # (The collapsed component's density carries its variance's rounding: 1e-6 apart.)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-5)


def test_collapse_rule_as_numpy(compiled):
    from bayesgmm.core._loop import collapsed_components

    rng = np.random.default_rng(2)
    # (D = 16 with eigenvalues down to 1e-3: det / tr^(D−1) lets every component through to
    # the eigendecomposition there, 1 / tr(Σ⁻¹) almost none.)
    for d in (1, 2, 3, 5, 16):
        scale = rng.uniform(0.5, 20.0, size=d)
        covs = np.empty((4, 3, d, d))
        for r in range(4):
            for j in range(3):
                A = rng.normal(size=(d, d))
                vals = rng.uniform(0.1 if d < 16 else 1e-3, 2.0, size=d)
                if (r + j) % 3 == 0:  # one direction at rounding level, one just above the stop
                    vals[0] = [1e-16, 5e-12, 3e-13][j]
                q, _ = np.linalg.qr(A)
                covs[r, j] = (q * vals) @ q.T * np.outer(scale, scale)
                covs[r, j] = 0.5 * (covs[r, j] + covs[r, j].T)
        mask = np.ones((4, 3), dtype=bool)
        mask[3, 2] = False  # padding: never tested
        comp, value = collapsed_components(covs, scale, mask)
        std = covs / np.outer(scale, scale)
        for r in range(4):
            eig = np.where(mask[r], np.linalg.eigvalsh(std[r])[:, 0], np.inf)
            low = eig < _compiled.COLLAPSE_STOP_RTOL
            assert comp[r] == (int(np.argmin(eig)) if low.any() else -1)
            if low.any():
                assert value[r] == pytest.approx(eig.min(), rel=1e-3, abs=1e-16)
            # The compiled rule, one mixture at a time (its real components).
            real = covs[r][mask[r]]
            chol = np.linalg.cholesky(real)
            got, ev = compiled._collapse(real, chol, scale, np.empty((d, d)))
            assert got == comp[r]
            if got >= 0:  # (at rounding level each is known to ~ε λ_max, λ_max ≤ 2)
                assert ev == pytest.approx(value[r], rel=1e-3, abs=1e-15)
        # Each mixture its own scale (a bootstrap replicate's): ten times the spread, a
        # hundredth of the standardised eigenvalues (5e-12 falls below the stop).
        per_run = np.stack([scale, 10 * scale, scale, scale])
        comp2, _ = collapsed_components(covs, per_run, mask)
        for r in range(4):
            s_r = per_run[r]
            eig = np.linalg.eigvalsh(covs[r] / np.outer(s_r, s_r))[:, 0]
            eig = np.where(mask[r], eig, np.inf)
            low = eig < _compiled.COLLAPSE_STOP_RTOL
            assert comp2[r] == (int(np.argmin(eig)) if low.any() else -1)


def test_the_eigenvalue_bounds_judge_an_indefinite_covariance_by_its_eigenvalues():
    # The numpy collapse test skips a covariance's eigendecomposition on a lower bound of
    # λ_min, which must not call an indefinite one sound: 1 / tr(Σ⁻¹), the compiled test's
    # second bound (where a Cholesky factor vouches for Σ), would here, as eigenvalues
    # (−1, 1e-3, 1e-3) have tr(Σ⁻¹) = 1999 > 0; det / tr^(D−1) does not (det < 0).
    from bayesgmm.core._loop import _smallest_eigenvalues

    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    bad = (q * np.array([-1.0, 1e-3, 1e-3])) @ q.T
    good = (q * np.array([1.0, 2.0, 3.0])) @ q.T
    eigen = _smallest_eigenvalues(np.stack([bad, good]), 1e-8)
    assert eigen[0] == pytest.approx(-1.0) and eigen[1] == np.inf


def test_select_em_table_as_the_numpy_loop(compiled, monkeypatch, faithful):
    tables = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("BAYESGMM_COMPILED", flag)
        tables[flag] = bg.select_em(faithful, n_components=range(1, 5), n_jobs=1).table
    np.testing.assert_allclose(tables["1"].to_numpy(), tables["0"].to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
def test_first_m_step_as_numpy(compiled, iris_X, weighted):
    # Every structure's cold first M-step (20 inner iterations at most, as a start's) from a
    # hard partition and from soft responsibilities, against em.m_step_batch on the same
    # statistics: what select_em's starts begin from.
    from bayesgmm.core.em import _stats_from_resp, m_step_batch
    from bayesgmm.core.init import labels_to_resp
    from bayesgmm.core.structures import cold_inner_limit, get_structure

    rng = np.random.default_rng(7)
    X = iris_X
    w = rng.uniform(0.5, 2.0, X.shape[0]) if weighted else None
    hard = labels_to_resp(np.arange(X.shape[0]) % 4, 4)
    soft = rng.dirichlet(np.ones(3), size=X.shape[0])
    starts = [(name, resp) for name in MULTIVARIATE for resp in (hard, soft)]
    firsts = compiled.first_steps(X, starts, w, 1e-6, 20)
    center = X.mean(axis=0)
    for (name, resp), (params, comp, _) in zip(starts, firsts, strict=True):
        st = get_structure(name, X.shape[1])
        stats = _stats_from_resp(X, resp, w, st.scatter_kind, center)
        with cold_inner_limit(20):
            ref, bad, _ = m_step_batch(stats, center, st, None, 1e-6)
        assert bad[0] < 0 and comp == -1 and params is not None, name
        np.testing.assert_allclose(params.weights, ref.weights, rtol=1e-12)
        np.testing.assert_allclose(params.means, ref.means, rtol=1e-10)
        np.testing.assert_allclose(params.covs, ref.covs, rtol=1e-8, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(params.chol, ref.chol, rtol=1e-8, atol=1e-12, err_msg=name)


def test_first_m_step_failures(compiled, iris_X):
    X = iris_X
    empty = labels_to_resp_cols(np.zeros(X.shape[0], dtype=int), 2)  # component 1 empty
    single = np.zeros((X.shape[0], 2))
    single[:, 0] = 1.0
    single[0] = [0.0, 1.0]  # component 1 holds one point: singular for VVV, not for EII
    out = compiled.first_steps(X, [("VVV", empty), ("VVV", single), ("EII", single)], None, 0.0, 20)
    assert out[0][0] is None and out[0][1] == 1 and out[0][2] == 0.0  # empty: weight 0
    assert out[1][0] is None and out[1][1] == 1 and out[1][2] == -1.0  # singular
    assert out[2][0] is not None


def labels_to_resp_cols(labels: np.ndarray, k: int) -> np.ndarray:
    resp = np.zeros((labels.shape[0], k))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp


def test_hierarchical_tree_as_numpy(compiled, monkeypatch, faithful, iris_X):
    # The compiled agglomeration must merge exactly as the numpy one (which matches mclust's
    # hcVVV partitions), ties included: faithful's waiting times are whole minutes, and the
    # third set has duplicated rows.
    from bayesgmm.core import hc

    rng = np.random.default_rng(2)
    tied = np.round(rng.normal(size=(120, 3)), 1)
    tied = np.r_[tied, tied[:15]]
    for X in (np.asarray(faithful, dtype=float), iris_X, tied):
        Z = hc.scaled_svd(X)
        fast = hc.hierarchical_tree(Z)
        monkeypatch.setattr(compiled, "ready", lambda wait=0.0, stage="loop": False)
        slow = hc.hierarchical_tree(Z)
        monkeypatch.undo()
        np.testing.assert_array_equal(fast.merges, slow.merges)


def test_small_linear_algebra(compiled):
    rng = np.random.default_rng(1)
    for d in (1, 2, 3, 4, 5, 6, 9, 12):
        A = rng.normal(size=(d, d + 2))
        S = A @ A.T
        values, vectors = np.empty(d), np.empty((d, d))
        compiled._eigh(S, values, vectors)
        np.testing.assert_allclose(values, np.linalg.eigvalsh(S), rtol=1e-12, atol=1e-12)
        # The EVE/VVE bound's eigenvalue: in closed form up to D = 3, else _eigh's largest bit
        # for bit (the same rotations).
        top = compiled._top_eigenvalue(S, np.empty((d, d)))
        if d <= 3:
            assert top == pytest.approx(np.linalg.eigvalsh(S)[-1], rel=1e-14)
        else:  # the same method as _eigh's: the same value, up to the sort's order of ties
            assert top == pytest.approx(values[-1], rel=1e-15)
        np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, S, atol=1e-11)
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(d), atol=1e-12)
        assert compiled._det_root(S) == pytest.approx(np.linalg.det(S) ** (1 / d), rel=1e-12)
        assert np.isnan(compiled._det_root(-S)) if d % 2 else True
        inv = np.empty((d, d))
        compiled._inv(S, inv)
        np.testing.assert_allclose(inv @ S, np.eye(d), atol=1e-9)
        G = rng.normal(size=(d, d))
        polar = np.empty((d, d))
        compiled._neg_polar(G, polar)
        u, _, vt = np.linalg.svd(G)
        np.testing.assert_allclose(polar, -(u @ vt), atol=1e-12)
        L = np.zeros((d, d))
        assert compiled._cholesky(S, L, compiled._PD_RTOL)
        np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=1e-12, atol=1e-12)
    # The closed form where its cubic's roots coincide or nearly do (the acos at ±1), on
    # rank-deficient and diagonal matrices, at every scale.
    v = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    cases = [
        np.eye(3) * 2.5,
        np.diag([4.0, 4.0, 1.0]),
        np.diag([4.0, 1.0, 1.0]),
        q @ np.diag([5.0, 5.0 * (1 + 1e-9), 0.0]) @ q.T,
        q @ np.diag([7.0, 1e-12, 1e-12]) @ q.T,
        np.outer(v, v) * 1e-30,
        np.outer(v, v) * 1e30,
        np.array([[2.0, 1.0], [1.0, 2.0]]),
        np.array([[1e-20, 0.0], [0.0, 3e-20]]),
    ]
    for S in cases:
        top = compiled._top_eigenvalue(S, np.empty_like(S))
        assert top == pytest.approx(np.linalg.eigvalsh(S)[-1], rel=1e-13, abs=0.0)
    # Householder and QL from D = 5 (_TRIDIAG_D) against LAPACK where rotations struggle or a
    # split is exact: repeated and nearly repeated eigenvalues, zero, rank one, 24 decades of
    # spread, every scale, a diagonal with rounding-level off-diagonal entries.
    for d in (4, 5, 7, 10, 13):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        twins = np.r_[np.full(d // 2, 3.0), np.full(d - d // 2, 3.0 + 1e-12)]
        near = np.diag(np.arange(d, dtype=float)) + 1e-20 * (np.eye(d, k=1) + np.eye(d, k=-1))
        for S in (
            np.eye(d) * 2.5, np.zeros((d, d)), np.diag(rng.normal(size=d)), np.ones((d, d)),
            q @ np.diag(twins) @ q.T, q @ np.diag(np.logspace(-12, 12, d)) @ q.T,
            q @ np.diag(rng.normal(size=d)) @ q.T * 1e-30,
            q @ np.diag(rng.normal(size=d)) @ q.T * 1e30,
            near,
        ):  # fmt: skip
            S = (S + S.T) / 2
            values, vectors = np.empty(d), np.empty((d, d))
            compiled._eigh(S, values, vectors)
            size = max(np.abs(S).max(), 1e-300)
            np.testing.assert_allclose(values, np.linalg.eigvalsh(S), rtol=0, atol=1e-14 * size)
            np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, S, atol=1e-14 * size)
            np.testing.assert_allclose(vectors.T @ vectors, np.eye(d), atol=1e-14)
            top = compiled._top_eigenvalue(S, np.empty((d, d)))
            assert abs(top - np.linalg.eigvalsh(S)[-1]) <= 1e-14 * size
    # A rank-deficient g (a zero column, as the second majoriser gives in two dimensions):
    # its orthogonal factor is still orthogonal, as LAPACK's.
    G = np.array([[0.0, -2376.6], [0.0, -86476.5]])
    polar = np.empty((2, 2))
    compiled._neg_polar(G, polar)
    np.testing.assert_allclose(polar.T @ polar, np.eye(2), atol=1e-12)
    u, _, vt = np.linalg.svd(G)
    np.testing.assert_allclose(np.abs(polar[:, 1]), np.abs(u @ vt)[:, 1], atol=1e-12)
    # A zero singular value whose left vector is spread over every axis (no component above
    # 0.5 from D = 5: the first step of a single component's orientation, g = D diag(c) with
    # c = 0 at the largest eigenvalue): still orthogonal, and LAPACK's up to that column's sign.
    for d in (5, 7, 8, 12):
        q, _ = np.linalg.qr(np.column_stack([np.ones(d), rng.normal(size=(d, d - 1))]))
        c = -rng.uniform(1.0, 5.0, size=d)
        c[0] = 0.0
        G = q * c
        polar = np.empty((d, d))
        compiled._neg_polar(G, polar)
        np.testing.assert_allclose(polar.T @ polar, np.eye(d), atol=1e-12)
        u, _, vt = np.linalg.svd(G)
        np.testing.assert_allclose(np.abs(polar), np.abs(-(u @ vt)), atol=1e-12)
        np.testing.assert_allclose(np.abs(polar[:, 0]), np.abs(q[:, 0]), atol=1e-12)


def test_not_ready_means_the_numpy_loop(monkeypatch, faithful):
    monkeypatch.setenv("BAYESGMM_COMPILED", "0")
    assert not _compiled.ready()
    fit = bg.fit_em(faithful, n_components=2)
    assert fit.converged


def test_waiting_ends_when_the_compilation_failed(monkeypatch, tmp_path):
    # This process started the background compilation, which ended (its lock is gone) without
    # writing the marker: waiting longer cannot help, so ready() says no at once.
    import time

    monkeypatch.delenv("BAYESGMM_COMPILED", raising=False)
    marker, lock = tmp_path / "loop.ready", tmp_path / "loop.lock"
    monkeypatch.setattr(_compiled, "_marker_paths", lambda stage="loop": (marker, lock))
    monkeypatch.setitem(_compiled._STATE, "loaded", set())
    monkeypatch.setitem(_compiled._STATE, "spawned", True)
    start = time.monotonic()
    assert not _compiled.ready(wait=60)
    assert time.monotonic() - start < 5


def test_each_stage_serves_once_compiled(monkeypatch, tmp_path):
    # The background compilation writes a marker per stage: the chunk pass serves as soon as
    # its own is there, while the loop (a later stage) still waits for its marker.
    monkeypatch.delenv("BAYESGMM_COMPILED", raising=False)
    markers = {stage: tmp_path / f"{stage}.ready" for stage in _compiled.STAGES}
    lock = tmp_path / "em.lock"
    lock.write_text("compiling")  # a compilation in progress: nothing more is started
    monkeypatch.setattr(_compiled, "_marker_paths", lambda stage="loop": (markers[stage], lock))
    monkeypatch.setitem(_compiled._STATE, "loaded", set())
    loaded = []
    monkeypatch.setattr(_compiled, "_WARM", {s: (lambda s=s: loaded.append(s)) for s in markers})
    assert not _compiled.ready(stage="pass") and not _compiled.ready()
    markers["pass"].write_text("ok")
    assert _compiled.ready(stage="pass")
    assert not _compiled.ready(stage="hc") and not _compiled.ready()
    assert loaded == ["pass"]
    markers["loop"].write_text("ok")  # the whole cache: every stage loads
    assert _compiled.ready(stage="hc") and _compiled.ready()
    assert loaded == ["pass", "hc", "loop"]


def test_n_jobs_bounds_the_threads(compiled, monkeypatch, faithful):
    # scikit-learn's convention: n_jobs=1 is one core, also for the compiled loop's threads.
    seen = []
    run = compiled._in_threads
    monkeypatch.setattr(
        compiled, "_in_threads", lambda *a: seen.append(compiled.threads()) or run(*a)
    )
    bg.select_em(faithful, n_components=[1, 2], covariance_types=["VVV", "EEE"], n_jobs=1)
    assert seen and set(seen) == {1}
    assert compiled.threads() >= 1  # restored after the call
    with compiled.thread_limit(1):
        assert compiled.threads() == 1


def test_threads_do_not_change_the_results(compiled, faithful):
    # The compiled loop's threads take runs as they go: which thread runs which run changes
    # from call to call, the results must not.
    grid = dict(n_components=range(1, 6), covariance_types=["VVV", "EEE", "VEV", "EII"])
    many = bg.select_em(faithful, **grid)
    with compiled.thread_limit(1):
        one = bg.select_em(faithful, **grid)
    np.testing.assert_array_equal(many.loglik.to_numpy(), one.loglik.to_numpy())


def test_a_kernel_error_reaches_the_caller(compiled, monkeypatch):
    # A piece that fails in one of the threads raises in the caller: never runs left
    # half-advanced behind a traceback printed by the thread.
    monkeypatch.setitem(compiled._THREADS, "n", 2)
    done = np.zeros(40)

    def kernel(todo: np.ndarray, out: np.ndarray) -> None:
        if 5 in todo:
            raise RuntimeError("piece failed")
        out[todo] = 1.0

    with pytest.raises(RuntimeError, match="piece failed"):
        compiled._in_threads(kernel, np.arange(40) % 3 + 1, (done,))
    assert done.sum() < 40


def _helpers_alive() -> int:
    return sum(t.name.startswith(_compiled.HELPER_PREFIX) for t in threading.enumerate())


def test_the_calling_thread_is_one_of_the_workers(compiled, monkeypatch):
    # Every run is advanced once, by the caller and idle helper threads (one fewer than the
    # thread count), which the next call wakes again instead of starting new ones; none is
    # running after a call, and stop_workers (run before any fork) leaves none behind.
    from bayesgmm.core._parallel import can_fork, shutdown_pool

    shutdown_pool()  # (the passes' idle threads, should an earlier test have left them)
    compiled.stop_workers()
    monkeypatch.setitem(compiled._THREADS, "n", 3)
    before = threading.active_count()
    seen: list[set[int]] = []

    def kernel(todo: np.ndarray, out: np.ndarray) -> None:
        seen[-1].add(threading.get_ident())
        time.sleep(0.002)  # (each piece long enough that every worker gets one)
        out[todo] += 1

    for _ in range(2):
        count = np.zeros(50, dtype=np.int64)
        seen.append(set())
        by = seen[-1]
        compiled._in_threads(kernel, np.arange(50) % 4 + 1, (count,))
        np.testing.assert_array_equal(count, 1)
        assert threading.get_ident() in by and len(by) == 3
        assert threading.active_count() == before + 2  # two idle workers
        assert _helpers_alive() == 2
    assert seen[0] == seen[1]  # the same threads, woken twice
    assert can_fork(2)  # (idle workers are stopped first)
    assert threading.active_count() == before and not _helpers_alive()
    seen.append(set())
    compiled._in_threads(kernel, np.arange(4) + 1, (np.zeros(4, dtype=np.int64),))
    compiled.stop_workers()
    assert threading.active_count() == before


def test_a_fork_finds_no_worker_running(compiled, monkeypatch):
    # The idle workers are stopped before a fork (os.register_at_fork): the child starts with
    # the caller's thread alone (Python warns about forking a threaded process), and both
    # processes start workers again on demand.
    import os
    import warnings

    monkeypatch.setitem(compiled._THREADS, "n", 2)
    out = np.zeros(8, dtype=np.int64)

    def kernel(todo: np.ndarray, out: np.ndarray) -> None:
        out[todo] += 1

    from bayesgmm.core._parallel import shutdown_pool

    shutdown_pool()
    compiled._in_threads(kernel, np.arange(8) + 1, (out,))
    assert _helpers_alive()
    if threading.active_count() > 1 + _helpers_alive():
        pytest.skip("another thread runs in this process (Python would warn about any fork)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = threading.active_count() == 1 and not _helpers_alive()
            compiled._in_threads(kernel, np.arange(8) + 1, (out,))
            os._exit(0 if ok and (out == 2).all() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    compiled._in_threads(kernel, np.arange(8) + 1, (out,))
    np.testing.assert_array_equal(out, 2)


def test_icl_term_as_numpy(compiled, monkeypatch):
    # ICL's Σ_n w_n log max_k γ_nk on long data (one compiled pass) against numpy's row maxima.
    from bayesgmm.core.criteria import icl

    rng = np.random.default_rng(6)
    resp = rng.dirichlet(np.full(4, 0.3), size=20_000)
    resp[5] = [1.0, 0.0, 0.0, 0.0]
    w = rng.uniform(0, 2, 20_000)
    fast = [icl(-1000.0, 7, 20_000.0, resp), icl(-1000.0, 7, 20_000.0, resp, w)]
    monkeypatch.setattr(compiled, "ready", lambda wait=0.0, stage="loop": False)
    slow = [icl(-1000.0, 7, 20_000.0, resp), icl(-1000.0, 7, 20_000.0, resp, w)]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_exp_as_numpy(compiled):
    # The pass's exp: within 1 ulp of numpy's over the range it sees ([−60, 0] after the
    # shift by each row's largest term), exactly 0 at and below the floor, NaN kept.
    rng = np.random.default_rng(3)
    a = np.r_[rng.uniform(-60, 0, 20_000), 0.0, -1e-300, -30.0, -59.999]
    out = a.copy()
    compiled._exp_floored(out, np.zeros(a.size), np.empty(a.size, dtype=np.int64))
    ref = np.exp(a)
    assert np.all(np.abs(out - ref) <= np.spacing(ref))
    special = np.array([-60.0, -61.0, -np.inf, np.nan, -745.0])
    compiled._exp_floored(special, np.zeros(5), np.empty(5, dtype=np.int64))
    np.testing.assert_array_equal(special[[0, 1, 2, 4]], 0.0)
    assert np.isnan(special[3])


def test_log_as_numpy(compiled):
    # The E-step's log (of each row's sum of exponentials, ≥ 1): within 2 ulp of numpy's over
    # that range and across the whole float64 range, subnormals included; numpy's special values.
    rng = np.random.default_rng(5)
    a = np.r_[
        1.0 + rng.random(20_000) * 20.0,
        1.0 + rng.random(2_000) * 1e-6,
        np.exp(rng.uniform(-700.0, 700.0, 20_000)),
        [1.0, 2.0, 0.5, np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 2.0), 5e-324, 1e-310],
    ]
    out = np.empty_like(a)
    compiled._log_into(a, a.size, out, np.empty(a.size, dtype=np.int64))
    ref = np.log(a)
    assert np.all(np.abs(out - ref) <= 2 * np.spacing(np.abs(ref)))
    special = np.array([0.0, np.inf, np.nan, -1.0, -np.inf])
    got = np.empty(5)
    compiled._log_into(special, 5, got, np.empty(5, dtype=np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(got, np.log(special))


# (numpy's pass on a padded batch once raised "invalid value encountered in matmul" from the
# pool's threads: an error here, not a warning for users to wonder about.)
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("weights", ["none", "shared", "per-mixture"])
def test_pass_as_numpy(compiled, monkeypatch, diagonal, weights):
    # The compiled chunk of run_pass against the numpy chunk: a batch of 3 mixtures, one of
    # them padded (a zero weight: log 0 = −inf), over enough rows for the thread pool and a
    # last, partial block; the same sums up to rounding.
    from bayesgmm.core import _passes

    rng = np.random.default_rng(4)
    n, d, k, r = 9_001, 4, 3, 3
    X = rng.normal(size=(n, d)) * [1.0, 3.0, 0.5, 2.0] + 100.0
    w = rng.dirichlet(np.full(k, 3.0), size=r)
    w[2, 2] = 0.0
    w[2] /= w[2].sum()
    means = rng.normal(size=(r, k, d)) + 100.0
    A = rng.normal(size=(r, k, d, d))
    covs = A @ np.swapaxes(A, 2, 3) / d + np.eye(d)
    if diagonal:
        covs = covs * np.eye(d)
    p = _passes.mixture_density(w, means, np.linalg.cholesky(covs), diagonal, X.mean(axis=0))
    sw = {"none": None, "shared": rng.uniform(0, 2, n), "per-mixture": rng.uniform(0, 2, (r, n))}
    kind = "diag" if diagonal else "full"
    outs = {name: (np.empty((n, k * r)), np.empty((n, r))) for name in ("fast", "slow")}
    fast = _passes.run_pass(X, p, sample_weight=sw[weights], stats=kind,
                            resp_out=outs["fast"][0], logp_out=outs["fast"][1])  # fmt: skip
    assert _passes._compiled_ready(X, p, *outs["fast"], None)
    monkeypatch.setattr(compiled, "ready", lambda wait=0.0, stage="loop": False)
    slow = _passes.run_pass(X, p, sample_weight=sw[weights], stats=kind,
                            resp_out=outs["slow"][0], logp_out=outs["slow"][1])  # fmt: skip
    none = _passes.run_pass(X, p, sample_weight=sw[weights])
    monkeypatch.undo()
    # The per-row outputs (responsibilities, unweighted, and log p(x_n)) as numpy's.
    np.testing.assert_allclose(outs["fast"][0], outs["slow"][0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(outs["fast"][1], outs["slow"][1], rtol=1e-13)
    for a, b in [(fast.loglik, slow.loglik), (fast.counts, slow.counts),
                 (fast.sum_x, slow.sum_x), (fast.scatter, slow.scatter)]:  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9 * np.abs(b).max())
    np.testing.assert_allclose(_passes.run_pass(X, p, sample_weight=sw[weights]).loglik,
                               none.loglik, rtol=1e-12)  # fmt: skip
    assert fast.counts[2, 2] == 0.0  # the padded component gets nothing, exactly


def test_em_on_large_data_as_numpy(compiled, monkeypatch):
    # A whole fit on rows enough for the pass's thread pool, compiled chunk against numpy's.
    rng = np.random.default_rng(5)
    X = np.r_[rng.normal(size=(6_000, 3)), rng.normal(size=(4_000, 3)) * 2 + 4]
    fits = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("BAYESGMM_COMPILED", flag)
        fits[flag] = bg.fit_em(X, 2, covariance_type="VVV", init="kmeans++", rng=0)
    a, b = fits["1"], fits["0"]
    assert a.n_iter == b.n_iter
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)
    np.testing.assert_allclose(a.model.means, b.model.means, rtol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_map_rescue_as_numpy(compiled, iris_X, galaxies, weighted):
    # A start whose maximum-likelihood first M-step fails (a component empty, or on one point)
    # begins from its MAP M-step under mclust's default prior instead: compiled beside the first
    # step, against em.m_step_batch with that prior on the same statistics, for every structure
    # (E and V on one feature).
    from bayesgmm.core.em import _stats_from_resp, m_step_batch
    from bayesgmm.core.prior import ConjugatePrior
    from bayesgmm.core.structures import cold_inner_limit, get_structure

    rng = np.random.default_rng(3)
    for X, names in (
        (iris_X, MULTIVARIATE),
        (np.asarray(galaxies, float).reshape(-1, 1), ["E", "V"]),
    ):
        n = X.shape[0]
        w = rng.uniform(0.5, 2.0, n) if weighted else None
        empty = labels_to_resp_cols(np.arange(n) % 2, 3)  # component 2 empty
        single = labels_to_resp_cols(np.r_[2, np.arange(n - 1) % 2], 3)  # component 2: one row
        priors = {3: ConjugatePrior().resolve(X, 3, w)}
        starts = [(name, resp) for name in names for resp in (empty, single)]
        plain = compiled.first_steps(X, starts, w, 0.0, 20)
        firsts = compiled.first_steps(X, starts, w, 0.0, 20, priors)
        center = X.mean(axis=0)
        rescued = 0
        for (name, resp), ml, (params, comp, _) in zip(starts, plain, firsts, strict=True):
            if ml[0] is not None:  # the maximum-likelihood step holds: no rescue
                np.testing.assert_array_equal(params.covs, ml[0].covs)
                continue
            rescued += 1
            st = get_structure(name, X.shape[1])
            stats = _stats_from_resp(X, resp, w, st.scatter_kind, center)
            with cold_inner_limit(20):
                ref, bad, _ = m_step_batch(stats, center, st, priors[3], 0.0)
            assert bad[0] < 0 and comp == -1 and params is not None, name
            np.testing.assert_allclose(params.weights, ref.weights, rtol=1e-12)
            np.testing.assert_allclose(params.means, ref.means, rtol=1e-10, err_msg=name)
            np.testing.assert_allclose(params.covs, ref.covs, rtol=1e-8, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(params.chol, ref.chol, rtol=1e-8, atol=1e-12, err_msg=name)
        assert rescued >= len(names) + 1, rescued  # every empty start, and singletons


def test_kmeans_seedings_as_numpy(compiled, monkeypatch):
    # The compiled k-means++ seedings (every draw made first) give numpy's labels, one draw at a
    # time, bit for bit, and leave the generator where numpy's leave it: ties and rounded data
    # included, and a K above the distinct rows (a draw of a row instead of a uniform: the
    # draws are taken back and numpy's seeding runs).
    from bayesgmm.core import init

    data = np.random.default_rng(1)
    cases = []
    for trial in range(40):
        n, d, k = int(data.integers(2, 120)), int(data.integers(1, 8)), int(data.integers(1, 9))
        X = data.normal(size=(n, d))
        X[: n // 2] = X[0] if trial % 3 == 0 else X[: n // 2]
        cases.append((np.round(X) if trial % 4 == 0 else X, k))
    cases.append((np.repeat(np.eye(3), 5, axis=0), 5))  # 3 distinct rows, K = 5
    calls = []
    seeds = compiled.kmeans_seeds
    monkeypatch.setattr(compiled, "kmeans_seeds", lambda *a: calls.append(seeds(*a)) or calls[-1])
    for trial, (X, k) in enumerate(cases):
        Z = init.standardise(X)
        a, b = np.random.default_rng(trial), np.random.default_rng(trial)
        fast = init.kmeans_plus_plus_many(Z, k, a, 3)
        slow = np.stack([init._seeded_labels(np.ascontiguousarray(Z), k, b) for _ in range(3)])
        np.testing.assert_array_equal(fast, slow)
        assert a.random() == b.random()
    # Every case ran compiled; the last (and a few with many tied rows) fell back.
    assert len(calls) == len(cases) and not calls[-1] and sum(calls) > len(cases) // 2


def test_the_compiled_grid_runs_with_blas_on_one_thread(compiled, monkeypatch, faithful):
    # While the compiled loop runs select_em's grid, BLAS runs on one thread (its idle workers
    # would otherwise spin on the loop's cores); before and after, as the caller had it.
    from threadpoolctl import threadpool_info

    from bayesgmm.core import select

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen = []
    grid = select._select_grid

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return grid(*args, **kwargs)

    monkeypatch.setattr(select, "_select_grid", spy)
    before = blas_threads()
    bg.select_em(faithful, [1, 2], ["EII", "VVV"])
    assert seen and all(n == 1 for n in seen[0])
    assert blas_threads() == before


def test_partition_keys_as_numpy(compiled, monkeypatch):
    # The compiled ranks (labels renamed in order of first appearance) give numpy's keys and
    # counts byte for byte: negative and gapped labels, one row, one column, many rows.
    from bayesgmm.core import select

    rng = np.random.default_rng(3)
    cases = [rng.integers(-3, 9, size=(m, n)) for m, n in [(1, 1), (1, 40), (7, 155), (60, 33)]]
    cases.append(np.array([[5, 5, 9, 1, 9, 1, 0]]))
    for labels in cases:
        fast = select._partition_keys(labels)
        monkeypatch.setenv("BAYESGMM_COMPILED", "0")
        slow = select._partition_keys(labels)
        monkeypatch.delenv("BAYESGMM_COMPILED")
        assert fast == slow


def test_packing_runs_from_several_batches(compiled):
    # pack_params gathers runs that are rows of earlier batches (of several widths) and loose
    # mixtures into one padded batch, each run's K components where they were, in the runs'
    # order; what lies beyond a run's K is never read.
    from bayesgmm.core.em import BatchRow, Params

    rng = np.random.default_rng(0)
    d = 2

    def batch(r: int, k: int) -> tuple[np.ndarray, ...]:
        return tuple(rng.normal(size=(r, k) + (d,) * a) for a in range(3)) + (
            rng.normal(size=(r, k, d, d)),
        )

    wide, narrow = batch(5, 6), batch(4, 3)
    loose = [Params(*(a[:1] for a in batch(1, 2))) for _ in range(3)]
    params = [
        BatchRow(wide, 3, 4), loose[0], BatchRow(narrow, 1, 3), BatchRow(wide, 0, 6),
        loose[1], BatchRow(narrow, 2, 2), loose[2],
    ]  # fmt: skip
    ks = np.array([4, 2, 3, 6, 2, 2, 2])
    for kmax in (6, 7):
        out = compiled.pack_params(params, ks, kmax)
        for a in out:
            assert a.shape[:2] == (7, kmax) and a.flags.c_contiguous
        for i, (p, k) in enumerate(zip(params, ks, strict=True)):
            for got, want in zip(out, (p.weights, p.means, p.covs, p.chol), strict=True):
                np.testing.assert_array_equal(got[i, :k], want[0, :k], err_msg=f"run {i}")
    # All rows of one batch in order: its rows, taken (never the batch itself).
    same = compiled.pack_params([BatchRow(wide, i, 6) for i in range(5)], np.full(5, 6), 6)
    for got, want in zip(same, wide, strict=True):
        np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(got, want)


def test_stack_padded_pads_with_empty_identity_components():
    # stack_padded (finishing passes, the numpy loop) gathers runs from earlier batches and
    # loose mixtures like pack_params, and its padding is a component a pass may read: weight
    # 0, mean 0, identity covariance and factor (whatever the source batch held beyond a run's
    # K); the mask marks the real components; the source batches are never written.
    from bayesgmm.core.em import BatchRow, Params, stack_padded

    rng = np.random.default_rng(1)
    d = 3
    wide = tuple(rng.normal(size=(4, 5) + (d,) * a) for a in range(3)) + (
        rng.normal(size=(4, 5, d, d)),
    )
    before = [a.copy() for a in wide]
    loose = Params(*(rng.normal(size=(1, 2) + (d,) * a) for a in range(3)),
                   rng.normal(size=(1, 2, d, d)))  # fmt: skip
    parts = [BatchRow(wide, 2, 3), loose, BatchRow(wide, 0, 5), BatchRow(wide, 3, 1)]
    ks = [3, 2, 5, 1]
    for kmax in (5, 6):
        out, mask = stack_padded(parts, kmax)
        np.testing.assert_array_equal(mask, np.arange(kmax) < np.array(ks)[:, None])
        for i, (p, k) in enumerate(zip(parts, ks, strict=True)):
            for got, want in zip((out.weights, out.means, out.covs, out.chol),
                                 (p.weights, p.means, p.covs, p.chol), strict=True):  # fmt: skip
                np.testing.assert_array_equal(got[i, :k], want[0, :k])
            assert (out.weights[i, k:] == 0).all() and (out.means[i, k:] == 0).all()
            assert (out.covs[i, k:] == np.eye(d)).all() and (out.chol[i, k:] == np.eye(d)).all()
    for a, b in zip(wide, before, strict=True):
        np.testing.assert_array_equal(a, b)


def _thread_counts(_: int) -> tuple[int, int, int]:
    from threadpoolctl import threadpool_info

    from bayesgmm.core import _passes

    blas = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    return _compiled.threads(), _passes.n_threads(), blas


def test_forked_workers_run_every_layer_on_one_thread(monkeypatch):
    # Worker processes already use every core: inside each, BLAS, the compiled loop and the
    # passes over large data run on one thread (the passes' count was the parent's before),
    # and the parent's settings are untouched.
    import os

    from bayesgmm.core import _passes
    from bayesgmm.core._parallel import can_fork, forked_pool

    monkeypatch.delenv("BAYESGMM_NUM_THREADS", raising=False)
    _passes.n_threads.cache_clear()
    before = _passes.n_threads()
    if not can_fork(2):
        pytest.skip("this process cannot fork now (another thread runs)")
    with forked_pool(2) as pool:
        counts = list(pool.map(_thread_counts, range(2)))
    assert counts == [(1, 1, 1), (1, 1, 1)]
    assert _passes.n_threads() == before and "BAYESGMM_NUM_THREADS" not in os.environ
