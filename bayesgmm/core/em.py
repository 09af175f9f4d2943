"""Maximum-likelihood (and MAP) EM for the Gaussian mixture, as plain step functions.

E-step: responsibilities
    γ_nk = π_k N(x_n | μ_k, Σ_k) / Σ_j π_j N(x_n | μ_j, Σ_j).
M-step: with sample weights w_n (1 by default),
    n_k = Σ_n w_n γ_nk,   π_k = n_k / Σ_n w_n,   μ_k = Σ_n w_n γ_nk x_n / n_k,
    Σ_k from S_k = Σ_n w_n γ_nk (x_n − μ_k)(x_n − μ_k)ᵀ under the covariance structure
    (VVV: Σ_k = S_k / n_k; see :mod:`bayesgmm.core.structures` for the others).

:func:`e_step`, :func:`m_step` and :func:`step` are what :func:`fit_em`'s loop calls; :func:`step`
fuses both into one pass over the rows whose statistics are sums over observations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core._passes import PassStats, run_pass
from bayesgmm.core._validation import as_data, as_rng, check_n_components, check_sample_weight
from bayesgmm.core.criteria import aic, bic, icl
from bayesgmm.core.init import (
    hc_tree,
    kmeans_plus_plus_labels,
    labels_to_resp,
    parse_init,
    random_resp,
)
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior, ResolvedPrior
from bayesgmm.core.structures import CovarianceStructure, get_structure

__all__ = [
    "DegenerateFitWarning",
    "EMResult",
    "e_step",
    "fit_em",
    "m_step",
    "step",
]

#: Default relative tolerance on the log-likelihood change. scikit-learn's 1e-3 (absolute, per
#: observation) stops faithful's EEE,3 fit about 0.05 short of its optimum; this does not.
DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 1000
#: A component whose covariance has an eigenvalue below this fraction of the data's variance in
#: that direction (after standardising each feature) is declared collapsed.
DEGENERACY_RTOL = 1e-8
#: With several starts, each runs this many iterations before the unpromising ones are dropped.
SHORT_ITER = 20
#: Restarts (besides the first start) carried on to convergence after the short runs.
KEEP_AFTER_SHORT = 2


class DegenerateFitWarning(UserWarning):
    """An EM fit collapsed: a component on tied or duplicated points, or an empty component."""


class Degenerate(Exception):
    """Raised inside EM when a step cannot produce a valid mixture."""

    def __init__(self, component: int, reason: str):
        super().__init__(f"component {component}: {reason}")
        self.component = component
        self.reason = reason


@dataclass(frozen=True, repr=False)
class EMResult:
    """The result of :func:`fit_em`.

    Attributes
    ----------
    model : GaussianMixture
        The fitted mixture; ``loglik`` is exactly its log-likelihood on the data.
    loglik : float
        Σ_n w_n log p(x_n) at ``model``.
    loglik_trace : ndarray
        Log-likelihood before each M-step, then at the returned model.
    n_iter : int
        Number of EM iterations (M-steps) performed.
    converged : bool
        Whether the relative change fell below ``tol`` before ``max_iter``.
    n_parameters, n_obs : int, float
        Free parameters (mclust's count) and the number of observations (Σ w_n when weighted).
    bic, aic, icl : float
        −2 loglik + p log n; −2 loglik + 2p; BIC − 2 Σ_n w_n log γ_{n, MAP(n)}. Smaller is better
        (mclust prints the negatives).
    responsibilities : ndarray (n, K)
        p(z_n = k | x_n) at ``model``.
    degenerate : bool
        True when the fit collapsed; ``degenerate_reason`` then says which component and why.
    """

    model: GaussianMixture
    loglik: float
    loglik_trace: np.ndarray
    n_iter: int
    converged: bool
    n_parameters: int
    n_obs: float
    bic: float
    aic: float
    icl: float
    responsibilities: np.ndarray = field(compare=False)
    degenerate: bool = False
    degenerate_reason: str | None = None
    init: str = ""

    @property
    def n_components(self) -> int:
        return self.model.n_components

    @property
    def covariance_type(self) -> str:
        return self.model.covariance_type

    def predict(self) -> np.ndarray:
        """MAP component of each fitted observation."""
        return self.responsibilities.argmax(axis=1)

    def __repr__(self) -> str:
        status = "converged" if self.converged else "NOT converged"
        lines = [
            f"EMResult({self.covariance_type}, K={self.n_components}, {status} after "
            f"{self.n_iter} iterations, init={self.init})",
            f"  loglik = {self.loglik:.4f}   n_parameters = {self.n_parameters}   "
            f"n_obs = {self.n_obs:g}",
            f"  BIC = {self.bic:.4f}   AIC = {self.aic:.4f}   ICL = {self.icl:.4f}   "
            "(smaller is better; mclust prints −BIC)",
        ]
        if self.degenerate:
            lines.append(f"  DEGENERATE: {self.degenerate_reason}")
        return "\n".join(lines)


# -- the step functions -----------------------------------------------------------------------


def e_step(
    X: np.ndarray, model: GaussianMixture, sample_weight: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """E-step: the log-likelihood Σ_n w_n log p(x_n) and the responsibilities γ (n, K)."""
    resp = np.empty((X.shape[0], model.n_components))
    stats = run_pass(X, model._params, sample_weight=sample_weight, resp_out=resp)
    return stats.loglik, resp


def m_step(
    X: np.ndarray,
    resp: np.ndarray,
    covariance_type: str | CovarianceStructure = "VVV",
    *,
    sample_weight: np.ndarray | None = None,
    prior: ResolvedPrior | None = None,
    reg_covar: float = 0.0,
    feature_names: tuple[str, ...] | None = None,
) -> GaussianMixture:
    """M-step from responsibilities γ (n, K): the mixture maximising the expected complete-data
    log-likelihood (log-posterior when ``prior`` is given) under the covariance structure.

    Raises
    ------
    Degenerate
        When a component is empty or its covariance is singular.
    """
    structure = get_structure(covariance_type, X.shape[1])
    stats = _stats_from_resp(X, resp, sample_weight, structure.scatter_kind)
    center = np.zeros(X.shape[1])
    return _m_step_from_stats(
        stats, np.zeros_like(stats.sum_x), center, structure, prior, reg_covar, feature_names
    )


def step(
    X: np.ndarray,
    model: GaussianMixture,
    *,
    sample_weight: np.ndarray | None = None,
    prior: ResolvedPrior | None = None,
    reg_covar: float = 0.0,
) -> tuple[GaussianMixture, float]:
    """One EM iteration in one pass over the rows.

    Returns the updated mixture and the log-likelihood of the *input* mixture (which the E-step
    computes anyway). Under maximum likelihood the next call's log-likelihood is never lower.
    """
    structure = model.structure
    p = model._params
    stats = run_pass(X, p, sample_weight=sample_weight, stats=structure.scatter_kind)
    about = p.means if structure.scatter_kind == "full" else np.zeros_like(p.means)
    new = _m_step_from_stats(
        stats, about, p.center, structure, prior, reg_covar, model.feature_names
    )
    return new, stats.loglik


def _stats_from_resp(
    X: np.ndarray, resp: np.ndarray, sample_weight: np.ndarray | None, kind: str
) -> PassStats:
    """Sufficient statistics from given responsibilities (about the origin)."""
    wr = resp if sample_weight is None else resp * sample_weight[:, None]
    counts = wr.sum(axis=0)
    sum_x = wr.T @ X
    if kind == "diag":
        scatter = wr.T @ (X * X)
    else:
        scatter = np.einsum("nk,ni,nj->kij", wr, X, X)
    return PassStats(0.0, counts, sum_x, scatter)


def _m_step_from_stats(
    stats: PassStats,
    about: np.ndarray,
    center: np.ndarray,
    structure: CovarianceStructure,
    prior: ResolvedPrior | None,
    reg_covar: float,
    feature_names: tuple[str, ...] | None,
) -> GaussianMixture:
    """π, μ, Σ from the pass statistics. ``about`` (K, D): the points the scatter is taken about
    (in ``center``-shifted coordinates)."""
    counts = stats.counts
    total = counts.sum()
    k, d = stats.sum_x.shape
    tiny = 1e-10 * total
    if prior is None and (counts <= tiny).any():
        j = int(np.argmin(counts))
        raise Degenerate(j, f"its weight collapsed to {counts[j] / total:.2g} (an empty component)")
    safe = np.where(counts > tiny, counts, 1.0)
    xbar = stats.sum_x / safe[:, None]  # shifted coordinates
    dev = xbar - about
    if structure.scatter_kind == "full":
        scatter = stats.scatter - counts[:, None, None] * dev[:, :, None] * dev[:, None, :]
    else:
        scatter = np.maximum(stats.scatter - counts[:, None] * dev * dev, 0.0)
    if prior is None:
        means = xbar
        terms = None
    else:
        mu_p = prior.mean - center
        kappa = prior.shrinkage
        means = (stats.sum_x + kappa * mu_p) / (counts + kappa)[:, None]
        off = np.where(counts[:, None] > tiny, xbar - mu_p, 0.0)
        coef = kappa * counts / (kappa + counts)
        if structure.scatter_kind == "full":
            scatter = scatter + coef[:, None, None] * off[:, :, None] * off[:, None, :]
        else:
            scatter = scatter + coef[:, None] * off * off
        terms = prior.terms
    covs = structure.covariances(counts, scatter, terms)
    if reg_covar:
        covs = covs + reg_covar * np.eye(d)
    weights = counts / total
    try:
        return GaussianMixture._trusted(weights, means + center, covs, structure, feature_names)
    except ValueError as err:
        msg = str(err)
        j = int(msg.split("[", 1)[1].split("]", 1)[0]) if msg.startswith("covariances[") else 0
        raise Degenerate(j, "its covariance became singular (points tied or duplicated)") from None


# -- the loop ---------------------------------------------------------------------------------


def _data_scale(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    ww = np.ones(X.shape[0]) if w is None else w
    mean = ww @ X / ww.sum()
    var = ww @ (X - mean) ** 2 / ww.sum()
    return np.sqrt(np.where(var > 0, var, 1.0))


def _collapse_reason(model: GaussianMixture, scale: np.ndarray) -> str | None:
    """Why a fitted mixture is degenerate, or None: a covariance with an eigenvalue that is a
    vanishing fraction of the data's variance in the same (standardised) direction."""
    std = model.covariances / (scale[:, None] * scale[None, :])
    eig = np.linalg.eigvalsh(std)
    smallest = eig[:, 0]
    if (smallest < DEGENERACY_RTOL).any():
        j = int(np.argmin(smallest))
        return (
            f"component {j} collapsed (its covariance has an eigenvalue {smallest[j]:.2g} times "
            "the data's variance, i.e. it sits on tied or duplicated points)"
        )
    return None


_REMEDY = (
    "Try fewer components, a more constrained covariance_type, a prior "
    "(prior=ConjugatePrior()) or reg_covar > 0."
)


@dataclass
class _Run:
    """The state of one EM run, so that short runs from many starts can be resumed."""

    model: GaussianMixture
    label: str
    trace: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.converged or self.reason is not None

    @property
    def loglik(self) -> float:
        return self.trace[-1] if self.trace else -np.inf


def _start_model(
    X: np.ndarray,
    start: GaussianMixture | np.ndarray | _SubsetStart,
    structure: CovarianceStructure,
    w: np.ndarray | None,
    prior: ResolvedPrior | None,
    init_prior: ResolvedPrior,
    reg_covar: float,
    names: tuple[str, ...] | None,
) -> GaussianMixture:
    """The mixture EM starts from: the given one, or an M-step from the start's responsibilities."""
    if isinstance(start, GaussianMixture):
        if start.covariance_type == structure.name:
            return start
        return GaussianMixture(start.weights, start.means, start.covariances, structure.name, names)
    Xs, ws, resp0 = X, w, start
    if isinstance(start, _SubsetStart):
        Xs, resp0 = X[start.rows], start.resp
        ws = None if w is None else w[start.rows]
    kwargs = {"sample_weight": ws, "reg_covar": reg_covar, "feature_names": names}
    try:
        return m_step(Xs, resp0, structure, prior=prior, **kwargs)  # type: ignore[arg-type]
    except Degenerate:
        # A start with a singleton or empty cluster: begin from its MAP M-step instead.
        return m_step(Xs, resp0, structure, prior=init_prior, **kwargs)  # type: ignore[arg-type]


def _iterate(
    X: np.ndarray,
    run: _Run,
    n_steps: int,
    *,
    w: np.ndarray | None,
    prior: ResolvedPrior | None,
    reg_covar: float,
    tol: float,
) -> None:
    """Advance ``run`` by at most ``n_steps`` EM iterations (stops early when converged)."""
    prev = run.trace[-1] if run.trace else -np.inf
    for _ in range(n_steps):
        if run.finished:
            return
        try:
            new, ll = step(X, run.model, sample_weight=w, prior=prior, reg_covar=reg_covar)
        except Degenerate as err:
            run.reason = f"component {err.component}: {err.reason}"
            return
        run.trace.append(ll)
        if tol > 0 and np.isfinite(prev) and abs(ll - prev) <= tol * abs(ll):
            run.converged = True
            return
        prev = ll
        run.model = new
        run.n_iter += 1


def _finish(X: np.ndarray, run: _Run, w: np.ndarray | None, scale: np.ndarray) -> EMResult:
    """Final E-step at the run's mixture: log-likelihood, responsibilities and criteria."""
    model = run.model
    resp = np.empty((X.shape[0], model.n_components))
    final = run_pass(X, model._params, sample_weight=w, resp_out=resp)
    trace = list(run.trace)
    if not run.converged or not trace:
        trace.append(final.loglik)
    reason = run.reason if run.reason is not None else _collapse_reason(model, scale)
    n_obs = float(X.shape[0] if w is None else w.sum())
    p = model.n_parameters
    return EMResult(
        model=model,
        loglik=final.loglik,
        loglik_trace=np.asarray(trace),
        n_iter=run.n_iter,
        converged=run.converged,
        n_parameters=p,
        n_obs=n_obs,
        bic=bic(final.loglik, p, n_obs),
        aic=aic(final.loglik, p),
        icl=icl(final.loglik, p, n_obs, resp, w),
        responsibilities=resp,
        degenerate=reason is not None,
        degenerate_reason=None if reason is None else f"{reason}. {_REMEDY}",
        init=run.label,
    )


def _check_positive(name: str, value: Any, *, integer: bool, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int | np.integer) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}; got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}; got {value!r}.")


