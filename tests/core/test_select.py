"""select_em: the grid, failures, degenerate cells and the summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg


def test_table_layout(faithful):
    sel = bg.select_em(faithful, n_components=range(1, 4), covariance_types=["VVV", "tied"])
    assert isinstance(sel.table, pd.DataFrame)
    assert list(sel.table.index) == [1, 2, 3] and sel.table.index.name == "K"
    assert list(sel.table.columns) == ["VVV", "EEE"]
    assert sel.best.bic == pytest.approx(np.nanmin(sel.table.to_numpy()))
    assert set(sel.results) == {(s, k) for s in ["VVV", "EEE"] for k in [1, 2, 3]}
    assert "smaller is better" in repr(sel)


def test_icl_criterion(faithful):
    sel = bg.select_em(faithful, n_components=range(1, 5), criterion="icl")
    assert sel.best.icl == pytest.approx(np.nanmin(sel.icl.to_numpy()))
    assert sel.table is sel.icl


def test_univariate_grid_uses_e_and_v(galaxies):
    sel = bg.select_em(galaxies, n_components=[1, 2, 3])
    assert list(sel.table.columns) == ["E", "V"]


def test_too_many_components_is_a_failure_not_a_crash():
    X = np.r_[np.zeros(10), np.ones(10), np.full(10, 2.0), np.arange(3.0, 6.0)]
    sel = bg.select_em(X, n_components=range(1, 8))
    assert np.isnan(sel.table.loc[7]).all()
    assert "distinct rows" in sel.failures[("V", 7)]


def test_degenerate_cells_never_win():
    # 20 rows on one point plus a few spread ones: a V component on the duplicates has an
    # unbounded likelihood.
    rng = np.random.default_rng(0)
    X = np.r_[np.full(20, 3.0), rng.normal(size=30) * 2.0]
    sel = bg.select_em(X, n_components=range(1, 5))
    for key, reason in sel.failures.items():
        assert np.isnan(sel.table.loc[key[1], key[0]])
        assert reason
    assert not sel.best.degenerate


def test_bad_arguments(faithful):
    with pytest.raises(ValueError, match="criterion"):
        bg.select_em(faithful, criterion="aic")
    with pytest.raises(ValueError, match="select_em's init"):
        bg.select_em(faithful, init=np.zeros(272, int))
    with pytest.raises(TypeError, match="range"):
        bg.select_em(faithful, n_components="3")


def test_same_partition():
    from bayesgmm.core.select import _same_partition

    a = np.array([0, 0, 1, 1, 2])
    assert _same_partition(a, np.array([2, 2, 0, 0, 1]))
    assert not _same_partition(a, np.array([0, 0, 1, 2, 2]))
    assert not _same_partition(a, np.array([0, 0, 0, 1, 1]))


def test_large_data_are_screened_on_a_subsample(faithful):
    # Above `screen` rows the grid runs on a subsample of screen // 4 rows, then every cell
    # runs full-data EM from the screen's best fit and from the full data's hierarchical start.
    # Every number is a full-data log-likelihood, and no cell is worse than EM from the
    # hierarchical start alone (on 272 rows the tree is built on all of them, as fit_em's).
    sel = bg.select_em(faithful, range(1, 5), ["EII", "EEE", "VVV"], screen=200)
    for (structure, k), fit in sel.results.items():
        np.testing.assert_allclose(fit.loglik, fit.model.score(faithful), rtol=1e-10)
        alone = bg.fit_em(faithful, k, covariance_type=structure)
        assert fit.loglik >= alone.loglik - 1e-6 * abs(alone.loglik), (structure, k)
    assert any(f.init.startswith("screen") for f in sel.results.values())
    plain = bg.select_em(faithful, range(1, 5), ["EII", "EEE", "VVV"])
    assert not any(f.init.startswith("screen") for f in plain.results.values())
    assert (sel.best.covariance_type, sel.best.n_components) == ("EEE", 3)  # as mclust
