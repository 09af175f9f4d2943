"""compare_k: the choice of K by BIC, ICL, the bootstrap LRT and LOO, side by side."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from arviz_stats import loo

import bayesgmm as bg
from bayesgmm.compare import loo_choice
from bayesgmm.compare import select as select_mod
from bayesgmm.compare.plots import plot_criteria


def test_three_clusters_every_criterion_picks_three(comparison):
    assert comparison.choices == {"bic": 3, "icl": 3, "lrt": 3, "loo": 3}
    tab = comparison.table
    assert list(tab.index) == [2, 3, 4]
    assert tab.loc[3, "chosen_by"] == "bic, icl, lrt, loo"
    # K = 2 is rejected against K = 3 (the smallest p-value, 1/20)
    assert tab.loc[2, "lrt_p"] <= 0.05
    assert np.isnan(tab.loc[4, "lrt_p"])  # K = 5 was not fitted: no test of 4 against 5


def test_table_holds_what_arviz_and_em_say(comparison, three):
    tab = comparison.table
    for k in (2, 3):
        # Reference: arviz_stats.loo on the same posterior.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its Pareto-k warning: the table has the shares
            res = loo(comparison.posteriors[k])
        assert tab.loc[k, "elpd_loo"] == pytest.approx(res.elpd)
        assert tab.loc[k, "se"] == pytest.approx(res.se)
        assert tab.loc[k, "bic"] == pytest.approx(comparison.fits[k].bic)
    best = tab["elpd_loo"].idxmax()
    assert tab.loc[best, "elpd_diff"] == 0.0
    assert tab["weight"].sum() == pytest.approx(1.0)
    assert ((tab["share_k_bad"] >= 0) & (tab["share_k_bad"] <= 1)).all()
    assert "LOO" in repr(comparison)
    assert comparison.em_tree(3)["em"].attrs["n_components"] == 3


def test_given_posteriors_are_reused(comparison, three):
    again = bg.compare_k(three, range(2, 5), methods="loo", posteriors=comparison.posteriors)
    np.testing.assert_allclose(again.table["elpd_loo"], comparison.table["elpd_loo"])
    assert again.choices == {"loo": 3}


def test_parsimony_rule():
    # The example: K = 4 scores 0.04 above K = 3 with dse 2.1: K = 3 is kept.
    assert loo_choice({2: -1900.0, 3: -1800.7, 4: -1800.6}, {2: 14.0, 3: 2.1, 4: 0.0}) == 3
    # A clear gain over the smaller K (60 with dse 5) is taken.
    assert loo_choice({2: -1860.0, 3: -1800.0}, {2: 5.0, 3: 0.0}) == 3
    # Within max(4, 2·dse): a gap of 7 with dse 4 is still "indistinguishable".
    assert loo_choice({1: -107.0, 2: -100.0}, {1: 4.0, 2: 0.0}) == 1


def test_unreliable_loo_is_said_in_words(comparison, monkeypatch):
    monkeypatch.setattr(select_mod, "PARETO_K_BAD", -1.0)  # every observation counts as bad
    rows = {k: {} for k in (2, 3)}
    notes: list[str] = []
    select_mod._loo_rows(comparison.posteriors, [2, 3], rows, notes, {})
    assert rows[2]["share_k_bad"] == 1.0
    assert any("K=3: LOO is unreliable" in n and "Pareto k" in n for n in notes)


def test_bad_methods():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="methods must be"):
        bg.compare_k(X, range(1, 3), methods=("aic",))


def test_criteria_plot(comparison, tmp_path):
    # here rather than in test_plots.py: the comparison fixture is costly, and CI's workers
    # share fixtures only within a file
    fig = plot_criteria(comparison, path=tmp_path / "criteria.png")
    assert [a.get_title() for a in fig.axes] == [
        "EM: BIC and ICL",
        "bootstrap LRT",
        "posterior: PSIS-LOO",
    ]
    assert (tmp_path / "criteria.png").stat().st_size > 5_000
    plt.close(fig)
