"""Covariance structures: one class per structure, one registry, one parser.

A structure constrains the component covariances Σ_k = λ_k D_k A_k D_kᵀ (volume λ, shape A with
det A = 1, orientation D), each Equal, Variable or Identity across components, with mclust's
three-letter codes. Each class knows

* its parameter count (exactly mclust's ``nMclustParams``),
* which sufficient statistics its M-step needs (full scatter matrices or their diagonals),
* its M-step: the covariances that maximise the expected complete-data log-likelihood (or the
  log-posterior under the conjugate prior) given the per-component scatter matrices.

The M-step receives, for each component k,

    n_k = Σ_n w_n γ_nk            and        S_k = Σ_n w_n γ_nk (x_n − μ_k)(x_n − μ_k)ᵀ,

(plus, under a prior, the mean-shrinkage term; see :mod:`bayesgmm.core.prior`) and returns an
array of covariances of shape (K, D, D). Only :func:`get_structure` turns a string into a
structure; everything else passes the object around.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

__all__ = [
    "STRUCTURES",
    "CovarianceStructure",
    "PriorTerms",
    "get_structure",
    "structure_names",
]


@dataclass(frozen=True)
class PriorTerms:
    """The covariance part of a resolved conjugate prior, as the M-steps use it.

    Attributes
    ----------
    dof : float
        Degrees of freedom ν of the inverse-Wishart (full structures) or of the inverse-gamma
        priors IG(ν/2, ς²/2) on each variance (diagonal and spherical structures).
    scale : ndarray of shape (D, D)
        Scale matrix Λ of the inverse-Wishart. Diagonal structures use its diagonal as the
        per-feature ς²; spherical ones use tr(Λ)/D.
    """

    dof: float
    scale: np.ndarray


class CovarianceStructure(ABC):
    """One of mclust's covariance structures.

    Subclasses set ``name``, ``aliases``, ``scatter_kind`` and implement
    :meth:`n_covariance_parameters` and :meth:`covariances`.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: "full": the M-step needs the (K, D, D) scatter matrices; "diag": only their diagonals (K, D).
    scatter_kind: ClassVar[Literal["full", "diag"]]
    #: True for the one-dimensional structures E and V, which only accept one feature.
    univariate: ClassVar[bool] = False
    #: True when each component has its own covariance (so one component can collapse on its own).
    per_component: ClassVar[bool]

    @abstractmethod
    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        """Number of free covariance parameters for G components in d dimensions."""

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """All free parameters: G − 1 weights, G·d means and the covariance parameters."""
        g, d = n_components, n_features
        return (g - 1) + g * d + self.n_covariance_parameters(g, d)

    @abstractmethod
    def covariances(
        self, counts: np.ndarray, scatter: np.ndarray, prior: PriorTerms | None
    ) -> np.ndarray:
        """M-step for the covariances.

        Parameters
        ----------
        counts : ndarray of shape (..., K)
            n_k, the (weighted) responsibilities summed over observations. Leading axes, if any,
            index independent mixtures (the starts of a multi-start fit).
        scatter : ndarray of shape (..., K, D, D) or (..., K, D)
            S_k, the weighted scatter about the new means (its diagonal when
            ``scatter_kind == "diag"``), including the prior's mean-shrinkage term when a prior
            is given.
        prior : PriorTerms or None
            None for maximum likelihood; otherwise MAP under the conjugate prior.

        Returns
        -------
        covariances : ndarray of shape (..., K, D, D)
        """

    def constraint_violation(self, covariances: np.ndarray, rtol: float = 1e-8) -> str | None:
        """Why (K, D, D) covariances do not have this structure, or None when they do.

        Checks the axis alignment (..I structures), sphericity (.II) and equality across
        components (structures with no V: EII, EEI, EEE), each relative to the size of the
        diagonal.
        """
        d = covariances.shape[-1]
        diag = np.diagonal(covariances, axis1=-2, axis2=-1)
        scale = np.sqrt(np.outer(diag.max(axis=0), diag.max(axis=0)))
        code = self.name if len(self.name) == 3 else ("EII" if self.name == "E" else "VII")
        if code[2] == "I" and d > 1:
            off = covariances * (1 - np.eye(d))
            if (np.abs(off) > rtol * scale).any():
                return "its covariances must be diagonal (axis-aligned)"
        if code[1:] == "II" and (np.abs(diag - diag[:, :1]) > rtol * diag[:, :1]).any():
            return "its covariances must be spherical (λ I)"
        if (
            all(c in "EI" for c in code)
            and (np.abs(covariances - covariances[:1]) > rtol * scale).any()
        ):
            return "its covariances must be equal across components"
        return None

    def __repr__(self) -> str:
        return f"<covariance structure {self.name}>"


