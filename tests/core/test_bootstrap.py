"""Component matching, the EM bootstrap and the bootstrap likelihood-ratio test (core)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm.core.bootstrap import bootstrap_lrt, replicate_em
from bayesgmm.core.relabel import component_divergence, match_components, take_components


def _three_clusters(n: int = 300, seed: int = 0) -> np.ndarray:
    gm = bg.GaussianMixture(
        [0.3, 0.3, 0.4], [[0, 0], [5, 0], [0, 5]], np.array([np.eye(2)] * 3), covariance_type="VVV"
    )
    return gm.sample(n, rng=seed)[0]


def test_divergence_matches_closed_form_in_one_dimension():
    # Reference: KL(N(a, s²) ‖ N(b, t²)) = log(t/s) + (s² + (a − b)²) / (2t²) − 1/2 (a derivation).
    def kl(a, s, b, t):
        return np.log(t / s) + (s**2 + (a - b) ** 2) / (2 * t**2) - 0.5

    means = np.array([[0.0], [3.0]])
    covs = np.array([[[1.0]], [[4.0]]])
    ref_means = np.array([[1.0], [-2.0]])
    ref_covs = np.array([[[0.25]], [[9.0]]])
    got = component_divergence(means, covs, ref_means, ref_covs)
    for j in range(2):
        for k in range(2):
            a, s = means[j, 0], np.sqrt(covs[j, 0, 0])
            b, t = ref_means[k, 0], np.sqrt(ref_covs[k, 0, 0])
            assert got[j, k] == pytest.approx(kl(a, s, b, t) + kl(b, t, a, s), rel=1e-12)


def test_matching_undoes_any_permutation_and_tells_equal_means_apart():
    rng = np.random.default_rng(1)
    means = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 1.0]])  # two components share a mean
    covs = np.array([np.eye(2) * 0.2, np.eye(2) * 5.0, [[1.0, 0.5], [0.5, 1.0]]])
    perms = np.array([rng.permutation(3) for _ in range(20)])
    shuffled_mu = means[perms]  # (20, 3, 2): draw s lists component perms[s, j] at j
    shuffled_cov = covs[perms]
    found = match_components(shuffled_mu, shuffled_cov, means, covs)
    np.testing.assert_array_equal(
        take_components(shuffled_mu, found), np.broadcast_to(means, (20, 3, 2))
    )
    np.testing.assert_array_equal(
        take_components(shuffled_cov, found), np.broadcast_to(covs, (20, 3, 2, 2))
    )


@pytest.mark.parametrize("kind", ["nonparametric", "parametric", "weighted"])
def test_bootstrap_se_of_a_mean_is_sd_over_root_n(kind):
    # Reference: with K = 1 the EM mean is the sample mean, whose sampling sd is σ/√n; all three
    # bootstraps estimate it (the weighted likelihood bootstrap's Dirichlet weights have the
    # multinomial's variance, to O(1/n)).
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 2)) * [1.0, 3.0]
    fit = bg.fit_em(X, 1)
    reps = replicate_em(fit, X, n_boot=400, kind=kind, rng=3)
    se = reps.means[:, 0, :].std(axis=0, ddof=1)
    np.testing.assert_allclose(se, X.std(axis=0) / np.sqrt(400), rtol=0.15)
    assert not reps.failed


def test_replicates_are_in_the_estimates_labels_and_do_not_depend_on_n_jobs():
    X = _three_clusters()
    fit = bg.fit_em(X, 3)
    one = replicate_em(fit, X, n_boot=40, rng=5)
    two = replicate_em(fit, X, n_boot=40, rng=5, n_jobs=2)
    np.testing.assert_array_equal(one.means, two.means)
    np.testing.assert_array_equal(one.replicate, np.arange(40))
    # every replicate's component k sits near the estimate's component k
    dist = np.abs(one.means - fit.model.means).max()
    assert dist < 0.6
    again = replicate_em(fit, X, n_boot=40, rng=5)
    np.testing.assert_array_equal(one.weights, again.weights)


@pytest.mark.parametrize("kind", ["nonparametric", "parametric", "weighted"])
@pytest.mark.parametrize("structure", ["EEE", "VEV", "V"])
def test_batched_replicates_equal_each_fit_alone(kind, structure):
    # Reference: fit_em on each replicate's data alone (its multinomial counts or Dirichlet
    # weights as sample_weight, or its simulated data), from the same estimate: the batched
    # EM of all replicates gives the same log-likelihood (to 1e-10), iterations and mixture.
    from bayesgmm.core.bootstrap import _refit, _refit_batch

    X = _three_clusters(150, seed=4)
    if structure == "V":  # three clusters along one feature
        X = X[:, :1] + 5.0 * np.round(X[:, 1:] / 5.0)
    fit = bg.fit_em(X, 3, covariance_type=structure)
    payload = {
        "X": X, "estimate": fit.model, "kind": kind, "prior": None, "tol": 1e-8,
        "max_iter": 1000,
    }  # fmt: skip
    seeds = np.random.SeedSequence(7).spawn(12)
    batched = _refit_batch(payload, seeds)
    for b, seed in zip(batched, seeds, strict=True):
        alone = _refit(payload, np.random.default_rng(seed))
        assert isinstance(b, str) == isinstance(alone, str)
        if isinstance(alone, str):
            continue
        assert b.loglik == pytest.approx(alone.loglik, abs=1e-10, rel=0)
        assert b.n_iter == alone.n_iter and b.converged == alone.converged
        np.testing.assert_allclose(b.model.means, alone.model.means, atol=1e-8)
        np.testing.assert_allclose(b.model.covariances, alone.model.covariances, atol=1e-8)


def test_parametric_replicates_relabel_a_permuted_estimate():
    X = _three_clusters()
    fit = bg.fit_em(X, 3)
    reps = replicate_em(fit, X, n_boot=10, kind="parametric", rng=0)
    assert reps.weights.shape == (10, 3) and reps.covariances.shape == (10, 3, 2, 2)
    np.testing.assert_allclose(reps.weights.mean(axis=0), fit.model.weights, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "jackknife"}, "kind must be one of"),
        ({"n_boot": 0}, "n_boot must be an integer"),
        ({"n_jobs": 0}, "n_jobs must be"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    X = _three_clusters(60)
    fit = bg.fit_em(X, 2)
    with pytest.raises(ValueError, match=message):
        replicate_em(fit, X, **kwargs)


def test_data_must_be_the_fits():
    X = _three_clusters(60)
    fit = bg.fit_em(X, 2)
    with pytest.raises(ValueError, match="pass the data the fit was made on"):
        replicate_em(fit, X[:50])
    with pytest.raises(TypeError, match="fit must be an EMResult"):
        replicate_em(fit.model, X)


def test_lrt_rejects_one_component_for_two_clusters_and_reports_the_statistic():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(80, 1)), rng.normal(size=(80, 1)) + 4])
    f1, f2 = bg.fit_em(X, 1, covariance_type="V"), bg.fit_em(X, 2, covariance_type="V")
    res = bootstrap_lrt(X, f1, f2, n_boot=19, rng=1)
    assert res.statistic == pytest.approx(2 * (f2.loglik - f1.loglik))
    # Reference: the smallest p-value, (1 + 0) / (1 + B), when none of the B replicates with a
    # proper fit reaches the statistic. Under the null a two-component V fit can collapse onto
    # one point (unbounded likelihood); such replicates are left out and counted.
    assert res.replicates.size + len(res.failed) == 19
    assert res.replicates.size >= 15
    assert res.p_value == pytest.approx(1 / (1 + res.replicates.size))
    assert (res.replicates < res.statistic).all()


def test_batched_lrt_replicates_equal_each_fit_alone():
    # Reference: fit_em on each simulated data set alone, K from the null and K + 1 from the
    # alternative (mclust's starts): the batched replicates give the same statistic (1e-10).
    from bayesgmm.core.bootstrap import _lrt_batch

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(70, 1)), rng.normal(size=(80, 1)) + 3.5])
    f1, f2 = bg.fit_em(X, 1, covariance_type="V"), bg.fit_em(X, 2, covariance_type="V")
    payload = {
        "null": f1.model, "alt": f2.model, "n": X.shape[0],
        "settings": {"tol": 1e-8, "max_iter": 1000},
    }  # fmt: skip
    seeds = np.random.SeedSequence(11).spawn(10)
    batched = _lrt_batch(payload, seeds)
    for stat, seed in zip(batched, seeds, strict=True):
        data = f1.model.sample(X.shape[0], rng=np.random.default_rng(seed))[0]
        a0 = bg.fit_em(data, 1, covariance_type="V", init=f1.model)
        a1 = bg.fit_em(data, 2, covariance_type="V", init=f2.model)
        if a1.degenerate:
            assert isinstance(stat, str)
            continue
        assert stat == pytest.approx(2 * (a1.loglik - a0.loglik), abs=1e-10, rel=0)


def test_lrt_needs_k_plus_one():
    X = _three_clusters(90)
    with pytest.raises(ValueError, match="K \\+ 1"):
        bootstrap_lrt(X, bg.fit_em(X, 1), bg.fit_em(X, 3), n_boot=2)


def test_adjusted_rand_index_equals_scikit_learn():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, size=50)
        b = np.where(rng.random(50) < 0.7, a, rng.integers(0, 3, size=50))
        # Reference: scikit-learn's adjusted_rand_score on the same labels.
        assert bg.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    names = np.array(["x", "y", "y", "z"])
    assert bg.adjusted_rand_index(names, [2, 0, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="same length"):
        bg.adjusted_rand_index([0, 1], [0, 1, 1])


def test_n_jobs_is_one_policy():
    # scikit-learn's convention for explicit values, everywhere; None is each function's own.
    import os

    from bayesgmm.core._parallel import resolve_n_jobs

    cores = os.cpu_count() or 1
    assert resolve_n_jobs(3, 1) == 3
    assert resolve_n_jobs(-1, 1) == cores
    assert resolve_n_jobs(-2, 1) == max(1, cores - 1)
    assert resolve_n_jobs(None, 4) == 4
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs must be a positive integer, a negative one"):
            resolve_n_jobs(bad, 1)
    X = _three_clusters(60)
    with pytest.raises(ValueError, match="n_jobs must be"):
        bg.select_em(X, range(1, 3), ["VVV"], n_jobs=0)
    sel = bg.select_em(X, range(1, 3), ["VVV", "EEE"], n_jobs=-1)  # accepted, as scikit-learn
    assert sel.best.n_components in (1, 2)


def test_stacked_replicates_on_four_features_with_few_runs():
    # With few runs of few components on 4+ features a pass would rather use the whitened
    # coordinates ("direct"), which the stacked pass cannot: it must keep the quadratic
    # features. Reference: fit_em on the one simulated data set alone (1e-10).
    from bayesgmm.core.bootstrap import _lrt_batch

    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    X[:200, 0] += 4.0  # two clusters: the alternative's start splits the null's data in two
    f1, f2 = bg.fit_em(X, 1), bg.fit_em(X, 2)
    reps = replicate_em(f1, X, n_boot=1, kind="parametric", rng=0)
    assert reps.replicate.tolist() == [0]
    payload = {
        "null": f1.model, "alt": f2.model, "n": X.shape[0],
        "settings": {"tol": 1e-8, "max_iter": 1000},
    }  # fmt: skip
    seed = np.random.SeedSequence(3).spawn(1)[0]
    [stat] = _lrt_batch(payload, [seed])
    data = f1.model.sample(X.shape[0], rng=np.random.default_rng(seed))[0]
    a0 = bg.fit_em(data, 1, init=f1.model)
    a1 = bg.fit_em(data, 2, init=f2.model)
    assert not a1.degenerate  # the data are what the test needs
    assert stat == pytest.approx(2 * (a1.loglik - a0.loglik), abs=1e-10, rel=0)


def _joint_loglik(model: bg.GaussianMixture, X: np.ndarray, labels: np.ndarray | None) -> float:
    """Σ log p(x_n) (labels None) or Σ log p(x_n, z_n) (every row labelled), on each row's
    observed values, from the model's components one at a time."""
    if labels is None:
        return float(model.log_prob(X).sum())
    comp = np.column_stack(
        [
            np.log(model.weights[j])
            + bg.GaussianMixture(
                np.ones(1), model.means[j : j + 1], model.covariances[j : j + 1], "VVV"
            ).log_prob(X)
            for j in range(model.n_components)
        ]
    )
    return float(comp[np.arange(X.shape[0]), labels].sum())