def fit_em(
    X: Any,
    n_components: int,
    *,
    covariance_type: str | CovarianceStructure = "VVV",
    init: Any = "hc",
    n_init: int = 1,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    reg_covar: float = 0.0,
    prior: ConjugatePrior | None = None,
    sample_weight: Any = None,
    rng: Any = None,
    _hc: tuple[Any, np.ndarray] | None = None,
    _extra_starts: list[tuple[str, np.ndarray]] | None = None,
) -> EMResult:
    """Fit a Gaussian mixture by EM (maximum likelihood, or MAP under ``prior``).

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        The data; a 1-D array is one feature; DataFrame column names become feature names.
    n_components : int
        K, at least 1 and at most the number of distinct rows.
    covariance_type : str, default "VVV"
        mclust code (EII, VII, EEI, VVI, EEE, VVV; E or V for one feature) or a scikit-learn
        alias (spherical, diag, tied, full).
    init : {"hc", "kmeans++", "random"}, array or GaussianMixture, default "hc"
        "hc": model-based agglomerative hierarchical clustering (mclust's default) cut at K;
        "kmeans++": k-means++ seeding plus Lloyd iterations; "random": random responsibilities;
        or an (n,) label vector, an (n, K) responsibility matrix, or a mixture to start from.
    n_init : int, default 1
        Number of starts: the first from ``init``, the others from k-means++ with fresh random
        seeds (random responsibilities when ``init="random"``). With several starts each runs
        20 iterations first; the first start and the two best restarts then run to
        convergence ("short EM", Biernacki, Celeux & Govaert 2003). The best non-degenerate
        log-likelihood wins.
    tol : float, default 1e-8
        Stop when |ℓ_t − ℓ_{t−1}| ≤ tol·|ℓ_t|. ``tol=0`` runs exactly ``max_iter`` iterations.
    max_iter : int, default 1000
    reg_covar : float, default 0
        Added to every covariance's diagonal after each M-step (scikit-learn's regulariser).
    prior : ConjugatePrior, optional
        MAP-EM under the conjugate normal / inverse-Wishart prior (mclust's ``priorControl``).
        The reported ``loglik`` and BIC are still the log-likelihood's, as in mclust.
    sample_weight : array_like (n_obs,), optional
        Observation n counts w_n times; integer weights give exactly the fit of repeated rows.
    rng : int or numpy.random.Generator, optional
        Seeds the random starts (and the row subset of the hierarchical start for large data).

    Returns
    -------
    EMResult

    Examples
    --------
    >>> import bayesgmm as bg
    >>> X = bg.datasets.load_faithful()
    >>> fit = bg.fit_em(X, 3, covariance_type="EEE")
    >>> round(fit.bic, 2)
    4628.63
    """
    arr, names = as_data(X)
    n, d = arr.shape
    w = check_sample_weight(sample_weight, n)
    if w is not None and (w == 0).any():
        keep = w > 0
        arr, w = arr[keep], w[keep]
    k = check_n_components(n_components, arr)
    structure = get_structure(covariance_type, d)
    _check_positive("n_init", n_init, integer=True)
    _check_positive("max_iter", max_iter, integer=True, allow_zero=True)
    _check_positive("tol", tol, integer=False, allow_zero=True)
    _check_positive("reg_covar", reg_covar, integer=False, allow_zero=True)
    if prior is not None and not isinstance(prior, ConjugatePrior):
        raise TypeError(f"prior must be a ConjugatePrior or None; got {prior!r}.")
    gen = as_rng(rng)
    parsed = parse_init(init, arr, k)
    resolved = None if prior is None else prior.resolve(arr, k, w)
    _check_not_constant(arr, w)
    init_prior = resolved if resolved is not None else ConjugatePrior().resolve(arr, k, w)
    scale = _data_scale(arr, w)

    starts: list[tuple[str, GaussianMixture | np.ndarray | _SubsetStart]] = []
    if isinstance(parsed, str):
        starts.append((parsed, _method_start(parsed, arr, k, gen, _hc)))
    elif isinstance(parsed, GaussianMixture):
        starts.append(("mixture", parsed))
    else:
        starts.append(("user", parsed))
    extra = "random" if isinstance(parsed, str) and parsed == "random" else "kmeans++"
    for _ in range(n_init - 1):
        starts.append((extra, _method_start(extra, arr, k, gen, None)))
    for label, labels in _extra_starts or ():
        starts.append((label, labels_to_resp(labels, k)))

    settings = {"w": w, "prior": resolved, "reg_covar": float(reg_covar), "tol": float(tol)}
    runs = [
        _Run(
            _start_model(arr, start, structure, w, resolved, init_prior, float(reg_covar), names),
            label,
        )
        for label, start in starts
    ]
    if len(runs) > 1:
        # Short EM from every start, then only the promising runs go on (Biernacki, Celeux &
        # Govaert 2003): the first start always, and the best of the restarts.
        for run in runs:
            _iterate(arr, run, min(SHORT_ITER, int(max_iter)), **settings)  # type: ignore[arg-type]
        alive = sorted(runs[1:], key=lambda r: (r.reason is None, r.loglik), reverse=True)
        runs = [runs[0], *alive[:KEEP_AFTER_SHORT]]
    for run in runs:
        _iterate(arr, run, int(max_iter) - run.n_iter, **settings)  # type: ignore[arg-type]
    results = [_finish(arr, run, w, scale) for run in runs]
    good = [r for r in results if not r.degenerate]
    best = max(good or results, key=lambda r: r.loglik)
    if best.degenerate:
        warnings.warn(
            f"fit_em({structure.name}, K={k}) is degenerate: {best.degenerate_reason}",
            DegenerateFitWarning,
            stacklevel=2,
        )
    return best


