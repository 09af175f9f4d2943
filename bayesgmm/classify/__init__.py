"""Discriminant analysis from the same p(x, z): z observed is a class (mclust's EDDA and
MclustDA), with cross-validation."""

from bayesgmm.classify.da import (
    ClassifierResult,
    CrossValidation,
    cross_validate_classifier,
    fit_classifier,
)

__all__ = ["ClassifierResult", "CrossValidation", "cross_validate_classifier", "fit_classifier"]
