"""The generative model: p(x, z) = Categorical(z | π) · N(x | μ_z, Σ_z)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core._missing import Missingness, impute_missing, missing_pass, missingness
from bayesgmm.core._passes import (
    DensityParams,
    chunk_log_joint,
    features,
    mixture_density,
    run_pass,
)
from bayesgmm.core._validation import as_data, as_rng
from bayesgmm.core.structures import STRUCTURES, CovarianceStructure, get_structure

__all__ = ["GaussianMixture"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False, repr=False)
class GaussianMixture:
    """A Gaussian mixture as a value: z ~ Categorical(π), x | z ~ N(μ_z, Σ_z).

    Immutable and validated once on construction; every method is vectorised over observations
    and computed from Cholesky factors with log-sum-exp.

    Parameters
    ----------
    weights : array_like of shape (K,)
        Mixing proportions π, non-negative, summing to 1 (within 1e-8).
    means : array_like of shape (K, D)
        Component means μ_k.
    covariances : array_like of shape (K, D, D)
        Component covariances Σ_k, symmetric positive definite.
    covariance_type : str, default "VVV"
        The structure the covariances are meant to have (mclust code or alias); kept for
        parameter counting and for EM.
    feature_names : sequence of str, optional
        Names of the D features (a DataFrame's columns).

    Examples
    --------
    >>> import numpy as np, bayesgmm as bg
    >>> gm = bg.GaussianMixture([0.3, 0.7], [[0.0], [4.0]], [[[1.0]], [[0.5]]], covariance_type="V")
    >>> X, z = gm.sample(1000, rng=0)
    >>> gm.log_prob(X).shape
    (1000,)
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance_type: str = "VVV"
    feature_names: tuple[str, ...] | None = None
    _chol: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        weights = np.asarray(self.weights, dtype=np.float64)
        means = np.asarray(self.means, dtype=np.float64)
        covs = np.asarray(self.covariances, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"weights must have shape (K,) with K ≥ 1; got shape {weights.shape}.")
        k = weights.shape[0]
        if means.ndim == 1 and k == means.shape[0]:
            means = means[:, None]  # K scalar means of a univariate mixture
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(
                f"means must have shape (K, D) = ({k}, D) to match the {k} weights; got shape "
                f"{means.shape}."
            )
        d = means.shape[1]
        if covs.ndim == 1 and d == 1 and covs.shape[0] == k:
            covs = covs[:, None, None]  # K scalar variances of a univariate mixture
        if covs.shape != (k, d, d):
            raise ValueError(
                f"covariances must have shape (K, D, D) = ({k}, {d}, {d}); got shape {covs.shape}."
            )
        for name, arr in (("weights", weights), ("means", means), ("covariances", covs)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or inf; every parameter must be finite.")
        if (weights < 0).any():
            raise ValueError(f"weights must be non-negative; got {weights.tolist()}.")
        if abs(weights.sum() - 1.0) > 1e-8:
            raise ValueError(
                f"weights must sum to 1 (within 1e-8); they sum to {weights.sum()!r}. "
                "Divide them by their sum."
            )
        scale = np.sqrt(np.abs(np.diagonal(covs, axis1=1, axis2=2)))
        denom = scale[:, :, None] * scale[:, None, :]
        asym = np.abs(covs - covs.transpose(0, 2, 1))
        bad = asym > 1e-8 * np.where(denom > 0, denom, 1.0)
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
            raise ValueError(
                f"covariances[{j}] is not symmetric; pass (Σ + Σᵀ)/2 if the asymmetry is rounding."
            )
        covs = 0.5 * (covs + covs.transpose(0, 2, 1))
        structure = get_structure(self.covariance_type, d)
        violation = structure.constraint_violation(covs)
        if violation is not None:
            raise ValueError(
                f"covariance_type={structure.name!r} does not match the covariances: {violation}. "
                "Pass the structure the covariances have (e.g. 'VVV' for unconstrained ones)."
            )
        chol = _cholesky_or_raise(covs)
        if self.feature_names is not None and len(self.feature_names) != d:
            raise ValueError(f"feature_names has {len(self.feature_names)} names for {d} features.")
        set_ = object.__setattr__
        set_(self, "weights", _readonly(weights))
        set_(self, "means", _readonly(means))
        set_(self, "covariances", _readonly(covs))
        set_(self, "covariance_type", structure.name)
        if self.feature_names is not None:
            set_(self, "feature_names", tuple(str(f) for f in self.feature_names))
        set_(self, "_chol", _readonly(chol))

    @classmethod
    def _trusted(
        cls,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray,
        structure: CovarianceStructure,
        feature_names: tuple[str, ...] | None,
        cholesky: np.ndarray | None = None,
    ) -> GaussianMixture:
        """Build from arrays EM itself produced (shapes, finiteness and symmetry hold by
        construction): only the Cholesky factorisation is checked. Raises ValueError when a
        covariance is not positive definite. ``cholesky``: the factors, when the caller
        computed them as this would (numpy's, positive diagonal)."""
        self = object.__new__(cls)
        chol = _cholesky_or_raise(covariances) if cholesky is None else cholesky
        set_ = object.__setattr__
        for name, value in (
            ("weights", weights),
            ("means", means),
            ("covariances", covariances),
            ("_chol", chol),
        ):
            value.flags.writeable = False  # freshly computed by the caller: no copy needed
            set_(self, name, value)
        set_(self, "covariance_type", structure.name)
        set_(self, "feature_names", feature_names)
        return self

    @property
    def _params(self) -> DensityParams:
        """The density's coefficients, built on first use (EM makes many mixtures that are
        never evaluated) and kept."""
        params = self.__dict__.get("_density")
        if params is None:
            params = mixture_density(
                self.weights,
                self.means,
                self._chol,
                self.structure.scatter_kind == "diag",
                self.weights @ self.means,
            )
            object.__setattr__(self, "_density", params)
        return params

    # -- shape facts -------------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        """K, the number of components."""
        return int(self.weights.shape[0])

    @property
    def n_features(self) -> int:
        """D, the dimension of x."""
        return int(self.means.shape[1])

    @property
    def structure(self) -> CovarianceStructure:
        """The covariance structure object."""
        # covariance_type is always a registered name (set from a parsed structure).
        return STRUCTURES[self.covariance_type]

    @property
    def n_parameters(self) -> int:
        """Free parameters: K − 1 weights, K·D means and the structure's covariance parameters
        (exactly mclust's ``nMclustParams``)."""
        return self.structure.n_parameters(self.n_components, self.n_features)

    @property
    def cholesky(self) -> np.ndarray:
        """Lower Cholesky factors L_k of the covariances, shape (K, D, D)."""
        return self._chol

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Ancestral sampling: z_n ~ Categorical(π), then x_n | z_n ~ N(μ_{z_n}, Σ_{z_n}).

        Returns
        -------
        X : ndarray of shape (n, D)
        z : ndarray of shape (n,), integer component labels
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer; got {n!r}.")
        gen = as_rng(rng)
        z = gen.choice(self.n_components, size=int(n), p=self.weights)
        eps = gen.standard_normal((int(n), self.n_features))
        X = self.means[z] + np.einsum("nij,nj->ni", self._chol[z], eps)
        return X, z

    # -- densities ---------------------------------------------------------------------------
    def _data(self, X: Any) -> tuple[np.ndarray, Missingness | None]:
        arr, _ = as_data(X, allow_missing=True)
        if arr.shape[1] != self.n_features:
            raise ValueError(
                f"X has {arr.shape[1]} features but the mixture has {self.n_features}; pass data "
                "with the same columns as the fit."
            )
        return arr, missingness(arr)

    def _observed_pass(self, miss: Missingness, **outputs: Any) -> None:
        """The pass on rows with missing values (each on its observed coordinates)."""
        missing_pass(
            miss,
            self.weights[None],
            self.means[None],
            self.covariances[None],
            self._chol[None],
            self.structure.scatter_kind == "diag",
            self._params.center,
            **outputs,
        )

    def log_joint_all(self, X: Any) -> np.ndarray:
        """log p(x_n, z_n = k) = log π_k + log N(x_n | μ_k, Σ_k), shape (n, K).

        Where x_n has missing values (NaN), the density is the marginal one of its observed
        coordinates o, N(x_n,o | μ_k,o, Σ_k,oo); the same holds for every method below.
        """
        arr, miss = self._data(X)
        p = self._params
        out = np.empty((arr.shape[0], self.n_components))
        rows = arr if miss is None else miss.x_complete
        idx = slice(None) if miss is None else miss.complete
        part = np.empty((rows.shape[0], self.n_components))
        step = 65_536
        for lo in range(0, rows.shape[0], step):
            feats = features(rows[lo : lo + step], p.center, p.kind)
            part[lo : lo + step] = chunk_log_joint(feats, p).T
        out[idx] = part
        if miss is not None:
            self._observed_pass(miss, joint_out=out)
        return out

    def log_joint(self, X: Any, z: Any) -> np.ndarray:
        """log p(x_n, z_n) at the given labels, shape (n,)."""
        lj = self.log_joint_all(X)
        z_arr = np.asarray(z)
        if z_arr.shape != (lj.shape[0],) or not np.issubdtype(z_arr.dtype, np.integer):
            raise ValueError(
                f"z must be an integer array of shape ({lj.shape[0]},); got {z_arr.dtype} "
                f"shape {z_arr.shape}."
            )
        if z_arr.size and (z_arr.min() < 0 or z_arr.max() >= self.n_components):
            raise ValueError(
                f"z must hold labels in 0..{self.n_components - 1}; got values from "
                f"{z_arr.min()} to {z_arr.max()}."
            )
        return lj[np.arange(lj.shape[0]), z_arr]

    def log_prob(self, X: Any) -> np.ndarray:
        """log p(x_n) = log Σ_k π_k N(x_n | μ_k, Σ_k) (log-sum-exp), shape (n,). For a dask
        array (or dask-backed DataFrame or xarray object) a lazy dask array, chunk by chunk."""
        if self._lazy_input(X):
            return self._per_chunk(X, self.log_prob, None)
        arr, miss = self._data(X)
        out = np.empty((arr.shape[0], 1))
        if miss is None:
            run_pass(arr, self._params, logp_out=out)
        else:
            self._observed_pass(miss, logp_out=out)
        return out[:, 0]

    def responsibilities(self, X: Any) -> np.ndarray:
        """p(z_n = k | x_n) = π_k N(x_n | μ_k, Σ_k) / Σ_j π_j N(x_n | μ_j, Σ_j), shape (n, K).

        Rows sum to 1; computed in log space, so they never underflow to 0/0. For dask input a
        lazy dask array.
        """
        if self._lazy_input(X):
            return self._per_chunk(X, self.responsibilities, self.n_components)
        arr, miss = self._data(X)
        out = np.empty((arr.shape[0], self.n_components))
        if miss is None:
            run_pass(arr, self._params, resp_out=out)
        else:
            self._observed_pass(miss, resp_out=out)
        return out

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component argmax_k p(z_n = k | x_n), shape (n,) (for dask input a
        lazy dask array)."""
        if self._lazy_input(X):
            return self._per_chunk(X, self.predict, None).astype(np.int64)
        return self.log_joint_all(X).argmax(axis=1)

    @staticmethod
    def _lazy_input(X: Any) -> bool:
        from bayesgmm.core._dask import is_dask

        return is_dask(X)

    def _per_chunk(self, X: Any, method: Any, n_out: int | None) -> Any:
        from bayesgmm.core._dask import as_dask, per_row

        arr, _ = as_dask(X)
        if arr.shape[1] != self.n_features:
            raise ValueError(
                f"X has {arr.shape[1]} features but the mixture has {self.n_features}; pass data "
                "with the same columns as the fit."
            )
        return per_row(arr, method, n_out)

    def impute(self, X: Any, draws: int | None = None, rng: Any = None) -> Any:
        """Fill the missing values (NaN) of ``X`` under the mixture.

        With ``draws`` None, each missing block is replaced by its conditional mean
        E[x_m | x_o] = Σ_k p(z = k | x_o) (μ_k,m + Σ_k,mo Σ_k,oo⁻¹ (x_o − μ_k,o)), the best
        single guess in squared error (it understates the spread: do not estimate variances
        from it). With ``draws=m``, ``m`` multiple imputations, each drawing z from
        p(z | x_o) and then x_m from its conditional normal N(x̂_m,z, C_z), with
        C_z = Σ_z,mm − Σ_z,mo Σ_z,oo⁻¹ Σ_z,om: analyse each completed data set and pool the
        results (Rubin's rules) to carry the imputation's uncertainty.

        Returns
        -------
        ndarray (n, D), or (m, n, D) with ``draws``; for a DataFrame, a DataFrame (a list of
        ``m`` DataFrames with ``draws``) with the same index and columns. Observed values are
        unchanged.
        """
        arr, miss = self._data(X)
        if draws is not None and (
            isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1
        ):
            raise ValueError(f"draws must be a positive integer or None; got {draws!r}.")
        gen = as_rng(rng) if draws is not None else None
        if miss is None:
            filled = arr.copy() if draws is None else np.repeat(arr[None], int(draws), axis=0)
        else:
            filled = impute_missing(
                arr, miss, self.weights, self.means, self.covariances,
                None if draws is None else int(draws), gen,
            )  # fmt: skip
        if hasattr(X, "columns") and hasattr(X, "index"):
            import pandas as pd

            def frame(a: np.ndarray) -> Any:
                return pd.DataFrame(a, index=X.index, columns=X.columns)

            return frame(filled) if draws is None else [frame(a) for a in filled]
        return filled

    def score(self, X: Any) -> float:
        """Total log-likelihood Σ_n log p(x_n)."""
        return float(self.log_prob(X).sum())

    # -- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, n_features={self.n_features}, "
            f"covariance_type={self.covariance_type!r}, "
            f"weights={np.round(self.weights, 4).tolist()})"
        )


def _cholesky_or_raise(covs: np.ndarray) -> np.ndarray:
    try:
        chol = np.linalg.cholesky(covs)
        if np.diagonal(chol, axis1=1, axis2=2).min() > 0:
            return chol
    except np.linalg.LinAlgError:
        pass
    chol = np.empty_like(covs)
    for j, cov in enumerate(covs):
        try:
            chol[j] = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            eig = np.linalg.eigvalsh(cov).min()
            raise ValueError(
                f"covariances[{j}] is not positive definite (smallest eigenvalue {eig:.3g}); "
                "a degenerate covariance. Add a small ridge to its diagonal or drop the component."
            ) from None
        if not (np.diagonal(chol[j]) > 0).all():
            raise ValueError(
                f"covariances[{j}] is singular; a degenerate covariance. Add a small ridge to its "
                "diagonal or drop the component."
            )
    return chol


def log_prob_many(
    X: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    labels: np.ndarray | None = None,
    resp_out: np.ndarray | None = None,
) -> np.ndarray:
    """log p(x_n) under each of S mixtures at once, shape (S, N): one pass over ``X`` for all of
    them (the draws of a posterior), with the same log-sum-exp over Cholesky factors as
    :meth:`GaussianMixture.log_prob`. ``weights`` (S, K), ``means`` (S, K, D) and
    ``covariances`` (S, K, D, D) are taken as valid (no per-mixture validation). With
    ``labels`` (N,), a row whose component is known (≥ 0) gets log p(x_n, z_n) instead;
    ``resp_out`` (N, K·S) receives p(z_n = k | x_n) (component-major).
    """
    d = covariances.shape[-1]
    off = ~np.eye(d, dtype=bool)
    diagonal = not np.any(covariances[..., off])
    miss = missingness(np.asarray(X)) if len(X) else None
    if miss is not None:  # NaN: each row's observed coordinates
        center = np.nanmean(X, axis=0)
        out = np.empty((X.shape[0], weights.shape[0]))
        missing_pass(
            miss, weights, means, covariances, np.linalg.cholesky(covariances), diagonal,
            center, logp_out=out, labels=labels, resp_out=resp_out,
        )  # fmt: skip
        return out.T
    center = np.asarray(X).mean(axis=0) if len(X) else np.zeros(d)
    params = mixture_density(weights, means, np.linalg.cholesky(covariances), diagonal, center)
    out = np.empty((X.shape[0], weights.shape[0]))
    run_pass(X, params, logp_out=out, labels=labels, resp_out=resp_out)
    return out.T
