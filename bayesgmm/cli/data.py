"""Reading the command line's DATA argument: CSV, Parquet or netCDF, into a numeric DataFrame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CLIError", "is_store", "load_lazy", "load_table", "parse_k"]


class CLIError(Exception):
    """A user error the command reports in one line, with exit code 2."""


def _read(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".nc", ".netcdf", ".h5"):
            import xarray as xr

            with xr.open_dataset(path, engine="h5netcdf") as ds:
                return _dataset_to_frame(ds.load())
    except pd.errors.EmptyDataError:
        raise CLIError(
            f"DATA {str(path)!r} is empty; pass a file with a header and rows."
        ) from None
    except (ValueError, OSError, ImportError) as err:
        raise CLIError(f"DATA {str(path)!r} could not be read as {suffix[1:]}: {err}") from None
    raise CLIError(
        f"DATA {str(path)!r} has the extension {suffix or '(none)'!r}; pass a .csv, .tsv, "
        ".parquet or .nc file."
    )


def _dataset_to_frame(ds: Any) -> Any:
    """A netCDF Dataset as a table: its one 2-D variable (rows, columns), or its 1-D variables
    along one shared dimension as columns."""
    import pandas as pd

    two_d = [v for v in ds.data_vars if ds[v].ndim == 2]
    if len(two_d) == 1:
        var = ds[two_d[0]]
        cols = var.dims[1]
        names = [str(c) for c in var.coords[cols].values] if cols in var.coords else None
        return pd.DataFrame(var.values, columns=names)
    one_d = [v for v in ds.data_vars if ds[v].ndim == 1]
    dims = {ds[v].dims for v in one_d}
    if one_d and len(dims) == 1:
        return pd.DataFrame({str(v): ds[v].values for v in one_d})
    raise CLIError(
        "the netCDF file must hold one 2-D variable (rows × features) or 1-D variables along one "
        f"dimension; it has {sorted(map(str, ds.data_vars))}."
    )


def load_table(
    path: str, columns: str | None = None, missing: str = "refuse", exclude: str | None = None
) -> tuple[Any, list[str]]:
    """The numeric data of ``path`` as a DataFrame, and notices for the user (``exclude``: a
    column that is not a feature, such as the classes).

    With ``columns`` ("a,b,c"), exactly those columns, each of which must be numeric; without,
    every numeric column, the others dropped with a notice. Rows with missing values are kept
    (``missing="keep"``: NaN marks them, for EM; rows with no value at all are dropped),
    dropped (``"drop"``) or refused with the counts (``"refuse"``), each with a notice.
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    p = Path(path)
    if not p.exists():
        raise CLIError(
            f"DATA {path!r} does not exist; pass the path of a CSV, Parquet or netCDF file."
        )
    if p.is_dir():
        raise CLIError(
            f"DATA {path!r} is a directory; pass a file (only `fit` reads a zarr store or a "
            "Parquet directory, out of core)."
        )
    frame = _read(p)
    if exclude is not None:  # a label column, not a feature
        frame = frame.drop(columns=[exclude])
    notices: list[str] = []
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise CLIError(f"DATA {path!r} has no rows; pass a file with data.")
    numeric = [
        c for c in frame.columns if is_numeric_dtype(frame[c]) and not is_bool_dtype(frame[c])
    ]
    frame = frame[_feature_columns(path, list(frame.columns), numeric, columns, notices)]
    frame.columns = [str(c) for c in frame.columns]
    holes = frame.isna()
    empty = holes.all(axis=1)
    if missing == "keep" and empty.any():
        frame, holes = frame.loc[~empty], holes.loc[~empty]
        notices.append(f"{int(empty.sum())} rows with no value at all dropped")
        if frame.shape[0] == 0:
            raise CLIError(f"DATA {path!r} has no observed value.")
    rows = int(holes.any(axis=1).sum())
    if rows:
        per_column = ", ".join(f"{c} {int(v)}" for c, v in holes.sum().items() if v)
        where = f"{int(holes.to_numpy().sum())} values missing in {rows} of {frame.shape[0]} rows"
        if missing == "drop":
            frame = frame.loc[~holes.any(axis=1)]
            notices.append(f"{where} ({per_column}); --drop-missing dropped those rows")
            if frame.shape[0] == 0:
                raise CLIError(f"DATA {path!r}: --drop-missing left no rows.")
        elif missing == "keep":
            notices.append(
                f"{where} ({per_column}); modelled as missing at random: each row's likelihood "
                "is that of its observed values (--drop-missing drops those rows instead)"
            )
        else:
            raise CLIError(
                f"DATA {path!r} has {where} ({per_column}); this command needs complete rows. "
                "Pass --drop-missing to drop those rows, or impute them first (fit, sample, "
                "compare and report use rows with missing values)."
            )
    return frame, notices


