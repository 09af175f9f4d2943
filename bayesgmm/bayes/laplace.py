"""The Laplace approximation, with the orientations' exact part kept exact.

An orientation block holds a matrix G = QR whose Gram–Schmidt factor Q is the orientation and
whose triangular factor R the likelihood never sees: R's posterior is its prior (Bartlett's,
:mod:`bayesgmm.bayes.structures`), exactly, and independent of everything else. A normal in
G's coordinates fits that badly (the posterior is a thin wedge whose width grows with ‖G‖:
Pareto k̂ above 1 on Old Faithful and iris at K = 1), so the approximation is built in the
coordinates ``u`` of a :class:`Chart`:

* every entry of theta outside the orientation blocks, as it is;
* for each orientation, the D(D − 1)/2 coordinates of a skew-symmetric S in the Cayley chart
  Q = Q₀ (I − S)⁻¹ (I + S) around the mode's Q₀ (the Haar measure has density
  ∝ det(I + SᵀS)^{−(D−1)/2} there).

q(θ) is then normal in ``u`` times the exact prior of each R; the importance ratio p/q does
not depend on R, and PSIS's Pareto k̂ measures only what the normal in ``u`` misses.
Structures without an orientation (diagonal, spherical, one feature) have ``u`` = theta.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bayesgmm.bayes.structures import ORIENTATION_EXCESS, Parametrisation, bartlett_r

__all__ = ["Chart", "laplace_draws", "negative_hessian"]


class Chart:
    """theta ↔ (u, R) around the orientations ``q0`` (see the module docstring)."""

    def __init__(self, param: Parametrisation, k: int, theta0: np.ndarray) -> None:
        self.d = d = param.d
        pos, self.orient = 0, None
        for b in param.blocks(k):
            n = int(np.prod(b.shape))
            if b.name == "orientation":
                self.orient = slice(pos, pos + n)
                self.n_orient = int(b.shape[0])
            pos += n
        self.size = pos
        mask = np.ones(pos, dtype=bool)
        if self.orient is not None:
            mask[self.orient] = False
        self.other = np.flatnonzero(mask)
        self.iu = np.triu_indices(d, 1)
        self.m = d * (d - 1) // 2
        self.n_u = self.other.size + (self.n_orient * self.m if self.orient is not None else 0)
        if self.orient is not None:
            q0, r0 = _qr(theta0[self.orient].reshape(self.n_orient, d, d))
            self.q0, self.r0 = q0, r0

    # -- maps --------------------------------------------------------------------------------
    def skew(self, u: np.ndarray) -> np.ndarray:
        """S (..., n_orient, D, D) from u (..., n_u)."""
        s = u[..., self.other.size :].reshape(*u.shape[:-1], self.n_orient, self.m)
        out = np.zeros((*s.shape[:-1], self.d, self.d))
        out[..., self.iu[0], self.iu[1]] = s
        return out - np.swapaxes(out, -1, -2)

    def theta(self, u: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        """theta (..., P) at u (..., n_u) with triangular factors ``r`` (..., n_orient, D, D),
        by default the start's."""
        u = np.asarray(u, dtype=float)
        out = np.zeros((*u.shape[:-1], self.size))
        out[..., self.other] = u[..., : self.other.size]
        if self.orient is not None:
            eye = np.eye(self.d)
            s = self.skew(u)
            cay = np.linalg.solve(eye - s, eye + s)
            g = self.q0 @ cay @ (self.r0 if r is None else r)
            out[..., self.orient] = g.reshape(*u.shape[:-1], -1)
        return out

    def u_of(self, theta: np.ndarray) -> np.ndarray:
        """u of a theta whose orientations are the chart's centre (S = 0)."""
        u = np.zeros(self.n_u)
        u[: self.other.size] = theta[self.other]
        return u

    def recentre(self, u: np.ndarray) -> tuple[Chart, np.ndarray]:
        """The chart centred on the orientations at u, and u in it (S = 0)."""
        theta = self.theta(u)
        chart = Chart.__new__(Chart)
        chart.__dict__.update(self.__dict__)
        if self.orient is not None:
            chart.q0, chart.r0 = _qr(theta[self.orient].reshape(self.n_orient, self.d, self.d))
        return chart, chart.u_of(theta)

    # -- densities ---------------------------------------------------------------------------
    def log_haar(self, u: np.ndarray) -> np.ndarray:
        """log density of the Haar measure in the Cayley coordinates (up to a constant)."""
        if self.orient is None:
            return np.zeros(u.shape[:-1])
        s = self.skew(u)
        eye = np.eye(self.d)
        _, logdet = np.linalg.slogdet(eye + np.swapaxes(s, -1, -2) @ s)
        return -0.5 * (self.d - 1) * logdet.sum(axis=-1)

    def log_r_prior(self, r: np.ndarray) -> np.ndarray:
        """The orientation prior's terms in R (log |det R|^{ν−D} e^{−‖R‖²/2}), which the log
        density of theta contains and the ratio p/q must not."""
        diag = np.abs(np.diagonal(r, axis1=-2, axis2=-1))
        per_block = ORIENTATION_EXCESS * np.log(diag).sum(axis=-1) - 0.5 * (r**2).sum(axis=(-2, -1))
        return per_block.sum(axis=-1)

    def grad_u(self, u: np.ndarray, grad_theta: np.ndarray) -> np.ndarray:
        """The gradient in u of log p(theta(u)) + log Haar(u), R fixed at the start's."""
        out = np.empty(self.n_u)
        out[: self.other.size] = grad_theta[self.other]
        if self.orient is not None:
            d, eye = self.d, np.eye(self.d)
            s = self.skew(u)
            inv = np.linalg.inv(eye - s)
            cay = inv @ (eye + s)
            gamma = grad_theta[self.orient].reshape(self.n_orient, d, d)
            # d log p = tr(Γᵀ dG), dG = Q₀ (I − S)⁻¹ dS (C + I) R₀ = tr(P dS) below.
            p = (cay + eye) @ self.r0 @ np.swapaxes(gamma, -1, -2) @ self.q0 @ inv
            w = np.swapaxes(p, -1, -2)
            # d log Haar = −(D − 1) tr((I + SᵀS)⁻¹ Sᵀ dS).
            a = np.linalg.inv(eye + np.swapaxes(s, -1, -2) @ s)
            w = w - (d - 1) * s @ a
            # S_ab = s, S_ba = −s for a < b.
            coords = w[..., self.iu[0], self.iu[1]] - w[..., self.iu[1], self.iu[0]]
            out[self.other.size :] = coords.ravel()
        return out

    def sample_r(self, gen: np.random.Generator, size: int) -> np.ndarray | None:
        if self.orient is None:
            return None
        r = bartlett_r(gen, size * self.n_orient, self.d)
        return r.reshape(size, self.n_orient, self.d, self.d)


