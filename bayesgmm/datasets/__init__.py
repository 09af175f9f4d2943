"""Bundled public data sets, as pandas DataFrames.

* ``load_faithful()``: Old Faithful geyser, 272 eruptions × (``eruptions``, ``waiting``) in
  minutes (R ``datasets::faithful``; Azzalini & Bowman 1990).
* ``load_galaxies()``: velocities of 82 galaxies of the Corona Borealis region (R
  ``MASS::galaxies``; Roeder 1990), in 1000 km/s by default as is customary.
* ``load_iris()``: Fisher's (1936) iris measurements, 150 flowers × four lengths in cm and the
  ``species`` (R ``datasets::iris``; Anderson 1935).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load_faithful", "load_galaxies", "load_iris"]


def _read(name: str) -> pd.DataFrame:
    with resources.files(__package__).joinpath(name).open("r") as fh:
        return pd.read_csv(fh)


def load_faithful() -> pd.DataFrame:
    """Old Faithful: 272 rows, columns ``eruptions`` and ``waiting`` (minutes)."""
    return _read("faithful.csv").astype("float64")


def load_galaxies(scale: float = 1000.0) -> pd.DataFrame:
    """Galaxies: 82 rows, column ``velocity`` in km/s divided by ``scale`` (default 1000)."""
    df = _read("galaxies.csv").astype("float64")
    return pd.DataFrame({"velocity": df["galaxies"] / scale})


def load_iris() -> pd.DataFrame:
    """Iris: 150 rows, columns ``sepal_length``, ``sepal_width``, ``petal_length``,
    ``petal_width`` (cm) and ``species`` (setosa, versicolor, virginica; 50 each)."""
    df = _read("iris.csv")
    numeric = [c for c in df.columns if c != "species"]
    df[numeric] = df[numeric].astype("float64")
    return df
