"""The core's mixture as a PyMC model (the only package that imports pymc, on first use)."""

from bayesgmm.bayes.fit import METHODS, fit_bayes, z_probabilities
from bayesgmm.bayes.model import SUPPORTED_STRUCTURES, Priors, model_values, to_pymc

__all__ = [
    "METHODS",
    "SUPPORTED_STRUCTURES",
    "Priors",
    "fit_bayes",
    "model_values",
    "to_pymc",
    "z_probabilities",
]
