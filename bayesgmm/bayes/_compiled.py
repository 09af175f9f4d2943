"""Compile once: the PyMC model of each (parametrisation, structure, D, identify, K), built on
first use and kept for the process, with what each sampler compiled from it.

The model's graph depends on those five things only: the observed data and the data-scaled
prior constants are ``pm.Data`` (shared variables), so a new data set, or new prior settings,
go in through ``pm.set_data`` (and nutpie's ``with_data``) without rebuilding or recompiling
anything. ``fit_bayes`` is the only user; :func:`clear` empties the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.bayes.model import missing_patterns, to_pymc
from bayesgmm.bayes.structures import Parametrisation

#: Models kept at once (each holds its compiled functions; the oldest goes first).
CACHE_SIZE = 16

#: Held while a model's data are set and it is sampled: a cached model's data are shared state.
LOCK = threading.RLock()


@dataclass
class Entry:
    """One cached model and what the samplers compiled from it (keyed by the sampler and its
    compile options)."""

    model: Any
    compiled: dict[Any, Any] = field(default_factory=dict)


_ENTRIES: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()


def key(
    param: Parametrisation, k: int, missing: bool = False, labelled: bool = False
) -> tuple[Any, ...]:
    """What changes the model's graph: the parametrisation (default or conjugate priors), the
    structure, the number of features, the identification, K, and whether the data have
    missing values (the likelihood of each row's observed values is another graph), and
    whether some components are observed (``labels``)."""
    return (type(param).__name__, param.name, param.d, param.identify, k, missing, labelled)


def model_for(
    param: Parametrisation,
    consts: dict[str, np.ndarray],
    X: np.ndarray,
    k: int,
    covariance_type: str,
    priors: Any,
    labels: np.ndarray | None = None,
) -> Entry:
    """The cached marginal model (``to_pymc(..., explicit_z=False)``) for ``param`` and ``k``,
    its data and prior constants set to ``X`` and ``consts``."""
    import pymc as pm

    patterns = missing_patterns(X)
    tag = key(param, k, patterns is not None, labels is not None)
    entry = _ENTRIES.pop(tag, None)
    if entry is None:
        model = to_pymc(
            X, k, covariance_type=covariance_type, priors=priors, identify=param.identify,
            labels=labels,
        )  # fmt: skip
        entry = Entry(model)
    else:
        model = entry.model
        updates = {"x_data": X, **{f"prior_{name}": np.asarray(v) for name, v in consts.items()}}
        if patterns is not None:
            updates.update(
                x_data=np.where(np.isnan(X), 0.0, X),
                x_patterns=patterns[0],
                x_pattern_index=patterns[1],
            )
        if labels is not None:
            updates["z_known"] = labels
        pm.set_data(updates, model=model, coords={"obs": np.arange(X.shape[0])})
        model.bayesgmm_constants = consts
        model.bayesgmm_spec = {**model.bayesgmm_spec, "X": X, "priors": priors}
    _ENTRIES[tag] = entry
    while len(_ENTRIES) > CACHE_SIZE:
        _ENTRIES.popitem(last=False)
    return entry


def release(entry: Entry) -> None:
    """Drop the data from a cached model after its fit (a zero-row array in their place), so
    that the cache keeps compiled code, not up to CACHE_SIZE copies of users' data sets.
    (nutpie's compiled model keeps a copy of its own: the cache stores it without data.)"""
    import pymc as pm

    model = entry.model
    empty = np.zeros((0, model.bayesgmm_param.d))
    updates: dict[str, np.ndarray] = {"x_data": empty}
    if "x_pattern_index" in model.named_vars:
        updates.update(x_patterns=empty, x_pattern_index=np.zeros(0, dtype=np.int64))
    if "z_known" in model.named_vars:
        updates["z_known"] = np.zeros(0, dtype=np.int64)
    pm.set_data(updates, model=model, coords={"obs": np.arange(0)})
    model.bayesgmm_spec = {**model.bayesgmm_spec, "X": empty}


def data_updates(entry: Entry) -> dict[str, np.ndarray]:
    """The model's data and prior constants as they are now (for nutpie's ``with_data``)."""
    return {var.name: np.asarray(var.get_value()) for var in entry.model.data_vars if var.name}


def clear() -> None:
    """Forget every cached model and compiled function."""
    _ENTRIES.clear()
