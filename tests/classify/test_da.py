"""Labels: semi-supervised EM and discriminant analysis (EDDA, a mixture per class).

Oracles: the class-wise closed-form estimates (every row labelled), scipy's densities for the
joint log-likelihood, and mclust 6.0.0's MclustDA / cvMclustDA on the bundled iris data
(tests/reference/mclust_da.json, written by tests/reference/make_mclust_da.R).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import bayesgmm as bg

REF = json.loads((Path(__file__).parents[1] / "reference" / "mclust_da.json").read_text())


@pytest.fixture(scope="module")
def iris():
    df = bg.datasets.load_iris()
    return df.drop(columns="species"), df["species"]


def test_every_row_labelled_gives_the_class_wise_estimates(iris):
    X, y = iris
    x = X.to_numpy()
    codes = y.astype("category").cat.codes.to_numpy()
    means = np.array([x[codes == c].mean(axis=0) for c in range(3)])
    covs = np.array([np.cov(x[codes == c].T, bias=True) for c in range(3)])
    fit = bg.fit_em(x, 3, covariance_type="VVV", labels=codes)
    np.testing.assert_allclose(fit.model.weights, np.bincount(codes) / 150, rtol=1e-12)
    np.testing.assert_allclose(fit.model.means, means, rtol=1e-12)
    np.testing.assert_allclose(fit.model.covariances, covs, rtol=1e-10, atol=1e-14)
    # EEE: the pooled within-class covariance (the textbook LDA estimate, divisor n).
    tied = bg.fit_em(x, 3, covariance_type="EEE", labels=codes)
    pooled = sum(np.bincount(codes)[c] * covs[c] for c in range(3)) / 150
    np.testing.assert_allclose(tied.model.covariances[0], pooled, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(fit.predict(), codes)  # one-hot: the labels themselves


def test_semi_supervised_em_maximises_the_joint_likelihood(iris):
    X, y = iris
    x = X.to_numpy()
    codes = y.astype("category").cat.codes.to_numpy()
    lab = codes.copy()
    lab[np.random.default_rng(0).random(150) < 0.8] = -1  # a fifth of the rows labelled
    fit = bg.fit_em(x, 3, labels=lab, accelerate=False)
    assert np.diff(fit.loglik_trace).min() >= -1e-9 * abs(fit.loglik)
    m = fit.model
    comp = np.column_stack(
        [
            np.log(m.weights[k]) + stats.multivariate_normal(m.means[k], m.covariances[k]).logpdf(x)
            for k in range(3)
        ]
    )
    known = lab >= 0
    # Reference: log p(x_n, z_n) for the labelled rows, log p(x_n) for the others (scipy).
    joint = comp[known, lab[known]].sum() + logsumexp(comp[~known], axis=1).sum()
    np.testing.assert_allclose(fit.loglik, joint, rtol=1e-10)
    np.testing.assert_array_equal(fit.responsibilities[known].argmax(axis=1), lab[known])
    assert fit.responsibilities[known].max(axis=1).min() == 1.0
    assert np.mean(fit.predict() == codes) > 0.95


def test_label_errors(iris):
    X, y = iris
    x = X.to_numpy()
    lab = np.full(150, -1)
    lab[:3] = [0, 1, 3]
    with pytest.raises(ValueError, match=r"0\.\.2 \(or −1\); got 3"):
        bg.fit_em(x, 3, labels=lab)
    lab[2] = 1
    with pytest.raises(ValueError, match="component 2 has no labelled row"):
        bg.fit_em(x, 3, labels=lab)
    with pytest.raises(TypeError, match="fit_classifier"):
        bg.fit_em(x, 3, labels=y.to_numpy())
    with pytest.raises(ValueError, match="n_init=3"):
        bg.fit_em(x, 3, labels=np.arange(150) % 3, n_init=3)
    with pytest.raises(ValueError, match=r"labels must have shape \(150,\)"):
        bg.fit_em(x, 3, labels=np.zeros(10))
    with pytest.raises(ValueError, match="one class"):
        bg.fit_classifier(X, np.zeros(150))
    one = y.to_numpy().copy()
    one[0] = "rare"
    with pytest.raises(ValueError, match="class 'rare' has 1 row"):
        bg.fit_classifier(X, one)
    # A class with no more rows than features cannot have a full covariance of its own.
    few = np.array(["a"] * 3 + ["b"] * 5)
    with pytest.raises(ValueError, match=r"class 'a' \(3 rows\) has no more rows than the 4"):
        bg.fit_classifier(X.to_numpy()[:8], few, covariance_types=["VVV"])
    with pytest.raises(ValueError, match="priors must be 3 positive numbers"):
        bg.fit_classifier(X, y, priors=[0.5, 0.5])
    # Numeric classes are named as plain numbers, and a class smaller than every K says so.
    with pytest.raises(ValueError, match=r"y has one class \(0\.0\)"):
        bg.fit_classifier(X, np.zeros(150))
    numeric = np.r_[np.zeros(3), np.ones(147)]
    with pytest.raises(ValueError, match=r"class 0\.0 has 3 rows, fewer than every K in"):
        bg.fit_classifier(X, numeric, kind="mixture", n_components=[4, 5])


def test_edda_on_iris_against_mclust(iris):
    X, y = iris
    edda = bg.fit_classifier(X, y)
    assert list(edda.classes) == ["setosa", "versicolor", "virginica"]  # text, mapped
    assert edda.table["structure"].iloc[0] == REF["edda_model"]  # VEV
    assert edda.error(X, y) == pytest.approx(REF["edda_train_error"])  # 3 of 150
    # Leave-one-out (no random folds): the same rows misclassified as mclust's cvMclustDA.
    cv = bg.cross_validate_classifier(X, y, n_folds=150, fit=edda)
    assert cv.error == pytest.approx(REF["edda_loo_error"])  # 4 of 150
    assert cv.brier == pytest.approx(REF["edda_loo_brier"], abs=1e-3)
    proba = edda.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # Bayes' rule: log p(c) + log p(x | c), each class a one-component Gaussian.
    lj = edda.log_joint(X)
    np.testing.assert_allclose(
        lj[:, 1], np.log(1 / 3) + edda.models["versicolor"].log_prob(X), rtol=1e-12
    )
    # Other priors shift the decisions towards the favoured class.
    tilted = bg.fit_classifier(X, y, priors=[0.01, 0.01, 0.98])
    assert (tilted.predict(X) == "virginica").sum() > (edda.predict(X) == "virginica").sum()


def test_mixture_per_class_and_ten_fold_cross_validation(iris):
    X, y = iris
    da = bg.fit_classifier(X, y, kind="mixture", n_components=range(1, 3))
    assert set(da.models) == {"setosa", "versicolor", "virginica"}
    assert (da.table["n_components"] <= 2).all()
    assert da.error(X, y) <= REF["mclustda_train_error"] + 1 / 150
    cv = bg.cross_validate_classifier(X, y, n_folds=10, fit=da, rng=1)
    assert len(cv.folds) == 10 and cv.folds["n_obs"].sum() == 150
    # Balanced folds: 15 rows each, 5 of each class.
    assert (cv.folds["n_obs"] == 15).all()
    np.testing.assert_allclose(cv.error, np.mean(cv.predicted != y.to_numpy()))
    assert cv.error < 0.1


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("kind", ["edda", "mixture"])
def test_cross_validation_refits_every_fold_as_it_would_alone(iris, kind, holes):
    # The folds' refits run as one batched EM (per class, for a mixture per class). Reference:
    # each fold's model fitted by itself, fit_em on its training rows (EDDA: every row
    # labelled; a mixture: each class's rows from its hierarchical start), then Bayes' rule.
    X, y = iris
    x = X.to_numpy().copy()
    if holes:
        x[np.random.default_rng(3).random(x.shape) < 0.03] = np.nan
    codes = y.astype("category").cat.codes.to_numpy()
    fit = bg.fit_classifier(x, codes, kind=kind, n_components=range(1, 3))
    cv = bg.cross_validate_classifier(x, codes, n_folds=10, fit=fit, rng=4)
    from bayesgmm.classify.da import _folds

    fold = _folds(codes, 10, np.random.default_rng(4))  # the folds the call drew
    expected = np.empty((150, 3))
    for f in range(10):
        train, test = fold != f, fold == f
        lj = np.empty((int(test.sum()), 3))
        for c in range(3):
            prior = np.log(np.mean(codes[train] == c))
            if kind == "edda":
                m = bg.fit_em(
                    x[train], 3, covariance_type=fit.settings["structure"], labels=codes[train]
                ).model
                one = bg.GaussianMixture(np.ones(1), m.means[c : c + 1], m.covariances[c : c + 1])
            else:
                model = fit.models[c]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", bg.DegenerateFitWarning)
                    one = bg.fit_em(
                        x[train & (codes == c)], model.n_components,
                        covariance_type=model.covariance_type,
                    ).model  # fmt: skip
            lj[:, c] = prior + one.log_prob(x[test])
        expected[test] = np.exp(lj - logsumexp(lj, axis=1, keepdims=True))
    np.testing.assert_allclose(cv.proba, expected, atol=1e-8)


def test_select_em_with_labels(iris):
    X, y = iris
    codes = y.astype("category").cat.codes.to_numpy()
    lab = np.where(np.random.default_rng(2).random(150) < 0.3, codes, -1)
    sel = bg.select_em(X, range(2, 5), ["EEE", "VVV"], labels=lab)
    # Only K = 3 has every component labelled; K = 2 has a label 2 out of range.
    assert sel.best.n_components == 3
    assert "0..1" in sel.failures[("EEE", 2)] and "component 3" in sel.failures[("VVV", 4)]
    alone = bg.fit_em(X, 3, covariance_type=sel.best.covariance_type, labels=lab)
    np.testing.assert_allclose(sel.best.loglik, alone.loglik, rtol=1e-9)


def test_the_posterior_with_labels(iris):
    # z observed where known: the model's likelihood is the joint one on those rows (the numpy
    # density and PyTensor's agree, in value and gradient), and the class posterior of the
    # other rows comes back as a group.
    import pytensor
    from pytensor.compile.mode import Mode

    from bayesgmm.bayes import to_pymc
    from bayesgmm.bayes.density import evaluate

    X, y = iris
    x = X.to_numpy()
    codes = y.astype("category").cat.codes.to_numpy()
    lab = np.where(np.random.default_rng(0).random(150) < 0.2, codes, -1)
    model = to_pymc(x, 3, identify=None, labels=lab, covariance_type="EEE")
    with pytensor.config.change_flags(cxx=""):  # Python thunks: nothing to compile
        fn = model.compile_fn(
            [model.logp(), model.dlogp()], inputs=model.value_vars,
            mode=Mode(linker="py", optimizer="fast_compile"),
        )  # fmt: skip
    theta = 0.3 * np.random.default_rng(1).normal(size=model.bayesgmm_param.size(3))
    lp, grad = fn({model.rvs_to_values[model["theta"]].name: theta})
    ours = evaluate(model.bayesgmm_param, theta, 3, x, model.bayesgmm_constants, True, None, lab)
    np.testing.assert_allclose(ours["logp"], lp, rtol=1e-10)
    np.testing.assert_allclose(ours["grad"], grad, rtol=1e-8, atol=1e-8)
    with _no_check():
        tree = bg.fit_bayes(x, 3, labels=lab, method="laplace", draws=100, chains=2, rng=1)
    post = tree["posterior"]
    gm = bg.GaussianMixture(
        post["weights"].values[0, 3], post["means"].values[0, 3], post["covariances"].values[0, 3]
    )
    lj = gm.log_joint_all(x)
    # Reference: log p(x_n, z_n) where labelled, log p(x_n) elsewhere (the core's densities).
    ref = np.where(lab >= 0, lj[np.arange(150), np.maximum(lab, 0)], logsumexp(lj, axis=1))
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0, 3], ref, rtol=1e-10)
    p = tree["labels"]["probability"].values
    np.testing.assert_array_equal(p[lab >= 0].argmax(axis=1), lab[lab >= 0])
    assert np.mean(p.argmax(axis=1) == codes) > 0.9
    with pytest.raises(ValueError, match="identify=None"):
        to_pymc(x, 3, labels=lab)


def _no_check():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def quiet():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bg.PosteriorWarning)  # its diagnostics: not the point
            yield

    return quiet()
