"""bayesgmm.sklearn.GaussianMixtureEM: scikit-learn's estimator checks, pipelines, grid search,
and agreement with bayesgmm's own fit."""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm.sklearn import GaussianMixtureEM, MixtureClassifier  # noqa: E402


def _expected_failures(estimator):
    """The checks each estimator is expected to fail, and why."""
    if isinstance(estimator, MixtureClassifier):
        return {}
    check = "check_sample_weight_equivalence_on_dense_data"
    if estimator.n_components > 1:
        # The hierarchical start is built from the rows: a row of weight 2 and the same row
        # twice give different trees, so different starts, so different fits (with K = 1
        # there is no start to differ, and the check passes: the weights themselves are exact).
        return {check: "the hc start sees rows, not weights"}
    if estimator.covariance_type == "VVV":
        # The check's data have 30 features and fewer distinct rows: VVV cannot be fitted
        # (a singular covariance), and the estimator raises a ValueError saying so.
        return {check: "VVV on more features than rows is refused"}
    return {}


@parametrize_with_checks(
    [
        GaussianMixtureEM(random_state=0),
        GaussianMixtureEM(covariance_type="VVI", random_state=0),
        GaussianMixtureEM(n_components=2, covariance_type="VVI", random_state=0),
        # EDDA; kind="mixture" goes through the same fit / predict code (fit_classifier's
        # two kinds are tested in tests/classify).
        MixtureClassifier(random_state=0),
    ],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_same_fit_as_fit_em():
    X = bg.datasets.load_faithful().to_numpy()
    gm = GaussianMixtureEM(3, covariance_type="EEE", random_state=0).fit(X)
    ref = bg.fit_em(X, 3, covariance_type="EEE")
    assert gm.result_.loglik == pytest.approx(ref.loglik, rel=1e-12)
    np.testing.assert_allclose(gm.means_, ref.model.means)
    # scikit-learn's precisions_cholesky_: P_k P_kᵀ = Σ_k⁻¹
    prec = gm.precisions_cholesky_ @ np.swapaxes(gm.precisions_cholesky_, -1, -2)
    np.testing.assert_allclose(prec, np.linalg.inv(gm.covariances_), rtol=1e-10)
    assert gm.score(X) == pytest.approx(ref.loglik / X.shape[0], rel=1e-12)
    assert gm.bic(X) == pytest.approx(ref.bic, rel=1e-10)
    assert gm.aic(X) == pytest.approx(ref.aic, rel=1e-10)
    assert gm.lower_bound_ == pytest.approx(ref.loglik / X.shape[0])
    np.testing.assert_array_equal(gm.predict(X), ref.predict())
    np.testing.assert_allclose(gm.predict_proba(X).sum(axis=1), 1.0)
    draws, labels = gm.sample(50)
    assert draws.shape == (50, 2) and labels.shape == (50,)


def test_selection_and_pipeline_and_grid_search():
    X = bg.datasets.load_faithful()
    gm = GaussianMixtureEM(range(1, 5), covariance_type="all", random_state=0).fit(X)
    assert (gm.covariance_type_, gm.n_components_) == ("EEE", 3)  # mclust's choice
    assert gm.selection_.table.shape == (4, 14)
    assert list(gm.feature_names_in_) == ["eruptions", "waiting"]
    pipe = make_pipeline(StandardScaler(), GaussianMixtureEM(3, covariance_type="EEE"))
    labels = pipe.fit(X).predict(X)
    assert bg.adjusted_rand_index(labels, gm.predict(X)) > 0.95
    assert clone(pipe).get_params()["gaussianmixtureem__n_components"] == 3

    def neg_bic(estimator, X, y=None):
        return -estimator.bic(X)

    search = GridSearchCV(
        GaussianMixtureEM(covariance_type="EEE", random_state=0),
        {"n_components": [1, 2, 3, 4]},
        scoring=neg_bic,
        cv=[(np.arange(len(X)), np.arange(len(X)))],  # BIC on the data it was fitted to
    )
    search.fit(X)
    assert search.best_params_ == {"n_components": 3}


def test_one_feature_structures_and_bad_input():
    x = bg.datasets.load_galaxies().to_numpy()
    gm = GaussianMixtureEM(3, covariance_type="VVV", random_state=0).fit(x)
    assert gm.covariance_type_ == "V"
    with pytest.raises(ValueError, match="n_components must be an int or an iterable"):
        GaussianMixtureEM("three").fit(x)
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixtureEM(2, covariance_type="XYZ").fit(X)


def test_mixture_classifier_is_fit_classifier_in_a_pipeline():
    from sklearn.model_selection import cross_val_score

    df = bg.datasets.load_iris()
    X, y = df.drop(columns="species").to_numpy(), df["species"].to_numpy()
    clf = MixtureClassifier().fit(X, y)
    ref = bg.fit_classifier(X, y)
    np.testing.assert_array_equal(clf.predict(X), ref.predict(X))
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X))
    assert clf.score(X, y) == pytest.approx(1 - ref.error(X, y))  # accuracy: 147 of 150
    pipe = make_pipeline(StandardScaler(), MixtureClassifier(covariance_types=["EEE", "VVV"]))
    scores = cross_val_score(pipe, X, y, cv=5)
    assert scores.mean() > 0.9
    grid = GridSearchCV(MixtureClassifier(), {"covariance_types": [["EEE"], ["VVV"]]}, cv=3).fit(
        X, y
    )
    assert grid.best_params_["covariance_types"] in (["EEE"], ["VVV"])
