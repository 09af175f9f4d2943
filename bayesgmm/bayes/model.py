"""The core's Gaussian mixture as a PyMC model: the same p(x) = Σ_k π_k N(x | μ_k, Σ_k).

The likelihood is PyMC's ``Mixture`` of K ``MvNormal`` components (one each), observed on all
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
from bayesgmm.core.prior import ConjugatePrior, ResolvedPrior
from bayesgmm.core.structures import get_structure

__all__ = [
    "SUPPORTED_STRUCTURES",
    "Priors",
    "component_order",
    "marginalize",
    "model_values",
    "to_pymc",
]

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
    explicit_z: bool = False,
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
    explicit_z : bool, default False
        State the latent labels: z_n ~ Categorical(π) (dim ``obs``) and
        x_n | z_n ~ N(μ_{z_n}, Σ_{z_n}), the generative model p(x, z) itself. Gradient-based
        samplers cannot move a discrete z; :func:`marginalize` turns this model into the
        marginal one for sampling, and ``fit_bayes(explicit_z=True)`` recovers z's posterior.

    Returns
    -------
    pymc.Model
        With dims ``obs``, ``component``, ``feature`` and ``feature_bis``; free variables
        ``weights`` and ``means`` plus the structure's scales, Deterministic ``covariances``,
        and the observed ``x`` (with ``explicit_z``, also the free ``z``).
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
    if not isinstance(explicit_z, bool):
        raise TypeError(f"explicit_z must be True or False; got {explicit_z!r}.")
    p = priors if priors is not None else Priors()
    if not isinstance(p, Priors | ConjugatePrior):
        raise TypeError(
            f"priors must be a bayesgmm.Priors or a bayesgmm.ConjugatePrior; got {priors!r}."
        )
    if isinstance(p, ConjugatePrior) and identify == "ordered" and k > 1:
        raise ValueError(
            "identify='ordered' is not available with a ConjugatePrior (its means are not "
            "independent of the covariances, so they cannot be reparametrised in order); use "
            "identify=None here, or identify='relabel' in fit_bayes."
        )
    center = arr.mean(axis=0)
    spread = arr.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    axes = _order_axes(arr) if identify == "ordered" and k > 1 else None
    features = _feature_names(names, d)
    coords = {
        "obs": np.arange(n),
        "component": np.arange(k),
        "feature": features,
        "feature_bis": features,
    }
    code = {"E": "EII", "V": "VII"}.get(structure.name, structure.name)
    with pm.Model(coords=coords) as model:
        # Under the conjugate prior, Dirichlet(1): MAP-EM's weights are the maximum-likelihood ones.
        alpha = p.weights_concentration if isinstance(p, Priors) else 1.0
        weights = pm.Dirichlet("weights", a=np.full(k, alpha), dims="component")
        chol_t: Any
        if isinstance(p, ConjugatePrior):
            means, chol_t = _conjugate_block(p.resolve(arr, k), code, k, d)
        else:
            means, chol_t = _weak_block(p, center, spread, code, k, axes)
        pm.Deterministic(
            "covariances",
            chol_t @ pt.swapaxes(chol_t, -1, -2),
            dims=("component", "feature", "feature_bis"),
        )
        if explicit_z:
            # p(x, z) as stated: z_n ~ Categorical(π), x_n | z_n ~ N(μ_{z_n}, Σ_{z_n}).
            z = pm.Categorical("z", p=weights, dims="obs")
            pm.MvNormal("x", mu=means[z], chol=chol_t[z], observed=arr, dims=("obs", "feature"))
        else:
            # One MvNormal per component, not one batched over components: the batched one's
            # gradient (a blockwise triangular solve) made sampling 5-30× slower per draw
            # (benchmarks/pymc_sampling.py).
            pm.Mixture(
                "x",
                w=weights,
                comp_dists=(
                    [pm.MvNormal.dist(mu=means[j], chol=chol_t[j]) for j in range(k)]
                    if k > 1  # a one-element list would be read as a batch to mix over
                    else pm.MvNormal.dist(mu=means, chol=chol_t)
                ),
                observed=arr,
                dims=("obs", "feature"),
            )
    model.bayesgmm_structure = structure.name  # type: ignore[attr-defined]
    model.bayesgmm_spec = {  # type: ignore[attr-defined]
        "X": X,
        "n_components": k,
        "covariance_type": covariance_type,
        "priors": priors,
        "identify": identify,
        "explicit_z": explicit_z,
    }
    if axes is not None:
        model.bayesgmm_axes = (center, spread, *axes)  # type: ignore[attr-defined]
    return model


def _weak_block(
    p: Priors,
    center: np.ndarray,
    spread: np.ndarray,
    code: str,
    k: int,
    axes: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[Any, Any]:
    """The default priors' means and Cholesky factors (inside the model's context); ``axes``
    (the ordering axis and its complement) for an ordered model."""
    import pymc as pm
    import pytensor.tensor as pt

    d = center.size
    chol_t: Any
    loc = np.broadcast_to(center, (k, d))
    scale = np.broadcast_to(p.mean_scale * spread, (k, d))
    if axes is not None:
        # In standardised units the means' prior N(0, mean_scale² I) is isotropic, so it is
        # unchanged when written along the leading principal axis u and its orthogonal
        # complement B: m_k = a_k u + B r_k, with a_1 < ... < a_K.
        axis, perp = axes
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
    return means, chol_t


def _unpack_cholesky(packed: Any, d: int) -> Any:
    """L (..., d, d) from (..., d + d(d−1)/2): exp of the first d entries on the diagonal, the
    rest below it, row by row."""
    import pytensor.tensor as pt

    rows, cols = np.tril_indices(d, -1)
    chol = pt.zeros((*packed.shape[:-1], d, d))
    chol = pt.set_subtensor(chol[..., np.arange(d), np.arange(d)], pt.exp(packed[..., :d]))
    if d > 1:
        chol = pt.set_subtensor(chol[..., rows, cols], packed[..., d:])
    return chol


def _packed_jacobian(packed: Any, d: int) -> Any:
    """log |det ∂vech(Σ)/∂packed| = d log 2 + Σ_i (d − i + 1) u_i (i from 0), for Σ = L Lᵀ with
    L_ii = exp(u_i): the classic 2^d Π_i L_ii^{d−i} of Σ = L Lᵀ, times Π_i L_ii for the logs."""
    return d * np.log(2.0) + (packed[..., :d] * (d + 1 - np.arange(d))).sum(axis=-1)


def _packed_inverse_wishart_logp(value: Any, nu: Any, lam: Any, _template: Any) -> Any:
    """log density of the packed Cholesky factor when Σ ~ inverse-Wishart(ν, Λ):
    ν/2 log|Λ| − νd/2 log 2 − log Γ_d(ν/2) − (ν+d+1)/2 log|Σ| − tr(Λ Σ⁻¹)/2 + log Jacobian,
    with log|Σ| = 2 Σ_i log L_ii and tr(Λ Σ⁻¹) = ‖L⁻¹ C‖²_F for Λ = C Cᵀ."""
    import pytensor.tensor as pt
    from pytensor.tensor.linalg import cholesky, solve_triangular

    d = int(lam.type.shape[-1])
    chol = _unpack_cholesky(value, d)
    lam_chol = cholesky(lam)
    inv_c = solve_triangular(chol, pt.broadcast_to(lam_chol, chol.shape), lower=True)
    log_gamma_d = 0.25 * d * (d - 1) * np.log(np.pi) + sum(
        pt.gammaln(nu / 2.0 - 0.5 * j) for j in range(d)
    )
    const = (
        nu * pt.log(pt.diagonal(lam_chol, axis1=-2, axis2=-1)).sum(axis=-1)
        - 0.5 * nu * d * np.log(2.0)
        - log_gamma_d
    )
    return (
        const
        - (nu + d + 1) * value[..., :d].sum(axis=-1)
        - 0.5 * (inv_c**2).sum(axis=(-2, -1))
        + _packed_jacobian(value, d)
    )


def _packed_inverse_wishart_random(
    nu: Any, lam: Any, _template: Any, rng: np.random.Generator, size: Any
) -> np.ndarray:
    from scipy.stats import invwishart

    nu, lam, _template = np.asarray(nu), np.asarray(lam), np.asarray(_template)
    d = lam.shape[-1]
    if size is None:
        shape = np.broadcast_shapes(nu.shape, lam.shape[:-2], _template.shape[:-1])
    else:
        shape = tuple(size)
    # Our models pass one (ν, Λ) for every component (broadcast, never varying).
    sigma = invwishart.rvs(
        df=float(nu.ravel()[0]),
        scale=lam.reshape(-1, d, d)[0],
        size=int(np.prod(shape)),
        random_state=rng,
    ).reshape(-1, d, d)
    chol = np.linalg.cholesky(sigma)
    rows, cols = np.tril_indices(d, -1)
    packed = np.concatenate([np.log(np.einsum("kii->ki", chol)), chol[:, rows, cols]], axis=-1)
    return packed.reshape(*shape, packed.shape[-1])


def _conjugate_block(prior: ResolvedPrior, code: str, k: int, d: int) -> tuple[Any, Any]:
    """The conjugate prior of the core's MAP-EM (:class:`bayesgmm.ConjugatePrior`), inside the
    model's context: μ_k | Σ_k ~ N(μ_p, Σ_k / κ) and

    * VVV, EEE: Σ ~ inverse-Wishart(ν, Λ), each Σ = L Lᵀ stored as ``chol_packed`` (the log
      of L's diagonal, then its below-diagonal entries row by row, all unconstrained), whose
      density is the inverse-Wishart's times the Jacobian of (log-diagonal, off-diagonal) → Σ,
      2^d Π_i L_ii^{d−i+2} (:func:`_packed_inverse_wishart_logp`); prior draws are scipy's
      inverse-Wishart draws, packed;
    * VVI, EEI: each variance ~ inverse-gamma(ν/2, Λ_jj/2) (``variances``);
    * VII, EII, E, V: each variance ~ inverse-gamma(ν/2, tr Λ / (2d)) (``variances``).

    Every density is normalised, so that SMC's evidence is that of this prior. Its posterior
    mode in (π, μ, Σ) under the weights' Dirichlet(1) is the core's MAP-EM estimate.
    """
    import pymc as pm
    import pytensor.tensor as pt

    kappa, mu_p = prior.shrinkage, prior.mean
    nu, lam = prior.terms.dof, prior.terms.scale
    if kappa <= 0:
        raise ValueError(
            "a ConjugatePrior with shrinkage=0 puts a flat, improper prior on the means; the "
            "PyMC model needs shrinkage > 0 (mclust's default is 0.01)."
        )
    if code in ("VVV", "EEE"):
        m = k if code == "VVV" else 1
        size = d + d * (d - 1) // 2
        packed = pm.CustomDist(
            "chol_packed",
            nu,
            lam,
            np.zeros(size),  # only its length: the support's shape
            logp=_packed_inverse_wishart_logp,
            random=_packed_inverse_wishart_random,
            signature="(),(d,d),(p)->(p)",
            shape=(m, size),
        )
        chol = _unpack_cholesky(packed, d)
        chol_t = chol if code == "VVV" else pt.stack([chol[0]] * k)
        means = pm.MvNormal(
            "means", mu=mu_p, chol=chol_t / np.sqrt(kappa), dims=("component", "feature")
        )
        return means, chol_t
    eye = np.eye(d)
    if code in ("VVI", "EEI"):
        beta = np.diag(lam) / 2.0
        dims: Any = ("component", "feature") if code == "VVI" else "feature"
        shape: tuple[int, ...] = (k, d) if code == "VVI" else (d,)
    else:
        beta = np.trace(lam) / (2.0 * d)
        dims = "component" if code == "VII" else None
        shape = (k,) if code == "VII" else ()
    variances = pm.InverseGamma(
        "variances", alpha=nu / 2.0, beta=np.broadcast_to(beta, shape), dims=dims
    )
    sd = pt.sqrt(variances)
    if code == "VVI":
        chol_t = sd[:, :, None] * eye
        mean_sd = sd
    elif code == "EEI":
        chol_t = pt.stack([sd[:, None] * eye] * k)
        mean_sd = pt.broadcast_to(sd, (k, d))
    elif code == "VII":
        chol_t = sd[:, None, None] * eye
        mean_sd = pt.broadcast_to(sd[:, None], (k, d))
    else:
        chol_t = pt.stack([sd * eye] * k)
        mean_sd = pt.broadcast_to(sd, (k, d))
    means = pm.Normal(
        "means", mu=mu_p, sigma=mean_sd / np.sqrt(kappa), dims=("component", "feature")
    )
    return means, chol_t


def marginalize(model: Any) -> Any:
    """The model with the latent labels summed out: from ``to_pymc(..., explicit_z=True)``'s
    p(x, z | θ) = Π_n π_{z_n} N(x_n | μ_{z_n}, Σ_{z_n}) to p(x | θ) = Π_n Σ_k π_k N(x_n | μ_k, Σ_k),
    the mixture likelihood the gradient-based samplers need; the free variables and their
    priors are unchanged. (A model without z is returned as it is.)

    The sum over z is the log-sum-exp of PyMC's ``Mixture``, built from the same specification;
    tests check, observation by observation, that it equals log Σ_k exp log p(x_n, z_n = k)
    of the explicit model.
    """
    spec = getattr(model, "bayesgmm_spec", None)
    if spec is None:
        raise ValueError("model was not built by bayesgmm.to_pymc.")
    if not spec["explicit_z"]:
        return model
    return to_pymc(**{**spec, "explicit_z": False})


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
    if "chol_packed" in model.named_vars:  # conjugate prior, VVV or EEE
        m = k if code == "VVV" else 1
        below = np.tril_indices(d, -1)
        values["chol_packed"] = np.concatenate(
            [np.log(np.einsum("kii->ki", chol[:m])), chol[:m][:, below[0], below[1]]], axis=-1
        )
    elif "variances" in model.named_vars:  # conjugate prior, diagonal or spherical
        var = np.einsum("kii->ki", cov)
        values["variances"] = {"VVI": var, "EEI": var[0], "VII": var[:, 0]}.get(
            code, np.asarray(var[0, 0])
        )
    elif code == "VVV":
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
