"""bayesgmm: Gaussian mixture models, fitted by EM, sampled with PyMC, compared with ArviZ.

The EM core is imported eagerly (numpy/scipy only); heavier layers are loaded on first use.
"""

from importlib import import_module
from typing import Any

from bayesgmm.core import (
    ConjugatePrior,
    DegenerateFitWarning,
    EMResult,
    GaussianMixture,
    HierarchicalResult,
    SelectionResult,
    adjusted_rand_index,
    fit_em,
    hierarchical,
    select_em,
)

__version__ = "0.1.0"

__all__ = [
    "ClassifierResult",
    "ConjugatePrior",
    "DegenerateFitWarning",
    "EMResult",
    "GaussianMixture",
    "HierarchicalResult",
    "KComparison",
    "PosteriorWarning",
    "Priors",
    "SelectionResult",
    "adjusted_rand_index",
    "bootstrap_em",
    "compare_estimates",
    "compare_k",
    "cross_validate_classifier",
    "datasets",
    "fit_bayes",
    "fit_classifier",
    "fit_em",
    "hierarchical",
    "plots",
    "select_em",
    "to_datatree",
    "to_pymc",
]

_LAZY_MODULES = {"datasets": "bayesgmm.datasets", "plots": "bayesgmm.compare.plots"}
#: Names from the PyMC layer, imported (with pymc) only when first asked for.
_LAZY_NAMES = {
    "to_pymc": "bayesgmm.bayes",
    "fit_bayes": "bayesgmm.bayes",
    "Priors": "bayesgmm.bayes",
    "PosteriorWarning": "bayesgmm.bayes",
    "to_datatree": "bayesgmm.compare",
    "bootstrap_em": "bayesgmm.compare",
    "compare_estimates": "bayesgmm.compare",
    "compare_k": "bayesgmm.compare",
    "KComparison": "bayesgmm.compare",
    "fit_classifier": "bayesgmm.classify",
    "cross_validate_classifier": "bayesgmm.classify",
    "ClassifierResult": "bayesgmm.classify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return import_module(_LAZY_MODULES[name])
    if name in _LAZY_NAMES:
        return getattr(import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'bayesgmm' has no attribute {name!r}")
