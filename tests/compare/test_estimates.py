"""compare_estimates: EM, bootstrap and posterior, one row per scalar parameter."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import bayesgmm as bg


def _permute_each_draw(tree, seed):
    """The same draws, each under its own random labelling."""
    ds = tree["posterior"].to_dataset()
    rng = np.random.default_rng(seed)
    c, s, k = ds["weights"].shape
    perms = np.array([[rng.permutation(k) for _ in range(s)] for _ in range(c)])
    idx = xr.DataArray(perms, dims=("chain", "draw", "component"))
    out = {
        v: ds[v].isel(component=idx).drop_vars("component", errors="ignore")
        for v in ("weights", "means", "covariances")
    }
    return xr.Dataset(out).assign_coords(component=ds.coords["component"].values)


def test_rows_and_values(three_fit, pseudo_posterior, three_boot):
    tab = bg.compare_estimates(three_fit, pseudo_posterior, bootstrap=three_boot, ci_prob=0.9)
    # K weights, K·D means, K·D sds, K·D(D−1)/2 correlations (VVV has them)
    assert len(tab) == 3 + 6 + 6 + 3
    assert list(tab.index[:4]) == ["weight[0]", "weight[1]", "weight[2]", "mean[0, x0]"]
    assert tab.loc["corr[1, x0, x1]", "parameter"] == "corr"
    gm = three_fit.model
    assert tab.loc["mean[2, x1]", "em"] == gm.means[2, 1]
    assert tab.loc["sd[0, x1]", "em"] == pytest.approx(np.sqrt(gm.covariances[0, 1, 1]))
    corr = gm.covariances[1, 0, 1] / np.sqrt(gm.covariances[1, 0, 0] * gm.covariances[1, 1, 1])
    assert tab.loc["corr[1, x0, x1]", "em"] == pytest.approx(corr)
    # Reference: numpy on the draws, which are already in the EM labels here.
    draws = pseudo_posterior["posterior"]["means"].values[..., 2, 1].ravel()
    row = tab.loc["mean[2, x1]"]
    assert row["post_mean"] == pytest.approx(draws.mean())
    assert row["post_sd"] == pytest.approx(draws.std(ddof=1))
    assert row["post_lower"] == pytest.approx(np.quantile(draws, 0.05))
    assert row["post_upper"] == pytest.approx(np.quantile(draws, 0.95))
    assert row["std_diff"] == pytest.approx((row["em"] - draws.mean()) / draws.std(ddof=1))
    boot = three_boot["posterior"]["means"].values[..., 2, 1].ravel()
    assert row["boot_se"] == pytest.approx(boot.std(ddof=1))
    inside = (tab["post_lower"] <= tab["em"]) & (tab["em"] <= tab["post_upper"])
    assert (tab["em_in_interval"] == inside).all()
    assert tab.attrs["alignment"]["posterior"]["share_relabelled"] == 0.0


def test_permuted_labels_give_the_same_table(three_fit, pseudo_posterior, three_boot):
    plain = bg.compare_estimates(three_fit, pseudo_posterior, bootstrap=three_boot)
    shuffled = _permute_each_draw(pseudo_posterior, 3)
    boot_shuffled = _permute_each_draw(three_boot, 4)
    again = bg.compare_estimates(three_fit, shuffled, bootstrap=boot_shuffled)
    assert again.equals(plain)
    report = again.attrs["alignment"]["posterior"]
    assert report["share_relabelled"] > 0.5  # five of six random labellings are not the identity
    # one fixed permutation: every draw relabelled the same way, and the mapping says how
    ds = pseudo_posterior["posterior"].to_dataset()
    fixed = ds.isel(component=[1, 2, 0]).assign_coords(component=[0, 1, 2])
    third = bg.compare_estimates(three_fit, fixed)
    assert third.attrs["alignment"]["posterior"]["mapping"] == {0: 1, 1: 2, 2: 0}
    assert third.attrs["alignment"]["posterior"]["share_off_majority"] == 0.0
    cols = ["em", "post_mean", "post_sd", "post_lower", "post_upper"]
    assert third[cols].equals(plain[cols])


def test_diagonal_structures_have_no_correlation_rows(three):
    fit = bg.fit_em(three, 3, covariance_type="VVI")
    boot = bg.bootstrap_em(fit, three, n_boot=20, rng=0)
    tab = bg.compare_estimates(fit, boot)
    assert "corr" not in set(tab["parameter"])
    assert "boot_se" not in tab.columns


def test_errors(three_fit, pseudo_posterior, three):
    with pytest.raises(ValueError, match="ci_prob"):
        bg.compare_estimates(three_fit, pseudo_posterior, ci_prob=94)
    other = bg.fit_em(three, 2)
    with pytest.raises(ValueError, match=r"has 3 components .* EM fit has 2"):
        bg.compare_estimates(other, pseudo_posterior)
    ds = pseudo_posterior["posterior"].to_dataset().drop_vars("covariances")
    with pytest.raises(ValueError, match="lacks \\['covariances'\\]"):
        bg.compare_estimates(three_fit, ds)
    with pytest.raises(ValueError, match="no 'posterior' group"):
        bg.compare_estimates(three_fit, bg.to_datatree(three_fit))
