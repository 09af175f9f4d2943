"""The model's log density and its gradient in numpy: nothing to compile.

The same function of theta as the PyMC model of :func:`bayesgmm.to_pymc` (the PyTensor graph of
:mod:`bayesgmm.bayes.structures`; tests check the two agree to 1e-10 in value and gradient for
every structure and prior family), written out with its reverse-mode derivative by hand, so
that the Laplace approximation and Pathfinder cost milliseconds from the first call, for any
structure, data set and K.

Why not a compiled PyTensor function: compiling the batched graph of a VVV model with PyTensor's
default (numba) backend took 25 s on a cold cache, the C backend 77 s, and the Python linker
needs 14 ms per evaluation at N = 300 (a Laplace fit evaluates the gradient hundreds of times);
this module needs about 1 ms there, nothing to compile (benchmarks/posterior_speed.py). With
``grad=False`` it takes many points at once (the draws of an approximation).

The likelihood's gradients are the classic ones, with responsibilities γ_kn and whitened
residuals y_kn = W_k (x_n − μ_k): ∂/∂μ_k = W_kᵀ Σ_n γ_kn y_kn, ∂/∂W_k = −Σ_n γ_kn y_kn r_knᵀ;
the orientation's Gram–Schmidt factor is differentiated with the QR rule
Ḡ = (Q̄ + Q copyltu(M)) R⁻ᵀ, M = R R̄ᵀ − Q̄ᵀ Q (Walter & Lehmann 2018).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import gammaln, multigammaln

from bayesgmm.bayes.structures import (
    ORIENTATION_EXCESS,
    Conjugate,
    Eigen,
    Parametrisation,
    _log_orientation_const,
    sum_to_zero_basis,
    unpack_lower,
)
from bayesgmm.core._missing import Missingness, expected_rows, missing_pass

__all__ = ["evaluate"]

_LOG_2PI = math.log(2.0 * math.pi)


def _sum(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` summed over its last ``n`` axes (the batch axes in front are kept)."""
    return x.sum(axis=tuple(range(-n, 0))) if n else x


def _normal(x: np.ndarray, loc: Any, sd: float, n: int) -> np.ndarray:
    """Σ log N(x | loc, sd²) over the last ``n`` axes."""
    size = int(np.prod(x.shape[x.ndim - n :]))
    return _sum(-0.5 * ((x - loc) / sd) ** 2, n) - size * (math.log(sd) + 0.5 * _LOG_2PI)


def _diagonal(x: np.ndarray) -> np.ndarray:
    return np.diagonal(x, axis1=-2, axis2=-1)