@pytest.mark.parametrize(
    ("structure", "labelled", "holes"),
    [
        ("EEE", False, False),
        ("VVE", False, False),
        ("VEI", False, True),
        ("V", False, False),
        ("VEV", True, False),
        ("VVE", True, False),
        ("EVE", True, True),
    ],
)
def test_fits_on_subsets_of_rows_in_one_batch_equal_each_fit_alone(structure, labelled, holes):
    # Cross-validation's refits: each training subset as a run weighting its rows 1 and the
    # rest 0, all in one batched EM. Reference: fit_em on the subset's rows alone (every row
    # labelled: discriminant analysis's class-wise fit), the same log-likelihood to 1e-10.
    from bayesgmm.core.fit import fit_on_rows, start_on_rows

    # (Fits that converge cleanly: where EM crawls for hundreds of iterations on a flat
    # likelihood, rounding-level differences in the sums can move the iteration where the
    # tolerance stops it, alone or in a batch.)
    truth = bg.GaussianMixture(
        [0.3, 0.3, 0.4], [[0, 0], [5, 0], [0, 5]], np.array([np.eye(2)] * 3), "VVV"
    )
    X = _three_clusters(150, seed=6)
    labels = truth.predict(X) if labelled else None
    if structure == "V":  # three groups along one feature
        X = bg.GaussianMixture([0.3, 0.3, 0.4], [[0], [4], [8]], np.ones((3, 1, 1)), "V").sample(
            150, rng=6
        )[0]
    if holes:
        X = X.copy()
        X[np.random.default_rng(2).random(X.shape) < 0.05] = np.nan
        X[np.isnan(X).all(axis=1), 0] = 0.0
    folds = np.arange(150) % 7
    subsets = [folds != f for f in range(7)]
    gen = np.random.default_rng(0)
    starts = [start_on_rows(X, rows, 3, structure, gen, labels) for rows in subsets]
    batched = fit_on_rows(X, starts, labels)
    for rows, (model, reason) in zip(subsets, batched, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bg.DegenerateFitWarning)
            alone = bg.fit_em(
                X[rows], 3, covariance_type=structure,
                labels=None if labels is None else labels[rows],
            )  # fmt: skip
        assert (reason is None) == (not alone.degenerate)
        lab = None if labels is None else labels[rows]
        assert _joint_loglik(model, X[rows], lab) == pytest.approx(alone.loglik, abs=1e-10, rel=0)
        np.testing.assert_allclose(model.covariances, alone.model.covariances, atol=1e-8)


def test_fits_on_subsets_of_rows_split_into_batches_give_the_same_fits(monkeypatch):
    # Leave-one-out on many rows makes a runs × rows weight matrix too large for one batch:
    # fit_on_rows cuts the runs into batches (here at most 3 a batch). Reference: the same
    # fits in one batch.
    from bayesgmm.core import _loop
    from bayesgmm.core.fit import fit_on_rows, start_on_rows

    X = _three_clusters(120, seed=8)
    subsets = [np.arange(120) % 8 != f for f in range(8)]
    gen = np.random.default_rng(0)
    starts = [start_on_rows(X, rows, 3, "VVV", gen) for rows in subsets]
    whole = fit_on_rows(X, starts)
    monkeypatch.setattr(_loop, "BATCH_MAX_ENTRIES", 3 * 120)
    assert len(_loop.batch_ranges(8, 120)) == 3
    split = fit_on_rows(X, starts)
    for (a, ra), (b, rb) in zip(whole, split, strict=True):
        assert ra == rb
        assert _joint_loglik(b, X, None) == pytest.approx(_joint_loglik(a, X, None), abs=1e-10)
