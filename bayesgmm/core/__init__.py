"""The generative mixture and its maximum-likelihood EM (numpy and scipy only).

Importing this package loads no pymc, pytensor or arviz.
"""

from bayesgmm.core.criteria import adjusted_rand_index, aic, bic, icl
from bayesgmm.core.em import e_step, m_step, step
from bayesgmm.core.fit import fit_em
from bayesgmm.core.hierarchy import HierarchicalResult, hierarchical
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.result import DegenerateFitWarning, EMResult
from bayesgmm.core.select import SelectionResult, select_em
from bayesgmm.core.structures import STRUCTURES, CovarianceStructure, get_structure

__all__ = [
    "STRUCTURES",
    "ConjugatePrior",
    "CovarianceStructure",
    "DegenerateFitWarning",
    "EMResult",
    "GaussianMixture",
    "HierarchicalResult",
    "SelectionResult",
    "adjusted_rand_index",
    "aic",
    "bic",
    "e_step",
    "fit_em",
    "get_structure",
    "hierarchical",
    "icl",
    "m_step",
    "select_em",
    "step",
]
