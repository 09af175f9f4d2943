"""``fit_bayes``: the posterior of the mixture, by NUTS or a Laplace approximation, started
from EM and returned as an ArviZ ``xarray.DataTree``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bayesgmm.bayes.model import Priors, component_order, model_values, to_pymc
from bayesgmm.core._validation import as_data, as_rng
from bayesgmm.core.fit import fit_em
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.result import EMResult

__all__ = ["METHODS", "fit_bayes", "z_probabilities"]

#: The methods built so far.
METHODS = ("laplace", "nuts")


def _em_start(
    arr: np.ndarray, k: int, covariance_type: str, init: Any, rng: np.random.Generator
) -> GaussianMixture:
    if init is None:
        return fit_em(arr, k, covariance_type=covariance_type, n_init=5, rng=rng).model
    if isinstance(init, EMResult):
        init = init.model
    if not isinstance(init, GaussianMixture):
        raise TypeError(
            f"init must be an EMResult, a GaussianMixture or None (fit by EM first); got {init!r}."
        )
    if init.n_components != k or init.n_features != arr.shape[1]:
        raise ValueError(
            f"init has {init.n_components} components in {init.n_features} dimensions; the "
            f"model has {k} in {arr.shape[1]}."
        )
    return init


def fit_bayes(
    X: Any,
    n_components: int,
    *,
    covariance_type: str = "VVV",
    method: str = "laplace",
    init: EMResult | GaussianMixture | None = None,
    priors: Priors | None = None,
    identify: str | None = "ordered",
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    rng: Any = None,
    progressbar: bool = False,
    **sampler_kwargs: Any,
) -> Any:
    """The posterior of the Gaussian mixture on ``X`` (the model of :func:`to_pymc`).

    Parameters
    ----------
    X, n_components, covariance_type, priors
        As :func:`to_pymc`.
    identify : {"ordered", "relabel", None}, default "ordered"
        "ordered": the model orders the components (:func:`to_pymc`). "relabel": the model
        leaves them free and each draw is relabelled to the EM estimate afterwards (scipy's
        ``linear_sum_assignment`` on the standardised means). None: free (for demonstrations;
        NUTS chains then start under different random labellings, so label switching shows).
    method : {"laplace", "nuts"}, default "laplace"
        "laplace": a normal approximation in PyMC's unconstrained space at the posterior mode,
        found from the EM estimate; seconds, not minutes. "nuts": PyMC's NUTS sampler.
    init : EMResult or GaussianMixture, optional
        The EM estimate the chains (or the mode search) start from; by default ``fit_em`` with
        5 starts. Starting elsewhere lets chains settle in merged-cluster modes.
    draws, tune, chains : int
        Draws per chain (and, for NUTS, tuning steps); the Laplace approximation gives
        ``chains × draws`` independent draws arranged the same way.
    rng : int or numpy.random.Generator, optional
    progressbar : bool, default False
    **sampler_kwargs
        Passed to ``pymc.sample`` (NUTS).

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (weights, means, covariances and the parametrisation's variables,
        dims chain, draw, component, feature, feature_bis), ``log_likelihood`` (``x`` per
        observation, for LOO), ``observed_data``, ``sample_stats`` (NUTS's, or for Laplace the
        mode's log density), and ``em`` (the EM estimate, one chain of one draw, with the
        posterior's names and dims, and its responsibilities (obs, component), in the
        posterior's component order). :func:`z_probabilities` gives the posterior of z.
    """
    import pymc as pm

    if method not in METHODS:
        raise ValueError(f"method={method!r} is not built; available: {', '.join(METHODS)}.")
    for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name != "tune"):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if identify not in ("ordered", "relabel", None):
        raise ValueError(f"identify must be 'ordered', 'relabel' or None; got {identify!r}.")
    gen = as_rng(rng)
    arr, _ = as_data(X)
    model = to_pymc(
        X,
        n_components,
        covariance_type=covariance_type,
        priors=priors,
        identify="ordered" if identify == "ordered" else None,
    )
    start = _em_start(arr, int(n_components), covariance_type, init, gen)
    values = model_values(model, start)
    seed = int(gen.integers(2**31 - 1))
    t0 = time.perf_counter()
    if method == "nuts":
        # Our own small jitter only: PyMC's default "jitter+adapt_diag" moves every start by up
        # to ±1 in the unconstrained space (a factor e on every scale), away from EM's mode.
        sampler_kwargs.setdefault("init", "adapt_diag")
        tree = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            # Unordered models: each chain starts at the EM estimate under its own random
            # labelling, as chains from arbitrary starts would (label switching shows, and
            # "relabel" is put to the test).
            initvals=[
                _jitter(
                    values if identify == "ordered" else model_values(model, _permuted(start, gen)),
                    gen,
                )
                for _ in range(chains)
            ],
            random_seed=seed,
            progressbar=progressbar,
            model=model,
            **sampler_kwargs,
        )
    else:
        tree = _laplace(model, values, draws, chains, np.random.default_rng(seed))
    pm.compute_log_likelihood(tree, model=model, progressbar=False)
    if identify == "relabel":
        tree["posterior"] = _relabel(tree["posterior"].to_dataset(), start, arr)
    tree["em"] = _em_group(start, tree, model)
    tree.attrs["bayesgmm_method"] = method
    tree.attrs["bayesgmm_seconds"] = time.perf_counter() - t0
    return tree


def _permuted(mixture: GaussianMixture, gen: np.random.Generator) -> GaussianMixture:
    order = gen.permutation(mixture.n_components)
    return GaussianMixture(
        mixture.weights[order],
        mixture.means[order],
        mixture.covariances[order],
        mixture.covariance_type,
        mixture.feature_names,
    )


def _relabel(post: Any, reference: GaussianMixture, X: np.ndarray) -> Any:
    """Each draw's components permuted to match ``reference`` (the EM estimate): the assignment
    (scipy's ``linear_sum_assignment``) that minimises the summed squared distances between the
    draw's and the reference's means, in units of each feature's standard deviation.
    Variables indexed by component without a ``component`` dim (a VVV model's ``chol_j``) are
    dropped, since they cannot follow the permutation."""
    import xarray as xr
    from scipy.optimize import linear_sum_assignment

    spread = X.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    means = post["means"].values  # (chain, draw, K, D)
    c, s, k, _ = means.shape
    ref = reference.means / spread
    perms = np.empty((c, s, k), dtype=np.int64)
    for i in range(c):
        for j in range(s):
            m = means[i, j] / spread
            cost = ((m[:, None, :] - ref[None, :, :]) ** 2).sum(axis=-1)
            rows, cols = linear_sum_assignment(cost)
            perms[i, j, cols] = rows  # reference label cols[r] takes the draw's component rows[r]
    keep = {name: v for name, v in post.data_vars.items() if "component" in v.dims}
    out = {}
    idx = xr.DataArray(perms, dims=("chain", "draw", "component"))
    for name, var in keep.items():
        # Indexing by the permutations would turn the component coordinate into a per-draw one.
        out[name] = var.isel(component=idx).drop_vars("component", errors="ignore")
    ds = xr.Dataset(out, attrs=post.attrs).assign_coords(component=post.coords["component"].values)
    ds.attrs["bayesgmm_relabelled"] = "to the EM estimate (linear_sum_assignment on the means)"
    return xr.DataTree(ds)


def _jitter(values: dict[str, np.ndarray], gen: np.random.Generator) -> dict[str, np.ndarray]:
    """The EM start, moved by a little (1% relative) so that chains do not start together; the
    weights stay on the simplex and the ordered means in order."""
    out = {}
    for name, value in values.items():
        v = np.asarray(value, dtype=float)
        if name == "weights":
            v = v * np.exp(0.01 * gen.normal(size=v.shape))
            v = v / v.sum()
        elif name == "means_ordered":
            v = np.sort(v + 0.001 * np.abs(v).max() * gen.normal(size=v.shape))
        elif name.startswith("chol") or name == "sd":
            pass  # scales and Cholesky factors: kept, so that they stay valid
        else:
            v = v + 0.01 * np.abs(v).mean() * gen.normal(size=v.shape)
        out[name] = v
    return out


def _laplace(
    model: Any, values: dict[str, np.ndarray], draws: int, chains: int, gen: np.random.Generator
) -> Any:
    """Normal approximation at the mode of the unconstrained log density (Jacobian included),
    its covariance the inverse of the negative Hessian (central differences of the gradient);
    draws mapped back through the transforms."""
    from arviz_base import from_dict
    from pymc.initial_point import make_initial_point_fn
    from scipy.optimize import minimize

    point = make_initial_point_fn(
        model=model, overrides=values, jitter_rvs=set(), return_transformed=True
    )(0)
    value_vars = model.value_vars
    shapes = [np.shape(point[v.name]) for v in value_vars]
    sizes = [int(np.prod(s)) for s in shapes]

    def unravel(flat: np.ndarray) -> dict[str, np.ndarray]:
        out, pos = {}, 0
        for v, shape, size in zip(value_vars, shapes, sizes, strict=True):
            out[v.name] = flat[pos : pos + size].reshape(shape)
            pos += size
        return out

    x0 = np.concatenate([np.ravel(point[v.name]) for v in value_vars])
    logp_dlogp = model.compile_fn([model.logp(), model.dlogp()], inputs=value_vars)

    def negative(flat: np.ndarray) -> tuple[float, np.ndarray]:
        lp, grad = logp_dlogp(unravel(flat))
        return -float(lp), -np.asarray(grad, dtype=float)

    res = minimize(negative, x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    mode = res.x
    n = mode.size
    hess = np.empty((n, n))
    for i in range(n):
        step = 1e-5 * max(1.0, abs(mode[i]))
        e = np.zeros(n)
        e[i] = step
        hess[i] = (negative(mode + e)[1] - negative(mode - e)[1]) / (2 * step)
    hess = 0.5 * (hess + hess.T)
    try:
        chol = np.linalg.cholesky(np.linalg.inv(hess))
    except np.linalg.LinAlgError:
        raise ValueError(
            "the Laplace approximation failed: the posterior's Hessian at the mode is not "
            "positive definite (a flat or unidentified direction); use method='nuts'."
        ) from None
    z = gen.normal(size=(chains * draws, n))
    flat_draws = mode + z @ chol.T
    outputs = model.unobserved_value_vars
    to_constrained = model.compile_fn(outputs, inputs=value_vars, on_unused_input="ignore")
    names = [o.name for o in outputs]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for row in flat_draws:
        for name, value in zip(names, to_constrained(unravel(row)), strict=True):
            collected[name].append(value)
    posterior = {
        name: np.asarray(vals).reshape(chains, draws, *np.shape(vals[0]))
        for name, vals in collected.items()
        if not name.endswith("__")
    }
    dims = {name: list(d) for name, d in model.named_vars_to_dims.items() if name in posterior}
    coords = {name: np.asarray(c) for name, c in model.coords.items()}
    tree = from_dict(
        {
            "posterior": posterior,
            "observed_data": {"x": model.rvs_to_values[model["x"]].data},
            "sample_stats": {"mode_lp": np.full((chains, draws), -res.fun)},
        },
        dims={**dims, "x": ["obs", "feature"]},
        coords=coords,
    )
    tree["posterior"].attrs["inference_library"] = "bayesgmm (Laplace at the posterior mode)"
    return tree


def _em_group(start: GaussianMixture, tree: Any, model: Any) -> Any:
    """The EM estimate with the posterior's names, dims and coords (one chain, one draw)."""
    import xarray as xr

    post = tree["posterior"]
    order = component_order(model, start)
    if order is None:
        order = np.arange(start.n_components)
    data = {}
    for name, value in (
        ("weights", start.weights[order]),
        ("means", start.means[order]),
        ("covariances", start.covariances[order]),
    ):
        data[name] = (post[name].dims, np.asarray(value)[None, None])
    X = tree["observed_data"]["x"].values
    data["responsibilities"] = (("obs", "component"), start.responsibilities(X)[:, order])
    coords = {
        c: post.coords[c] for c in ("component", "feature", "feature_bis") if c in post.coords
    }
    coords["obs"] = tree["observed_data"].coords["obs"]
    return xr.DataTree(xr.Dataset(data, coords=coords))


def z_probabilities(tree: Any) -> Any:
    """The posterior of the latent labels: P(z_n = k | x) = E[γ_nk(θ) | x], the core's
    responsibilities at each draw's parameters averaged over the draws (the Bayesian
    counterpart of EM's responsibilities), as a DataArray (obs, component).

    Exact given the draws: z_n is conditionally independent of the other rows given θ, so its
    posterior is the average of p(z_n | x_n, θ^(s)); no sampling of z is needed.
    """
    import xarray as xr

    post = tree["posterior"]
    X = tree["observed_data"]["x"].values
    w = post["weights"].values.reshape(-1, post.sizes["component"])
    mu = post["means"].values.reshape(w.shape[0], w.shape[1], -1)
    cov = post["covariances"].values.reshape(w.shape[0], w.shape[1], mu.shape[2], mu.shape[2])
    total = np.zeros((X.shape[0], w.shape[1]))
    for s in range(w.shape[0]):
        total += GaussianMixture(w[s] / w[s].sum(), mu[s], cov[s]).responsibilities(X)
    return xr.DataArray(
        total / w.shape[0],
        dims=("obs", "component"),
        coords={"obs": tree["observed_data"].coords["obs"], "component": post.coords["component"]},
        name="z_probabilities",
    )
