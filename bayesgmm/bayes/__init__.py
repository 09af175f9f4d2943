"""The core's mixture as a PyMC model (the only package that imports pymc, on first use)."""

from bayesgmm.bayes.diagnostics import (
    Diagnosis,
    diagnose,
    find_modes,
    prior_sensitivity,
    reweight,
    select_mode,
)
from bayesgmm.bayes.fit import (
    METHODS,
    PosteriorWarning,
    fit_bayes,
    recover_z,
    z_probabilities,
)
from bayesgmm.bayes.model import (
    SUPPORTED_STRUCTURES,
    Priors,
    marginalize,
    model_values,
    to_pymc,
)

__all__ = [
    "METHODS",
    "SUPPORTED_STRUCTURES",
    "Diagnosis",
    "PosteriorWarning",
    "Priors",
    "diagnose",
    "find_modes",
    "fit_bayes",
    "marginalize",
    "model_values",
    "prior_sensitivity",
    "recover_z",
    "reweight",
    "select_mode",
    "to_pymc",
    "z_probabilities",
]
