"""scikit-learn estimators: :class:`GaussianMixtureEM`, bayesgmm's EM behind ``fit / predict /
score``, and :class:`MixtureClassifier`, its discriminant analysis, for pipelines, ``clone``
and grid search.

scikit-learn is an optional dependency (``pip install 'bayesgmm[sklearn]'``); nothing else in
bayesgmm imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, DensityMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised without scikit-learn only
    raise ImportError(
        "bayesgmm.sklearn needs scikit-learn: pip install 'bayesgmm[sklearn]' (or uv sync "
        "--extra sklearn)."
    ) from err

from bayesgmm.core.fit import fit_em
from bayesgmm.core.select import select_em
from bayesgmm.core.structures import get_structure, structure_names

__all__ = ["GaussianMixtureEM", "MixtureClassifier"]


def _one_feature(name: str) -> str:
    """The one-feature structure (mclust's E or V) a multivariate name stands for: its volume
    letter (aliases first resolved: full, diag and spherical vary the volume, tied does not)."""
    if name.upper() in ("E", "V"):
        return name.upper()
    return get_structure(name, 2).name[0]


class GaussianMixtureEM(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by maximum-likelihood EM (:func:`bayesgmm.fit_em`), or chosen
    over K and covariance structures by BIC or ICL (:func:`bayesgmm.select_em`), with
    scikit-learn's estimator API.

    Parameters
    ----------
    n_components : int or iterable of int, default 1
        K, or the values of K to choose among.
    covariance_type : str or iterable of str, default "VVV"
        One of mclust's 14 structures (EII … VVV), scikit-learn's aliases ("full", "tied",
        "diag", "spherical"), a list of them, or "all" to choose among every structure. On
        one feature a structure stands for mclust's univariate one with the same volume
        letter (VVV, VII, full, diag, spherical → V; EEE, EII, tied → E).
    criterion : {"bic", "icl"}, default "bic"
        How the model is chosen when several K or structures are given.
    init : str, default "hc"
        The start: "hc" (mclust's hierarchical one), "kmeans++", "random", or a named tree
        ("hc:ward", …; :func:`bayesgmm.hierarchical`).
    n_init : int, default 1
        Starts per model (the first from ``init``, the others k-means++).
    tol : float, default 1e-8
        Relative change of the log-likelihood at which EM stops.
    max_iter : int, default 1000
    reg_covar : float, default 0.0
        Added to every covariance's diagonal after each M-step.
    prior : ConjugatePrior, optional
        MAP-EM under mclust's conjugate prior.
    random_state : int, RandomState or None, default None
    n_jobs : int, optional
        Worker processes for a selection over several models.

    Attributes
    ----------
    weights_, means_, covariances_ : ndarray
        (K,), (K, D) and (K, D, D) (full matrices whatever the structure).
    precisions_cholesky_ : ndarray (K, D, D)
        As scikit-learn's for "full": upper triangular P_k with Σ_k⁻¹ = P_k P_kᵀ.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        The fitted log-likelihood per observation (weighted).
    covariance_type_ : str
    n_components_ : int
    selection_ : SelectionResult or None
        The table of every model fitted, when several were.
    result_ : EMResult
        The chosen fit.
    n_features_in_, feature_names_in_
        As every scikit-learn estimator.

    Examples
    --------
    >>> from bayesgmm.sklearn import GaussianMixtureEM
    >>> import bayesgmm as bg
    >>> X = bg.datasets.load_faithful().to_numpy()
    >>> gm = GaussianMixtureEM(n_components=range(1, 5), covariance_type="all").fit(X)
    >>> gm.covariance_type_, gm.n_components_
    ('EEE', 3)
    """

    def __init__(
        self,
        n_components: Any = 1,
        *,
        covariance_type: Any = "VVV",
        criterion: str = "bic",
        init: str = "hc",
        n_init: int = 1,
        tol: float = 1e-8,
        max_iter: int = 1000,
        reg_covar: float = 0.0,
        prior: Any = None,
        random_state: Any = None,
        n_jobs: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.init = init
        self.n_init = n_init
        self.tol = tol
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.prior = prior
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- fitting -----------------------------------------------------------------------------
    def _grid(self, d: int) -> tuple[list[int], list[str]]:
        k = self.n_components
        if isinstance(k, int | np.integer) and not isinstance(k, bool):
            ks = [int(k)]
        elif isinstance(k, Iterable) and not isinstance(k, str):
            ks = [int(v) for v in k]
        else:
            raise ValueError(f"n_components must be an int or an iterable of ints; got {k!r}.")
        ct = self.covariance_type
        if isinstance(ct, str) and ct.lower() == "all":
            names = structure_names(d)
        elif isinstance(ct, str):
            names = [ct]
        else:
            names = list(ct)
        if d == 1:
            names = list(dict.fromkeys(_one_feature(n) for n in names))
        return ks, names

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixtureEM:
        """Fit the mixture (or choose it, when several K or structures are given) to ``X``."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        ks, names = self._grid(X.shape[1])
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        options: dict[str, Any] = {
            "init": self.init,
            "n_init": self.n_init,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "reg_covar": self.reg_covar,
            "prior": self.prior,
            "sample_weight": w,
            "rng": seed,
        }
        if len(ks) == 1 and len(names) == 1:
            result = fit_em(X, ks[0], covariance_type=names[0], **options)
            self.selection_ = None
        else:
            sel = select_em(X, ks, names, self.criterion, n_jobs=self.n_jobs, **options)
            result = sel.best
            self.selection_ = sel
        model = result.model
        self.result_ = result
        self.weights_ = model.weights.copy()
        self.means_ = model.means.copy()
        self.covariances_ = model.covariances.copy()
        inv_l = np.linalg.inv(model.cholesky)  # L_k⁻¹, so Σ_k⁻¹ = L_k⁻ᵀ L_k⁻¹
        self.precisions_cholesky_ = np.swapaxes(inv_l, -1, -2)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.loglik / result.n_obs)
        self.covariance_type_ = result.covariance_type
        self.n_components_ = result.n_components
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then the most probable component of each row of ``X``."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    # -- using the fit -----------------------------------------------------------------------
    def _checked(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "result_")
        return validate_data(self, X, dtype=np.float64, reset=False)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component of each row (0..K−1)."""
        X = self._checked(X)
        return self.result_.model.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(z = k | x) for each row (n, K)."""
        X = self._checked(X)
        return self.result_.model.responsibilities(X)

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each row."""
        X = self._checked(X)
        return self.result_.model.log_prob(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """The mean log-likelihood per row (weighted by ``sample_weight``), as scikit-learn's
        ``GaussianMixture.score``."""
        logp = self.score_samples(X)
        return float(np.average(logp, weights=sample_weight))

    def bic(self, X: Any) -> float:
        """BIC of the fitted mixture on ``X``: −2 ℓ + p log n (smaller is better)."""
        logp = self.score_samples(X)
        return float(-2.0 * logp.sum() + self.result_.n_parameters * np.log(logp.shape[0]))

    def aic(self, X: Any) -> float:
        """AIC of the fitted mixture on ``X``: −2 ℓ + 2 p (smaller is better)."""
        logp = self.score_samples(X)
        return float(-2.0 * logp.sum() + 2.0 * self.result_.n_parameters)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``n_samples`` draws (X, component labels) from the fitted mixture, with the
        estimator's ``random_state``."""
        check_is_fitted(self, "result_")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        return self.result_.model.sample(n_samples, rng=seed)


class MixtureClassifier(ClassifierMixin, BaseEstimator):
    """Discriminant analysis with Gaussian (mixture) class densities
    (:func:`bayesgmm.fit_classifier`, mclust's EDDA and MclustDA) with scikit-learn's
    classifier API; ``score`` is the accuracy.

    Parameters
    ----------
    kind : {"edda", "mixture"}, default "edda"
        One Gaussian per class under a common structure chosen by BIC, or a mixture per class
        (K and structure chosen by BIC per class).
    n_components : int or iterable of int, default (1, 2, 3, 4, 5)
        The K tried per class ("mixture").
    covariance_types : str or iterable of str, default "all"
        The structures tried.
    priors : array_like, optional
        p(c) for Bayes' rule, in the order of ``classes_``; default the training shares.
    random_state : int, RandomState or None
        Seeds the restarts of the per-class selections.

    Attributes
    ----------
    classes_ : ndarray
    result_ : ClassifierResult
    n_features_in_ : int
    """

    def __init__(
        self,
        kind: str = "edda",
        n_components: Any = (1, 2, 3, 4, 5),
        covariance_types: Any = "all",
        priors: Any = None,
        random_state: Any = None,
    ) -> None:
        self.kind = kind
        self.n_components = n_components
        self.covariance_types = covariance_types
        self.priors = priors
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> MixtureClassifier:
        """Fit each class's density to its rows of ``X``."""
        from bayesgmm.classify import fit_classifier

        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        check_classification_targets(y)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        types = self.covariance_types
        if isinstance(types, str) and types.lower() != "all" and X.shape[1] == 1:
            types = _one_feature(types)
        elif not isinstance(types, str) and X.shape[1] == 1:
            types = list(dict.fromkeys(_one_feature(t) for t in types))
        self.result_ = fit_classifier(
            X, y, kind=self.kind, n_components=self.n_components, covariance_types=types,
            priors=self.priors, rng=seed,
        )  # fmt: skip
        self.classes_ = self.result_.classes
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(c | x) for each row (n, C), classes in the order of ``classes_``."""
        check_is_fitted(self, "result_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.result_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        check_is_fitted(self, "result_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