def _diag_to_full(variances: np.ndarray) -> np.ndarray:
    """(..., K, D) variances → (..., K, D, D) diagonal matrices."""
    d = variances.shape[-1]
    out = np.zeros((*variances.shape, d))
    idx = np.arange(d)
    out[..., idx, idx] = variances
    return out


class VVV(CovarianceStructure):
    """Ellipsoidal, varying volume, shape and orientation: Σ_k = λ_k D_k A_k D_kᵀ, all free.

    ML: Σ_k = S_k / n_k. MAP: Σ_k = (Λ + S_k) / (n_k + ν + d + 2).
    scikit-learn's ``covariance_type="full"``.
    """

    name = "VVV"
    aliases: ClassVar[tuple[str, ...]] = ("full",)
    scatter_kind = "full"
    per_component = True

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_components * n_features * (n_features + 1) // 2

    def covariances(self, counts, scatter, prior):
        d = scatter.shape[-1]
        if prior is None:
            return scatter / counts[..., None, None]
        return (prior.scale + scatter) / (counts + prior.dof + d + 2)[..., None, None]


class EEE(CovarianceStructure):
    """Ellipsoidal, equal volume, shape and orientation: Σ_k = λ D A Dᵀ = Σ for all k.

    ML: Σ = Σ_k S_k / n. MAP: Σ = (Λ + Σ_k S_k) / (n + G + ν + d + 1).
    scikit-learn's ``covariance_type="tied"``.
    """

    name = "EEE"
    aliases: ClassVar[tuple[str, ...]] = ("tied",)
    scatter_kind = "full"
    per_component = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_features * (n_features + 1) // 2

    def covariances(self, counts, scatter, prior):
        g, d = scatter.shape[-3], scatter.shape[-1]
        total = scatter.sum(axis=-3)
        n = counts.sum(axis=-1)
        if prior is None:
            shared = total / n[..., None, None]
        else:
            shared = (prior.scale + total) / (n + g + prior.dof + d + 1)[..., None, None]
        return np.broadcast_to(shared[..., None, :, :], scatter.shape).copy()


class VVI(CovarianceStructure):
    """Diagonal, varying volume and shape: Σ_k = λ_k A_k (axis-aligned).

    ML: σ²_kj = S_kjj / n_k. MAP: σ²_kj = (ς²_j + S_kjj) / (n_k + ν + 3).
    scikit-learn's ``covariance_type="diag"``.
    """

    name = "VVI"
    aliases: ClassVar[tuple[str, ...]] = ("diag",)
    scatter_kind = "diag"
    per_component = True

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_components * n_features

    def covariances(self, counts, scatter, prior):
        if prior is None:
            return _diag_to_full(scatter / counts[..., None])
        return _diag_to_full((np.diag(prior.scale) + scatter) / (counts + prior.dof + 3)[..., None])


class EEI(CovarianceStructure):
    """Diagonal, equal volume and shape: Σ_k = λ A for all k (axis-aligned).

    ML: σ²_j = Σ_k S_kjj / n. MAP: σ²_j = (ς²_j + Σ_k S_kjj) / (n + G + ν + 2).
    """

    name = "EEI"
    scatter_kind = "diag"
    per_component = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_features

    def covariances(self, counts, scatter, prior):
        g = scatter.shape[-2]
        total = scatter.sum(axis=-2)
        n = counts.sum(axis=-1)
        if prior is None:
            shared = total / n[..., None]
        else:
            shared = (np.diag(prior.scale) + total) / (n + g + prior.dof + 2)[..., None]
        return _diag_to_full(np.broadcast_to(shared[..., None, :], scatter.shape))


