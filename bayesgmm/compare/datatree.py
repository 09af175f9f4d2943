"""EM results in ArviZ's conventions: xarray DataTrees with the PyMC posterior's names.

The estimate of a mixture has the same variables, dims and coords as a posterior from
:func:`bayesgmm.fit_bayes`: ``weights`` (component), ``means`` (component, feature) and
``covariances`` (component, feature, feature_bis), behind ArviZ's sample dims ``chain`` and
``draw``. A point estimate is one chain of one draw; a bootstrap is one chain of B draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesgmm.core._validation import as_data
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.result import EMResult

__all__ = ["em_reference", "mixture_dataset", "to_datatree"]

#: The mixture's variables, in the order every DataTree here lists them.
PARAMETERS = ("weights", "means", "covariances")
_DIMS = {
    "weights": ("component",),
    "means": ("component", "feature"),
    "covariances": ("component", "feature", "feature_bis"),
}


def feature_names(model: GaussianMixture) -> list[str]:
    """The model's feature names, or x0, x1, ... (the names :func:`bayesgmm.to_pymc` uses)."""
    if model.feature_names is not None:
        return [str(n) for n in model.feature_names]
    return [f"x{j}" for j in range(model.n_features)]


def mixture_dataset(
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    features: list[str],
    components: Any = None,
) -> Any:
    """A Dataset of mixtures with leading (chain, draw) dims: ``weights`` (C, S, K), ``means``
    (C, S, K, D), ``covariances`` (C, S, K, D, D)."""
    import xarray as xr

    k = np.shape(weights)[-1]
    coords = {
        "component": np.arange(k) if components is None else np.asarray(components),
        "feature": list(features),
        "feature_bis": list(features),
    }
    data = {
        name: (("chain", "draw", *_DIMS[name]), np.asarray(value, dtype=np.float64))
        for name, value in zip(PARAMETERS, (weights, means, covariances), strict=True)
    }
    ds = xr.Dataset(data, coords=coords)
    return ds.assign_coords(chain=np.arange(ds.sizes["chain"]), draw=np.arange(ds.sizes["draw"]))


def _facts(fit: EMResult) -> dict[str, Any]:
    """The fit's scalars as netCDF-safe attrs (no None, no bool)."""
    return {
        "covariance_type": fit.covariance_type,
        "n_components": int(fit.n_components),
        "loglik": float(fit.loglik),
        "bic": float(fit.bic),
        "aic": float(fit.aic),
        "icl": float(fit.icl),
        "n_parameters": int(fit.n_parameters),
        "n_obs": float(fit.n_obs),
        "n_iter": int(fit.n_iter),
        "converged": int(fit.converged),
        "degenerate": int(fit.degenerate),
        "degenerate_reason": fit.degenerate_reason or "",
        "init": fit.init,
        "criterion_sign": "smaller is better (mclust prints -BIC)",
    }


def to_datatree(fit: EMResult | GaussianMixture, X: Any = None) -> Any:
    """An EM result as an ``xarray.DataTree`` in ArviZ's conventions.

    Parameters
    ----------
    fit : EMResult or GaussianMixture
    X : array_like (n_obs, n_features), optional
        The data; with it the tree also holds the data and the pointwise log-likelihood. An
        ``EMResult``'s responsibilities are for the data it was fitted on, so ``X`` must be that
        data.

    Returns
    -------
    DataTree
        With groups

        * ``em``: ``weights``, ``means``, ``covariances`` as one chain of one draw (the names, dims
          and coords of a :func:`bayesgmm.fit_bayes` posterior), the ``responsibilities`` (obs,
          component), and the fit's facts (log-likelihood, BIC, AIC, ICL, parameters, iterations,
          convergence, start) as attrs;
        * ``em_trace``: ``loglik`` (iteration), the log-likelihood before each M-step;
        * ``observed_data``: ``x`` (obs, feature) and ``log_likelihood``: ``x`` (chain, draw, obs),
          when ``X`` is given — so ArviZ's ``loo`` and plots read it as they read a posterior's.

        It round-trips through ``to_netcdf`` (h5netcdf) and ``to_zarr`` unchanged.
    """
    import xarray as xr

    if isinstance(fit, EMResult):
        model, result = fit.model, fit
    elif isinstance(fit, GaussianMixture):
        model, result = fit, None
    else:
        raise TypeError(
            f"fit must be an EMResult (from bayesgmm.fit_em) or a GaussianMixture; got "
            f"{type(fit).__name__}."
        )
    features = feature_names(model)
    est = mixture_dataset(
        model.weights[None, None],
        model.means[None, None],
        model.covariances[None, None],
        features,
    )
    arr = None
    if X is not None:
        arr, _ = as_data(X, allow_missing=True)  # NaN: a missing value, kept as such
        if arr.shape[1] != model.n_features:
            raise ValueError(
                f"X has {arr.shape[1]} features but the mixture has {model.n_features}; pass the "
                "data the fit was made on."
            )
        if result is not None and arr.shape[0] != result.responsibilities.shape[0]:
            raise ValueError(
                f"X has {arr.shape[0]} rows but the fit was made on "
                f"{result.responsibilities.shape[0]}; pass the data the fit was made on."
            )
    resp = None
    if result is not None:
        resp = result.responsibilities
    elif arr is not None:
        resp = model.responsibilities(arr)
    if resp is not None:
        est["responsibilities"] = (("obs", "component"), resp)
        est = est.assign_coords(obs=np.arange(resp.shape[0]))
    est.attrs = {"covariance_type": model.covariance_type, "n_components": model.n_components}
    if result is not None:
        est.attrs.update(_facts(result))
    groups: dict[str, Any] = {"em": est}
    if result is not None:
        trace = np.asarray(result.loglik_trace, dtype=np.float64)
        groups["em_trace"] = xr.Dataset(
            {"loglik": (("iteration",), trace)}, coords={"iteration": np.arange(trace.size)}
        )
    if arr is not None:
        obs = np.arange(arr.shape[0])
        groups["observed_data"] = xr.Dataset(
            {"x": (("obs", "feature"), arr)}, coords={"obs": obs, "feature": features}
        )
        groups["log_likelihood"] = xr.Dataset(
            {"x": (("chain", "draw", "obs"), model.log_prob(arr)[None, None])},
            coords={"chain": [0], "draw": [0], "obs": obs},
        )
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = {"inference_library": "bayesgmm (EM)"}
    return tree


