"""The core's Gaussian mixture as a PyMC model: the same p(x) = Σ_k π_k N(x | μ_k, Σ_k).

The model is written on one unconstrained ``theta`` laid out by the structure's parametrisation
(:mod:`bayesgmm.bayes.structures`); the observed ``x`` has the mixture's log-likelihood per row,
one batched log-sum-exp over components, so that ``pm.compute_log_likelihood`` gives the
pointwise log p(x_n) the core's ``GaussianMixture.log_prob`` gives. The Deterministics carry the
core's names: ``weights`` (component), ``means`` (component, feature) and ``covariances``
(component, feature, feature_bis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesgmm.bayes.structures import Parametrisation, Priors, parametrisation
from bayesgmm.core._validation import as_data, check_n_components
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.structures import structure_names

__all__ = [
    "SUPPORTED_STRUCTURES",
    "Priors",
    "component_order",
    "marginalize",
    "model_values",
    "to_pymc",
]

#: Structures the PyMC model is built for: all of the core's (mclust's 14 and E, V).
SUPPORTED_STRUCTURES = tuple(structure_names())


def component_order(model: Any, mixture: GaussianMixture) -> np.ndarray | None:
    """The permutation that puts ``mixture``'s components in the ordered model's order (None
    for a model without ordering)."""
    param: Parametrisation = model.bayesgmm_param
    if param.identify != "ordered":
        return None
    return param_order(param, model.bayesgmm_constants, mixture)


def param_order(
    param: Parametrisation, c: dict[str, np.ndarray], mixture: GaussianMixture
) -> np.ndarray:
    """The components of ``mixture`` sorted along the ordering axis of ``param``'s model."""
    a = ((mixture.means - c["center"]) / c["spread"]) @ c["axis"]
    return np.argsort(a, kind="stable")


def _feature_names(names: tuple[str, ...] | None, d: int) -> list[str]:
    return list(names) if names is not None else [f"x{j}" for j in range(d)]


def _quiet_blas() -> None:
    """Keep PyTensor from warning that it "could not link to a BLAS installation".

    The warning concerns PyTensor's C backend, which looks for a system BLAS the first time
    its setting ``blas__ldflags`` is read, and warns when it finds none (as with a pip or uv
    install). PyTensor's default backend is Numba, which calls BLAS and LAPACK through scipy's
    own bindings and never reads that setting's value: there the warning is noise. So when the
    default backend is Numba, the user has not set ``blas__ldflags`` (``PYTENSOR_FLAGS`` or
    ``.pytensorrc``) and PyTensor has not looked yet, set it to "" (no C BLAS), which is what
    the search concludes when it warns. A user on the C backend still gets PyTensor's search
    and its warning.
    """
    import pytensor
    from pytensor.compile.mode import get_default_mode
    from pytensor.link.numba.linker import NumbaLinker

    setting = pytensor.config._config_var_dict.get("blas__ldflags")
    if setting is None or hasattr(setting, "val"):  # already read (or set)
        return
    if not isinstance(get_default_mode().linker, NumbaLinker):
        return
    try:
        pytensor.config.fetch_val_for_key("blas__ldflags")
    except KeyError:
        pytensor.config.blas__ldflags = ""