def _weighted_sums(gamma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_n γ_kn y_kn (K, D) for γ (K, N) and y (K, N, D), as K matrix products."""
    return (gamma[:, None, :] @ y)[:, 0, :]


def _weighted_outer(gamma: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_n γ_kn a_kn b_knᵀ (K, D, D), as K matrix products."""
    return np.swapaxes(a * gamma[:, :, None], -1, -2) @ b


def _reduce(grad: np.ndarray, n: int) -> np.ndarray:
    """A per-component gradient (K, ...) summed to a block shared by all (1, ...) when n == 1."""
    return grad if grad.shape[0] == n else grad.sum(axis=0, keepdims=True)


def _gram_schmidt(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, r = np.linalg.qr(g)
    sign = np.sign(_diagonal(r))
    sign = np.where(sign == 0, 1.0, sign)
    return q * sign[..., None, :], r * sign[..., :, None]


def _qr_backward(q: np.ndarray, r: np.ndarray, gq: np.ndarray, gr: np.ndarray) -> np.ndarray:
    m = r @ np.swapaxes(gr, -1, -2) - np.swapaxes(gq, -1, -2) @ q
    copyltu = np.tril(m) + np.swapaxes(np.tril(m, -1), -1, -2)
    rhs = gq + q @ copyltu
    # Ḡ = rhs R⁻ᵀ, i.e. Ḡ Rᵀ = rhs: solve R Ḡᵀ = rhsᵀ.
    return np.swapaxes(np.linalg.solve(r, np.swapaxes(rhs, -1, -2)), -1, -2)


def evaluate(
    param: Parametrisation,
    theta: np.ndarray,
    k: int,
    X: np.ndarray,
    c: dict[str, np.ndarray],
    grad: bool = True,
    missing: Missingness | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """log p(theta, X) (``logp``), its gradient (``grad``), the mixture at theta (``weights``,
    ``means``, ``covariances``) and the pointwise log-likelihood (``rows``).

    ``missing`` (the missingness of ``X``, when it has NaN) makes each row's likelihood that of
    its observed coordinates; ``labels`` (N,), ≥ 0 where a row's component is known, makes
    that row's term log p(x_n, z_n) (semi-supervised: :func:`bayesgmm.fit_em`'s ``labels``).

    With ``grad=False``, theta may carry leading batch dims (..., P): every output then has
    them too (many draws at once, one set of numpy calls). The gradient is for one point.
    """
    theta = np.asarray(theta, dtype=float)
    if grad and theta.ndim != 1:
        raise ValueError(f"the gradient is for one point: theta (P,); got shape {theta.shape}.")
    blocks = param.split(theta, k)
    batch = theta.shape[:-1]
    d = param.d
    # weights: Dirichlet(α) through the additive log-ratios, with their Jacobian Π π_k.
    alpha = float(c["alpha"])
    u = np.concatenate([blocks["weights_free"], np.zeros((*batch, 1))], axis=-1)
    u = u - u.max(axis=-1, keepdims=True)
    logw = u - np.log(np.exp(u).sum(axis=-1, keepdims=True))
    w = np.exp(logw)
    lp = gammaln(k * alpha) - k * gammaln(alpha) + alpha * logw.sum(axis=-1)

    if isinstance(param, Eigen):
        means, lp_m, back_means = _eigen_means(param, blocks, c, k)
        covs_fwd = _eigen_covariances(param, blocks, c, k)
    elif isinstance(param, Conjugate):
        means = c["center"] + c["spread"] * blocks["means_free"]
        lp_m, back_means = float(np.log(c["spread"]).sum() * k), None
        covs_fwd = _conjugate_covariances(param, blocks, c, k, means)
    else:  # pragma: no cover - the two families are the only ones
        raise TypeError(type(param))
    lp = lp + lp_m + covs_fwd["log_prior"]

    if missing is not None:
        return _with_missing(
            param, k, X, c, missing, grad, lp, logw, w, means, covs_fwd, back_means, batch,
            labels,
        )  # fmt: skip
    # the likelihood: one batched product for all components.
    resid = X - means[..., :, None, :]  # (..., K, N, D)
    y = covs_fwd["whiten"](resid)
    comp = logw[..., None] - 0.5 * (y**2).sum(axis=-1) - 0.5 * covs_fwd["log_det"][..., None]
    comp = comp - 0.5 * d * _LOG_2PI
    if labels is not None:  # known components: the other terms of those rows are 0
        other = (labels >= 0) & (labels != np.arange(k)[:, None])  # (K, N)
        comp = np.where(other, -np.inf, comp)
    top = comp.max(axis=-2)
    shifted = np.exp(comp - top[..., None, :])
    total = shifted.sum(axis=-2)
    rows = top + np.log(total)
    out = _outputs(lp, rows, w, means, covs_fwd["covariances"](), batch)
    if not grad:
        return out
    gamma = shifted / total  # (K, N)
    counts = gamma.sum(axis=1)
    out["grad"] = _gradient(param, k, c, alpha, w, gamma, counts, resid, y, covs_fwd, back_means)
    return out


def _outputs(
    lp: Any,
    rows: np.ndarray,
    w: np.ndarray,
    means: np.ndarray,
    covs: np.ndarray,
    batch: tuple[int, ...],
) -> dict[str, Any]:
    """evaluate's outputs: the log density (the log prior ``lp`` plus the rows' terms; −inf
    where not finite), the rows' terms and the mixture."""
    lp = lp + rows.sum(axis=-1)
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    return {
        "logp": float(lp) if not batch else lp,
        "rows": rows,
        "weights": w,
        "means": means,
        "covariances": covs,
    }


def _gradient(
    param: Parametrisation,
    k: int,
    c: dict[str, np.ndarray],
    alpha: float,
    w: np.ndarray,
    gamma: np.ndarray,
    counts: np.ndarray,
    resid: np.ndarray,
    y: np.ndarray,
    covs_fwd: dict[str, Any],
    back_means: Any,
) -> np.ndarray:
    """The gradient of the log density from the E-step's weights ``gamma`` (K, N) on the rows
    (or weighted points) whose residuals from each mean are ``resid`` (K, N, D)."""
    g_logw = alpha + counts
    # back through log_softmax: ∂/∂u_j = ḡ_j − π_j Σ ḡ
    g_v = (g_logw - w * g_logw.sum())[:-1]
    g_means, g_blocks = covs_fwd["backward"](gamma, counts, resid, y)
    if back_means is not None:
        g_means_free = back_means(g_means)
    else:
        g_means_free = g_means * c["spread"]
    g_blocks["weights_free"] = g_v
    g_blocks["means_free"] = g_means_free
    return param.join(g_blocks, k)


def _with_missing(
    param: Parametrisation,
    k: int,
    X: np.ndarray,
    c: dict[str, np.ndarray],
    missing: Missingness,
    grad: bool,
    lp: Any,
    logw: np.ndarray,
    w: np.ndarray,
    means: np.ndarray,
    covs_fwd: dict[str, Any],
    back_means: Any,
    batch: tuple[int, ...],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on data with missing values: each row's likelihood is that of its
    observed coordinates (the core's pass), and the gradient is the complete-data gradient on
    the E-step's expected points (Fisher's identity, :func:`expected_rows`)."""
    d = param.d
    covs = covs_fwd["covariances"]()
    r = int(np.prod(batch)) if batch else 1
    n = X.shape[0]
    rows = np.full((n, r), -np.inf)
    try:
        chol = np.linalg.cholesky(covs.reshape(r, k, d, d))
        missing_pass(
            missing, w.reshape(r, k), means.reshape(r, k, d), covs.reshape(r, k, d, d), chol,
            False, np.asarray(c["center"], dtype=float), logp_out=rows, labels=labels,
        )  # fmt: skip
    except np.linalg.LinAlgError:
        pass
    rows = rows.T.reshape(*batch, n)
    out = _outputs(lp, rows, w, means, covs, batch)
    if not grad:
        return out
    if not np.isfinite(out["logp"]):
        out["grad"] = np.zeros(param.size(k))
        return out
    gamma, points = expected_rows(missing, X, w, means, covs, labels)
    resid = points - means[:, None, :]
    y = covs_fwd["whiten"](resid)
    out["grad"] = _gradient(
        param, k, c, float(c["alpha"]), w, gamma, gamma.sum(axis=1), resid, y, covs_fwd,
        back_means,
    )  # fmt: skip
    return out


def _eigen_means(
    param: Eigen, blocks: dict[str, np.ndarray], c: dict[str, np.ndarray], k: int
) -> tuple[np.ndarray, Any, Any]:
    z = blocks["means_free"]
    sd = float(c["mean_scale"])
    spread = c["spread"]
    if param.identify != "ordered":

        def back_free(g_mu: np.ndarray) -> np.ndarray:
            return g_mu * spread - z / sd**2

        return c["center"] + spread * z, _normal(z, 0.0, sd, 2), back_free
    t = z[..., 0]
    e = np.concatenate([t[..., :1], np.exp(t[..., 1:])], axis=-1)
    a = np.cumsum(e, axis=-1)
    r = z[..., 1:]
    std = a[..., None] * c["axis"] + r @ c["perp"].T
    lp = _normal(a, 0.0, sd, 1) + _normal(r, 0.0, sd, 2) + t[..., 1:].sum(axis=-1)
    lp = lp + float(gammaln(k + 1))

    def back_ordered(g_mu: np.ndarray) -> np.ndarray:
        g_std = g_mu * spread
        g_a = g_std @ c["axis"] - a / sd**2
        g_r = g_std @ c["perp"] - r / sd**2
        g_e = np.cumsum(g_a[::-1])[::-1]
        g_t = np.concatenate([g_e[:1], g_e[1:] * e[1:] + 1.0])
        return np.concatenate([g_t[:, None], g_r], axis=1)

    return c["center"] + spread * std, lp, back_ordered


def _eigen_covariances(
    param: Eigen, blocks: dict[str, np.ndarray], c: dict[str, np.ndarray], k: int
) -> dict[str, Any]:
    d = param.d
    lv = blocks["log_volume"]
    batch = lv.shape[:-1]
    loc, vs = float(c["volume_loc"]), float(c["volume_scale"])
    lp = _normal(lv, loc, vs, 1)
    lv_full = np.broadcast_to(lv, (*batch, k))
    log_scale = np.broadcast_to(lv_full[..., None], (*batch, k, d))
    h = sum_to_zero_basis(d) if param.shape != "I" else None
    if h is not None:
        s = blocks["log_shape"]
        lp = lp + _normal(s, c["shape_loc"], float(c["shape_scale"]), 2)
        log_scale = log_scale + s @ h.T
    q: np.ndarray | None = None
    if param.orient != "I":
        g = blocks["orientation"]
        q_blk, r_blk = _gram_schmidt(g)
        logr = np.log(_diagonal(r_blk))
        lp = lp + (
            ORIENTATION_EXCESS * _sum(logr, 2)
            + _log_orientation_const(d) * g.shape[-3]
            - 0.5 * _sum(g**2, 3)
        )
        q = np.broadcast_to(q_blk, (*batch, k, d, d))
    inv_sd = np.exp(-0.5 * log_scale)

    def whiten(resid: np.ndarray) -> np.ndarray:
        rot = resid @ q if q is not None else resid
        return rot * inv_sd[..., None, :]

    def covariances() -> np.ndarray:
        var = np.exp(log_scale)
        if q is None:
            return var[..., None] * np.eye(d)
        return (q * var[..., None, :]) @ np.swapaxes(q, -1, -2)

    def backward(
        gamma: np.ndarray, counts: np.ndarray, resid: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # t_kj = Σ_n γ_kn y_knj² (whitened): ∂L/∂log scale_kj = (t_kj − n_k) / 2
        gy_all = _weighted_sums(gamma, y)
        t = _weighted_sums(gamma, y**2)
        g_scale = 0.5 * (t - counts[:, None])
        gy = gy_all * inv_sd  # Σ_n γ y ∘ a^{-1/2} λ^{-1/2}
        g_means = (q @ gy[:, :, None])[:, :, 0] if q is not None else gy
        out: dict[str, np.ndarray] = {}
        out["log_volume"] = _reduce(g_scale.sum(axis=1), lv.size) - (lv - loc) / vs**2
        if h is not None:
            g_s = _reduce(g_scale @ h, blocks["log_shape"].shape[0])
            out["log_shape"] = (
                g_s - (blocks["log_shape"] - c["shape_loc"]) / float(c["shape_scale"]) ** 2
            )
        if q is not None:
            # ∂L/∂Q_k = −Σ_n γ_kn r_kn (y_kn ∘ a^{-1/2} λ^{-1/2})ᵀ
            gq = -_weighted_outer(gamma, resid, y) * inv_sd[:, None, :]
            gq = _reduce(gq, q_blk.shape[0])
            gr = np.zeros_like(r_blk)
            idx = np.arange(d)
            gr[:, idx, idx] = ORIENTATION_EXCESS / _diagonal(r_blk)
            out["orientation"] = _qr_backward(q_blk, r_blk, gq, gr) - blocks["orientation"]
        return g_means, out

    return {
        "log_prior": lp,
        "whiten": whiten,
        "log_det": d * lv_full,
        "covariances": covariances,
        "backward": backward,
    }


def _conjugate_covariances(
    param: Conjugate,
    blocks: dict[str, np.ndarray],
    c: dict[str, np.ndarray],
    k: int,
    means: np.ndarray,
) -> dict[str, Any]:
    d = param.d
    name, _ = param._layout(k)
    kappa, nu = float(c["kappa"]), float(c["dof"])
    dm = means - c["prior_mean"]
    batch = means.shape[:-2]
    if name == "precision_chol":
        packed = blocks[name]
        m = packed.shape[-2]
        logdiag = packed[..., :d]
        u_blk = unpack_lower(packed, d)
        u = np.broadcast_to(u_blk, (*batch, k, d, d))
        rows, cols = np.tril_indices(d, -1)
        lam_chol = c["scale_chol"]
        lam = lam_chol @ lam_chol.T
        cu = lam_chol.T @ u_blk
        log_lam = 2.0 * np.log(np.diag(lam_chol)).sum()
        weights_j = d + 2 - np.arange(1, d + 1)
        lp = _sum(
            (nu - d - 1) * logdiag.sum(axis=-1)
            - 0.5 * _sum(cu**2, 2)
            + 0.5 * nu * log_lam
            - 0.5 * nu * d * math.log(2.0)
            - multigammaln(nu / 2.0, d)
            + d * math.log(2.0)
            + (logdiag * weights_j).sum(axis=-1),
            1,
        )
        logdiag_full = np.broadcast_to(logdiag, (*batch, k, d))
        um = (dm[..., None, :] @ u)[..., 0, :]  # Uᵀ (μ − μ_p)
        lp = lp + (
            -0.5 * kappa * _sum(um**2, 2)
            + k * (0.5 * d * math.log(kappa) - 0.5 * d * _LOG_2PI)
            + _sum(logdiag_full, 2)
        )

        def whiten(resid: np.ndarray) -> np.ndarray:
            return resid @ u

        def covariances() -> np.ndarray:
            return np.linalg.inv(u @ np.swapaxes(u, -1, -2))

        def backward(
            gamma: np.ndarray, counts: np.ndarray, resid: np.ndarray, y: np.ndarray
        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            gy = _weighted_sums(gamma, y)
            g_means = (u @ (gy - kappa * um)[:, :, None])[:, :, 0]
            g_u = -_weighted_outer(gamma, resid, y)
            g_u = g_u - kappa * dm[:, :, None] * um[:, None, :]
            g_u = _reduce(g_u, m) - lam @ u_blk
            g_logdiag = _reduce(counts[:, None] + 1.0, m) * np.ones((1, d))
            g_logdiag = g_logdiag + (nu - d - 1) + weights_j
            g_logdiag = g_logdiag + _diagonal(g_u) * np.exp(logdiag)
            return g_means, {name: np.concatenate([g_logdiag, g_u[:, rows, cols]], axis=1)}

        return {
            "log_prior": lp,
            "whiten": whiten,
            "log_det": -2.0 * logdiag_full.sum(axis=-1),
            "covariances": covariances,
            "backward": backward,
        }
    logv = blocks[name]
    beta = 0.5 * c["scale_diag"]
    a = 0.5 * nu
    lp = _sum(a * np.log(beta) - gammaln(a) - a * logv - beta * np.exp(-logv), 2)
    logv_full = np.broadcast_to(logv, (*batch, k, d))
    inv_var = np.exp(-logv_full)
    lp = lp + (
        _sum(-0.5 * kappa * dm**2 * inv_var - 0.5 * logv_full + 0.5 * math.log(kappa), 2)
        - k * d * 0.5 * _LOG_2PI
    )
    inv_sd = np.exp(-0.5 * logv_full)

    def whiten_diag(resid: np.ndarray) -> np.ndarray:
        return resid * inv_sd[..., None, :]

    def covariances_diag() -> np.ndarray:
        return np.exp(logv_full)[..., None] * np.eye(d)

    def backward_diag(
        gamma: np.ndarray, counts: np.ndarray, resid: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        t = _weighted_sums(gamma, y**2)
        g_full = 0.5 * (t - counts[:, None]) + 0.5 * kappa * dm**2 * inv_var - 0.5
        g_means = _weighted_sums(gamma, y) * inv_sd - kappa * dm * inv_var
        g = g_full.sum(axis=0, keepdims=True) if logv.shape[0] == 1 else g_full
        g = g.sum(axis=1, keepdims=True) if logv.shape[1] == 1 else g  # spherical
        g = g - a + beta * np.exp(-logv)
        return g_means, {name: g}

    return {
        "log_prior": lp,
        "whiten": whiten_diag,
        "log_det": logv_full.sum(axis=-1),
        "covariances": covariances_diag,
        "backward": backward_diag,
    }
