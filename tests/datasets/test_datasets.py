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
