"""``bootstrap_em``: EM's sampling uncertainty, as draws ArviZ reads like a posterior's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bayesgmm.compare.datatree import feature_names, mixture_dataset, to_datatree
from bayesgmm.core.bootstrap import replicate_em
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.result import EMResult

__all__ = ["bootstrap_em", "progress_bar"]


@contextmanager
def progress_bar(
    total: int, description: str, show: bool
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar advanced by the callback it yields (None when not shown)."""
    if not show:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def bootstrap_em(
    fit: EMResult,
    X: Any,
    *,
    n_boot: int = 999,
    kind: str = "nonparametric",
    prior: ConjugatePrior | None = None,
    rng: Any = 0,
    n_jobs: int | None = None,
    progressbar: bool = False,
) -> Any:
    """Bootstrap an EM fit, as mclust's ``MclustBootstrap``.

    Each replicate refits the mixture by EM, started from the estimate, to resampled data, and
    its components are matched to the estimate's (symmetrised KL divergence, scipy's
    ``linear_sum_assignment``), so that label k means the same cluster in every replicate.

    Parameters
    ----------
    fit : EMResult
        The fit to bootstrap (its structure and K are kept).
    X : array_like
        The data ``fit`` was made on. A dask array (or dask DataFrame, or xarray object backed
        by dask) takes the nonparametric and weighted kinds without a prior: every replicate's
        row weights are drawn chunk by chunk from its own stream, never stored, and all
        replicates share each pass over the chunks (docs/scale.md).
    n_boot : int, default 999
        Replicates (mclust's default).
    kind : {"nonparametric", "parametric", "weighted"}, default "nonparametric"
        "nonparametric": the rows resampled with replacement (multinomial counts as weights);
        "parametric": data sets drawn from the fitted mixture; "weighted": the weighted
        likelihood bootstrap, the rows weighted n·Dirichlet(1, ..., 1) (Newton & Raftery 1994).
    prior : ConjugatePrior, optional
        The prior of a MAP-EM fit, to refit each replicate under it too.
    rng : int, numpy.random.Generator or None, default 0
        Each replicate has its own stream spawned from it: the same seed gives the same
        replicates for any ``n_jobs``; None draws fresh entropy.
    n_jobs : int, optional
        Worker processes for batches of replicates, scikit-learn's convention for explicit
        values (-1: every core, -2: all but one); None: this process. The replicates run as
        one batched EM (up to 1024 per batch, each pass using every core), so extra processes
        help only beyond one batch, or with a ``prior`` (its replicates run one at a time).
    progressbar : bool, default False
        Show a progress bar (rich).

    Returns
    -------
    DataTree
        With groups

        * ``posterior``: ``weights``, ``means``, ``covariances`` with ``chain`` = 1 and ``draw`` =
          replicate, in the estimate's labels, so that ``arviz_stats.summary`` and arviz-plots read
          them as they read a posterior (R-hat and ESS are meaningless here: replicates are
          independent);
        * ``sample_stats``: each replicate's ``loglik``, ``n_iter``, ``converged`` and whether it
          was ``relabelled``;
        * ``em``: the estimate (as :func:`to_datatree`).

        Replicates whose fit collapsed are left out (``attrs["n_failed"]``, with reasons in
        ``attrs["failures"]``), as mclust leaves out its NA replicates.
    """
    with progress_bar(n_boot, f"bootstrap ({kind})", progressbar) as advance:
        reps = replicate_em(
            fit, X, n_boot=n_boot, kind=kind, prior=prior, rng=rng, n_jobs=n_jobs, progress=advance
        )
    if reps.weights.shape[0] < 2:
        raise ValueError(
            f"only {reps.weights.shape[0]} of {n_boot} bootstrap replicates gave a proper fit "
            f"(first failure: {next(iter(reps.failed.values()), '')}); the fit is too fragile "
            "to bootstrap: fewer components or a more constrained covariance_type."
        )
    import xarray as xr

    post = mixture_dataset(
        reps.weights[None], reps.means[None], reps.covariances[None], feature_names(fit.model)
    )
    post = post.assign_coords(draw=reps.replicate)
    stats = xr.Dataset(
        {
            "loglik": (("chain", "draw"), reps.loglik[None]),
            "n_iter": (("chain", "draw"), reps.n_iter[None]),
            "converged": (("chain", "draw"), reps.converged[None].astype(np.int8)),
            "relabelled": (("chain", "draw"), reps.relabelled[None].astype(np.int8)),
        },
        coords={"chain": [0], "draw": reps.replicate},
    )
    tree = to_datatree(fit)
    em = tree["em"].to_dataset()
    out = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats, "em": em})
    out["posterior"].attrs = {"inference_library": f"bayesgmm (bootstrap EM, {kind})"}
    out.attrs = {
        "kind": kind,
        "n_boot": int(n_boot),
        "n_failed": len(reps.failed),
        "failures": "\n".join(f"replicate {i}: {why}" for i, why in reps.failed.items()),
        "share_relabelled": float(reps.relabelled.mean()) if reps.relabelled.size else 0.0,
    }
    return out
