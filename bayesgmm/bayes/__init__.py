"""The core's mixture as a PyMC model (the only package that imports pymc, on first use)."""

from bayesgmm.bayes.model import SUPPORTED_STRUCTURES, Priors, model_values, to_pymc

__all__ = ["SUPPORTED_STRUCTURES", "Priors", "model_values", "to_pymc"]
