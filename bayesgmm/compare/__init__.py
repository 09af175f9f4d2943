"""EM against the posterior, and the choice of K by every criterion (xarray and ArviZ).

Nothing here imports pymc: :func:`compare_k` loads the PyMC layer only when it has to draw a
posterior itself.
"""

from bayesgmm.compare.bootstrap import bootstrap_em
from bayesgmm.compare.datatree import em_reference, to_datatree
from bayesgmm.compare.estimates import compare_estimates
from bayesgmm.compare.select import CRITERIA, KComparison, compare_k, loo_choice

__all__ = [
    "CRITERIA",
    "KComparison",
    "bootstrap_em",
    "compare_estimates",
    "compare_k",
    "em_reference",
    "loo_choice",
    "to_datatree",
]
