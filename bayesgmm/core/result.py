"""What an EM fit returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesgmm.core.model import GaussianMixture

__all__ = ["DegenerateFitWarning", "EMResult"]


class DegenerateFitWarning(UserWarning):
    """An EM fit collapsed: a component on tied or duplicated points, or an empty component."""


@dataclass(frozen=True, repr=False)
class EMResult:
    """The result of :func:`fit_em`.

    Attributes
    ----------
    model : GaussianMixture
        The fitted mixture; ``loglik`` is exactly its log-likelihood on the data.
    loglik : float
        Σ_n w_n log p(x_n) at ``model``.
    loglik_trace : ndarray
        Log-likelihood before each M-step, then at the returned model.
    n_iter : int
        Number of EM iterations (M-steps) performed.
    converged : bool
        Whether the relative change fell below ``tol`` before ``max_iter``.
    n_parameters, n_obs : int, float
        Free parameters (mclust's count) and the number of observations (Σ w_n when weighted).
    bic, aic, icl : float
        −2 loglik + p log n; −2 loglik + 2p; BIC − 2 Σ_n w_n log γ_{n, MAP(n)}. Smaller is better
        (mclust prints the negatives).
    responsibilities : ndarray (n, K)
        p(z_n = k | x_n) at ``model``. (select_em's cells on data above its ``screen`` size
        compute theirs on first access, from the data they were fitted on, and keep it: a
        grid's 126 matrices were 126 times the data's size.)
    degenerate : bool
        True when the fit collapsed; ``degenerate_reason`` then says which component and why.
    """

    model: GaussianMixture
    loglik: float
    loglik_trace: np.ndarray
    n_iter: int
    converged: bool
    n_parameters: int
    n_obs: float
    bic: float
    aic: float
    icl: float
    responsibilities: np.ndarray = field(compare=False)
    degenerate: bool = False
    degenerate_reason: str | None = None
    init: str = ""

    @property
    def n_components(self) -> int:
        return self.model.n_components

    @property
    def covariance_type(self) -> str:
        return self.model.covariance_type

    def predict(self, X: Any = None) -> np.ndarray:
        """MAP component of each fitted observation (from the stored responsibilities, as
        mclust's ``classification``), or with ``X``, of each row of X (``model.predict(X)``)."""
        if X is not None:
            return self.model.predict(X)
        return self.responsibilities.argmax(axis=1)

    def impute(self, X: Any, draws: int | None = None, rng: Any = None) -> Any:
        """The missing values (NaN) of ``X`` filled under the fitted mixture: the conditional
        mean, or ``draws`` multiple imputations (see :meth:`GaussianMixture.impute`)."""
        return self.model.impute(X, draws=draws, rng=rng)

    def __repr__(self) -> str:
        status = "converged" if self.converged else "NOT converged"
        lines = [
            f"EMResult({self.covariance_type}, K={self.n_components}, {status} after "
            f"{self.n_iter} iterations, init={self.init})",
            f"  loglik = {self.loglik:.4f}   n_parameters = {self.n_parameters}   "
            f"n_obs = {self.n_obs:g}",
            f"  BIC = {self.bic:.4f}   AIC = {self.aic:.4f}   ICL = {self.icl:.4f}   "
            "(smaller is better; mclust prints −BIC)",
        ]
        if self.degenerate:
            lines.append(f"  DEGENERATE: {self.degenerate_reason}")
        return "\n".join(lines)


class _Responsibilities:
    """EMResult's ``responsibilities``: an array, or a function of no arguments that computes
    it, called on first access and its result kept (a data descriptor: the dataclass's
    ``__init__`` stores through it)."""

    slot = "_responsibilities"

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            raise AttributeError("responsibilities")  # (no default for the dataclass field)
        value = obj.__dict__[self.slot]
        if callable(value):
            value = value()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


EMResult.responsibilities = _Responsibilities()  # type: ignore[assignment]
