"""Shared data for the comparison tests: three separated 2-D clusters and their EM fit."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import bayesgmm as bg

matplotlib.use("Agg")  # headless: nothing is shown


@pytest.fixture(scope="session")
def three() -> np.ndarray:
    """150 rows from three separated 2-D clusters, centres (0, 0), (5, 0), (0, 5)."""
    gm = bg.GaussianMixture(
        [0.3, 0.3, 0.4], [[0, 0], [5, 0], [0, 5]], np.array([np.eye(2)] * 3), covariance_type="VVV"
    )
    return gm.sample(150, rng=1)[0]


@pytest.fixture(scope="session")
def three_fit(three):
    return bg.fit_em(three, 3)


@pytest.fixture(scope="session")
def three_boot(three, three_fit):
    return bg.bootstrap_em(three_fit, three, n_boot=60, rng=0)


@pytest.fixture(scope="session")
def pseudo_posterior(three_fit, three):
    """A (2 chains × 40 draws) stand-in for a posterior, from parametric bootstrap replicates:
    the comparison code reads any draws with the posterior's names and dims, and this one needs
    no PyMC compile."""
    boot = bg.bootstrap_em(three_fit, three, n_boot=80, kind="parametric", rng=1)
    ds = boot["posterior"].to_dataset()
    half = ds.sizes["draw"] // 2
    chains = [ds.isel(draw=slice(i * half, (i + 1) * half)) for i in range(2)]
    import xarray as xr

    out = xr.concat(
        [c.assign_coords(draw=np.arange(half)).squeeze("chain", drop=True) for c in chains],
        dim="chain",
    ).assign_coords(chain=[0, 1])
    return xr.DataTree.from_dict({"posterior": out.transpose("chain", "draw", ...)})


@pytest.fixture(scope="session")
def comparison(three):
    """compare_k over K = 2..4 with BIC, ICL, the bootstrap LRT and LOO from Laplace posteriors
    (the one place these tests compile PyMC models: about 20 s per K)."""
    return bg.compare_k(
        three,
        range(2, 5),
        methods=("bic", "icl", "lrt", "loo"),
        bayes_method="laplace",
        draws=200,
        chains=2,
        n_boot_lrt=19,
        rng=0,
    )