def _qr(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G = QR with R's diagonal positive (Gram–Schmidt's factors), batched."""
    q, r = np.linalg.qr(g)
    sign = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    sign = np.where(sign == 0, 1.0, sign)
    return q * sign[..., None, :], r * sign[..., :, None]


def negative_hessian(negative: Any, x: np.ndarray) -> np.ndarray:
    """The Hessian of ``negative`` (a function returning the negative log density and its
    gradient) at ``x``, by central differences of the gradient (2P evaluations; no symbolic
    second derivatives, which took about a minute to compile), symmetrised."""
    n = x.size
    hess = np.empty((n, n))
    for i in range(n):
        step = 1e-5 * max(1.0, abs(x[i]))
        e = np.zeros(n)
        e[i] = step
        hess[i] = (negative(x + e)[1] - negative(x - e)[1]) / (2 * step)
    return 0.5 * (hess + hess.T)


def laplace_draws(flat: Any, n_draws: int, gen: np.random.Generator) -> dict[str, Any]:
    """The mode, the normal in the chart's coordinates and ``n_draws`` draws of theta, with
    what PSIS's check needs besides the log density of each draw: ``log_correction``, the
    chart's terms less log q (log p(θ | x) + log_correction is the log importance ratio, up to
    a constant)."""
    from scipy.optimize import minimize

    # The mode in theta's own coordinates first (there the orientation prior's mode fixes R),
    # then in the chart's, centred on the orientations found.
    res = minimize(flat.negative, flat.x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    chart = Chart(flat.param, flat.k, res.x)

    def negative(u: np.ndarray) -> tuple[float, np.ndarray]:
        theta = chart.theta(u)
        lp, grad = flat.logp_dlogp(theta)
        if not np.isfinite(lp):
            return np.inf, np.zeros_like(u)
        return -(lp + float(chart.log_haar(u))), -chart.grad_u(u, grad)

    res_u = minimize(negative, chart.u_of(res.x), jac=True, method="L-BFGS-B")
    if np.isfinite(res_u.fun) and res_u.fun <= res.fun + 1e-9:
        chart, mode = chart.recentre(res_u.x)
    else:
        mode = chart.u_of(res.x)
    n = mode.size
    hess = negative_hessian(negative, mode)
    try:
        chol = np.linalg.cholesky(np.linalg.inv(hess))
    except np.linalg.LinAlgError:
        raise ValueError(
            "the Laplace approximation failed: the posterior's Hessian at the mode is not "
            "positive definite (a flat or unidentified direction); use method='nuts'."
        ) from None
    z = gen.normal(size=(n_draws, n))
    u = mode + z @ chol.T
    r = chart.sample_r(gen, n_draws)
    theta = chart.theta(u, r)
    log_correction = (
        chart.log_haar(u)
        + 0.5 * (z**2).sum(axis=1)
        + np.log(np.diag(chol)).sum()
        + 0.5 * n * math.log(2 * math.pi)
    )
    if r is not None:
        log_correction = log_correction - chart.log_r_prior(r)
    return {
        "theta": theta,
        "mode_lp": -min(res.fun, res_u.fun) if np.isfinite(res_u.fun) else -res.fun,
        "log_correction": log_correction,
        "n_u": n,
    }