def to_pymc(
    X: Any,
    n_components: int,
    *,
    covariance_type: str = "VVV",
    priors: Any = None,
    identify: str | None = "ordered",
    explicit_z: bool = False,
    labels: Any = None,
) -> Any:
    """The mixture p(x) = Σ_k π_k N(x | μ_k, Σ_k) on ``X`` as a ``pymc.Model``.

    The model is written on one unconstrained vector ``theta`` (dim ``parameter``), laid out by
    the structure's parametrisation (:mod:`bayesgmm.bayes.structures`): Σ_k = λ_k D_k A_k D_kᵀ
    with volume, shape and orientation Equal, Varying or Identity as the structure's name says,
    or the conjugate prior's blocks. ``theta``'s density is the prior (normalised, Jacobians
    included); the observed ``x`` has the mixture's log-likelihood, one batched log-sum-exp
    over components (per row, so that ``pm.compute_log_likelihood`` gives the core's
    ``log_prob``). The data and the data-scaled prior constants are ``pm.Data``. Rows with
    missing values (NaN) have the likelihood of their observed values (the marginal normal of
    each missingness pattern, :meth:`Parametrisation.log_likelihood_rows_missing`): ``x_data``
    then holds 0 where a value is missing, beside ``x_patterns`` and ``x_pattern_index``.

    Parameters
    ----------
    X : array_like (n_obs, n_features) or DataFrame
        Validated as in :func:`bayesgmm.fit_em` (numeric, 2-D, NaN for a missing value); column
        names become the ``feature`` coordinates.
    n_components : int
    covariance_type : str, default "VVV"
        Any of the core's structures (:data:`SUPPORTED_STRUCTURES`: mclust's 14, and E, V for
        one feature) or an alias (full, tied, diag, spherical).
    priors : Priors or ConjugatePrior, optional
        The default :class:`Priors` when None. A :class:`bayesgmm.ConjugatePrior` (MAP-EM's)
        is available for VVV, EEE, VVI, EEI, VII, EII, E and V.
    identify : {"ordered", None}, default "ordered"
        "ordered": the components' means, projected on the leading principal axis of the
        standardised data, are increasing, which removes label switching; the model then needs
        a valid starting point (see :func:`model_values`). None leaves the labels free.
    explicit_z : bool, default False
        State the latent labels: z_n ~ Categorical(π) (dim ``obs``) and
        x_n | z_n ~ N(μ_{z_n}, Σ_{z_n}), the generative model p(x, z) itself. Gradient-based
        samplers cannot move a discrete z; :func:`marginalize` turns this model into the
        marginal one for sampling, and ``fit_bayes(explicit_z=True)`` recovers z's posterior.
    labels : array_like (n_obs,) of int, optional
        z observed where known (0..K−1, −1 where not): those rows' likelihood term is
        log p(x_n, z_n), the others' log p(x_n) (semi-supervised). The labels identify the
        components, so ``identify`` must be None. ``pm.Data`` ``z_known``.

    Returns
    -------
    pymc.Model
        With dims ``obs``, ``component``, ``feature``, ``feature_bis`` and ``parameter``; the
        free ``theta``, Deterministic ``weights``, ``means`` and ``covariances``, and the
        observed ``x`` (with ``explicit_z``, also the free ``z``).
    """
    _quiet_blas()
    import pymc as pm
    import pytensor.tensor as pt

    arr, names = as_data(X, allow_missing=True)
    n, d = arr.shape
    k = check_n_components(n_components, arr)
    if not isinstance(explicit_z, bool):
        raise TypeError(f"explicit_z must be True or False; got {explicit_z!r}.")
    lab = None
    if labels is not None:
        from bayesgmm.core._engine import check_labels

        lab = check_labels(labels, n)
        if lab.max(initial=-1) >= k:
            raise ValueError(
                f"labels must be component indices 0..{k - 1} (or −1); got {lab.max()}."
            )
        if identify is not None or explicit_z:
            raise ValueError(
                "with labels, the labelled rows identify the components: pass identify=None "
                "(and explicit_z=False)."
            )
    missing = missing_patterns(arr)
    if missing is not None and explicit_z:
        raise ValueError(
            "explicit_z=True needs complete rows; X has missing values (NaN). Use the marginal "
            "model (explicit_z=False), whose likelihood is each row's observed values'."
        )
    param = parametrisation(covariance_type, d, priors=priors, identify=identify)
    consts = param.constants(arr, k, priors)
    size = param.size(k)
    features = _feature_names(names, d)
    coords = {
        "obs": np.arange(n),
        "component": np.arange(k),
        "feature": features,
        "feature_bis": features,
        "parameter": np.arange(size),
    }
    const_names = sorted(consts)

    def unpack(args: tuple[Any, ...]) -> dict[str, Any]:
        # PyMC may hand the parameters to an observed variable's logp with leading broadcast
        # dims of length 1: strip them down to each constant's own dims.
        return {
            name: _core(a, np.ndim(consts[name])) for name, a in zip(const_names, args, strict=True)
        }

    def prior_logp(value: Any, _template: Any, *args: Any) -> Any:
        return param.graph(value, k, unpack(args))["log_prior"]

    def prior_random(
        _template: Any, *args: Any, rng: np.random.Generator, size: Any = None
    ) -> np.ndarray:
        c = {name: np.asarray(a) for name, a in zip(const_names, args, strict=True)}
        many = int(np.prod(size)) if size not in (None, ()) else 1
        draws = param.sample_prior(c, k, rng, many)
        return draws.reshape(*(size or ()), -1) if size not in (None, ()) else draws[0]

    # Core dims of each constant in the signatures; the data mean's is the feature dim "d".
    core = ",".join(
        "(d)"
        if name == "center"
        else f"({','.join(f'{name}{i}' for i in range(np.ndim(consts[name])))})"
        for name in const_names
    )
    with pm.Model(coords=coords) as model:
        observed = arr if missing is None else np.where(np.isnan(arr), 0.0, arr)
        data = pm.Data("x_data", observed, dims=("obs", "feature"))
        const_vars = [pm.Data(f"prior_{name}", np.asarray(consts[name])) for name in const_names]
        holes: tuple[Any, ...] = ()
        if missing is not None:
            # The patterns of observed coordinates and each row's: data, as x is.
            holes = (
                pm.Data("x_patterns", missing[0]),
                pm.Data("x_pattern_index", missing[1]),
            )
        known: tuple[Any, ...] = () if lab is None else (pm.Data("z_known", lab),)
        theta = pm.CustomDist(
            "theta",
            np.zeros(size),  # only its length: theta's
            *const_vars,
            logp=prior_logp,
            random=prior_random,
            signature=f"(p),{core}->(p)",
            dims="parameter",
        )
        parts = param.graph(theta, k, unpack(tuple(const_vars)))
        weights = pm.Deterministic("weights", pt.exp(parts["log_weights"]), dims="component")
        pm.Deterministic("means", parts["means"], dims=("component", "feature"))
        pm.Deterministic(
            "covariances", parts["covariances"], dims=("component", "feature", "feature_bis")
        )
        # p(x, z) as stated, z_n ~ Categorical(π) and x_n | z_n ~ N(μ_{z_n}, Σ_{z_n}); or its
        # marginal p(x), the mixture.
        given = (pm.Categorical("z", p=weights, dims="obs"),) if explicit_z else ()

        def likelihood_logp(value: Any, *args: Any) -> Any:
            theta, rest = args[len(given)], args[len(given) + 1 :]
            extra = rest[len(const_names) :]
            rest = rest[: len(const_names)]
            z_known = _core(extra[-1], 1) if known else None
            parts = param.graph(_core(theta, 1), k, unpack(rest))
            if holes:
                masks, index = extra[0], extra[1]
                return param.log_likelihood_rows_missing(
                    value, _core(masks, 2), _core(index, 1), parts, z_known
                )
            if not given:
                return param.log_likelihood_rows(value, parts, z_known)
            z = args[0]
            comp = param.log_component_rows(value, parts)
            return comp[z, pt.arange(value.shape[0])] - parts["log_weights"][z]

        pm.CustomDist(
            "x",
            *given,
            theta,
            *const_vars,
            *holes,
            *known,
            logp=likelihood_logp,
            signature=(
                f"{'(),' * len(given)}(p),{core}{',(q,d),(n)' if holes else ''}"
                f"{',(n)' if known else ''}->(d)"
            ),
            observed=data,
            dims=("obs", "feature"),
        )
    model.bayesgmm_param = param  # type: ignore[attr-defined]
    model.bayesgmm_constants = consts  # type: ignore[attr-defined]
    model.bayesgmm_structure = param.name  # type: ignore[attr-defined]
    model.bayesgmm_spec = {  # type: ignore[attr-defined]
        "X": X,
        "n_components": k,
        "covariance_type": covariance_type,
        "priors": priors,
        "identify": identify,
        "explicit_z": explicit_z,
        "labels": lab,
    }
    return model


