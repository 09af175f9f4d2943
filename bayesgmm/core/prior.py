"""The conjugate prior of MAP-EM (Fraley & Raftery 2007; mclust's ``priorControl``).

For each component, μ_k | Σ_k ~ N(μ_p, Σ_k / κ), and

* full structures (VVV, EEE): Σ ~ inverse-Wishart(ν, Λ),
  density ∝ |Σ|^{−(ν+d+1)/2} exp(−tr(ΛΣ⁻¹)/2);
* diagonal structures (VVI, EEI): each variance σ²_j ~ inverse-gamma(ν/2, ς²_j/2) with ς²_j = Λ_jj;
* spherical structures (VII, EII, E, V): σ² ~ inverse-gamma(ν/2, ς²/2) with ς² = tr Λ / d.

The posterior mode has a closed form: the means shrink towards μ_p,

    μ_k = (Σ_n γ_nk x_n + κ μ_p) / (n_k + κ),

and the scatter gains Λ and the term κ n_k / (κ + n_k) (x̄_k − μ_p)(x̄_k − μ_p)ᵀ; the divisor of each
structure's M-step is given in :mod:`bayesgmm.core.structures` (derived by maximising the
complete-data log-posterior; they agree with Fraley & Raftery 2007, table 2).

Defaults are mclust's ``defaultPrior``: κ = 0.01, μ_p = the data mean, ν = d + 2 and
Λ = var(X) / G^{2/d}. One difference: mclust uses one scalar ς² for the diagonal structures too;
we use the per-feature variances, so that features on very different scales are not shrunk
towards a common variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesgmm.core._moments import mean_cov
from bayesgmm.core.structures import PriorTerms

__all__ = ["ConjugatePrior", "ResolvedPrior"]


@dataclass(frozen=True)
class ConjugatePrior:
    """A conjugate normal / inverse-Wishart prior for MAP-EM; unset fields take mclust's defaults.

    Parameters
    ----------
    shrinkage : float, default 0.01
        κ, the prior's weight on μ_p in observation units.
    mean : array_like of shape (D,), optional
        μ_p; default the (weighted) data mean.
    dof : float, optional
        ν; default D + 2. Must exceed D − 1.
    scale : array_like of shape (D, D), optional
        Λ; default the data covariance divided by G^{2/D}.
    """

    shrinkage: float = 0.01
    mean: Any = None
    dof: float | None = None
    scale: Any = None

    def resolve(
        self, X: np.ndarray, n_components: int, sample_weight: np.ndarray | None = None
    ) -> ResolvedPrior:
        """Fill the defaults from the data ``X`` (N, D) and the number of components."""
        return self.resolve_many(X, [n_components], sample_weight)[n_components]

    def resolve_many(
        self, X: np.ndarray, ks: Any, sample_weight: np.ndarray | None = None
    ) -> dict[int, ResolvedPrior]:
        """:meth:`resolve` for each number of components in ``ks`` (the data's moments computed
        once: only the default scale depends on K)."""
        n, d = X.shape
        if not (np.isfinite(self.shrinkage) and self.shrinkage >= 0):
            raise ValueError(f"prior shrinkage must be ≥ 0; got {self.shrinkage!r}.")
        mean_x, cov = mean_cov(X, sample_weight)
        n_eff = n if sample_weight is None else float(sample_weight.sum())
        if self.mean is None:
            mean = mean_x
        else:
            mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
            if mean.shape != (d,):
                raise ValueError(f"prior mean must have shape ({d},); got {mean.shape}.")
        dof = float(d + 2) if self.dof is None else float(self.dof)
        if not dof > d - 1:
            raise ValueError(f"prior dof must exceed n_features − 1 = {d - 1}; got {dof}.")
        if self.scale is None:
            cov = cov * n_eff / max(n_eff - 1.0, 1.0)  # var(X) as R's, divisor n − 1
            if n < 2 or not (np.diag(cov) > 0).all():
                raise ValueError(
                    f"the default prior scale (the covariance of X, {n} rows × {d} features) has "
                    "a zero variance: a feature is constant. Drop it or pass "
                    "ConjugatePrior(scale=...)."
                )
            scales = {int(k): cov / k ** (2.0 / d) for k in ks}
        else:
            scale = np.asarray(self.scale, dtype=np.float64)
            if scale.ndim == 0:
                scale = np.eye(d) * float(scale)
            if scale.shape != (d, d):
                raise ValueError(f"prior scale must have shape ({d}, {d}); got {scale.shape}.")
            try:
                np.linalg.cholesky(scale)
            except np.linalg.LinAlgError:
                raise ValueError("prior scale must be symmetric positive definite.") from None
            scales = dict.fromkeys((int(k) for k in ks), scale)
        return {
            k: ResolvedPrior(float(self.shrinkage), mean, PriorTerms(dof=dof, scale=scale))
            for k, scale in scales.items()
        }


@dataclass(frozen=True)
class ResolvedPrior:
    """A prior with every value filled in: κ, μ_p (D,) and the covariance terms."""

    shrinkage: float
    mean: np.ndarray
    terms: PriorTerms
