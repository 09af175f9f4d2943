"""``fit_bayes``: the posterior of the mixture, by NUTS or a Laplace approximation, started
from EM and returned as an ArviZ ``xarray.DataTree``."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
import time
import warnings
from typing import Any

import numpy as np

from bayesgmm.bayes import _compiled
from bayesgmm.bayes.density import evaluate
from bayesgmm.bayes.diagnostics import Diagnosis, diagnose, label_modes, reweight
from bayesgmm.bayes.model import (
    Priors,
    _feature_names,
    mixture_theta,
    param_order,
)
from bayesgmm.bayes.structures import Parametrisation, parametrisation
from bayesgmm.core._missing import Missingness, impute_draws, missingness
from bayesgmm.core._validation import as_data, as_rng, check_n_components
from bayesgmm.core.fit import fit_em
from bayesgmm.core.model import GaussianMixture, log_prob_many
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.relabel import match_components
from bayesgmm.core.result import EMResult

__all__ = ["METHODS", "PosteriorWarning", "fit_bayes", "recover_z", "z_probabilities"]


class PosteriorWarning(UserWarning):
    """A posterior approximation failed its own diagnostic (the message says which, and what
    to do instead)."""


#: The inference methods of :func:`fit_bayes`.
METHODS = ("laplace", "pathfinder", "nuts", "nutpie", "advi", "fullrank_advi", "smc")


def _em_start(
    arr: np.ndarray,
    k: int,
    covariance_type: str,
    init: Any,
    rng: np.random.Generator,
    priors: Any,
    labels: np.ndarray | None = None,
) -> GaussianMixture:
    if init is None and labels is not None:  # semi-supervised EM from the labelled rows
        prior = priors if isinstance(priors, ConjugatePrior) else None
        return fit_em(
            arr, k, covariance_type=covariance_type, prior=prior, tol=1e-6, labels=labels
        ).model
    if init is None:
        # Under the core's conjugate prior, MAP-EM: the posterior mode itself. A start, so EM
        # stops at a relative change of 1e-6 (the core's default, 1e-8, took twice as long on
        # noisy Old Faithful data for a log-likelihood 3e-4 higher; the Laplace mode search
        # goes on from here anyway).
        prior = priors if isinstance(priors, ConjugatePrior) else None
        return fit_em(
            arr, k, covariance_type=covariance_type, n_init=5, rng=rng, prior=prior, tol=1e-6
        ).model
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
    explicit_z: bool = False,
    log_likelihood: bool = True,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    rng: Any = 0,
    progressbar: bool = False,
    starts: int = 1,
    labels: Any = None,
    **sampler_kwargs: Any,
) -> Any:
    """The posterior of the Gaussian mixture on ``X`` (the model of :func:`to_pymc`).

    Parameters
    ----------
    X, n_components, covariance_type, priors
        As :func:`to_pymc`.
    method : str, default "laplace"
        "auto", or one of :data:`METHODS`:

        * "auto": the cheapest method whose diagnostics pass (:func:`bayesgmm.bayes.diagnose`):
          the Laplace approximation (its draws importance-resampled by
          :func:`bayesgmm.bayes.reweight`, one chain, when its Pareto k̂ lies in (0.5, 0.7]),
          and PyMC's NUTS when Laplace fails its check (``sampler_kwargs`` then go to NUTS);
          ``attrs["bayesgmm_method"]`` is the method used and
          ``attrs["bayesgmm_method_reason"]`` says why.
        * "laplace": a normal approximation in PyMC's unconstrained space at the posterior
          mode, found from the EM estimate (ours; seconds, not minutes).
        * "pathfinder": multi-path Pathfinder (ours, numpy/scipy): one L-BFGS path per chain
          from the EM estimate, the best normal along each, PSIS importance resampling of the
          pooled draws (``sample_stats.attrs["pareto_k"]``; ELBO per iterate in the
          ``pathfinder`` group). Options: ``history`` (20), ``elbo_draws`` (25), ``maxiter``
          (1000), ``jitter`` (0.5: the paths start at the EM point plus normal noise of this
          sd in the unconstrained space, so that each path gathers curvature on its way).
        * "nuts": PyMC's NUTS, each chain started at the EM estimate (1% jitter), the
          diagonal mass matrix adapted from the inverse Hessian's diagonal at that estimate
          (PyMC's ``init="adapt_diag"`` starts from ones), the chains in parallel processes,
          one per CPU (``cores``); ``sampler_kwargs`` go to ``pymc.sample``, except the NUTS
          settings ``target_accept``, ``max_treedepth``, ``step_scale`` and
          ``early_max_treedepth``, which go to ``pymc.NUTS``.
        * "nutpie": nutpie's NUTS (optional dependency ``bayesgmm[nutpie]``), the same
          starts; ``sampler_kwargs`` go to ``nutpie.sample`` (``backend`` and
          ``gradient_backend`` to ``nutpie.compile_pymc_model``).
        * "advi", "fullrank_advi": PyMC's ADVI, the approximation's mean started at the EM
          estimate; ``n`` iterations (default 10000) and other ``pymc.fit`` options in
          ``sampler_kwargs``; the ELBO per iteration in the ``optimization`` group.
        * "smc": PyMC's sequential Monte Carlo from the prior (it cannot start from EM). It
          samples the model with free labels, whose prior is normalised, so that the log
          marginal likelihood (``sample_stats``: per chain, and its mean and spread across
          chains in the attrs) is the evidence of the K-component mixture; the draws are then
          put in order (identify="ordered") or relabelled (identify="relabel").
    init : EMResult or GaussianMixture, optional
        The EM estimate the chains (or the mode search) start from; by default ``fit_em`` with
        5 starts and ``tol=1e-6`` (MAP-EM under ``priors`` when it is a
        :class:`bayesgmm.ConjugatePrior`).
        Starting elsewhere lets chains settle in merged-cluster modes.
    starts : int, default 1
        For "nuts" and "nutpie" ("auto" then goes straight to NUTS): start the chains, in turn,
        from this many distinct EM optima: ``init`` (or EM's best) and the best others that
        single EM runs from k-means++ and random starts converge to (distinct: a component
        mean moved by more than one of its standard deviations). Needs ``chains ≥ starts``.
        With several chains the modes they settle in are found whatever ``starts`` is
        (:func:`bayesgmm.bayes.find_modes`): ``sample_stats.mode`` (chain), the attrs
        ``n_modes`` and ``mode_shares`` (stacking weights), a ``modes`` row in
        :func:`bayesgmm.bayes.diagnose`, and :func:`bayesgmm.bayes.select_mode` for one mode's
        chains; ``attrs["bayesgmm_starts"]`` is the number of optima found.
    identify : {"ordered", "relabel", None}, default "ordered"
        "ordered": the components in order along the data's leading principal axis (the
        approximations use the ordered model of :func:`to_pymc`; the samplers, "nuts",
        "nutpie" and "smc", sample the free-label model and sort each draw, which gives the
        same posterior without the ordered model's boundary, which a chain cannot cross where
        two components' means along the axis are close). "relabel": the model
        leaves them free and each draw is relabelled to the EM estimate afterwards (scipy's
        ``linear_sum_assignment`` on the symmetrised KL divergence between components,
        :func:`bayesgmm.core.relabel.match_components`). None: free (for demonstrations;
        NUTS chains then start under different random labellings, so label switching shows).
    explicit_z : bool, default False
        Build the model with the latent labels stated (``to_pymc(explicit_z=True)``),
        marginalise them for sampling (:func:`marginalize`) and recover their posterior
        (:func:`recover_z`): the posterior gains ``z`` (a draw of each row's label from
        p(z | x, θ) at every draw) and ``lp_z`` (log p(z_n = k | x_n, θ) per draw).
    log_likelihood : bool, default True
        Store the pointwise log-likelihood (for LOO): chains × draws × n_obs floats, 640 MB for
        4 × 1000 draws of 20,000 rows, and the log prior of each draw (``log_prior``, for
        :func:`bayesgmm.bayes.prior_sensitivity`). False leaves both groups out.
    draws, tune, chains : int
        Draws per chain (and, for the NUTS samplers, tuning steps); the approximations give
        ``chains × draws`` draws arranged the same way.
    rng : int, numpy.random.Generator or None, default 0
        Seeds the EM start, the chains and the draws; the default makes the posterior
        reproducible, None draws fresh entropy.
    progressbar : bool, default False
    **sampler_kwargs
        Passed to the method (see above; for "nuts" to ``pymc.sample``, for "smc" to
        ``pymc.sample_smc``).

    labels : array_like (n_obs,) of int, optional
        z observed where known (0..K−1, −1 where not), as :func:`bayesgmm.fit_em`'s: the
        labelled rows' likelihood terms are log p(x_n, z_n), the others' log p(x_n), and the
        pointwise log-likelihood follows. The labels identify the components (``identify``
        is then None; chains start unpermuted from semi-supervised EM). A ``labels`` group
        holds p(z_n = k | x_n) averaged over the draws (one-hot where known) and ``known``.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (weights, means, covariances and the parametrisation's variables,
        dims chain, draw, component, feature, feature_bis), ``log_likelihood`` (``x`` per
        observation, for LOO) and ``log_prior`` (``theta`` per draw) unless
        ``log_likelihood=False``, ``observed_data``,
        ``sample_stats`` (the method's), and ``em`` (the EM estimate, one chain of one draw,
        with the posterior's names and dims, and its responsibilities (obs, component), in the
        posterior's component order).
        :func:`z_probabilities` gives the posterior of z. The attrs say the method, the
        seconds it took, and its diagnostics (``bayesgmm_diagnostics``, one line, and
        ``bayesgmm_diagnostics_passed``; the table: :func:`bayesgmm.bayes.diagnose`).

    Warns
    -----
    PosteriorWarning
        When a diagnostic of the method fails (one line: which, and the remedy).
    """
    _check_options(method, draws, tune, chains, identify, sampler_kwargs)
    gen = as_rng(rng)
    arr, names = as_data(X, allow_missing=True)
    job, method = _job(
        arr, names, n_components, covariance_type, method, init, priors, identify, explicit_z,
        log_likelihood, starts, chains, labels, sampler_kwargs, gen,
    )  # fmt: skip
    run = _Run(draws, tune, chains, 0, progressbar, sampler_kwargs)
    if method != "auto":
        tree = _draw(job, method, run, gen)
        _checked(tree, warn=True)
        return tree
    return _auto(job, run, gen)


def _check_options(
    method: str,
    draws: Any,
    tune: Any,
    chains: Any,
    identify: Any,
    sampler_kwargs: dict[str, Any],
) -> None:
    """fit_bayes's settings, checked before any work."""
    if method not in (*METHODS, "auto"):
        raise ValueError(
            f"method={method!r} is not available; choose 'auto' or one of {', '.join(METHODS)}."
        )
    for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name != "tune"):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if identify not in ("ordered", "relabel", None):
        raise ValueError(f"identify must be 'ordered', 'relabel' or None; got {identify!r}.")
    if method == "smc" and chains < 2:
        raise ValueError(
            f"method='smc' needs chains ≥ 2 to report the spread of the log marginal "
            f"likelihood; got chains={chains}."
        )
    ours = {"random_seed": "rng", "initvals": "init", "model": "X and n_components",
            "seed": "rng", "progress_bar": "progressbar", "start": "init"}  # fmt: skip
    clash = sorted(set(sampler_kwargs) & set(ours))
    if clash:
        raise TypeError(
            f"fit_bayes sets {', '.join(clash)} itself; pass "
            f"{', '.join(ours[c] for c in clash)} to fit_bayes instead."
        )


def _job(
    arr: np.ndarray,
    names: Any,
    n_components: Any,
    covariance_type: str,
    method: str,
    init: Any,
    priors: Any,
    identify: Any,
    explicit_z: bool,
    log_likelihood: bool,
    starts: Any,
    chains: int,
    labels: Any,
    sampler_kwargs: dict[str, Any],
    gen: np.random.Generator,
) -> tuple[_Job, str]:
    """The data, K and model checked, and the EM start (and optima) the draws begin from;
    the method to run ("auto" becomes "nuts" with several starts)."""
    if explicit_z and np.isnan(arr).any():
        raise ValueError(
            "explicit_z=True needs complete rows; X has missing values (NaN). The marginal "
            "model (explicit_z=False) uses each row's observed values."
        )
    k = check_n_components(n_components, arr)
    lab = _check_bayes_labels(labels, arr.shape[0], k, explicit_z, starts)
    if lab is not None:
        identify = None  # the labelled rows identify the components
    # Every structure, K and prior is checked here, before any fitting or compiling.
    parametrisation(
        covariance_type,
        arr.shape[1],
        priors=priors,
        identify="ordered" if identify == "ordered" and method not in _SORTED_AFTERWARDS else None,
    )
    if method == "laplace" and sampler_kwargs:
        raise TypeError(f"method='laplace' takes no options; got {sorted(sampler_kwargs)}.")
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise ValueError(f"starts must be a positive integer; got {starts!r}.")
    if starts > 1:
        if method not in ("nuts", "nutpie", "auto"):
            raise ValueError(
                f"starts={starts} starts chains from several EM optima, for method='nuts', "
                f"'nutpie' or 'auto'; got method={method!r}."
            )
        if chains < starts:
            raise ValueError(
                f"starts={starts} needs at least as many chains; got chains={chains}. Pass "
                f"chains={starts} or more."
            )
        method = "nuts" if method == "auto" else method
    start = _em_start(arr, k, covariance_type, init, gen, priors, lab)
    optima = (
        _em_optima(arr, k, covariance_type, start, starts, gen, priors) if lab is None else (start,)
    )
    job = _Job(
        arr, names, k, covariance_type, priors, identify, explicit_z, log_likelihood, start, optima,
        lab,
    )  # fmt: skip
    return job, method


def _auto(job: _Job, run: _Run, gen: np.random.Generator) -> Any:
    """method="auto": the cheapest method whose diagnostics pass, Laplace and then NUTS."""
    t0 = time.perf_counter()
    try:
        tree = _draw(job, "laplace", dataclasses.replace(run, options={}), gen)
    except ValueError as err:  # no positive definite Hessian at the mode
        why = str(err).removeprefix("the Laplace approximation failed: ").split(";")[0]
    else:
        laplace = _checked(tree, warn=False)
        if laplace.passed:
            k_hat = float(tree["sample_stats"].attrs["pareto_k"])
            if k_hat <= 0.5:
                tree.attrs["bayesgmm_method_reason"] = (
                    "auto: the Laplace approximation passed its checks"
                )
                return tree
            # 0.5 < k̂ ≤ 0.7: usable once importance-resampled.
            tree = reweight(tree, rng=gen)
            tree.attrs["bayesgmm_method_reason"] = (
                f"auto: the Laplace approximation passed its checks, its draws "
                f"importance-resampled (Pareto k̂ {k_hat:.2f} in (0.5, 0.7])"
            )
            return tree
        why = "; ".join(laplace.failures)
    seconds = time.perf_counter() - t0
    tree = _draw(job, "nuts", run, gen)
    nuts = _checked(tree, warn=True)
    tree.attrs["bayesgmm_method_reason"] = (
        f"auto: the Laplace approximation failed its checks ({why}), so NUTS drew the posterior"
        + ("" if nuts.passed else ", and NUTS failed its own too")
    )
    tree.attrs["bayesgmm_seconds"] += seconds
    return tree


@dataclasses.dataclass(frozen=True)
class _Job:
    """What fit_bayes was asked to draw, checked: the data, K, the model and the EM start."""

    arr: np.ndarray
    names: Any
    k: int
    covariance_type: str
    priors: Any
    identify: str | None
    explicit_z: bool
    log_likelihood: bool
    start: GaussianMixture
    optima: tuple[GaussianMixture, ...]
    labels: np.ndarray | None = None


def _check_bayes_labels(
    labels: Any, n: int, k: int, explicit_z: bool, starts: int
) -> np.ndarray | None:
    """fit_bayes's ``labels``, checked as fit_em's (−1 where unknown)."""
    if labels is None:
        return None
    from bayesgmm.core._engine import check_labels

    lab = check_labels(labels, n)
    if lab.max(initial=-1) >= k:
        raise ValueError(f"labels must be component indices 0..{k - 1} (or −1); got {lab.max()}.")
    if explicit_z:
        raise ValueError("labels with explicit_z=True: not available; use explicit_z=False.")
    if starts != 1:
        raise ValueError(f"starts={starts}: with labels there is one EM optimum; pass starts=1.")
    return lab


def _em_optima(
    arr: np.ndarray,
    k: int,
    covariance_type: str,
    best: GaussianMixture,
    n: int,
    gen: np.random.Generator,
    priors: Any,
) -> tuple[GaussianMixture, ...]:
    """``best`` and up to n − 1 other distinct EM optima, the highest log-likelihoods first:
    single EM runs from k-means++ and random starts (4 per optimum wanted), kept when they
    converge without degenerating and every component mean of the matched mixtures is more
    than one component sd away from those already kept."""
    from bayesgmm.bayes.diagnostics import mixture_distance

    if n == 1:
        return (best,)
    prior = priors if isinstance(priors, ConjugatePrior) else None
    found = []
    for i in range(4 * n):
        res = fit_em(
            arr,
            k,
            covariance_type=covariance_type,
            init="kmeans++" if i % 2 == 0 else "random",
            rng=gen,
            prior=prior,
        )
        if res.converged and not res.degenerate:
            found.append(res)
    kept = [best]
    for res in sorted(found, key=lambda r: -r.loglik):
        if len(kept) == n:
            break
        if all(
            mixture_distance(m.means, res.model.means, m.covariances) > 1.0
            and mixture_distance(res.model.means, m.means, res.model.covariances) > 1.0
            for m in kept
        ):
            kept.append(res.model)
    return tuple(kept)


def _checked(tree: Any, warn: bool) -> Diagnosis:
    """The tree's diagnostics: their summary written into its attrs, and a PosteriorWarning
    (one line, the reasons and the remedy) when one failed and ``warn``."""
    diagnosis = diagnose(tree)
    tree.attrs["bayesgmm_diagnostics"] = diagnosis.summary()
    tree.attrs["bayesgmm_diagnostics_passed"] = int(diagnosis.passed)
    if warn and not diagnosis.passed:
        method = diagnosis.method
        if method in ("nuts", "nutpie"):
            remedy = (
                "draw longer chains (tune, draws), raise target_accept, or look for several modes"
            )
        elif method == "smc":
            remedy = "use more draws"
        else:
            remedy = "use method='nuts' (method='auto' escalates to it)"
        warnings.warn(
            f"The {method} posterior failed its diagnostics: "
            + "; ".join(diagnosis.failures)
            + f". {remedy[0].upper()}{remedy[1:]}; bayesgmm.bayes.diagnose(tree) has the table.",
            PosteriorWarning,
            stacklevel=3,
        )
    return diagnosis


def _draw(job: _Job, method: str, run: _Run, gen: np.random.Generator) -> Any:
    """The posterior of ``job`` by ``method`` (fit_bayes's work once its arguments are
    checked)."""
    arr, names, k, start = job.arr, job.names, job.k, job.start
    covariance_type, priors, identify = job.covariance_type, job.priors, job.identify
    # The samplers (NUTS, nutpie, SMC) draw from the free-label model and put each draw's
    # components in order afterwards: the ordered posterior is the free-label one sorted along
    # the axis (its prior is K! times the free-label prior on the sorted region), but the
    # ordered model's hard boundary a_0 < a_1 splits one mode in two wherever two components'
    # means along the axis are close, and a chain cannot cross it (simulation-based
    # calibration, VVV: true log det Σ_0 above every draw in 8 of 200 data sets, 2 expected).
    # SMC needs the free-label model anyway: its prior is normalised, and it starts from prior
    # draws, which the ordered transform would reject.
    model_identify = (
        "ordered" if identify == "ordered" and method not in _SORTED_AFTERWARDS else None
    )
    param = parametrisation(covariance_type, arr.shape[1], priors=priors, identify=model_identify)
    consts = param.constants(arr, k, priors)
    draws, chains, sampler_kwargs = run.draws, run.chains, dict(run.options)
    seed = int(gen.integers(2**31 - 1))
    coords = {
        "component": np.arange(k),
        "feature": _feature_names(names, arr.shape[1]),
        "feature_bis": _feature_names(names, arr.shape[1]),
    }
    t0 = time.perf_counter()
    if method in ("laplace", "pathfinder"):
        # Our own approximations: the numpy log density and gradient, nothing to compile.
        flat = _Flat(param, consts, arr, k, start, coords, job.labels)
        rng_m = np.random.default_rng(seed)
        if method == "laplace":
            tree = _laplace(flat, draws, chains, rng_m)
        else:
            tree = _pathfinder(flat, draws, chains, rng_m, dict(sampler_kwargs))
    else:
        # PyMC's methods: the model of this (structure, D, identify, K) is built and compiled
        # once per process, the data and prior constants set anew (:mod:`._compiled`). The
        # samplers keep theta only; the mixture comes from it as for Laplace. With
        # explicit_z the sampled model is the marginal one either way (:func:`marginalize`).
        flat = _Flat(param, consts, arr, k, start, coords, job.labels)
        orders = (
            [None] * chains
            if identify == "ordered" or job.labels is not None
            else _distinct_permutations(k, chains, gen)
        )
        starts = []
        for c, order in enumerate(orders):
            # Chain c from EM optimum c mod (number of optima); the first is the best.
            optimum = job.optima[c % len(job.optima)]
            if order is not None:
                optimum = _permuted(optimum, order)
            starts.append(_jitter({"theta": mixture_theta(param, consts, optimum)}, gen))
        # One fit at a time on a cached model (its data are shared state).
        with _compiled.LOCK:
            entry = _compiled.model_for(param, consts, arr, k, covariance_type, priors, job.labels)
            run = dataclasses.replace(run, seed=seed, options=sampler_kwargs)
            try:
                if method == "nuts":
                    sampled = _pymc_nuts(entry, starts, run, _start_variances(flat))
                elif method == "nutpie":
                    sampled = _nutpie(entry, starts, run)
                elif method in ("advi", "fullrank_advi"):
                    sampled = _advi(entry, {"theta": flat.x0}, method, run)
                else:
                    sampled = _smc(entry.model, run)
            finally:
                _compiled.release(entry)
        theta = sampled["posterior"]["theta"].transpose("chain", "draw", ...).values
        library = sampled["posterior"].attrs.get("inference_library", "pymc")
        tree = flat.tree(theta, None, f"{library} ({method})")
        for name in sampled.children:
            if name not in ("posterior", "observed_data", "log_likelihood", "constant_data"):
                tree[name] = sampled[name]
        if method in ("advi", "fullrank_advi"):
            opt = sampled["optimization"]
            flat.log_correction = _normal_correction(
                theta, opt["q_mean"].values, opt["q_chol"].values
            )
    seconds = time.perf_counter() - t0
    # The same observed_data group whatever the method (nutpie's lacks the coordinates).
    tree["observed_data"] = _group(
        {"x": (("obs", "feature"), arr)},
        coords={"obs": np.arange(arr.shape[0]), "feature": coords["feature"]},
    )
    loglik = None
    if job.log_likelihood:
        tree["log_likelihood"] = _pointwise_log_likelihood(tree, arr, job.labels)
        loglik = tree["log_likelihood"]["x"].transpose("chain", "draw", "obs").values.sum(-1)
        # The log prior of each draw (Jacobians included: the prior as stated on theta), for
        # the power-scaling sensitivity of bayesgmm.bayes.prior_sensitivity.
        tree["log_prior"] = _group({"theta": (("chain", "draw"), flat.log_prior)})
    if flat.log_correction is not None:  # an approximation: its PSIS check
        _check(tree, flat, loglik)
    order = param_order(param, consts, start) if model_identify == "ordered" else None
    if identify == "relabel":
        post = tree["posterior"]
        perms = match_components(
            post["means"].transpose("chain", "draw", "component", "feature").values,
            post["covariances"]
            .transpose("chain", "draw", "component", "feature", "feature_bis")
            .values,
            start.means,
            start.covariances,
        )
        tree["posterior"] = _permute(tree["posterior"].to_dataset(), perms, "the EM estimate")
    elif identify == "ordered" and model_identify is None:  # the samplers: order the draws
        perms, order = _sort_permutations(tree["posterior"]["means"].values, start, consts)
        tree["posterior"] = _permute(tree["posterior"].to_dataset(), perms, "the ordering axis")
    tree["em"] = _em_group(start, tree, order)
    if method in ("nuts", "nutpie") and chains > 1:
        label_modes(tree)
    tree.attrs["bayesgmm_starts"] = len(job.optima)
    if job.explicit_z:
        recover_z(tree, rng=gen)
    if flat.missing is not None:
        tree["imputations"] = _imputations(tree, flat.missing, gen)
    if job.labels is not None:
        tree["labels"] = _label_posterior(tree, arr, job.labels)
    tree.attrs["bayesgmm_method"] = method
    tree.attrs["bayesgmm_seconds"] = seconds
    return tree


#: The methods that sample the free-label model when asked for identify="ordered" (see _draw).
_SORTED_AFTERWARDS = ("nuts", "nutpie", "smc")


def _distinct_permutations(k: int, n: int, gen: np.random.Generator) -> list[np.ndarray]:
    """``n`` random permutations of ``k`` labels, all different while k! ≥ n."""
    out: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < n:
        order = gen.permutation(k)
        key = tuple(int(i) for i in order)
        if key in seen and len(seen) < math.factorial(k):
            continue
        seen.add(key)
        out.append(order)
    return out


def _permuted(mixture: GaussianMixture, order: np.ndarray) -> GaussianMixture:
    return GaussianMixture(
        mixture.weights[order],
        mixture.means[order],
        mixture.covariances[order],
        mixture.covariance_type,
        mixture.feature_names,
    )


def _sort_permutations(
    means: np.ndarray, reference: GaussianMixture, c: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """perms (chain, draw, K) putting each draw's components in increasing order along the
    ordered model's axis (the leading principal axis of the standardised data), and the same
    order for the ``reference`` mixture."""
    a = ((means - c["center"]) / c["spread"]) @ c["axis"]
    ref = ((reference.means - c["center"]) / c["spread"]) @ c["axis"]
    return np.argsort(a, axis=-1, kind="stable"), np.argsort(ref, kind="stable")


def _permute(post: Any, perms: np.ndarray, target: str) -> Any:
    """The posterior with each draw's components permuted by ``perms``; variables without a
    ``component`` dim are dropped, since they cannot follow the permutation."""
    import xarray as xr

    keep = {name: v for name, v in post.data_vars.items() if "component" in v.dims}
    out = {}
    idx = xr.DataArray(perms, dims=("chain", "draw", "component"))
    for name, var in keep.items():
        # Indexing by the permutations would turn the component coordinate into a per-draw one.
        out[name] = var.isel(component=idx).drop_vars("component", errors="ignore")
    ds = xr.Dataset(out, attrs=post.attrs).assign_coords(component=post.coords["component"].values)
    ds.attrs["bayesgmm_relabelled"] = f"to {target}"
    return xr.DataTree(ds)


@dataclasses.dataclass
class _Run:
    """What every PyMC method is asked for: draws (and tuning steps) per chain, chains, the
    seed, the progress bar, and the method's own options (consumed as they are read)."""

    draws: int
    tune: int
    chains: int
    seed: int
    progressbar: bool
    options: dict[str, Any]


def _start_variances(flat: _Flat) -> np.ndarray:
    """The diagonal of the inverse negative Hessian at the EM start (central differences of
    the numpy gradient, 2P evaluations): NUTS's first mass matrix, so that its short first
    adaptation windows do not start from unit scales (measured on Old Faithful, EEE, K = 2,
    100 tuning steps: from ones, 136 leapfrog steps per draw). Ones where the Hessian there is
    not positive definite."""
    from bayesgmm.bayes.laplace import negative_hessian

    n = flat.x0.size
    hess = negative_hessian(flat.negative, flat.x0)
    try:
        np.linalg.cholesky(hess)
        var = np.diag(np.linalg.inv(hess)).copy()
    except np.linalg.LinAlgError:
        return np.ones(n)
    ok = np.isfinite(var) & (var > 0)
    return np.where(ok, var, 1.0)


def _pymc_nuts(
    entry: _compiled.Entry,
    starts: list[dict[str, np.ndarray]],
    run: _Run,
    variances: np.ndarray | None = None,
) -> Any:
    """PyMC's NUTS on the cached model, its log density and gradient compiled once per model
    (and kept); a fresh step each call, its diagonal mass matrix adapted from ``variances``
    (:func:`_start_variances`; ones without them, as PyMC's ``init="adapt_diag"``) at the
    starts' mean (PyMC's default "jitter+adapt_diag" would also move every start by up to ±1
    in the unconstrained space: a factor e on every scale)."""
    import pymc as pm
    from pymc.step_methods.hmc.quadpotential import QuadPotentialDiagAdapt

    model = entry.model
    if "step" in run.options or "nuts_sampler" in run.options:
        raise TypeError(
            "method='nuts' sets PyMC's step and nuts_sampler itself (method='nutpie' is "
            "nutpie); pass NUTS settings such as target_accept or max_treedepth instead."
        )
    func = entry.compiled.get("nuts")
    if func is None:
        func = model.logp_dlogp_function(ravel_inputs=True)
        func.trust_input = True
        entry.compiled["nuts"] = func
    step_options = {
        name: run.options.pop(name)
        for name in ("target_accept", "max_treedepth", "step_scale", "early_max_treedepth")
        if name in run.options
    }
    mean = np.mean([s["theta"] for s in starts], axis=0)
    var = np.ones_like(mean) if variances is None else variances
    potential = QuadPotentialDiagAdapt(mean.size, mean, var, 10, rng=run.seed)
    step = pm.NUTS(model=model, potential=potential, logp_dlogp_func=func, **step_options)
    # bayesgmm.bayes.diagnose checks the draws (PyMC's own checks cost 2.5 s on faithful).
    run.options.setdefault("compute_convergence_checks", False)
    run.options.setdefault("quiet", not run.progressbar)
    # One process per chain up to the machine's CPUs (PyMC's default takes half of them, as
    # hyperthreads: one on a 2-CPU machine, where two processes measured 1.4× faster).
    run.options.setdefault("cores", max(1, min(run.chains, os.cpu_count() or 1)))
    return pm.sample(
        draws=run.draws,
        tune=run.tune,
        chains=run.chains,
        step=step,
        initvals=starts,
        var_names=["theta"],
        random_seed=run.seed,
        progressbar=run.progressbar,
        model=model,
        **run.options,
    )


def _nutpie(entry: _compiled.Entry, starts: list[dict[str, np.ndarray]], run: _Run) -> Any:
    """nutpie's NUTS (numba backend unless ``backend=`` says otherwise) on the cached model,
    compiled once per model and compile options; the data set through ``with_data``; chain i
    started at ``starts[i]``."""
    try:
        import nutpie
    except ImportError:
        raise ImportError(
            "method='nutpie' needs the optional dependency nutpie: `uv sync --extra nutpie` "
            "(or pip install 'bayesgmm[nutpie]'); method='nuts' needs nothing more."
        ) from None
    compile_options = {
        k: run.options.pop(k) for k in ("backend", "gradient_backend") if k in run.options
    }
    tag = ("nutpie", tuple(sorted(compile_options.items())))
    t0 = time.perf_counter()
    compiled = entry.compiled.get(tag)
    if compiled is None:
        compiled = nutpie.compile_pymc_model(
            entry.model, var_names=["theta"], freeze_model=False, **compile_options
        )
        # Kept without a copy of the data (each call gives its own through with_data).
        empty = np.zeros((0, entry.model.bayesgmm_param.d))
        entry.compiled[tag] = compiled.with_data(x_data=empty)
    # The data and those prior constants the compiled density reads (a structure's graph may
    # not use every constant).
    known = {var.name for var in compiled.shared_var_keys}
    updates = _compiled.data_updates(entry)
    compiled = compiled.with_data(**{name: v for name, v in updates.items() if name in known})
    compile_seconds = time.perf_counter() - t0
    # nutpie asks one function for every chain's start (and again after a failed start):
    # hand out the starts in turn.
    lock = threading.Lock()
    counter = itertools.count()

    def initial_point(_seed: Any) -> np.ndarray:
        with lock:
            i = next(counter)
        return np.array(starts[i % len(starts)]["theta"], dtype=float)

    compiled = dataclasses.replace(compiled, initial_point_func=initial_point)
    tree = nutpie.sample(
        compiled,
        draws=run.draws,
        tune=run.tune,
        chains=run.chains,
        seed=run.seed,
        progress_bar=run.progressbar,
        save_warmup=False,
        **run.options,
    )
    tree["sample_stats"].attrs["compile_seconds"] = compile_seconds
    return tree


def _jitter(values: dict[str, np.ndarray], gen: np.random.Generator) -> dict[str, np.ndarray]:
    """The EM start moved by a little in the unconstrained space (0.01: 1% on every scale, a
    hundredth of a standard deviation on the means), so that chains do not start together;
    every point of that space is a valid model."""
    return {name: v + 0.01 * gen.normal(size=np.shape(v)) for name, v in values.items()}


class _Flat:
    """theta (the unconstrained parameters) with the numpy log density (Jacobians included) and
    its gradient (:func:`bayesgmm.bayes.density.evaluate`), and the way back to the mixture."""

    def __init__(
        self,
        param: Parametrisation,
        consts: dict[str, np.ndarray],
        X: np.ndarray,
        k: int,
        start: GaussianMixture,
        coords: dict[str, Any],
        labels: np.ndarray | None = None,
    ) -> None:
        self.param, self.consts, self.X, self.k, self.coords = param, consts, X, k, coords
        self.missing = missingness(X)  # None for complete data
        self.labels = labels
        self.x0 = mixture_theta(param, consts, start)
        self._cache: dict[bytes, tuple[float, np.ndarray]] = {}
        # Set by tree(): the draws and their log prior; by a normal approximation: the terms
        # its PSIS check adds to the log density of each draw.
        self.draws: np.ndarray = np.zeros((0, 0, self.x0.size))
        self.log_prior: np.ndarray = np.zeros((0, 0))
        self.log_correction: np.ndarray | None = None

    def logp_dlogp(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        """log density and gradient, remembered (an optimiser asks for the same point twice)."""
        key = flat.tobytes()
        if key not in self._cache:
            with np.errstate(all="ignore"):
                out = evaluate(
                    self.param, flat, self.k, self.X, self.consts, True, self.missing, self.labels
                )
            lp, grad = out["logp"], out["grad"]
            if not (np.isfinite(lp) and np.all(np.isfinite(grad))):
                lp, grad = -np.inf, np.zeros_like(flat)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (lp, grad)
        return self._cache[key]

    def logp(self, flat: np.ndarray) -> np.ndarray:
        """log density of each row of ``flat`` (S, P), a few hundred rows per call so that the
        (rows, K, N, D) residuals stay small."""
        step = max(1, 2**22 // max(1, self.k * self.X.size))
        out = []
        with np.errstate(all="ignore"):
            for lo in range(0, flat.shape[0], step):
                part = flat[lo : lo + step]
                miss = self.missing
                lab = self.labels
                out.append(
                    evaluate(self.param, part, self.k, self.X, self.consts, False, miss, lab)
                )
        return np.concatenate([o["logp"] for o in out])

    def negative(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        lp, grad = self.logp_dlogp(flat)
        return (-lp if np.isfinite(lp) else np.inf), -grad

    def tree(
        self,
        draws: np.ndarray,
        sample_stats: dict[str, np.ndarray] | None,
        library: str,
    ) -> Any:
        """A DataTree of unconstrained ``draws`` (chains, draws, n) mapped to the mixture's
        weights, means and covariances, with the given ``sample_stats``."""
        # All draws in one call (no rows: only the map to the mixture is wanted, and the log
        # density of no rows is the log prior, kept with the draws for fit_bayes).
        self.draws = draws
        out = evaluate(self.param, draws, self.k, self.X[:0], self.consts, grad=False)
        self.log_prior = np.asarray(out["logp"]).reshape(draws.shape[:-1])
        posterior = {name: out[name] for name in _DIMS}
        return _posterior_tree(posterior, library, self.coords, sample_stats)


_DIMS = {
    "weights": ["component"],
    "means": ["component", "feature"],
    "covariances": ["component", "feature", "feature_bis"],
}


def _posterior_tree(
    posterior: dict[str, np.ndarray],
    library: str,
    coords: dict[str, Any],
    sample_stats: dict[str, np.ndarray] | None = None,
) -> Any:
    """A DataTree of (chain, draw, ...) arrays with the mixture's dims and coords (fit_bayes
    adds observed_data and log_likelihood)."""
    from arviz_base import from_dict

    groups = {"posterior": posterior}
    if sample_stats is not None:
        groups["sample_stats"] = sample_stats
    tree = from_dict(
        groups,
        dims={name: d for name, d in _DIMS.items() if name in posterior},
        coords={name: np.asarray(c) for name, c in coords.items()},
    )
    tree["posterior"].attrs["inference_library"] = library
    return tree


def _laplace(flat: _Flat, draws: int, chains: int, gen: np.random.Generator) -> Any:
    """Normal approximation at the posterior mode, its covariance the inverse of the negative
    Hessian (central differences of the gradient), in the coordinates of
    :mod:`bayesgmm.bayes.laplace` (the orientations' triangular factors drawn from their exact
    posterior, which is their prior); draws mapped back through the transforms. Its PSIS
    check (:func:`_check`) runs in fit_bayes once the log-likelihood of the draws is known."""
    from bayesgmm.bayes.laplace import laplace_draws

    out = laplace_draws(flat, chains * draws, gen)
    theta = out["theta"].reshape(chains, draws, -1)
    tree = flat.tree(
        theta,
        {"mode_lp": np.full((chains, draws), out["mode_lp"])},
        "bayesgmm (Laplace at the posterior mode)",
    )
    flat.log_correction = out["log_correction"].reshape(chains, draws)
    return tree


def _check(tree: Any, flat: _Flat, loglik: np.ndarray | None) -> None:
    """PSIS's check of a normal approximation from its draws: the log importance ratios are
    the log density of each draw (its log prior from :meth:`_Flat.tree` plus ``loglik``, the
    summed log-likelihood (chain, draw), or computed afresh without it) plus the
    approximation's ``flat.log_correction`` (−log q, and the chart's terms). Writes
    ``sample_stats.attrs["pareto_k"]`` and the smoothed log weights ``sample_stats.log_weight``
    (for :func:`bayesgmm.bayes.reweight`)."""
    import xarray as xr

    correction = flat.log_correction
    assert correction is not None  # set by the approximation
    if loglik is None:
        loglik = _summed_log_likelihood(tree, flat.X)
    logp = flat.log_prior + loglik
    log_w, k_hat = _psis((logp + correction).ravel())
    stats = tree["sample_stats"].to_dataset() if "sample_stats" in tree.children else None
    stats = xr.Dataset() if stats is None else stats
    stats["log_weight"] = (("chain", "draw"), log_w.reshape(correction.shape))
    stats.attrs["pareto_k"] = k_hat
    tree["sample_stats"] = xr.DataTree(stats)


def _psis(log_ratio: np.ndarray) -> tuple[np.ndarray, float]:
    """PSIS of importance ratios given on the log scale: (smoothed log weights, Pareto k).
    Non-finite ratios (draws outside the posterior's support) count as zero weight.

    arviz-stats' ``psislw`` takes log-likelihoods, as PSIS-LOO's ratios are 1 / p(y_i | θ): it
    smooths the ratios exp(−input), so it is given the negated log ratios (given the ratios
    themselves, it measured q/p instead of p/q: tests/bayes/test_diagnostics.py checks the
    weights against a closed-form posterior)."""
    from arviz_stats.base.array import array_stats

    r = np.where(np.isfinite(log_ratio), log_ratio, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_w, k_hat = array_stats.psislw(-(r - r[np.isfinite(r)].max()))
    return log_w, float(k_hat)


def _pathfinder_path(
    flat: _Flat,
    x0: np.ndarray,
    draws: int,
    gen: np.random.Generator,
    history: int,
    elbo_draws: int,
    maxiter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One Pathfinder path (Zhang, Carpenter, Gelman & Vehtari 2022): L-BFGS from ``x0``; at
    each iterate x_l the normal N(x_l + H_l ∇log p(x_l), H_l), with H_l the BFGS inverse Hessian
    of the last ``history`` steps that satisfy the curvature condition, started from the
    paper's diagonal estimate; the normal with the best Monte Carlo ELBO gives ``draws`` draws.
    Returns the draws, their log p and log q, and the ELBO per iterate."""
    from scipy.optimize import minimize

    path = [x0.copy()]
    minimize(
        flat.negative,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=lambda intermediate_result: path.append(intermediate_result.x.copy()),
        options={"maxiter": maxiter},
    )
    n = x0.size
    grads = [flat.logp_dlogp(x)[1] for x in path]
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    alpha = np.ones(n)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    elbos = np.full(len(path), np.nan)
    for ell in range(1, len(path)):
        s = path[ell] - path[ell - 1]
        y = grads[ell - 1] - grads[ell]  # the gradient of −log p changes by y along s
        if s @ y > 1e-12 * (y @ y):
            pairs = [*pairs, (s, y)][-history:]
            # The paper's diagonal update of the initial inverse Hessian (its equation 4).
            a, b, c = y @ (alpha * y), y @ s, s @ (s / alpha)
            inv = a / (b * alpha) + y**2 / b - a * s**2 / (b * c * alpha**2)
            if np.all(np.isfinite(inv)) and np.all(inv > 0):
                alpha = 1.0 / inv
        if not pairs:
            continue
        h = np.diag(alpha)
        for s_i, y_i in pairs:
            rho = 1.0 / (s_i @ y_i)
            v = np.eye(n) - rho * np.outer(y_i, s_i)
            h = v.T @ h @ v + rho * np.outer(s_i, s_i)
        h = 0.5 * (h + h.T)
        try:
            chol = np.linalg.cholesky(h)
        except np.linalg.LinAlgError:
            continue
        mean = path[ell] + h @ grads[ell]
        z = gen.normal(size=(elbo_draws, n))
        lp = flat.logp(mean + z @ chol.T)
        logq = _normal_logq(z, chol)
        elbos[ell] = float(np.mean(lp - logq)) if np.isfinite(lp).all() else -np.inf
        if best is None or elbos[ell] > best[0]:
            best = (elbos[ell], mean, chol)
    if best is None:
        raise ValueError(
            "Pathfinder found no usable normal approximation along the optimisation path (the "
            "log density is flat or the start is the mode to machine precision); use "
            "method='laplace' or 'nuts'."
        )
    _, mean, chol = best
    z = gen.normal(size=(draws, n))
    x = mean + z @ chol.T
    lp = flat.logp(x)
    return x, lp, _normal_logq(z, chol), elbos


def _normal_logq(z: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log N(μ + L z | μ, L Lᵀ) for standard normal rows z."""
    n = chol.shape[0]
    return (
        -0.5 * (z**2).sum(axis=1)
        - np.log(np.abs(np.diag(chol))).sum()
        - 0.5 * n * np.log(2 * np.pi)
    )


def _pathfinder(
    flat: _Flat, draws: int, chains: int, gen: np.random.Generator, options: dict[str, Any]
) -> Any:
    """Multi-path Pathfinder: one path per chain, each from the EM point jittered in the
    unconstrained space, the pooled draws importance-resampled with Pareto-smoothed weights
    (PSIS) so that they follow the posterior as closely as the paths' normals allow; the Pareto
    k of the weights says how closely (above 0.7 the draws are a rough approximation, and a
    warning says so)."""

    history = int(options.pop("history", 20))
    elbo_draws = int(options.pop("elbo_draws", 25))
    maxiter = int(options.pop("maxiter", 1000))
    jitter = float(options.pop("jitter", 0.5))
    if options:
        raise TypeError(f"unknown options for method='pathfinder': {sorted(options)}")
    xs, lps, logqs, elbo_paths = [], [], [], []
    for _ in range(chains):
        x0 = flat.x0 + jitter * gen.normal(size=flat.x0.size)
        x, lp, logq, elbos = _pathfinder_path(flat, x0, draws, gen, history, elbo_draws, maxiter)
        xs.append(x)
        lps.append(lp)
        logqs.append(logq)
        elbo_paths.append(elbos)
    x_all, lp_all = np.concatenate(xs), np.concatenate(lps)
    log_w, k_hat = _psis(lp_all - np.concatenate(logqs))
    w = np.exp(log_w - log_w.max())
    idx = gen.choice(x_all.shape[0], size=chains * draws, replace=True, p=w / w.sum())
    length = max(len(e) for e in elbo_paths)
    elbo = np.full((chains, length), np.nan)
    for c, e in enumerate(elbo_paths):
        elbo[c, : len(e)] = e
    tree = flat.tree(
        x_all[idx].reshape(chains, draws, -1),
        {
            "lp": lp_all[idx].reshape(chains, draws),
            "path": (idx // draws).reshape(chains, draws),
        },
        "bayesgmm (multi-path Pathfinder, PSIS resampling)",
    )
    tree["sample_stats"].attrs["pareto_k"] = float(k_hat)
    tree["pathfinder"] = _group({"elbo": (("path", "iteration"), elbo)})
    return tree


def _group(data: dict[str, Any], attrs: dict[str, Any] | None = None, coords: Any = None) -> Any:
    import xarray as xr

    return xr.DataTree(xr.Dataset(data, coords=coords, attrs=attrs or {}))


def _advi(entry: _compiled.Entry, values: dict[str, np.ndarray], method: str, run: _Run) -> Any:
    """PyMC's (mean-field or full-rank) ADVI, its mean started at the EM point and its scales at
    0.1 in the unconstrained space (PyMC's defaults are 0.69 and 1);
    ``chains × draws`` independent draws of theta from the fitted approximation.

    The optimiser's step is compiled once per model, method and options: a later call puts
    the approximation and the optimiser's state back where the first call started them
    (its mean at the new EM point, its random stream seeded anew) and runs the same step.
    """
    import xarray as xr

    n_iter = int(run.options.pop("n", 10_000))
    tag = (method, tuple(sorted((name, repr(v)) for name, v in run.options.items())))
    if tag not in entry.compiled:
        entry.compiled[tag] = _advi_compile(entry.model, values, method, run.options)
    inference, initial, streams = entry.compiled[tag]
    for var, value in initial.items():
        var.set_value(np.array(value, copy=True))
    inference.approx.shared_params["mu"].set_value(np.asarray(values["theta"], dtype=float))
    for i, var in enumerate(streams):
        var.set_value(np.random.default_rng([run.seed, i]))
    inference.hist = np.asarray(())
    inference.refine(n_iter, progressbar=run.progressbar)
    approx = inference.approx
    theta = approx.sample(run.chains * run.draws, random_seed=run.seed + 1)["posterior"][
        "theta"
    ].values
    tree = xr.DataTree()
    tree["posterior"] = _group(
        {"theta": (("chain", "draw", "parameter"), theta.reshape(run.chains, run.draws, -1))}
    )
    loss = np.asarray(inference.hist, dtype=float)
    mean = np.asarray(approx.mean.eval(), dtype=float)
    chol = (
        np.diag(np.asarray(approx.std.eval(), dtype=float))
        if method == "advi"
        else np.asarray(approx.L.eval(), dtype=float)
    )
    tree["optimization"] = _group(
        {
            "elbo": (("iteration",), -loss),
            "q_mean": (("parameter",), mean),
            "q_chol": (("parameter", "parameter_bis"), chol),
        },
        {"method": method, "iterations": loss.size},
    )
    return tree


def _normal_correction(theta: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """−log q of each draw (chain, draw) of the normal N(mean, chol cholᵀ): what
    :func:`_check` adds to the log density."""
    from scipy.linalg import solve_triangular

    draws = theta.reshape(-1, theta.shape[-1])
    z = solve_triangular(chol, (draws - mean).T, lower=True).T
    return -_normal_logq(z, chol).reshape(theta.shape[:2])


def _advi_compile(
    model: Any, values: dict[str, np.ndarray], method: str, options: dict[str, Any]
) -> tuple[Any, dict[Any, np.ndarray], list[Any]]:
    """ADVI's inference object with its step compiled (no iteration yet), and the starting
    values of every shared variable the step updates (the approximation's parameters, the
    optimiser's accumulators, the random streams), the model's data excepted."""
    import pymc as pm

    if method == "advi":
        inference = pm.ADVI(model=model, start=values, start_sigma={"theta": 0.1})
    else:
        inference = pm.FullRankADVI(model=model, start=values)
        # PyMC starts the Cholesky factor's diagonal at softplus(1) (sd 0.74 in every
        # unconstrained direction, its diagonal is stored through softplus); 0.1 keeps the
        # first iterations near the EM point.
        rows, cols = np.tril_indices(inference.approx.ddim)
        diag = np.log(np.expm1(0.1))
        inference.approx.shared_params["L_tril"].set_value(diag * (rows == cols).astype(float))
    inference.fit(n=0, progressbar=False, **options)
    data = set(model.data_vars)
    shared = [var for var in inference.state.step.get_shared() if var not in data]
    streams = [v for v in shared if isinstance(v.get_value(borrow=True), np.random.Generator)]
    initial = {var: np.array(var.get_value(), copy=True) for var in shared if var not in streams}
    return inference, initial, streams


def _smc(model: Any, run: _Run) -> Any:
    """PyMC's SMC (from the prior to the posterior through tempered stages); the log marginal
    likelihood per chain in ``sample_stats``, with the per-stage β and acceptance rates."""
    import pymc as pm

    tree = pm.sample_smc(
        draws=run.draws,
        chains=run.chains,
        model=model,
        random_seed=run.seed,
        progressbar=run.progressbar,
        compute_convergence_checks=False,
        **run.options,
    )
    stats = tree["sample_stats"].to_dataset()
    staged = {}
    for name in ("log_marginal_likelihood", "beta", "accept_rate"):
        rows = [np.asarray(list(np.atleast_1d(r)), dtype=float) for r in stats[name].values]
        width = max(len(r) for r in rows)
        arr = np.full((run.chains, width), np.nan)
        for c, r in enumerate(rows):
            arr[c, : len(r)] = r
        staged[name] = arr
    lml = np.array([r[np.isfinite(r)][-1] for r in staged["log_marginal_likelihood"]])
    tree["sample_stats"] = _group(
        {
            "log_marginal_likelihood": (("chain",), lml),
            "beta": (("chain", "stage"), staged["beta"]),
            "accept_rate": (("chain", "stage"), staged["accept_rate"]),
        },
        {
            "log_marginal_likelihood": float(np.mean(lml)),
            "log_marginal_likelihood_sd": float(np.std(lml, ddof=1)),  # chains ≥ 2
            "stages": int(np.isfinite(staged["beta"]).sum(axis=1).max()),
        },
        coords={"chain": stats.coords["chain"].values},
    )
    return tree


def _em_group(start: GaussianMixture, tree: Any, order: np.ndarray | None) -> Any:
    """The EM estimate with the posterior's names, dims and coords (one chain, one draw), its
    components in ``order``."""
    import xarray as xr

    post = tree["posterior"]
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


def _imputations(tree: Any, miss: Missingness, gen: np.random.Generator) -> Any:
    """The missing values drawn under each posterior draw (z from p(z | x_o, θ), then x_m from
    its conditional normal): the posterior predictive of what was not observed, one value per
    draw and missing cell (dim ``cell``, with each cell's ``obs`` and ``feature``)."""
    w, mu, cov = _draw_mixtures(tree)
    post = tree["posterior"]
    c, s = post.sizes["chain"], post.sizes["draw"]
    step = max(1, 2**22 // max(1, w.shape[1] * miss.observed.size))
    values = np.concatenate(
        [
            impute_draws(miss, w[i : i + step], mu[i : i + step], cov[i : i + step], gen)
            for i in range(0, w.shape[0], step)
        ]
    )
    rows, cols = np.nonzero(~miss.observed)
    features = post.coords["feature"].values
    return _group(
        {"x": (("chain", "draw", "cell"), values.reshape(c, s, -1))},
        attrs={"inference_library": "bayesgmm (missing values drawn at each draw)"},
        coords={
            "chain": post.coords["chain"].values,
            "draw": post.coords["draw"].values,
            "cell": np.arange(rows.size),
            "obs": ("cell", tree["observed_data"].coords["obs"].values[rows]),
            "feature": ("cell", features[cols]),
        },
    )


def _label_posterior(tree: Any, X: np.ndarray, labels: np.ndarray) -> Any:
    """p(z_n = k | x_n, labels) averaged over the draws (one-hot for the labelled rows), dims
    (obs, component), with ``known`` marking the labelled rows."""
    w, mu, cov = _draw_mixtures(tree)
    s, k = w.shape
    total = np.zeros((X.shape[0], k))
    step = max(1, 2**22 // max(1, k * X.shape[0]))
    for i in range(0, s, step):
        part = slice(i, min(i + step, s))
        m = w[part].shape[0]
        resp = np.empty((X.shape[0], k * m))
        log_prob_many(X, w[part], mu[part], cov[part], labels, resp_out=resp)
        total += resp.reshape(X.shape[0], k, m).sum(axis=2)
    post = tree["posterior"]
    return _group(
        {
            "probability": (("obs", "component"), total / s),
            "known": (("obs",), labels >= 0),
        },
        attrs={"inference_library": "bayesgmm (p(z | x) averaged over the draws)"},
        coords={
            "obs": tree["observed_data"].coords["obs"].values,
            "component": post.coords["component"].values,
        },
    )


def _pointwise_log_likelihood(tree: Any, X: np.ndarray, labels: np.ndarray | None = None) -> Any:
    """log p(x_n | θ^(s)) for every draw and row, by the core's log-sum-exp over Cholesky
    factors: the model's likelihood term exactly (tests/bayes/test_model.py checks the two agree
    to 1e-10 for every structure), without compiling another PyTensor function."""
    w, mu, cov = _draw_mixtures(tree)
    post = tree["posterior"]
    c, s = post.sizes["chain"], post.sizes["draw"]
    out = log_prob_many(X, w, mu, cov, labels)  # one pass over X for all draws
    return _group(
        {"x": (("chain", "draw", "obs"), out.reshape(c, s, -1))},
        attrs={"inference_library": "bayesgmm (core log-likelihood at each draw)"},
        coords={
            "chain": post.coords["chain"].values,
            "draw": post.coords["draw"].values,
            "obs": tree["observed_data"].coords["obs"].values,
        },
    )


def _summed_log_likelihood(tree: Any, X: np.ndarray) -> np.ndarray:
    """Σ_n log p(x_n | θ^(s)) for every draw (chain, draw), by the same core pass as
    :func:`_pointwise_log_likelihood`, a block of draws at a time so that no (draws, N) array
    larger than 2^24 floats is held (with ``log_likelihood=False`` on large data; the numpy
    density's batched evaluation took 4.5 times as long on 100,000 rows)."""
    w, mu, cov = _draw_mixtures(tree)
    post = tree["posterior"]
    step = max(1, 2**24 // max(1, X.shape[0]))
    out = np.concatenate(
        [
            log_prob_many(X, w[i : i + step], mu[i : i + step], cov[i : i + step]).sum(axis=1)
            for i in range(0, w.shape[0], step)
        ]
    )
    return out.reshape(post.sizes["chain"], post.sizes["draw"])


def _draw_mixtures(tree: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weights (S, K), means (S, K, D) and covariances (S, K, D, D) of every draw."""
    post = tree["posterior"]
    k = post.sizes["component"]
    w = post["weights"].values.reshape(-1, k)
    mu = post["means"].values.reshape(w.shape[0], k, -1)
    cov = post["covariances"].values.reshape(w.shape[0], k, mu.shape[2], mu.shape[2])
    return w, mu, cov


def recover_z(tree: Any, *, rng: Any = None) -> Any:
    """The posterior of the latent labels, added to ``tree``'s posterior (and returned):

    * ``lp_z`` (chain, draw, obs, component): log p(z_n = k | x_n, θ^(s)), the core's log
      responsibilities at each draw's parameters;
    * ``z`` (chain, draw, obs): one label per row and draw, drawn from that distribution, so
      that (θ^(s), z^(s)) are draws from the joint posterior p(θ, z | x).

    Exact given the draws of θ: z_n is conditionally independent of the other rows given θ,
    so marginalising z out for sampling and recovering it afterwards loses nothing (the same
    names as pymc-extras' ``recover_marginals``).
    """
    from scipy.special import logsumexp

    gen = as_rng(rng)
    post = tree["posterior"]
    X = tree["observed_data"]["x"].values
    w, mu, cov = _draw_mixtures(tree)
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    n, k = X.shape[0], w.shape[1]
    lp_z = np.empty((w.shape[0], n, k))
    z = np.empty((w.shape[0], n), dtype=np.int64)
    for s in range(w.shape[0]):
        joint = GaussianMixture(w[s] / w[s].sum(), mu[s], cov[s]).log_joint_all(X)
        lp_z[s] = joint - logsumexp(joint, axis=1, keepdims=True)
        u = gen.random(n)[:, None]
        z[s] = np.minimum((np.cumsum(np.exp(lp_z[s]), axis=1) < u).sum(axis=1), k - 1)
    coords = {"obs": tree["observed_data"].coords["obs"].values}
    ds = post.to_dataset().assign(
        lp_z=(("chain", "draw", "obs", "component"), lp_z.reshape(chains, draws, n, k)),
        z=(("chain", "draw", "obs"), z.reshape(chains, draws, n)),
    )
    tree["posterior"] = ds.assign_coords(coords)
    return tree


def z_probabilities(tree: Any) -> Any:
    """The posterior of the latent labels: P(z_n = k | x) = E[γ_nk(θ) | x], the core's
    responsibilities at each draw's parameters averaged over the draws (the Bayesian
    counterpart of EM's responsibilities), as a DataArray (obs, component).

    Exact given the draws: z_n is conditionally independent of the other rows given θ, so its
    posterior is the average of p(z_n | x_n, θ^(s)); uses ``lp_z`` when :func:`recover_z` has
    stored it.
    """
    import xarray as xr

    post = tree["posterior"]
    if "lp_z" in post:
        prob = np.exp(post["lp_z"].values).mean(axis=(0, 1))
    else:
        X = tree["observed_data"]["x"].values
        w, mu, cov = _draw_mixtures(tree)
        prob = np.zeros((X.shape[0], w.shape[1]))
        for s in range(w.shape[0]):
            prob += GaussianMixture(w[s] / w[s].sum(), mu[s], cov[s]).responsibilities(X)
        prob /= w.shape[0]
    return xr.DataArray(
        prob,
        dims=("obs", "component"),
        coords={"obs": tree["observed_data"].coords["obs"], "component": post.coords["component"]},
        name="z_probabilities",
    )
