"""``compare_estimates``: the EM estimate, its bootstrap and the posterior, one row per number."""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesgmm.compare.align import align_to, describe_alignment
from bayesgmm.compare.datatree import feature_names, mixture_arrays, posterior_dataset
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.result import EMResult
from bayesgmm.core.structures import get_structure

__all__ = ["compare_estimates", "has_correlations", "scalar_parameters"]


def has_correlations(covariance_type: str) -> bool:
    """Whether the structure lets features correlate within a component (mclust's third letter
    is not I; the univariate E and V have one feature)."""
    code = get_structure(covariance_type).name
    return len(code) == 3 and code[2] != "I"


def scalar_parameters(
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    features: list[str],
    correlations: bool = True,
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The parameters users read, one scalar per entry: weight, mean, sd and (when the structure
    has them) correlation of each component, as (description, values over the leading dims)."""
    k, d = means.shape[-2:]
    sd = np.sqrt(np.diagonal(covariances, axis1=-2, axis2=-1))
    out: list[tuple[dict[str, Any], np.ndarray]] = []
    for c in range(k):
        out.append(
            (
                {"parameter": "weight", "component": c, "feature": "", "feature_bis": ""},
                weights[..., c],
            )
        )
    for c in range(k):
        for j in range(d):
            out.append(
                (
                    {
                        "parameter": "mean",
                        "component": c,
                        "feature": features[j],
                        "feature_bis": "",
                    },
                    means[..., c, j],
                )
            )
    for c in range(k):
        for j in range(d):
            out.append(
                (
                    {"parameter": "sd", "component": c, "feature": features[j], "feature_bis": ""},
                    sd[..., c, j],
                )
            )
    if correlations:
        for c in range(k):
            for i in range(d):
                for j in range(i + 1, d):
                    corr = covariances[..., c, i, j] / (sd[..., c, i] * sd[..., c, j])
                    out.append(
                        (
                            {
                                "parameter": "corr",
                                "component": c,
                                "feature": features[i],
                                "feature_bis": features[j],
                            },
                            corr,
                        )
                    )
    return out


def _row_name(desc: dict[str, Any]) -> str:
    inner = [str(desc["component"])] + [desc[f] for f in ("feature", "feature_bis") if desc[f]]
    return f"{desc['parameter']}[{', '.join(inner)}]"


def _draws(
    source: Any, model: GaussianMixture, what: str
) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Draws (S, ...) of a posterior or bootstrap, relabelled to ``model``, and the alignment."""
    ds = posterior_dataset(source)
    if ds.sizes["component"] != model.n_components or ds.sizes["feature"] != model.n_features:
        raise ValueError(
            f"the {what} has {ds.sizes['component']} components and {ds.sizes['feature']} "
            f"features but the EM fit has {model.n_components} and {model.n_features}; compare "
            "a fit and a posterior of the same K on the same data."
        )
    w, mu, cov = mixture_arrays(ds)
    s = w.shape[0] * w.shape[1]
    arrays = (w.reshape(s, -1), mu.reshape(s, *mu.shape[2:]), cov.reshape(s, *cov.shape[2:]))
    aligned, perms = align_to(arrays, model.means, model.covariances)
    return aligned, describe_alignment(perms, ds.coords["component"].values)


def compare_estimates(
    fit: EMResult | GaussianMixture,
    posterior: Any,
    *,
    bootstrap: Any = None,
    ci_prob: float = 0.94,
) -> Any:
    """EM's estimate beside the posterior (and the bootstrap), one row per scalar parameter.

    Parameters
    ----------
    fit : EMResult or GaussianMixture
        The EM estimate; its labels are the table's.
    posterior : DataTree or Dataset
        A posterior from :func:`bayesgmm.fit_bayes` (its ``posterior`` group), of the same K.
    bootstrap : DataTree, optional
        Replicates from :func:`bayesgmm.bootstrap_em`.
    ci_prob : float, default 0.94
        Probability of the equal-tailed intervals (ArviZ's default 0.94).

    Returns
    -------
    pandas.DataFrame, one row per weight, mean, standard deviation and (for structures that
    have them) correlation of each component, with columns ``parameter``, ``component``,
    ``feature``, ``feature_bis``, ``em``; with a bootstrap ``boot_se``, ``boot_lower``,
    ``boot_upper``; then ``post_mean``, ``post_sd``, ``post_lower``, ``post_upper``,
    ``em_in_interval`` (the EM estimate lies in the posterior interval) and ``std_diff``
    ((em − post_mean) / post_sd).

    Each posterior draw (and bootstrap replicate) is first relabelled to the EM components by
    the symmetrised KL divergence between components (so a posterior with any labelling gives
    the same table). ``table.attrs["alignment"]`` reports it: the mapping most draws needed
    (posterior label → EM label), the share of draws relabelled and the share relabelled
    differently from that majority (large when components overlap so much that labels are not
    identified).
    """
    import pandas as pd

    if isinstance(fit, EMResult):
        model = fit.model
    elif isinstance(fit, GaussianMixture):
        model = fit
    else:
        raise TypeError(
            f"fit must be an EMResult (from bayesgmm.fit_em) or a GaussianMixture; got "
            f"{type(fit).__name__}."
        )
    if isinstance(ci_prob, bool) or not isinstance(ci_prob, int | float) or not 0 < ci_prob < 1:
        raise ValueError(
            f"ci_prob must be a probability strictly between 0 and 1; got {ci_prob!r}."
        )
    features = feature_names(model)
    corr = has_correlations(model.covariance_type)
    tails = [(1 - ci_prob) / 2, (1 + ci_prob) / 2]

    em_params = scalar_parameters(model.weights, model.means, model.covariances, features, corr)
    rows = [dict(desc, em=float(v)) for desc, v in em_params]
    alignment: dict[str, Any] = {}
    sources = [("boot", bootstrap, "bootstrap")] if bootstrap is not None else []
    sources.append(("post", posterior, "posterior"))
    for prefix, source, what in sources:
        draws, alignment[what] = _draws(source, model, what)
        params = scalar_parameters(draws[0], draws[1], draws[2], features, corr)
        for row, (_, v) in zip(rows, params, strict=True):
            lower, upper = np.quantile(v, tails)
            if prefix == "boot":
                row.update(boot_se=float(v.std(ddof=1)), boot_lower=lower, boot_upper=upper)
            else:
                mean, sd = float(v.mean()), float(v.std(ddof=1))
                row.update(post_mean=mean, post_sd=sd, post_lower=lower, post_upper=upper)
                row["em_in_interval"] = bool(lower <= row["em"] <= upper)
                row["std_diff"] = (row["em"] - mean) / sd if sd > 0 else np.nan
    table = pd.DataFrame(rows, index=[_row_name(desc) for desc, _ in em_params])
    table.index.name = "name"
    table.attrs["alignment"] = alignment
    table.attrs["ci_prob"] = ci_prob
    return table