def missing_patterns(X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For data with NaN: the distinct patterns of observed coordinates (P, D) as 1.0 / 0.0,
    and each row's pattern (N,); None for complete data."""
    observed = ~np.isnan(X)
    if observed.all():
        return None
    masks, index = np.unique(observed, axis=0, return_inverse=True)
    return masks.astype(np.float64), index.reshape(-1).astype(np.int64)


def _core(x: Any, ndim: int) -> Any:
    """``x`` without leading dims beyond ``ndim`` (broadcast dims of length 1)."""
    while x.ndim > ndim:
        x = x[0]
    return x


def marginalize(model: Any) -> Any:
    """The model with the latent labels summed out: from ``to_pymc(..., explicit_z=True)``'s
    p(x, z | θ) = Π_n π_{z_n} N(x_n | μ_{z_n}, Σ_{z_n}) to p(x | θ) = Π_n Σ_k π_k N(x_n | μ_k, Σ_k),
    the mixture likelihood the gradient-based samplers need; the free variables and their
    priors are unchanged. (A model without z is returned as it is.)

    The sum over z is the batched log-sum-exp of :func:`to_pymc`'s marginal model, built from
    the same specification; tests check, observation by observation, that it equals
    log Σ_k exp log p(x_n, z_n = k) of the explicit model.
    """
    spec = getattr(model, "bayesgmm_spec", None)
    if spec is None:
        raise ValueError("model was not built by bayesgmm.to_pymc.")
    if not spec["explicit_z"]:
        return model
    return to_pymc(**{**spec, "explicit_z": False})


def model_values(model: Any, mixture: GaussianMixture) -> dict[str, np.ndarray]:
    """The value of ``model``'s free ``theta`` that makes its mixture equal to ``mixture`` (e.g.
    an EM estimate): a starting value for a sampler, or a point at which to compare the model
    with the core. With an ordered model, the mixture's components are first sorted along the
    model's ordering axis.
    """
    param = getattr(model, "bayesgmm_param", None)
    if param is None:
        raise ValueError("model was not built by bayesgmm.to_pymc.")
    return {"theta": mixture_theta(param, model.bayesgmm_constants, mixture)}


def mixture_theta(
    param: Parametrisation, c: dict[str, np.ndarray], mixture: GaussianMixture
) -> np.ndarray:
    """theta for ``mixture``, its components first put in the model's order."""
    if mixture.n_features != param.d:
        raise ValueError(f"the mixture has {mixture.n_features} features; the model has {param.d}.")
    if param.identify == "ordered":
        order = param_order(param, c, mixture)
        mixture = GaussianMixture(
            mixture.weights[order], mixture.means[order], mixture.covariances[order]
        )
    return param.values(mixture, c)
