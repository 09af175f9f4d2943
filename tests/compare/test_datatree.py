"""to_datatree: EM results in ArviZ's conventions, and their round trip through files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesgmm as bg
from bayesgmm.compare import em_reference


def test_names_dims_and_values(three, three_fit):
    tree = bg.to_datatree(three_fit, three)
    em = tree["em"]
    # The names and dims of a fit_bayes posterior (bayesgmm.to_pymc's coords).
    assert em["weights"].dims == ("chain", "draw", "component")
    assert em["means"].dims == ("chain", "draw", "component", "feature")
    assert em["covariances"].dims == ("chain", "draw", "component", "feature", "feature_bis")
    assert list(em.coords["feature"].values) == ["x0", "x1"]
    np.testing.assert_array_equal(em["means"].values[0, 0], three_fit.model.means)
    np.testing.assert_array_equal(em["responsibilities"].values, three_fit.responsibilities)
    # Reference: the core's log p(x_n) at the estimate; it sums to the fit's log-likelihood.
    ll = tree["log_likelihood"]["x"].values[0, 0]
    np.testing.assert_allclose(ll, three_fit.model.log_prob(three), rtol=1e-12)
    assert ll.sum() == pytest.approx(three_fit.loglik, rel=1e-10)
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, three)
    np.testing.assert_array_equal(tree["em_trace"]["loglik"].values, three_fit.loglik_trace)
    for name in ("bic", "icl", "aic", "loglik", "n_parameters", "n_iter"):
        assert em.attrs[name] == pytest.approx(getattr(three_fit, name))
    assert em.attrs["converged"] == int(three_fit.converged)


def test_feature_names_from_a_dataframe():
    faithful = bg.datasets.load_faithful()
    fit = bg.fit_em(faithful, 2)
    tree = bg.to_datatree(fit, faithful)
    assert list(tree["em"].coords["feature"].values) == ["eruptions", "waiting"]
    assert list(tree["observed_data"].coords["feature"].values) == ["eruptions", "waiting"]


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_round_trip_is_exact(three, three_fit, tmp_path, fmt):
    tree = bg.to_datatree(three_fit, three)
    if fmt == "netcdf":
        tree.to_netcdf(tmp_path / "fit.nc")
        back = xr.open_datatree(tmp_path / "fit.nc", engine="h5netcdf")
    else:
        tree.to_zarr(tmp_path / "fit.zarr", consolidated=False)
        back = xr.open_datatree(tmp_path / "fit.zarr", engine="zarr", consolidated=False)
    assert back.identical(tree)


def test_a_mixture_without_data():
    gm = bg.GaussianMixture([0.5, 0.5], [[0.0], [3.0]], [[[1.0]], [[2.0]]])
    tree = bg.to_datatree(gm)
    assert set(tree.children) == {"em"}
    assert "responsibilities" not in tree["em"]
    X = np.linspace(-2, 5, 30)
    with_data = bg.to_datatree(gm, X)
    np.testing.assert_allclose(with_data["em"]["responsibilities"].values, gm.responsibilities(X))


def test_errors_name_the_fix(three, three_fit):
    with pytest.raises(ValueError, match="pass the data the fit was made on"):
        bg.to_datatree(three_fit, three[:100])
    with pytest.raises(ValueError, match="has 1 features but the mixture has 2"):
        bg.to_datatree(three_fit, three[:, 0])
    with pytest.raises(TypeError, match="fit must be an EMResult"):
        bg.to_datatree(pd.DataFrame(three))


def test_reference_takes_the_posteriors_shape_and_labels(three_fit, pseudo_posterior):
    ds = pseudo_posterior["posterior"].to_dataset()
    perm = [2, 0, 1]
    permuted = ds.isel(component=perm).assign_coords(component=[0, 1, 2])
    ref = em_reference(three_fit, permuted)
    assert ref["means"].shape == permuted["means"].shape
    # posterior label j holds EM component perm[j]
    np.testing.assert_array_equal(ref["means"].values[1, 7], three_fit.model.means[perm])
    # an `em` group from a DataTree works the same
    ref2 = em_reference(bg.to_datatree(three_fit), permuted)
    np.testing.assert_array_equal(ref2["means"].values, ref["means"].values)
