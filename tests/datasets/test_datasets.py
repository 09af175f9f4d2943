import numpy as np

import bayesgmm as bg
from tests.conftest import REFERENCE


def test_faithful():
    df = bg.datasets.load_faithful()
    assert list(df.columns) == ["eruptions", "waiting"] and df.shape == (272, 2)
    assert df["waiting"].nunique() == 51  # heavily tied (reference README)


def test_galaxies_scaled():
    df = bg.datasets.load_galaxies()
    assert df.shape == (82, 1)
    np.testing.assert_allclose(
        bg.datasets.load_galaxies(scale=1.0)["velocity"], df["velocity"] * 1000
    )


def test_bundled_copies_equal_reference():
    import pandas as pd

    if not (REFERENCE / "faithful.csv").exists():
        return
    pd.testing.assert_frame_equal(
        bg.datasets.load_faithful(), pd.read_csv(REFERENCE / "faithful.csv").astype(float)
    )


def test_iris():
    df = bg.datasets.load_iris()
    assert df.shape == (150, 5)
    assert df["species"].value_counts().to_dict() == {
        "setosa": 50,
        "versicolor": 50,
        "virginica": 50,
    }
    # Reference: R's colMeans(iris[, 1:4]) = 5.843333 3.057333 3.758000 1.199333
    np.testing.assert_allclose(
        df.drop(columns="species").mean().to_numpy(),
        [5.843333, 3.057333, 3.758, 1.199333],
        atol=1e-6,
    )
