"""Every plot renders headless for 1-D, 2-D and D > 2 data; one PNG of each kind is checked."""

from __future__ import annotations

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import bayesgmm as bg
from bayesgmm.compare import plots


def _nonblank(path) -> None:
    assert path.stat().st_size > 5_000
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.01  # not one flat colour


@pytest.fixture(scope="module")
def one_d():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=60), rng.normal(size=40) + 5])
    fit = bg.fit_em(X, 2, covariance_type="V")
    return X, fit, bg.bootstrap_em(fit, X, n_boot=20, rng=0)


@pytest.fixture(scope="module")
def four_d():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + [4, 0, 4, 0]])
    fit = bg.fit_em(X, 2, covariance_type="VVI")
    return X, fit, bg.bootstrap_em(fit, X, n_boot=20, rng=0)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_mixture_in_every_dimension(three, three_fit, one_d, four_d, tmp_path):
    for name, (X, fit) in {
        "1d": one_d[:2],
        "2d": (three, three_fit),
        "4d": four_d[:2],
    }.items():
        fig = plots.plot_mixture(fit, X, path=tmp_path / f"mix_{name}.png")
        assert isinstance(fig, Figure)
        _nonblank(tmp_path / f"mix_{name}.png")
    X, fit = four_d[:2]
    assert len(plots.plot_mixture(fit, X).axes) == 16  # pairwise panels
    assert len(plots.plot_mixture(fit, X, features=("x1", 3)).axes) == 1
    assert len(plots.plot_mixture(fit, X, features=[2]).axes) == 1


def test_forest_and_posterior_with_references(
    three, three_fit, pseudo_posterior, three_boot, one_d, four_d, tmp_path
):
    fig = plots.plot_forest(
        three_fit, pseudo_posterior, bootstrap=three_boot, path=tmp_path / "forest.png"
    )
    assert isinstance(fig, Figure)
    _nonblank(tmp_path / "forest.png")
    # one marker per source (posterior, bootstrap, EM) for each of 3 + 6 + 6 parameters
    assert sum(len(c.get_offsets()) for a in fig.axes for c in a.collections) >= 45
    fig = plots.plot_posterior(
        three_fit, pseudo_posterior, bootstrap=three_boot, path=tmp_path / "posterior.png"
    )
    _nonblank(tmp_path / "posterior.png")
    for _, fit, boot in (one_d, four_d):
        assert isinstance(plots.plot_forest(fit, boot), Figure)
        assert isinstance(plots.plot_posterior(fit, boot, var_names=["sds"]), Figure)


def test_nothing_is_shown_or_saved_unless_asked(three, three_fit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    plots.plot_mixture(three_fit, three)
    assert not shown and not list(tmp_path.iterdir())
    plots.plot_mixture(three_fit, three, show=True)
    assert shown == [1]


def test_errors(three, three_fit, pseudo_posterior):
    with pytest.raises(ValueError, match="var_names must be"):
        plots.plot_forest(three_fit, pseudo_posterior, var_names=["covariances"])
    with pytest.raises(ValueError, match="'z' is not one of"):
        plots.plot_mixture(three_fit, three, features=("x0", "z"))
    with pytest.raises(ValueError, match="has 1 features"):
        plots.plot_mixture(three_fit, three[:, 0])


def test_dendrogram_and_partitions():
    import numpy as np

    X = bg.datasets.load_faithful()
    tree = bg.hierarchical(X)
    fig = bg.plots.plot_dendrogram(tree, k=3, max_leaves=30)
    ax = fig.axes[0]
    assert "cut at 3" in ax.get_title()
    assert len(ax.get_xticklabels()) == 30  # truncated to the last 30 merges' clusters
    fit = bg.fit_em(X, 3, covariance_type="EEE", init=tree)
    fig = bg.plots.plot_partitions(X, {"tree": tree.cut(3), "EM": fit.predict()})
    titles = [a.get_title() for a in fig.axes]
    assert titles[0].endswith("1.000)")
    ari = bg.adjusted_rand_index(tree.cut(3), fit.predict())
    assert f"{ari:.3f}" in titles[1]
    with pytest.raises(ValueError, match="one label per row"):
        bg.plots.plot_partitions(X, {"tree": np.zeros(3)})
