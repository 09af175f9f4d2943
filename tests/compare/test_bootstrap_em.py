"""bootstrap_em: replicates as a DataTree that ArviZ reads like a posterior."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from arviz_stats import summary

import bayesgmm as bg


def test_tree_layout(three_boot, three_fit):
    post = three_boot["posterior"]
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["weights"].shape == (1, 60 - three_boot.attrs["n_failed"], 3)
    assert set(three_boot.children) == {"posterior", "sample_stats", "em"}
    assert three_boot.attrs["kind"] == "nonparametric"
    assert three_boot.attrs["n_boot"] == 60
    np.testing.assert_array_equal(three_boot["em"]["means"].values[0, 0], three_fit.model.means)
    assert (three_boot["sample_stats"]["converged"].values == 1).all()


def test_arviz_summary_reads_it(three_boot):
    table = summary(three_boot, var_names=["means"], kind="stats")
    sd = three_boot["posterior"]["means"].values[0].std(axis=0, ddof=1).ravel()
    # ArviZ's sd of each mean over the replicates equals numpy's (to its rounding).
    np.testing.assert_allclose(table["sd"].to_numpy(dtype=float), sd, atol=0.006)


def test_same_seed_same_replicates_and_progress(three, three_fit, capsys):
    a = bg.bootstrap_em(three_fit, three, n_boot=8, kind="weighted", rng=4, progressbar=True)
    b = bg.bootstrap_em(three_fit, three, n_boot=8, kind="weighted", rng=4)
    assert a["posterior"].identical(b["posterior"])
    assert "bootstrap (weighted)" in capsys.readouterr().out


def test_round_trip(three_boot, tmp_path):
    three_boot.to_netcdf(tmp_path / "boot.nc")
    back = xr.open_datatree(tmp_path / "boot.nc", engine="h5netcdf")
    assert back.identical(three_boot)


def test_too_fragile_to_bootstrap():
    # Five points and two components of a free variance: most resamples collapse a component.
    X = np.array([0.0, 0.1, 5.0, 5.2, 5.1])
    fit = bg.fit_em(X, 2, covariance_type="V")
    with pytest.raises(ValueError, match="too fragile to bootstrap"):
        bg.bootstrap_em(fit, X, n_boot=5, rng=0)