class VII(CovarianceStructure):
    """Spherical, varying volume: Σ_k = λ_k I.

    ML: λ_k = tr S_k / (d n_k). MAP: λ_k = (ς² + tr S_k) / ((n_k + 1) d + ν + 2), ς² = tr Λ / d.
    scikit-learn's ``covariance_type="spherical"``.
    """

    name = "VII"
    aliases: ClassVar[tuple[str, ...]] = ("spherical",)
    scatter_kind = "diag"
    per_component = True

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_components

    def covariances(self, counts, scatter, prior):
        d = scatter.shape[-1]
        traces = scatter.sum(axis=-1)
        if prior is None:
            lam = traces / (d * counts)
        else:
            s2 = np.trace(prior.scale) / d
            lam = (s2 + traces) / ((counts + 1) * d + prior.dof + 2)
        return _diag_to_full(np.broadcast_to(lam[..., None], scatter.shape))


class EII(CovarianceStructure):
    """Spherical, equal volume: Σ_k = λ I for all k.

    ML: λ = Σ_k tr S_k / (d n). MAP: λ = (ς² + Σ_k tr S_k) / ((n + G) d + ν + 2), ς² = tr Λ / d.
    """

    name = "EII"
    scatter_kind = "diag"
    per_component = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return 1

    def covariances(self, counts, scatter, prior):
        g, d = scatter.shape[-2], scatter.shape[-1]
        total = scatter.sum(axis=(-2, -1))
        n = counts.sum(axis=-1)
        if prior is None:
            lam = total / (d * n)
        else:
            s2 = np.trace(prior.scale) / d
            lam = (s2 + total) / ((n + g) * d + prior.dof + 2)
        return _diag_to_full(np.broadcast_to(lam[..., None, None], scatter.shape))


class E(EII):
    """One feature, equal variance: σ²_k = σ² for all k (EII in one dimension)."""

    name = "E"
    aliases: ClassVar[tuple[str, ...]] = ()
    univariate = True


class V(VII):
    """One feature, variable variance: σ²_k free (VII in one dimension)."""

    name = "V"
    aliases: ClassVar[tuple[str, ...]] = ()
    univariate = True


#: Every structure built so far, in mclust's table order.
STRUCTURES: dict[str, CovarianceStructure] = {
    s.name: s for s in (E(), V(), EII(), VII(), EEI(), VVI(), EEE(), VVV())
}
_ALIASES: dict[str, str] = {alias: s.name for s in STRUCTURES.values() for alias in s.aliases}


def structure_names(n_features: int | None = None) -> list[str]:
    """Names of the registered structures usable with ``n_features`` (all when None).

    As mclust, one feature gets the univariate structures E and V; several features get the
    multivariate ones.
    """
    if n_features is None:
        return list(STRUCTURES)
    return [n for n, s in STRUCTURES.items() if s.univariate == (n_features == 1)]


def get_structure(
    covariance_type: str | CovarianceStructure, n_features: int | None = None
) -> CovarianceStructure:
    """Parse a covariance type: an mclust code (``"VVV"``), an alias or a structure object.

    With ``n_features`` given, also check that the structure applies: E and V need exactly one
    feature. The multivariate structures accept one feature too (they then coincide with E or V).
    """
    if isinstance(covariance_type, CovarianceStructure):
        structure = covariance_type
    else:
        if not isinstance(covariance_type, str):
            raise TypeError(
                f"covariance_type must be a string such as 'VVV'; got {covariance_type!r}."
            )
        key = covariance_type.strip()
        key = _ALIASES.get(key.lower(), key.upper())
        if key not in STRUCTURES:
            valid = ", ".join(list(STRUCTURES) + [f"{a} (={n})" for a, n in _ALIASES.items()])
            raise ValueError(
                f"covariance_type={covariance_type!r} is not a known covariance structure; "
                f"valid: {valid}."
            )
        structure = STRUCTURES[key]
    if n_features is not None and structure.univariate and n_features != 1:
        raise ValueError(
            f"covariance_type={structure.name!r} is for one feature, but X has {n_features}; "
            "use a multivariate structure such as 'EII' or 'VVV'."
        )
    return structure
