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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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

    #: True when any convex combination of valid covariances of this structure is again one
    #: (EII, VII, EEI, VVI, EEE, VVV): extrapolated parameters then need no projection.
    linear: ClassVar[bool] = True

    @abstractmethod
    def covariances(
        self,
        counts: np.ndarray,
        scatter: np.ndarray,
        prior: PriorTerms | None,
        previous: np.ndarray | None = None,
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
        previous : ndarray of shape (..., K, D, D), optional
            The current covariances. Structures whose M-step is iterative (VEI, VEE, EVE, VVE,
            VEV) start their inner iterations there, so that each M-step can only improve on
            the current parameters (a generalised EM step); the closed forms ignore it.

        Returns
        -------
        covariances : ndarray of shape (..., K, D, D)
        """

    def project(self, weights: np.ndarray, covariances: np.ndarray) -> np.ndarray:
        """The covariances of this structure closest to arbitrary (…, K, D, D) ``covariances``.

        "Closest" in the likelihood sense: the M-step with S_k = π_k Σ'_k, i.e. the Σ_k of the
        structure that maximise Σ_k π_k [−log|Σ_k| − tr(Σ_k⁻¹ Σ'_k)]. The identity for the linear
        structures; used to bring extrapolated (SQUAREM) parameters back onto the structure.
        """
        if self.linear:
            return covariances
        w = np.maximum(weights, 0.0)
        if self.scatter_kind == "diag":
            scatter = np.diagonal(covariances, axis1=-2, axis2=-1) * w[..., None]
        else:
            scatter = covariances * w[..., None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.covariances(w, scatter, None, previous=covariances)

    def constraint_violation(self, covariances: np.ndarray, rtol: float = 1e-8) -> str | None:
        """Why (K, D, D) covariances do not have this structure, or None when they do.

        Reads the three letters of Σ_k = λ_k D_k A_k D_kᵀ: volume λ_k = |Σ_k|^(1/d) equal across
        components (E); shape A_k equal (E: the eigenvalues over λ_k, in axis order for the
        axis-aligned structures) or the identity (I, spherical); orientation D_k common (E: the
        covariances commute) or the axes (I: diagonal). Each is checked relative to the size of
        the quantities compared.
        """
        covs = np.asarray(covariances, dtype=float)
        d = covs.shape[-1]
        code = self.name if len(self.name) == 3 else ("EII" if self.name == "E" else "VII")
        volume, shape, orient = code[0], code[1], code[2]
        diag = np.diagonal(covs, axis1=-2, axis2=-1)
        if orient == "I" and d > 1:
            scale = np.sqrt(np.outer(diag.max(axis=0), diag.max(axis=0)))
            if (np.abs(covs * (1 - np.eye(d))) > rtol * scale).any():
                return "its covariances must be diagonal (axis-aligned)"
        if shape == "I" and (np.abs(diag - diag[:, :1]) > rtol * diag[:, :1]).any():
            return "its covariances must be spherical (λ I)"
        with np.errstate(divide="ignore", invalid="ignore"):
            if orient == "I":
                eig = diag
            else:
                eig = np.linalg.eigvalsh(covs)[:, ::-1]
            vol = np.exp(np.log(eig).mean(axis=-1))
            if volume == "E" and (np.abs(vol - vol[0]) > rtol * vol[0]).any():
                return "its covariances must have equal volumes |Σ_k|^(1/d)"
            if shape == "E":
                a = eig / vol[:, None]
                if (np.abs(a - a[0]) > rtol * a[0].max()).any():
                    return "its covariances must have equal shapes (eigenvalues over volume)"
        if shape == "E" and orient == "E" and d > 1:
            # Equal sorted eigenvalues and a common orientation can still pair them differently
            # (diag(3, 1) and diag(1, 3) commute): Σ_k / λ_k must be one matrix C.
            with np.errstate(divide="ignore", invalid="ignore"):
                c = covs / vol[:, None, None]
            if (np.abs(c - c[0]) > rtol * np.abs(c[0]).max()).any():
                return "its covariances must have equal shapes and orientation (Σ_k = λ_k C)"
        if orient == "E" and d > 1:
            norm = np.linalg.norm(covs, ord=2, axis=(-2, -1))
            comm = covs @ covs[0] - covs[0] @ covs
            bad = np.linalg.norm(comm, ord=2, axis=(-2, -1)) > rtol * norm * norm[0]
            if bad.any():
                return "its covariances must share one orientation (commute with each other)"
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

    def covariances(self, counts, scatter, prior, previous=None):
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

    def covariances(self, counts, scatter, prior, previous=None):
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

    def covariances(self, counts, scatter, prior, previous=None):
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

    def covariances(self, counts, scatter, prior, previous=None):
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

    def covariances(self, counts, scatter, prior, previous=None):
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

    def covariances(self, counts, scatter, prior, previous=None):
        g, d = scatter.shape[-2], scatter.shape[-1]
        total = scatter.sum(axis=(-2, -1))
        n = counts.sum(axis=-1)
        if prior is None:
            lam = total / (d * n)
        else:
            s2 = np.trace(prior.scale) / d
            lam = (s2 + total) / ((n + g) * d + prior.dof + 2)
        return _diag_to_full(np.broadcast_to(lam[..., None, None], scatter.shape))


# -- the structures whose M-step couples the components (Celeux & Govaert 1995) ---------------
#
# Maximum likelihood minimises, over the structure's covariances,
#
#     Σ_k [ n_k log|Σ_k| + tr(Σ_k⁻¹ W_k) ]                     (W_k the scatter S_k)
#
# Under the conjugate prior the MAP objective has the same form with n_k and W_k replaced by the
# VVV (full scatter) or VVI (diagonal) MAP terms, n_k + ν + d + 2 and W_k + Λ (or n_k + ν + 3 and
# W_k + diag ς²): the inverse-Wishart / inverse-gamma prior on every Σ_k, restricted to the
# structure. (For the unconstrained VVV and VVI this is exactly their MAP; for EII ... EEE the
# closed forms above keep mclust's conventions.) Components with n_k = 0 (padding) take no part.

#: Inner iterations of an iterative M-step stop when the relative change of the objective (or of
#: every volume) falls below this, or after _INNER_MAX iterations; started from the current
#: parameters, each iteration can only lower the objective, so an early stop is still a
#: generalised EM step.
_INNER_TOL = 1e-12
_INNER_MAX = 500
#: Started from the current parameters, an M-step stops after at most this many inner
#: iterations: EM's next steps go on from there, and each already improves on the last.
_WARM_MAX = 5


#: Inner iterations of an M-step from scratch (no current parameters) in this context: a start's
#: first M-step sets this lower (:func:`cold_inner_limit`), as EM's warm steps go on from it.
_COLD_MAX: ContextVar[int] = ContextVar("cold_inner_max", default=_INNER_MAX)


@contextmanager
def cold_inner_limit(limit: int) -> Iterator[None]:
    """Within the block, an iterative M-step without current parameters stops after ``limit``
    inner iterations (a generalised M-step: EM's next steps, each an improvement, go on)."""
    token = _COLD_MAX.set(limit)
    try:
        yield
    finally:
        _COLD_MAX.reset(token)


def _inner_limit(previous: np.ndarray | None) -> int:
    return _COLD_MAX.get() if previous is None else _WARM_MAX


def _map_terms(
    counts: np.ndarray, scatter: np.ndarray, prior: PriorTerms | None, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """(n_k, W_k) of the objective above: the data's, or with the prior's terms added."""
    if prior is None:
        return counts, scatter
    d = scatter.shape[-1]
    if kind == "full":
        return counts + prior.dof + d + 2, scatter + prior.scale
    return counts + prior.dof + 3, scatter + np.diag(prior.scale)


def _finite_or_eye(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., D, D) matrices with each non-finite one replaced by the identity, so that a batched
    LAPACK call cannot fail on it, and the mask (...,) of those replaced."""
    bad = ~np.isfinite(m).all(axis=(-2, -1))
    if bad.any():
        m = np.where(bad[..., None, None], np.eye(m.shape[-1]), m)
    return m, bad


def _inv(m: np.ndarray) -> np.ndarray:
    """Inverses of (..., D, D) matrices, NaN (not an exception) for the singular ones."""
    m, bad = _finite_or_eye(m)
    try:
        out = np.linalg.inv(m)
    except np.linalg.LinAlgError:
        flat = m.reshape(-1, *m.shape[-2:])
        out = np.full_like(flat, np.nan)
        for i, one in enumerate(flat):
            try:
                out[i] = np.linalg.inv(one)
            except np.linalg.LinAlgError:
                pass
        out = out.reshape(m.shape)
    return np.where(bad[..., None, None], np.nan, out)


def _geomean(v: np.ndarray) -> np.ndarray:
    """Geometric mean over the last axis: |diag(v)|^(1/d) (NaN unless every entry is > 0)."""
    return np.exp(np.log(v).mean(axis=-1))


def _det_root(m: np.ndarray) -> np.ndarray:
    """|M|^(1/d) of (..., D, D) matrices; NaN where M is not positive definite."""
    sign, logdet = np.linalg.slogdet(m)
    return np.where(sign > 0, np.exp(logdet / m.shape[-1]), np.nan)


def _start_volumes(
    previous: np.ndarray | None, traces: np.ndarray, n: np.ndarray, live: np.ndarray, d: int
) -> np.ndarray:
    """Starting volumes λ_k: the current ones |Σ_k|^(1/d), else tr(W_k)/(d n_k)."""
    lam = traces / (d * np.where(live, n, 1.0)) if previous is None else _det_root(previous)
    return np.where(live, lam, 1.0)


def _unsettled(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Per problem of a batch (the leading axes; the last one holds each problem's entries):
    whether an entry changed by more than _INNER_TOL relatively (NaN counts as settled). A
    batch's inner loops stop each problem where it would stop alone, so that a fit in a batch
    is the fit alone."""
    with np.errstate(invalid="ignore"):
        return (np.abs(new - old) > _INNER_TOL * np.abs(old)).any(axis=-1)


def _volumes_and_shape(
    values: np.ndarray, n: np.ndarray, previous: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Volumes λ_k (..., K) and one shape a (..., D), |a| = 1, minimising
    Σ_k [n_k d log λ_k + Σ_j values_kj / (λ_k a_j)] (VEI: values = diag W_k; VEV: the eigenvalues
    of W_k): alternate a = Σ_k values_k / λ_k scaled to |a| = 1 and λ_k = Σ_j values_kj / a_j /
    (d n_k), from the current volumes."""
    d = values.shape[-1]
    live = n > 0
    nk = np.where(live, n, 1.0)
    lam = _start_volumes(previous, values.sum(axis=-1), n, live, d)
    going = np.ones(lam.shape[:-1], dtype=bool)  # the problems not settled yet
    a = np.empty(values.shape[:-2] + values.shape[-1:])
    for _ in range(_inner_limit(previous)):
        step = np.where(live[..., None], values / lam[..., None], 0.0).sum(axis=-2)
        step = step / _geomean(step)[..., None]
        new = np.where(live, (values / step[..., None, :]).sum(axis=-1) / (d * nk), 1.0)
        a = np.where(going[..., None], step, a)
        moved = np.where(going[..., None], new, lam)
        going &= _unsettled(new, lam)
        lam = moved
        if not going.any():
            break
    return lam, a


class VEI(CovarianceStructure):
    """Diagonal, varying volume, equal shape: Σ_k = λ_k B (B diagonal, |B| = 1).

    No closed form: alternate B = diag(Σ_k W_k / λ_k) / |·|^(1/d) and λ_k = tr(W_k B⁻¹) / (d n_k)
    until the volumes settle (Celeux & Govaert 1995), starting from the current volumes.
    """

    name = "VEI"
    scatter_kind = "diag"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return n_components + n_features - 1

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "diag")
        lam, b = _volumes_and_shape(w, n, previous)
        return _diag_to_full(lam[..., None] * b[..., None, :])


class EVI(CovarianceStructure):
    """Diagonal, equal volume, varying shape: Σ_k = λ B_k (B_k diagonal, |B_k| = 1).

    Closed form: B_k = diag(W_k) / |diag W_k|^(1/d), λ = Σ_k |diag W_k|^(1/d) / n.
    """

    name = "EVI"
    scatter_kind = "diag"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        return 1 + n_components * (n_features - 1)

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "diag")
        live = n > 0
        g = _geomean(w)
        lam = np.where(live, g, 0.0).sum(axis=-1) / n.sum(axis=-1)
        return _diag_to_full(lam[..., None, None] * w / g[..., None])


class VEE(CovarianceStructure):
    """Ellipsoidal, varying volume, equal shape and orientation: Σ_k = λ_k C (|C| = 1).

    No closed form: alternate C = Σ_k W_k / λ_k scaled to |C| = 1 and λ_k = tr(W_k C⁻¹) / (d n_k)
    until the volumes settle (Celeux & Govaert 1995), starting from the current volumes.
    """

    name = "VEE"
    scatter_kind = "full"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return n_components + d * (d + 1) // 2 - 1

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "full")
        d = w.shape[-1]
        live = n > 0
        nk = np.where(live, n, 1.0)
        lam = _start_volumes(previous, np.trace(w, axis1=-2, axis2=-1), n, live, d)
        going = np.ones(lam.shape[:-1], dtype=bool)  # the problems not settled yet
        c = np.empty(w.shape[:-3] + w.shape[-2:])
        for _ in range(_inner_limit(previous)):
            step = np.where(live[..., None, None], w / lam[..., None, None], 0.0).sum(axis=-3)
            step = step / _det_root(step)[..., None, None]
            new = np.einsum("...kij,...ji->...k", w, _inv(step)) / (d * nk)
            new = np.where(live, new, 1.0)
            c = np.where(going[..., None, None], step, c)
            moved = np.where(going[..., None], new, lam)
            going &= _unsettled(new, lam)
            lam = moved
            if not going.any():
                break
        return lam[..., None, None] * c[..., None, :, :]


class _CommonOrientation(CovarianceStructure):
    """Σ_k = D diag(v_k) Dᵀ with one orientation D for all components (EVE, VVE).

    Given D, the variances v_k have a closed form (:meth:`_variances`, from m_k = diag(Dᵀ W_k D)).
    D itself has none: it minimises Σ_k tr(W_k D V_k⁻¹ Dᵀ) over orthogonal matrices, which the
    majorise-minimise step of Browne & McNicholas (2014) lowers monotonically. As W_k ≼ ω_k I (ω_k
    its largest eigenvalue), each column's quadratic is majorised by its tangent at the current
    D₀, and the majoriser is minimised by D = −U Vᵀ, where U S Vᵀ is the SVD of
    G = Σ_k (W_k − ω_k I) D₀ V_k⁻¹. Every other step uses their second majoriser instead, from
    V_k⁻¹ ≼ β_k I (β_k the largest 1/v_kj): G = Σ_k W_k D₀ (V_k⁻¹ − β_k I); the two together
    converge much faster than either. Steps for D and for the v_k alternate from the current D.
    With one live component, D is that component's W's eigenvectors, exactly.
    """

    scatter_kind = "full"
    linear = False

    def _variances(self, m: np.ndarray, n: np.ndarray, live: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "full")
        live = n > 0
        if previous is None:
            basis = w.sum(axis=-3)
        else:
            # Any combination of commuting matrices has their common eigenvectors; unequal
            # coefficients keep its eigenvalues apart even when one Σ_k is spherical.
            coef = np.where(live, n, 0.0) * np.arange(1, n.shape[-1] + 1)
            basis = (coef[..., None, None] * previous).sum(axis=-3)
            # With one live component, D is W's eigenvectors exactly (a full covariance, as
            # VVV's); the steps from the previous D would only approach them.
            single = live.sum(axis=-1) == 1
            if single.any():
                own = np.where(live[..., None, None], w, 0.0).sum(axis=-3)
                basis = np.where(single[..., None, None], own, basis)
        basis, bad_basis = _finite_or_eye(basis)
        _, rot = np.linalg.eigh(basis)
        w_ok, bad_w = _finite_or_eye(w)
        top = np.where(bad_w, np.nan, np.linalg.eigvalsh(w_ok)[..., -1])  # ω_k, (..., K)
        old = np.inf
        going = np.ones(n.shape[:-1], dtype=bool)  # the problems not settled yet
        v = np.empty(w.shape[:-1])
        for step in range(_inner_limit(previous)):
            m = np.einsum("...ji,...kjl,...li->...ki", rot, w, rot)
            fresh = self._variances(m, n, live)
            v = np.where(going[..., None, None], fresh, v)
            inv_v = np.where(live[..., None], 1.0 / fresh, 0.0)
            objective = (
                np.where(live, n, 0.0) * np.log(np.where(live[..., None], fresh, 1.0)).sum(axis=-1)
            ).sum(axis=-1) + (m * inv_v).sum(axis=(-2, -1))
            going &= np.abs(old - objective) > _INNER_TOL * np.abs(objective)
            if not going.any():
                break
            old = objective
            if step % 2 == 0:  # W_k ≼ ω_k I
                g = (
                    np.einsum("...kij,...jl,...kl->...il", w, rot, inv_v)
                    - rot * (top[..., None] * inv_v).sum(axis=-2)[..., None, :]
                )
            else:  # V_k⁻¹ ≼ β_k I
                beta = inv_v.max(axis=-1, keepdims=True)
                g = np.einsum("...kij,...jl,...kl->...il", w, rot, inv_v - beta)
            g, bad_g = _finite_or_eye(g)
            u, _, vt = np.linalg.svd(g)
            rot = np.where(
                going[..., None, None], np.where(bad_g[..., None, None], np.nan, -u @ vt), rot
            )
        v = np.where(bad_basis[..., None, None], np.nan, v)
        return np.einsum("...ij,...kj,...lj->...kil", rot, v, rot)


class EVE(_CommonOrientation):
    """Ellipsoidal, equal volume and orientation, varying shape: Σ_k = λ D A_k Dᵀ.

    Given D: A_k = m_k / |m_k|^(1/d) and λ = Σ_k |m_k|^(1/d) / n with m_k = diag(Dᵀ W_k D); D by
    the majorise-minimise iterations of Browne & McNicholas (2014) (see the base class).
    """

    name = "EVE"
    per_component = True

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return 1 + n_components * (d - 1) + d * (d - 1) // 2

    def _variances(self, m, n, live):
        g = _geomean(m)
        lam = np.where(live, g, 0.0).sum(axis=-1) / n.sum(axis=-1)
        return lam[..., None, None] * m / np.where(live, g, 1.0)[..., None]


class VVE(_CommonOrientation):
    """Ellipsoidal, equal orientation, varying volume and shape: Σ_k = λ_k D A_k Dᵀ.

    Given D: λ_k A_k = diag(Dᵀ W_k D) / n_k; D by the majorise-minimise iterations of Browne &
    McNicholas (2014) (see the base class).
    """

    name = "VVE"
    per_component = True

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return n_components * d + d * (d - 1) // 2

    def _variances(self, m, n, live):
        return m / np.where(live, n, 1.0)[..., None]


def _eigen_descending(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (..., D) in decreasing order and the matching eigenvectors (..., D, D)."""
    w, bad = _finite_or_eye(w)
    values, vectors = np.linalg.eigh(w)
    values = np.where(bad[..., None], np.nan, values)
    return values[..., ::-1], vectors[..., ::-1]


class EEV(CovarianceStructure):
    """Ellipsoidal, equal volume and shape, varying orientation: Σ_k = λ D_k A D_kᵀ.

    Closed form: with W_k = L_k Ω_k L_kᵀ (eigenvalues in decreasing order), D_k = L_k and
    λ A = Σ_k Ω_k / n.
    """

    name = "EEV"
    scatter_kind = "full"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return d + n_components * d * (d - 1) // 2

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "full")
        omega, vec = _eigen_descending(w)
        shared = np.where((n > 0)[..., None], omega, 0.0).sum(axis=-2) / n.sum(axis=-1)[..., None]
        return np.einsum("...kij,...j,...klj->...kil", vec, shared, vec)


class VEV(CovarianceStructure):
    """Ellipsoidal, equal shape, varying volume and orientation: Σ_k = λ_k D_k A D_kᵀ.

    With W_k = L_k Ω_k L_kᵀ (eigenvalues decreasing), D_k = L_k; then alternate
    A = Σ_k Ω_k / λ_k scaled to |A| = 1 and λ_k = tr(Ω_k A⁻¹) / (d n_k) until the volumes settle
    (Celeux & Govaert 1995), starting from the current volumes.
    """

    name = "VEV"
    scatter_kind = "full"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return n_components + (d - 1) + n_components * d * (d - 1) // 2

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "full")
        omega, vec = _eigen_descending(w)
        lam, a = _volumes_and_shape(omega, n, previous)
        return np.einsum("...kij,...kj,...klj->...kil", vec, lam[..., None] * a[..., None, :], vec)


class EVV(CovarianceStructure):
    """Ellipsoidal, equal volume, varying shape and orientation: Σ_k = λ C_k (|C_k| = 1).

    Closed form: C_k = W_k / |W_k|^(1/d), λ = Σ_k |W_k|^(1/d) / n.
    """

    name = "EVV"
    scatter_kind = "full"
    per_component = True
    linear = False

    def n_covariance_parameters(self, n_components: int, n_features: int) -> int:
        d = n_features
        return 1 + n_components * (d * (d + 1) // 2 - 1)

    def covariances(self, counts, scatter, prior, previous=None):
        n, w = _map_terms(counts, scatter, prior, "full")
        live = n > 0
        g = _det_root(w)
        lam = np.where(live, g, 0.0).sum(axis=-1) / n.sum(axis=-1)
        return lam[..., None, None, None] * w / g[..., None, None]


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


#: All of mclust's structures, in its table order.
STRUCTURES: dict[str, CovarianceStructure] = {
    s.name: s
    for s in (
        E(),
        V(),
        EII(),
        VII(),
        EEI(),
        VEI(),
        EVI(),
        VVI(),
        EEE(),
        VEE(),
        EVE(),
        VVE(),
        EEV(),
        VEV(),
        EVV(),
        VVV(),
    )
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