def _mixture_of(source: Any) -> tuple[GaussianMixture | None, Any]:
    """(mixture, Dataset) of an EM estimate given as a fit, a mixture, a DataTree with an
    ``em`` group, or a Dataset."""
    import xarray as xr

    if isinstance(source, EMResult):
        return source.model, None
    if isinstance(source, GaussianMixture):
        return source, None
    if isinstance(source, xr.DataTree):
        if "em" not in source.children:
            raise ValueError(
                "the DataTree has no 'em' group; pass an EMResult or to_datatree(fit)."
            )
        return None, source["em"].to_dataset()
    if isinstance(source, xr.Dataset):
        return None, source
    raise TypeError(
        f"expected an EMResult, a GaussianMixture or a DataTree with an 'em' group; got "
        f"{type(source).__name__}."
    )


def em_reference(fit: Any, posterior: Any) -> Any:
    """The EM estimate as a pseudo-posterior of the posterior's shape: every (chain, draw) holds
    the estimate, its components matched to the posterior's labels.

    ArviZ's forest plot draws nothing for a one-chain, one-draw group: broadcast this way it
    draws the estimate as a point beside the posterior's intervals.
    """
    from bayesgmm.compare.align import align_to

    post = posterior_dataset(posterior)
    model, ds = _mixture_of(fit)
    if model is None:
        w = ds["weights"].values.reshape(-1)
        model = GaussianMixture(
            w,
            ds["means"].values.reshape(w.size, -1),
            ds["covariances"].values.reshape(w.size, *ds["covariances"].shape[-2:]),
        )
    # Reference: the posterior's mean mixture; the estimate is relabelled to it.
    ref = mixture_arrays(post)
    mean_mu, mean_cov = ref[1].mean(axis=(0, 1)), ref[2].mean(axis=(0, 1))
    est = align_to(
        (model.weights[None], model.means[None], model.covariances[None]), mean_mu, mean_cov
    )[0]
    features = [str(f) for f in post.coords["feature"].values]
    ds = broadcast_estimate(est[0][0], est[1][0], est[2][0], post, features)
    return ds.assign_coords(component=post.coords["component"].values)


def broadcast_estimate(
    weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, like: Any, features: list[str]
) -> Any:
    """One mixture repeated over ``like``'s (chain, draw) dims and coords, as a mixture Dataset
    (arviz-plots' forest plot draws nothing for a one-chain, one-draw group)."""
    c, s = like.sizes["chain"], like.sizes["draw"]
    w, mu, cov = (np.broadcast_to(a, (c, s, *np.shape(a))) for a in (weights, means, covariances))
    ds = mixture_dataset(w, mu, cov, features)
    return ds.assign_coords(chain=like.coords["chain"].values, draw=like.coords["draw"].values)


def posterior_dataset(posterior: Any, group: str = "posterior") -> Any:
    """The ``group`` Dataset of a DataTree (a Dataset passes through), checked to hold the
    mixture's variables."""
    import xarray as xr

    if isinstance(posterior, xr.DataTree):
        if group not in posterior.children:
            raise ValueError(
                f"the DataTree has no {group!r} group (it has {sorted(posterior.children)}); "
                "pass the result of bayesgmm.fit_bayes or bayesgmm.bootstrap_em."
            )
        ds = posterior[group].to_dataset()
    elif isinstance(posterior, xr.Dataset):
        ds = posterior
    else:
        raise TypeError(
            f"posterior must be a DataTree (from bayesgmm.fit_bayes) or a Dataset; got "
            f"{type(posterior).__name__}."
        )
    missing = [v for v in PARAMETERS if v not in ds]
    if missing:
        raise ValueError(
            f"the posterior lacks {missing}; it needs weights, means and covariances with dims "
            "(chain, draw, component, ...), as bayesgmm.fit_bayes writes them."
        )
    return ds


def mixture_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weights (C, S, K), means (C, S, K, D), covariances (C, S, K, D, D) of a mixture Dataset,
    in that dim order."""
    sample = ("chain", "draw")
    return (
        ds["weights"].transpose(*sample, "component").values,
        ds["means"].transpose(*sample, "component", "feature").values,
        ds["covariances"].transpose(*sample, "component", "feature", "feature_bis").values,
    )
