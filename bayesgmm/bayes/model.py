"""The core's Gaussian mixture as a PyMC model: the same p(x) = Σ_k π_k N(x | μ_k, Σ_k).

The likelihood is PyMC's ``Mixture`` of a batch of K ``MvNormal`` components, observed on all
rows, so that ``pm.compute_log_likelihood`` gives the pointwise log p(x_n) the core's
``GaussianMixture.log_prob`` gives. Variables carry the core's names: ``weights`` (component),
``means`` (component, feature) and the Deterministic ``covariances`` (component, feature,
feature_bis); the Cholesky or scale parametrisation underneath depends on the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._validation import as_data, check_n_components
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.structures import get_structure

__all__ = ["SUPPORTED_STRUCTURES", "Priors", "component_order", "model_values", "to_pymc"]

#: Structures the PyMC model is built for (the others have no simple prior on their
#: constrained parameters yet).
SUPPORTED_STRUCTURES = ("VVV", "EEE", "VVI", "EEI", "VII", "EII", "E", "V")


@dataclass(frozen=True)
class Priors:
    """Weakly informative priors, scaled to the data (every scale in units of each feature's
    standard deviation s_j, every location relative to the data mean x̄):

    * weights ~ Dirichlet(``weights_concentration`` · 1);
    * μ_kj ~ Normal(x̄_j, (``mean_scale`` · s_j)²);
    * standard deviations σ_kj ~ HalfNormal(``sd_scale`` · s_j) (for the spherical structures,
      σ_k ~ HalfNormal(``sd_scale`` · mean_j s_j));
    * correlations (VVV, EEE) ~ LKJ(``lkj_eta``), through ``pm.LKJCholeskyCov``.
    """

    weights_concentration: float = 1.0
    mean_scale: float = 2.0
    sd_scale: float = 1.0
    lkj_eta: float = 2.0

    def __post_init__(self) -> None:
        for name in ("weights_concentration", "mean_scale", "sd_scale", "lkj_eta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"Priors.{name} must be a positive number; got {value!r}.")


def _order_axes(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leading principal axis u (D,) of the standardised data, its sign fixed so that its
    largest entry is positive, and an orthonormal basis (D, D − 1) of its complement."""
    spread = arr.std(axis=0)
    z = (arr - arr.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    _, vecs = np.linalg.eigh(np.atleast_2d(np.cov(z, rowvar=False)))
    basis = vecs[:, ::-1]  # decreasing variance
    basis = basis * np.where(basis[np.abs(basis).argmax(axis=0), range(basis.shape[1])] < 0, -1, 1)
    return basis[:, 0], basis[:, 1:]


def _standardised_coordinates(model: Any, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, r): the ordered model's coordinates of the means, along the axis and across it."""
    center, spread, axis, perp = model.bayesgmm_axes
    m = (means - center) / spread
    return m @ axis, m @ perp


def component_order(model: Any, mixture: GaussianMixture) -> np.ndarray | None:
    """The permutation that puts ``mixture``'s components in the ordered model's order (None
    for a model without ordering)."""
    if "means_ordered" not in model.named_vars:
        return None
    a, _ = _standardised_coordinates(model, mixture.means)
    return np.argsort(a, kind="stable")


def _feature_names(names: tuple[str, ...] | None, d: int) -> list[str]:
    return list(names) if names is not None else [f"x{j}" for j in range(d)]


def to_pymc(
    X: Any,
    n_components: int,
    *,
    covariance_type: str = "VVV",
    priors: Priors | None = None,
    identify: str | None = "ordered",
) -> Any:
    """The mixture p(x) = Σ_k π_k N(x | μ_k, Σ_k) on ``X`` as a ``pymc.Model``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        Validated as in :func:`bayesgmm.fit_em` (finite, numeric, 2-D); column names become the
        ``feature`` coordinates.
    n_components : int
    covariance_type : str, default "VVV"
        One of :data:`SUPPORTED_STRUCTURES` (or an alias: full, tied, diag, spherical).
    priors : Priors, optional
        The default :class:`Priors` when None.
    identify : {"ordered", None}, default "ordered"
        "ordered": the components' means, projected on the leading principal axis of the
        standardised data, are increasing (an ordered transform), which removes label
        switching; the model then needs a valid starting point (see :func:`model_values`).
        None leaves the labels free.

    Returns
    -------
    pymc.Model
        With dims ``obs``, ``component``, ``feature`` and ``feature_bis``; free variables
        ``weights`` and ``means`` plus the structure's scales, Deterministic ``covariances``,
        and the observed ``x``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    arr, names = as_data(X)
    n, d = arr.shape
    k = check_n_components(n_components, arr)
    structure = get_structure(covariance_type, d)
    if structure.name not in SUPPORTED_STRUCTURES:
        raise ValueError(
            f"covariance_type={structure.name!r} has no PyMC model yet; supported: "
            f"{', '.join(SUPPORTED_STRUCTURES)}. Fit it by EM with bayesgmm.fit_em."
        )
    if identify not in ("ordered", None):
        raise ValueError(f"identify must be 'ordered' or None; got {identify!r}.")
    p = priors if priors is not None else Priors()
    if not isinstance(p, Priors):
        raise TypeError(f"priors must be a bayesgmm.Priors; got {priors!r}.")
    center = arr.mean(axis=0)
    spread = arr.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    features = _feature_names(names, d)
    coords = {
        "obs": np.arange(n),
        "component": np.arange(k),
        "feature": features,
        "feature_bis": features,
    }
    code = {"E": "EII", "V": "VII"}.get(structure.name, structure.name)
    with pm.Model(coords=coords) as model:
        weights = pm.Dirichlet("weights", a=np.full(k, p.weights_concentration), dims="component")
        loc = np.broadcast_to(center, (k, d))
        scale = np.broadcast_to(p.mean_scale * spread, (k, d))
        if identify == "ordered" and k > 1:
            # In standardised units the means' prior N(0, mean_scale² I) is isotropic, so it is
            # unchanged when written along the leading principal axis u and its orthogonal
            # complement B: m_k = a_k u + B r_k, with a_1 < ... < a_K.
            axis, perp = _order_axes(arr)
            first = pm.Normal(
                "means_ordered",
                mu=0.0,
                sigma=p.mean_scale,
                transform=pm.distributions.transforms.ordered,
                dims="component",
            )
            std = first[:, None] * axis
            if d > 1:
                rest = pm.Normal("means_rest", mu=0.0, sigma=p.mean_scale, shape=(k, d - 1))
                std = std + rest @ perp.T
            means = pm.Deterministic("means", center + spread * std, dims=("component", "feature"))
        else:
            means = pm.Normal("means", mu=loc, sigma=scale, dims=("component", "feature"))
        sd_scale = p.sd_scale * spread
        eye = np.eye(d)
        chol_t: Any
        if code == "VVV":
            chols = []
            for j in range(k):
                chol, _, _ = pm.LKJCholeskyCov(
                    f"chol_{j}",
                    n=d,
                    eta=p.lkj_eta,
                    sd_dist=pm.HalfNormal.dist(sd_scale, shape=d),
                    compute_corr=True,
                )
                chols.append(chol)
            chol_t = pt.stack(chols)
        elif code == "EEE":
            chol, _, _ = pm.LKJCholeskyCov(
                "chol", n=d, eta=p.lkj_eta, sd_dist=pm.HalfNormal.dist(sd_scale, shape=d),
                compute_corr=True,
            )  # fmt: skip
            chol_t = pt.stack([chol] * k)
        elif code == "VVI":
            sd = pm.HalfNormal("sd", sigma=np.broadcast_to(sd_scale, (k, d)),
                               dims=("component", "feature"))  # fmt: skip
            chol_t = sd[:, :, None] * eye
        elif code == "EEI":
            sd = pm.HalfNormal("sd", sigma=sd_scale, dims="feature")
            chol_t = pt.stack([sd[:, None] * eye] * k)
        elif code == "VII":
            sd = pm.HalfNormal("sd", sigma=np.full(k, sd_scale.mean()), dims="component")
            chol_t = sd[:, None, None] * eye
        else:  # EII
            sd = pm.HalfNormal("sd", sigma=sd_scale.mean())
            chol_t = pt.stack([sd * eye] * k)
        pm.Deterministic(
            "covariances",
            chol_t @ pt.swapaxes(chol_t, -1, -2),
            dims=("component", "feature", "feature_bis"),
        )
        pm.Mixture(
            "x",
            w=weights,
            comp_dists=pm.MvNormal.dist(mu=means, chol=chol_t),
            observed=arr,
            dims=("obs", "feature"),
        )
    model.bayesgmm_structure = structure.name  # type: ignore[attr-defined]
    if identify == "ordered" and k > 1:
        model.bayesgmm_axes = (center, spread, *_order_axes(arr))  # type: ignore[attr-defined]
    return model


def model_values(model: Any, mixture: GaussianMixture) -> dict[str, np.ndarray]:
    """The values of ``model``'s free variables that make its mixture equal to ``mixture``
    (e.g. an EM estimate): starting values for a sampler, or a point at which to compare the
    model with the core. With an ordered model, the mixture's components are first sorted along
    the model's ordering axis.
    """
    structure = getattr(model, "bayesgmm_structure", None)
    if structure is None:
        raise ValueError("model was not built by bayesgmm.to_pymc.")
    order = component_order(model, mixture)
    w, mu, cov = mixture.weights, mixture.means, mixture.covariances
    if order is not None:
        w, mu, cov = w[order], mu[order], cov[order]
    k, d = mu.shape
    values: dict[str, np.ndarray] = {"weights": w}
    if order is not None:
        a, r = _standardised_coordinates(model, mu)
        values["means_ordered"] = a
        if d > 1:
            values["means_rest"] = r
    else:
        values["means"] = mu
    chol = np.linalg.cholesky(cov)
    rows, cols = np.tril_indices(d)
    code = {"E": "EII", "V": "VII"}.get(structure, structure)
    if code == "VVV":
        for j in range(k):
            values[f"chol_{j}"] = chol[j][rows, cols]
    elif code == "EEE":
        values["chol"] = chol[0][rows, cols]
    elif code == "VVI":
        values["sd"] = np.sqrt(np.einsum("kii->ki", cov))
    elif code == "EEI":
        values["sd"] = np.sqrt(np.diag(cov[0]))
    elif code == "VII":
        values["sd"] = np.sqrt(cov[:, 0, 0])
    else:
        values["sd"] = np.asarray(np.sqrt(cov[0, 0, 0]))
    return values