@dataclass(frozen=True)
class _SubsetStart:
    """Responsibilities known for some rows only (a hierarchical start built on a subset)."""

    rows: np.ndarray
    resp: np.ndarray


def _check_not_constant(X: np.ndarray, w: np.ndarray | None) -> None:
    """Every covariance is singular when a feature is constant: say so before EM starts."""
    if X.shape[0] < 2:
        raise ValueError(
            f"X has {X.shape[0]} observation; a Gaussian mixture needs at least 2 (and more than "
            "the number of components) to estimate a covariance."
        )
    constant = np.flatnonzero(np.ptp(X, axis=0) == 0)
    if constant.size:
        raise ValueError(
            f"X's feature(s) {constant.tolist()} are constant (value {X[0, constant[0]]!r}), so "
            "every covariance would be singular; drop constant columns before fitting."
        )


def _method_start(
    method: str, X: np.ndarray, k: int, gen: np.random.Generator, hc: tuple[Any, np.ndarray] | None
) -> np.ndarray | _SubsetStart:
    n = X.shape[0]
    if method == "hc":
        tree, rows = hc if hc is not None else hc_tree(X, gen)
        if k > tree.n_initial:
            raise ValueError(
                f"n_components={k} exceeds the {tree.n_initial} distinct rows the hierarchical "
                "start was built on; use fewer components or init='kmeans++'."
            )
        labels = tree.cut(k)
        if rows.shape[0] == n:
            return labels_to_resp(labels, k)
        # The tree was built on a subset: the first M-step uses that subset's rows only.
        return _SubsetStart(rows, labels_to_resp(labels, k))
    if method == "kmeans++":
        return labels_to_resp(kmeans_plus_plus_labels(X, k, gen), k)
    return random_resp(n, k, gen)
