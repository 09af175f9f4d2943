"""Validation at the public boundary.

Every check raises a ``ValueError`` or ``TypeError`` whose message names the argument, the value
received and the fix. Nothing here uses ``assert``: user input is checked the same way under
``python -O``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_data",
    "as_rng",
    "check_n_components",
    "check_sample_weight",
]


def _describe(value: Any) -> str:
    """A short description of a received value for an error message."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_data(
    X: Any, *, name: str = "X", allow_missing: bool = False
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Return ``X`` as a C-contiguous float64 array of shape (n_obs, n_features).

    Accepts a numpy array or anything array-like, a pandas DataFrame (its column names become
    feature names) or Series, and a 1-D array (one feature). With ``allow_missing``, NaN (and
    pandas' missing values) mark missing values; a row without any observed value is still an
    error, as is inf.

    Returns
    -------
    X : ndarray of shape (n_obs, n_features)
    feature_names : tuple of str or None
        The DataFrame's column names, or None for plain arrays.
    """
    feature_names: tuple[str, ...] | None = None
    if type(X).__module__.startswith(("dask.", "dask_expr")) or (
        type(X).__module__.startswith("xarray.")
        and type(getattr(X, "data", None)).__module__.startswith("dask.")
    ):
        # Never gather a dask collection behind the user's back (docs/scale.md).
        raise ValueError(
            f"{name} is a dask collection; fit_em and the GaussianMixture methods take it as it "
            "is, this function does not yet. Pass a numpy array or DataFrame (X.compute(), for "
            "data that fit in memory)."
        )
    columns = getattr(X, "columns", None)
    if columns is not None and hasattr(X, "dtypes"):
        # A DataFrame: name the offending columns rather than fail inside numpy.
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        bad = [
            str(col)
            for col, dtype in zip(columns, X.dtypes, strict=True)
            if not is_numeric_dtype(dtype) or is_bool_dtype(dtype)
        ]
        if bad:
            raise TypeError(
                f"{name} has non-numeric columns {bad}; a Gaussian mixture needs numbers. "
                f"Select the numeric columns first, e.g. {name}.select_dtypes('number')."
            )
        feature_names = tuple(str(c) for c in columns)
        X = X.to_numpy(dtype=np.float64, na_value=np.nan)
    elif hasattr(X, "to_numpy") and hasattr(X, "name"):  # a Series
        if not _is_numeric_dtype(X.dtype):
            raise TypeError(
                f"{name} is a Series of dtype {X.dtype}; a Gaussian mixture needs numbers. "
                "Convert it with pandas.to_numeric first."
            )
        feature_names = (str(X.name),) if X.name is not None else None
        X = X.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        arr = np.asarray(X)
    except Exception as err:  # ragged lists and the like
        raise TypeError(
            f"{name} could not be read as a numeric array ({err}); pass an (n_obs, n_features) "
            "array or a DataFrame of numeric columns."
        ) from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(
            f"{name} has dtype {arr.dtype}, not numbers; pass an (n_obs, n_features) array of "
            "floats or a DataFrame of numeric columns."
        )
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} is complex ({_describe(arr)}); pass real numbers.")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(
            f"{name} must be 1-D (one feature) or 2-D (n_obs, n_features); got {arr.ndim}-D "
            f"input of shape {arr.shape}. Reshape it, e.g. {name}.reshape(len({name}), -1)."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {arr.shape}); it needs at least one observation and one "
            "feature."
        )
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        nan = np.isnan(arr)
        if allow_missing:
            _check_missing(arr, nan, finite, name)
            return arr, feature_names
        rows = np.flatnonzero(~finite.all(axis=1))
        if nan.any() and np.isfinite(arr[~nan]).all():
            raise ValueError(
                f"{name} contains NaN values in {rows.size} row(s) (first: row {rows[0]}); this "
                "needs complete rows. fit_em, select_em, bootstrap_em and a mixture's methods "
                "take NaN as a missing value: impute first (e.g. bg.fit_em(X, K).impute(X)) or "
                "drop the rows, e.g. X[np.isfinite(X).all(axis=1)]."
            )
        raise ValueError(
            f"{name} contains inf values in {rows.size} row(s) (first: row {rows[0]}); "
            "drop them first, e.g. X[np.isfinite(X).all(axis=1)]."
        )
    return arr, feature_names


def _check_missing(
    arr: np.ndarray,
    nan: np.ndarray,
    finite: np.ndarray,
    name: str,
) -> None:
    """NaN is a missing value; inf and a row of nothing but NaN are errors."""
    inf = ~finite & ~nan
    if inf.any():
        row = int(np.flatnonzero(inf.any(axis=1))[0])
        raise ValueError(
            f"{name} contains inf in {int(inf.any(axis=1).sum())} row(s) (first: row {row}); "
            "NaN marks a missing value, but inf is not a number a Gaussian can explain. Replace "
            "it by NaN (missing) or drop the row."
        )
    empty_rows = np.flatnonzero(nan.all(axis=1))
    if empty_rows.size:
        raise ValueError(
            f"{name} row {int(empty_rows[0])} has every value missing ({empty_rows.size} such "
            f"row(s)); it says nothing about the mixture. Drop it, e.g. "
            f"{name}[~np.isnan({name}).all(axis=1)]."
        )


def _is_numeric_dtype(dtype: Any) -> bool:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        from pandas.api.types import is_numeric_dtype

        return bool(is_numeric_dtype(dtype))
    return bool(np.issubdtype(dt, np.number)) and not np.issubdtype(dt, np.complexfloating)


def check_n_components(n_components: Any, X: np.ndarray, *, name: str = "n_components") -> int:
    """Check that ``1 <= n_components <= number of distinct rows of X``."""
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(
            f"{name} must be a positive integer; got {_describe(n_components)}. "
            "Pass e.g. n_components=3."
        )
    k = int(n_components)
    if k < 1:
        raise ValueError(f"{name} must be at least 1; got {k}.")
    if k > X.shape[0]:
        raise ValueError(
            f"{name}={k} exceeds the number of observations ({X.shape[0]}); "
            "use fewer components or more data."
        )
    n_distinct = count_distinct_rows(X, at_least=k) if k > 1 else 1
    if k > n_distinct:
        raise ValueError(
            f"{name}={k} exceeds the number of distinct rows of X ({n_distinct}); a mixture "
            "cannot separate identical observations. Use at most "
            f"{n_distinct} components."
        )
    return k


def count_distinct_rows(X: np.ndarray, at_least: int | None = None) -> int:
    """Number of distinct rows of a 2-D array.

    With ``at_least``, a prefix of the rows is tried first and its count returned when it
    reaches ``at_least`` (a lower bound is all a check needs; sorting a million rows costs
    seconds).
    """
    if at_least is not None:
        prefix = 100 * at_least + 1000
        if X.shape[0] > prefix:
            found = int(np.unique(X[:prefix], axis=0).shape[0])
            if found >= at_least:
                return found
    return int(np.unique(X, axis=0).shape[0])


def check_sample_weight(sample_weight: Any, n_obs: int) -> np.ndarray | None:
    """Return ``sample_weight`` as a float64 (n_obs,) array, or None when not given.

    Observation ``n`` counts ``w_n`` times: integer weights give exactly the fit of the data with
    rows repeated.
    """
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"sample_weight could not be read as numbers ({err}); pass an (n_obs,) array "
            "of non-negative weights."
        ) from err
    if w.ndim != 1 or w.shape[0] != n_obs:
        raise ValueError(
            f"sample_weight must have shape ({n_obs},), one weight per row of X; got shape "
            f"{w.shape}."
        )
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or inf; pass finite non-negative weights.")
    if (w < 0).any():
        first = int(np.flatnonzero(w < 0)[0])
        raise ValueError(
            f"sample_weight must be non-negative; got {w[first]} at position {first}. "
            "Drop the observation (or give it weight 0) instead."
        )
    if not (w > 0).any():
        raise ValueError(
            "sample_weight is zero everywhere, so there is nothing to fit; give at least one "
            "observation a positive weight."
        )
    return w


def integer_valued(arr: np.ndarray) -> np.ndarray | None:
    """``arr`` as int64 when its values are integers (of an integer or a float dtype), else
    None."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    return None


def as_rng(rng: Any) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from an int seed, a Generator or None."""
    if rng is None or (isinstance(rng, int | np.integer) and not isinstance(rng, bool)):
        return np.random.default_rng(None if rng is None else int(rng))
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(
        f"rng must be an int seed, a numpy.random.Generator or None; got {_describe(rng)}. "
        "Pass e.g. rng=0."
    )