def parse_k(text: str) -> list[int]:
    """ "3" → [3]; "1:5" → [1, 2, 3, 4, 5] (inclusive, as mclust's G = 1:5); "2,4,6" → [2, 4, 6]."""
    try:
        if ":" in text:
            lo, hi = (int(t) for t in text.split(":"))
            ks = list(range(lo, hi + 1))
        else:
            ks = [int(t) for t in text.split(",")]
    except ValueError:
        raise CLIError(
            f"--k must be an integer, a range such as 1:9, or a list such as 2,3,5; got {text!r}."
        ) from None
    if not ks or min(ks) < 1:
        raise CLIError(f"--k must name positive numbers of components; got {text!r}.")
    return ks


def load_labels(path: str, column: str) -> Any:
    """The class column ``column`` of ``path`` (a Series), every row's class given."""
    p = Path(path)
    if not p.exists():
        raise CLIError(
            f"DATA {path!r} does not exist; pass the path of a CSV, Parquet or netCDF file."
        )
    frame = _read(p)
    if column not in frame.columns:
        have = [str(c) for c in frame.columns]
        raise CLIError(f"--label {column!r} is not a column of DATA; its columns are {have}.")
    labels = frame[column]
    if labels.isna().any():
        raise CLIError(
            f"--label {column!r} is missing in {int(labels.isna().sum())} rows; every row needs "
            "its class (drop the others first)."
        )
    return labels


def _feature_columns(
    path: str, have: list[Any], numeric: list[Any], columns: str | None, notices: list[str]
) -> list[Any]:
    """The feature columns: exactly those of ``columns`` ("a,b,c"), each of which must exist
    and be numeric; without it every numeric column, the others dropped with a notice."""
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in have]
        if unknown:
            raise CLIError(
                f"--columns: {unknown} not in DATA; its columns are {[str(c) for c in have]}."
            )
        text = [c for c in wanted if c not in numeric]
        if text:
            raise CLIError(
                f"--columns: {text} are not numeric; a Gaussian mixture needs numbers. Select "
                "numeric columns."
            )
        return wanted
    dropped = [str(c) for c in have if c not in numeric]
    if dropped:
        notices.append(f"non-numeric columns dropped: {', '.join(dropped)} (select with --columns)")
    if not numeric:
        raise CLIError(f"DATA {path!r} has no numeric columns; a Gaussian mixture needs numbers.")
    return numeric


def is_store(path: str) -> bool:
    """Whether DATA is a directory: a zarr store or a Parquet dataset, read out of core."""
    return Path(path).is_dir()


def load_lazy(path: str, columns: str | None = None) -> tuple[Any, list[str]]:
    """A zarr store (one 2-D array, rows × features; its ``columns`` attribute, if any, names
    the features) or a Parquet directory (its numeric columns) as a dask collection that is
    never gathered, and notices for the user."""
    p = Path(path)
    notices: list[str] = []
    if (p / "zarr.json").exists() or (p / ".zarray").exists():
        import dask.array as da
        import zarr

        try:
            store = zarr.open_array(str(p), mode="r")
        except Exception as err:  # zarr's errors vary by version
            raise CLIError(f"DATA {path!r} could not be read as a zarr array: {err}") from None
        if store.ndim != 2:
            raise CLIError(
                f"DATA {path!r} holds a {store.ndim}-d zarr array; pass one of rows × features."
            )
        given = store.attrs.get("columns")
        named = [str(c) for c in given] if isinstance(given, list) else []
        names = named or [f"x{i}" for i in range(store.shape[1])]
        if len(names) != store.shape[1]:
            raise CLIError(
                f"DATA {path!r}: its 'columns' attribute names {len(names)} columns but the array "
                f"has {store.shape[1]}."
            )

        X = da.from_zarr(store)  # the array opened above: zarr's local store, not fsspec's
        if columns:
            wanted = [c.strip() for c in columns.split(",") if c.strip()]
            unknown = [c for c in wanted if c not in names]
            if unknown:
                raise CLIError(f"--columns: {unknown} not in DATA; its columns are {names}.")
            X = X[:, [names.index(c) for c in wanted]]
            names = wanted
        import xarray as xr

        lazy = xr.DataArray(X, dims=("obs", "feature"), coords={"feature": names})
        notices.append(
            f"{X.shape[0]:,} rows × {X.shape[1]} in a zarr store, {X.numblocks[0]} chunks: read "
            "out of core (dask)"
        )
        return lazy, notices
    parquet = sorted(p.glob("*.parquet")) + sorted(p.glob("*.pq"))
    if parquet:
        import dask.dataframe as dd
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        frame = dd.read_parquet(str(p))
        numeric = [
            c for c, t in frame.dtypes.items() if is_numeric_dtype(t) and not is_bool_dtype(t)
        ]
        numeric = _feature_columns(path, list(frame.columns), numeric, columns, notices)
        notices.append(
            f"a Parquet dataset of {len(parquet)} files, {frame.npartitions} partitions: read out "
            "of core (dask)"
        )
        return frame[numeric], notices
    raise CLIError(
        f"DATA {path!r} is a directory but neither a zarr store (zarr.json or .zarray) nor a "
        "Parquet dataset (*.parquet files); pass a file, a zarr store or a Parquet directory."
    )
