"""What the PyMC layer knows about each covariance structure, in one place.

Every model is written on one unconstrained vector ``theta`` (the space in which the Laplace
approximation, Pathfinder, NUTS, ADVI and SMC all move), laid out block by block:

``weights_free`` (K − 1)
    additive log-ratios, π = softmax(v, 0).
``means_free`` (K, D)
    standardised means z = (μ − x̄) / s; with ``identify="ordered"`` the first column is the
    ordered coordinate along the leading principal axis u (its first entry, then the logs of
    the gaps) and the others the coordinates across it: μ = x̄ + s ∘ (a u + B r).
then the covariances. Under the default (weak) priors every structure is Σ_k = λ_k D_k A_k D_kᵀ
(:class:`Eigen`), each letter Equal (one block for all components), Varying (one per
component) or Identity (no block), as mclust's three-letter code says:

``log_volume`` (K or 1)
    log λ_k ~ Normal(log v₀, ``volume_scale``²), v₀ = the geometric mean of the features'
    variances over K^{2/D} (mclust's prior scale var(X) / G^{2/d}, as a volume).
``log_shape`` (K or 1, D − 1)
    coordinates s of log A in an orthonormal basis H of the sum-to-zero vectors, so that
    det A = 1 exactly: log diag A = H s; s ~ Normal(Hᵀ c, ``shape_scale``²) with c the centred
    log variances of the features for the axis-aligned structures (shapes follow the features'
    scales a priori) and c = 0 for the rotated ones.
``orientation`` (K or 1, D, D)
    an unconstrained matrix G whose Gram–Schmidt factor Q (G = QR, diag R > 0) is the
    orientation D_k. G has the density c_D |det G|^{ν−D} exp(−‖G‖²/2) (normalised in closed
    form, below; ν − D = 25), which depends on G only through GᵀG: it is invariant under
    rotations G → OG, so Q is exactly uniform (Haar) on the orthogonal group, whatever R does.
    Its mode is at G = 5 Q (R = 5 I), far from the singular matrices, so optimisers, normal
    approximations and NUTS meet no boundary.
    Chosen over the Cayley transform (whose uniform prior has Cauchy tails in its coordinates,
    where NUTS takes the longest trees) and Givens angles (which wrap around at ±π).

The likelihood needs no solve and no Cholesky factor: with W_k = λ_k^{-1/2} A_k^{-1/2} D_kᵀ,
log N(x | μ_k, Σ_k) = −‖W_k (x − μ_k)‖²/2 − (D/2) log λ_k − (D/2) log 2π, one batched matrix
product for all K components (the graph does not grow with K).

Under the conjugate prior of MAP-EM (:class:`bayesgmm.ConjugatePrior`; structures VVV, EEE,
VVI, EEI, VII, EII, E, V) the covariance blocks are those of :class:`Conjugate`: the packed
Cholesky factor of each precision (Wishart, i.e. Σ inverse-Wishart) or the log-variances
(inverse-gamma).

Every prior density is normalised in theta's space (Jacobians included; the ordered means
carry log K!), so that SMC's log marginal likelihood is the model's evidence.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import multigammaln

from bayesgmm.core._moments import mean_cov
from bayesgmm.core.model import GaussianMixture
from bayesgmm.core.prior import ConjugatePrior
from bayesgmm.core.structures import CovarianceStructure, get_structure

__all__ = [
    "CONJUGATE_STRUCTURES",
    "Conjugate",
    "Eigen",
    "Parametrisation",
    "Priors",
    "parametrisation",
]

#: Structures the conjugate prior is built for in PyMC (the others: the default priors).
CONJUGATE_STRUCTURES = ("VVV", "EEE", "VVI", "EEI", "VII", "EII", "E", "V")

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Priors:
    """Weakly informative priors, scaled to the data (locations relative to the data mean x̄,
    scales in units of each feature's standard deviation s_j):

    * weights ~ Dirichlet(``weights_concentration`` · 1);
    * standardised means (μ_kj − x̄_j) / s_j ~ Normal(0, ``mean_scale``²);
    * log volumes log λ_k ~ Normal(log v₀, ``volume_scale``²), v₀ = Π_j s_j^{2/D} / K^{2/D};
    * log shapes (det A = 1) ~ Normal(c, ``shape_scale``²) in an orthonormal sum-to-zero basis,
      c the features' centred log variances for axis-aligned structures, 0 for rotated ones;
    * orientations uniform over rotations.
    """

    weights_concentration: float = 1.0
    mean_scale: float = 2.0
    volume_scale: float = 1.5
    shape_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("weights_concentration", "mean_scale", "volume_scale", "shape_scale"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not np.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"Priors.{name} must be a positive number; got {value!r}.")


# --------------------------------------------------------------------------------------------
# small helpers shared by the numpy and PyTensor sides


def _known(comp: Any, labels: Any, axis: int) -> Any:
    """log p(x_n, z_n = k) with −inf for the other components of the rows whose component is
    known (``labels`` ≥ 0; the components along ``axis`` of ``comp``)."""
    import pytensor.tensor as pt

    k = comp.shape[axis]
    ks = pt.arange(k)
    lab = labels[None, :] if axis == 0 else labels[:, None]
    comps = ks[:, None] if axis == 0 else ks[None, :]
    other = pt.and_(pt.ge(lab, 0), pt.neq(lab, comps))
    return pt.switch(other, -np.inf, comp)


def sum_to_zero_basis(d: int) -> np.ndarray:
    """H (d, d − 1): orthonormal columns, each summing to zero (Helmert's contrasts)."""
    h = np.zeros((d, d - 1))
    for j in range(1, d):
        h[:j, j - 1] = 1.0 / math.sqrt(j * (j + 1))
        h[j, j - 1] = -j / math.sqrt(j * (j + 1))
    return h


def order_axes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leading principal axis u (D,) of the standardised data, its sign fixed so that its
    largest entry is positive, and an orthonormal basis (D, D − 1) of its complement."""
    if np.isnan(X).any():  # missing values: mean_cov's covariance of the observed values
        mean, var = mean_cov(X, diagonal=True)
        sd = np.sqrt(var)
        z = (X - mean) / np.where(sd > 0, sd, 1.0)
        cov = mean_cov(z)[1]
    else:
        spread = X.std(axis=0)
        z = (X - X.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        cov = np.cov(z, rowvar=False)
    _, vecs = np.linalg.eigh(np.atleast_2d(cov))
    basis = vecs[:, ::-1]  # decreasing variance
    basis = basis * np.where(basis[np.abs(basis).argmax(axis=0), range(basis.shape[1])] < 0, -1, 1)
    return basis[:, 0], basis[:, 1:]


#: ν − D of the orientation's density |det G|^{ν−D} exp(−‖G‖²/2): its mode is at G = √(ν−D) Q,
#: where R's diagonal has relative sd 1/√(2(ν−D)) = 0.14, seven sds from a singular G (near
#: which a small move of G turns Q by 90°: with ν − D = 1, Laplace draws crossed it).
ORIENTATION_EXCESS = 25


@functools.cache
def _log_orientation_const(d: int) -> float:
    """log c_D for the density c_D |det G|^{ν−D} exp(−‖G‖²/2), ν = D + ``ORIENTATION_EXCESS``:
    with S = GᵀG, dG = π^{D²/2} / Γ_D(D/2) |S|^{−1/2} dS, and the Wishart integral gives
    c_D = Γ_D(D/2) / (π^{D²/2} 2^{νD/2} Γ_D(ν/2))."""
    nu = d + ORIENTATION_EXCESS
    return float(
        multigammaln(d / 2.0, d)
        - 0.5 * d * d * math.log(math.pi)
        - 0.5 * nu * d * math.log(2.0)
        - multigammaln(nu / 2.0, d)
    )


def _gram_schmidt(g: Any, d: int) -> tuple[Any, Any]:
    """Q (..., d, d) with orthonormal columns and log diag R (..., d), for G = QR (PyTensor)."""
    import pytensor.tensor as pt

    cols: list[Any] = []
    logr: list[Any] = []
    for j in range(d):
        v = g[..., :, j]
        for q in cols:
            v = v - (q * v).sum(axis=-1, keepdims=True) * q
        norm = pt.sqrt((v**2).sum(axis=-1, keepdims=True))
        cols.append(v / norm)
        logr.append(pt.log(norm[..., 0]))
    return pt.stack(cols, axis=-1), pt.stack(logr, axis=-1)


def _haar(rng: np.random.Generator, size: int, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(size, d, d)))
    return q * np.sign(np.einsum("kii->ki", r))[:, None, :]


def bartlett_r(rng: np.random.Generator, size: int, d: int) -> np.ndarray:
    """``size`` draws of the triangular factor R of the orientation block (G = QR): under the
    density ∝ |det G|^{ν−D} e^{−‖G‖²/2}, R is independent of Q, R_ii² ~ χ²(ν + 1 − i) (i from
    1) and R_ij ~ N(0, 1) above the diagonal (Bartlett's decomposition)."""
    r = np.triu(rng.normal(size=(size, d, d)), 1)
    idx = np.arange(d)
    r[:, idx, idx] = np.sqrt(rng.chisquare(d + ORIENTATION_EXCESS - idx, size=(size, d)))
    return r


def _normal_logp(x: Any, loc: Any, scale: Any) -> Any:
    import pytensor.tensor as pt

    return -0.5 * ((x - loc) / scale) ** 2 - pt.log(scale) - 0.5 * _LOG_2PI


# --------------------------------------------------------------------------------------------
# the parametrisations


@dataclass(frozen=True)
class Block:
    """One block of theta: its name and shape (entries are ints or symbolic K)."""

    name: str
    shape: tuple[Any, ...]


class Parametrisation:
    """A structure's model on theta: its blocks, data-scaled constants, log prior, likelihood
    terms, and the map from a :class:`GaussianMixture` to theta.

    Subclasses define the covariance blocks; the weights and means are common. ``k`` is an
    int or a symbolic scalar: the same graph then serves every K.
    """

    family: str = ""

    def __init__(self, structure: CovarianceStructure, d: int, identify: str | None) -> None:
        self.structure = structure
        self.name = structure.name
        self.d = d
        self.identify = identify
        code = {"E": "EII", "V": "VII"}.get(structure.name, structure.name)
        self.code = code

    # -- blocks ------------------------------------------------------------------------------
    def blocks(self, k: Any) -> list[Block]:
        d = self.d
        return [Block("weights_free", (k - 1,)), Block("means_free", (k, d))]

    def size(self, k: int) -> int:
        return int(sum(int(np.prod(b.shape)) for b in self.blocks(k)))

    def split(self, theta: Any, k: Any) -> dict[str, Any]:
        """theta (..., P) → its blocks, each (..., *block shape) (numpy or PyTensor)."""
        batch = tuple(theta.shape)[:-1]
        out, pos = {}, 0
        for b in self.blocks(k):
            n = 1
            for s in b.shape:
                n = n * s
            out[b.name] = theta[..., pos : pos + n].reshape((*batch, *b.shape))
            pos = pos + n
        return out

    def join(self, blocks: dict[str, np.ndarray], k: int) -> np.ndarray:
        return np.concatenate([np.ravel(blocks[b.name]) for b in self.blocks(k)])

    # -- constants ---------------------------------------------------------------------------
    def constants(self, X: np.ndarray, k: int, priors: Any) -> dict[str, np.ndarray]:
        if np.isnan(X).any():  # missing values: each feature's observed values
            center, var = mean_cov(X, diagonal=True)
            spread = np.sqrt(var)
        else:
            center = X.mean(axis=0)
            spread = X.std(axis=0)
        spread = np.where(spread > 0, spread, 1.0)
        d = self.d
        axis, perp = order_axes(X) if X.shape[0] > 1 else (np.eye(d)[0], np.eye(d)[:, 1:])
        return {
            "center": center,
            "spread": spread,
            "axis": axis,
            "perp": perp.reshape(d, d - 1),
        }

    # -- the model, symbolically -------------------------------------------------------------
    def weights(self, blocks: dict[str, Any], k: Any, alpha: Any) -> tuple[Any, Any]:
        """(log π, log prior of the weights' block) under Dirichlet(α 1)."""
        import pytensor.tensor as pt

        v = blocks["weights_free"]
        logw = pt.special.log_softmax(pt.concatenate([v, pt.zeros((1,))]))
        kf = pt.cast(k, "float64")
        # log Dir(π | α) + log Π_k π_k (the Jacobian of the additive log-ratio map).
        lp = pt.gammaln(kf * alpha) - kf * pt.gammaln(alpha) + alpha * logw.sum()
        return logw, lp

    def means(self, blocks: dict[str, Any], c: dict[str, Any], k: Any, sd: Any) -> Any:
        """(μ (K, D), log prior); ``sd`` is the prior sd of each standardised mean."""
        import pytensor.tensor as pt

        z = blocks["means_free"]
        if self.identify == "ordered":
            t = z[:, 0]
            a = pt.cumsum(pt.concatenate([t[:1], pt.exp(t[1:])]))
            std = a[:, None] * c["axis"][None, :]
            lp = (
                _normal_logp(a, 0.0, sd).sum() + t[1:].sum() + pt.gammaln(pt.cast(k, "float64") + 1)
            )
            if self.d > 1:
                r = z[:, 1:]
                std = std + r @ c["perp"].T
                lp = lp + _normal_logp(r, 0.0, sd).sum()
        else:
            std = z
            lp = _normal_logp(z, 0.0, sd).sum()
        return c["center"] + c["spread"] * std, lp

    def graph(self, theta: Any, k: Any, c: dict[str, Any]) -> dict[str, Any]:
        """Everything the model needs from theta (PyTensor): ``log_prior``, ``log_weights``
        (K,), ``means`` (K, D), ``whiten`` (a function of the centred data (K, N, D) → the
        whitened residuals) and ``log_det`` (K,) of Σ_k, and ``covariances`` (K, D, D)."""
        raise NotImplementedError

    def log_component_rows(self, X: Any, parts: dict[str, Any]) -> Any:
        """log π_k N(x_n | μ_k, Σ_k) (K, N) (PyTensor): one batched product for all K."""
        resid = X[None, :, :] - parts["means"][:, None, :]
        y = parts["whiten"](resid)
        return (
            parts["log_weights"][:, None]
            - 0.5 * (y**2).sum(axis=-1)
            - 0.5 * parts["log_det"][:, None]
            - 0.5 * self.d * _LOG_2PI
        )

    def log_likelihood_rows(self, X: Any, parts: dict[str, Any], labels: Any = None) -> Any:
        """log p(x_n | θ) for every row (PyTensor), a log-sum-exp over the components; with
        ``labels`` (N,), log p(x_n, z_n | θ) where the component is known (≥ 0)."""
        import pytensor.tensor as pt

        comp = self.log_component_rows(X, parts)  # (K, N)
        if labels is not None:
            comp = _known(comp, labels, axis=0)
        return pt.logsumexp(comp, axis=0)

    def log_likelihood_rows_missing(
        self, X: Any, masks: Any, index: Any, parts: dict[str, Any], labels: Any = None
    ) -> Any:
        """log p(x_n,o | θ) for every row (PyTensor) of data with missing values: ``X`` (N, D)
        with each missing value at 0, ``masks`` (P, D) the patterns of observed coordinates
        (1.0 observed, 0.0 missing) and ``index`` (N,) each row's pattern. Per pattern and
        component, Σ̃ = Σ ∘ (o oᵀ) + diag(1 − o) has the observed block's determinant and,
        on a residual that is 0 where missing, its quadratic form: one batched Cholesky
        factorisation per (pattern, component), whatever the structure."""
        import pytensor.tensor as pt

        d = self.d
        eye = pt.eye(d)
        o = masks
        cov = parts["covariances"]  # (K, D, D)
        tilde = (
            cov[None] * (o[:, :, None] * o[:, None, :])[:, None]
            + (eye[None] * (1.0 - o)[:, None, :])[:, None]
        )  # (P, K, D, D)
        chol = pt.linalg.cholesky(tilde)
        inv = pt.linalg.solve_triangular(chol, pt.broadcast_to(eye, chol.shape), lower=True)
        log_det = 2.0 * pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)  # (P, K)
        resid = (X[:, None, :] - parts["means"][None]) * o[index][:, None, :]  # (N, K, D)
        y = (inv[index] * resid[:, :, None, :]).sum(axis=-1)  # (N, K, D), elementwise
        n_obs = o.sum(axis=1)[index]  # (N,)
        comp = (
            parts["log_weights"][None, :]
            - 0.5 * (y**2).sum(axis=-1)
            - 0.5 * log_det[index]
            - 0.5 * n_obs[:, None] * _LOG_2PI
        )
        if labels is not None:
            comp = _known(comp, labels, axis=1)
        return pt.logsumexp(comp, axis=1)

    # -- numpy side --------------------------------------------------------------------------
    def values(self, mixture: GaussianMixture, c: dict[str, np.ndarray]) -> np.ndarray:
        """theta for ``mixture`` (whose components are already in the model's order)."""
        w, mu = mixture.weights, mixture.means
        k, _d = mu.shape
        logw = np.log(np.maximum(w, 1e-300))
        blocks: dict[str, np.ndarray] = {"weights_free": logw[:-1] - logw[-1]}
        z = (mu - c["center"]) / c["spread"]
        if self.identify == "ordered":
            a, r = z @ c["axis"], z @ c["perp"]
            gaps = np.maximum(np.diff(a), 1e-8 * max(1.0, float(np.abs(a).max())))
            blocks["means_free"] = np.column_stack([np.concatenate([a[:1], np.log(gaps)]), r])
        else:
            blocks["means_free"] = z
        blocks.update(self.covariance_values(mixture.covariances, c))
        return self.join(blocks, k)

    def covariance_values(self, covs: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def sample_prior(
        self, c: dict[str, np.ndarray], k: int, rng: np.random.Generator, size: int
    ) -> np.ndarray:
        """``size`` draws of theta from the prior (size, P)."""
        w = rng.dirichlet(np.full(k, float(c["alpha"])), size=size)
        logw = np.log(np.maximum(w, 1e-300))
        z, rest = self.sample_means_and_covariances(c, k, rng, size)
        parts = [logw[:, :-1] - logw[:, -1:], z.reshape(size, -1)]
        parts += [rest[b.name].reshape(size, -1) for b in self.blocks(k)[2:]]
        return np.concatenate(parts, axis=1)

    def sample_means_and_covariances(
        self, c: dict[str, np.ndarray], k: int, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Prior draws of the means' block (size, K, D) and the covariance blocks."""
        raise NotImplementedError


class Eigen(Parametrisation):
    """Σ_k = λ_k D_k A_k D_kᵀ under the default :class:`Priors` (module docstring)."""

    family = "weak"

    def __init__(self, structure: CovarianceStructure, d: int, identify: str | None) -> None:
        super().__init__(structure, d, identify)
        volume, shape, orient = self.code[0], self.code[1], self.code[2]
        self.volume = volume
        self.shape = shape if d > 1 else "I"
        self.orient = orient if d > 1 else "I"

    def _count(self, letter: str, k: Any) -> Any:
        return k if letter == "V" else 1

    def blocks(self, k: Any) -> list[Block]:
        d = self.d
        out = [*super().blocks(k), Block("log_volume", (self._count(self.volume, k),))]
        if self.shape != "I":
            out.append(Block("log_shape", (self._count(self.shape, k), d - 1)))
        if self.orient != "I":
            out.append(Block("orientation", (self._count(self.orient, k), d, d)))
        return out

    def constants(self, X: np.ndarray, k: int, priors: Any) -> dict[str, np.ndarray]:
        p = priors if priors is not None else Priors()
        c = super().constants(X, k, priors)
        d = self.d
        log_var = 2.0 * np.log(c["spread"])
        centred = log_var - log_var.mean()
        h = sum_to_zero_basis(d)
        if self.orient == "I":
            shape_loc = h.T @ centred
            shape_sd = p.shape_scale
        else:
            shape_loc = np.zeros(d - 1)
            shape_sd = p.shape_scale
        c.update(
            alpha=np.asarray(float(p.weights_concentration)),
            mean_scale=np.asarray(float(p.mean_scale)),
            volume_loc=np.asarray(log_var.mean() - 2.0 / d * math.log(k)),
            volume_scale=np.asarray(float(p.volume_scale)),
            shape_loc=shape_loc,
            shape_scale=np.asarray(float(shape_sd)),
        )
        return c

    def graph(self, theta: Any, k: Any, c: dict[str, Any]) -> dict[str, Any]:
        import pytensor.tensor as pt

        d = self.d
        blocks = self.split(theta, k)
        logw, lp_w = self.weights(blocks, k, c["alpha"])
        means, lp_m = self.means(blocks, c, k, c["mean_scale"])
        ones = pt.ones((k,))
        log_vol = blocks["log_volume"]
        lp_v = _normal_logp(log_vol, c["volume_loc"], c["volume_scale"]).sum()
        log_vol = log_vol * ones  # (K,)
        lp = lp_w + lp_m + lp_v
        log_a: Any = None
        if self.shape != "I":
            s = blocks["log_shape"]
            lp = lp + _normal_logp(s, c["shape_loc"], c["shape_scale"]).sum()
            log_a = (s @ sum_to_zero_basis(d).T) * ones[:, None]  # (K, D)
        q: Any = None
        if self.orient != "I":
            g = blocks["orientation"]
            q, logr = _gram_schmidt(g, d)
            lp = lp + (
                ORIENTATION_EXCESS * logr.sum()
                + _log_orientation_const(d) * g.shape[0]
                - 0.5 * (g**2).sum()
            )
            q = q * ones[:, None, None]  # (K, D, D)
        log_scale = log_vol[:, None] + (log_a if log_a is not None else pt.zeros((1, d)))
        inv_sd = pt.exp(-0.5 * log_scale)  # (K, D)

        def whiten(resid: Any) -> Any:
            y = pt.matmul(resid, q) if q is not None else resid
            return y * inv_sd[:, None, :]

        var = pt.exp(log_scale)
        if q is not None:
            covs = pt.matmul(q * var[:, None, :], q.swapaxes(-1, -2))
        else:
            covs = var[:, :, None] * np.eye(d)
        return {
            "log_prior": lp,
            "log_weights": logw,
            "means": means,
            "whiten": whiten,
            "log_det": d * log_vol,
            "covariances": covs,
        }

    def covariance_values(self, covs: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, Any]:
        d = self.d
        if self.orient == "I":
            eig = np.einsum("kii->ki", covs)
            q = np.broadcast_to(np.eye(d), covs.shape)
        elif self.orient == "E":
            _, vecs = np.linalg.eigh(covs[0])
            q = np.broadcast_to(vecs[:, ::-1], covs.shape)
            eig = np.einsum("ji,kjl,li->ki", q[0], covs, q[0])
        else:
            vals, vecs = np.linalg.eigh(covs)
            eig, q = vals[:, ::-1], vecs[:, :, ::-1]
        eig = np.maximum(eig, 1e-300)
        log_vol = np.log(eig).mean(axis=1)
        out: dict[str, Any] = {"log_volume": log_vol if self.volume == "V" else log_vol[:1]}
        if self.shape != "I":
            log_a = np.log(eig) - log_vol[:, None]
            s = log_a @ sum_to_zero_basis(d)
            out["log_shape"] = s if self.shape == "V" else s.mean(axis=0, keepdims=True)
        if self.orient != "I":
            g = math.sqrt(ORIENTATION_EXCESS) * np.array(q if self.orient == "V" else q[:1])
            out["orientation"] = g
        return out

    def sample_means_and_covariances(
        self, c: dict[str, np.ndarray], k: int, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        d = self.d
        z = float(c["mean_scale"]) * rng.normal(size=(size, k, d))
        if self.identify == "ordered":
            # The coordinates (a, r) in the orthonormal basis (u, B) are iid as z's entries.
            a, r = np.sort(z @ c["axis"], axis=-1), z @ c["perp"]
            gaps = np.log(np.maximum(np.diff(a, axis=-1), 1e-300))
            z = np.concatenate([np.concatenate([a[:, :1], gaps], -1)[..., None], r], axis=-1)
        nv = k if self.volume == "V" else 1
        out = {
            "log_volume": float(c["volume_loc"])
            + float(c["volume_scale"]) * rng.normal(size=(size, nv))
        }
        if self.shape != "I":
            ns = k if self.shape == "V" else 1
            out["log_shape"] = c["shape_loc"] + float(c["shape_scale"]) * rng.normal(
                size=(size, ns, d - 1)
            )
        if self.orient != "I":
            no = k if self.orient == "V" else 1
            q = _haar(rng, size * no, d)
            out["orientation"] = (q @ bartlett_r(rng, size * no, d)).reshape(size, no, d, d)
        return z, out


class Conjugate(Parametrisation):
    """The conjugate prior of MAP-EM (:mod:`bayesgmm.core.prior`): μ_k | Σ_k ~ N(μ_p, Σ_k / κ);

    * VVV, EEE: Σ⁻¹ = U Uᵀ ~ Wishart(ν, Λ⁻¹) (Σ ~ inverse-Wishart(ν, Λ)); the block
      ``precision_chol`` holds log diag U and U's below-diagonal entries, row by row; its
      density is the Wishart's times the Jacobian 2^D Π_i U_ii^{D−i+2} (i from 1);
    * VVI, EEI: log σ²_kj, σ²_kj ~ inverse-gamma(ν/2, Λ_jj/2);
    * VII, EII, E, V: log σ²_k, σ²_k ~ inverse-gamma(ν/2, tr Λ / (2D)).

    Its mode in (π, μ, Σ) with Dirichlet(1) weights is the core's MAP-EM estimate.
    """

    family = "conjugate"

    def _layout(self, k: Any) -> tuple[str, tuple[Any, ...]]:
        d, code = self.d, self.code
        m = k if code[0] == "V" else 1
        if code in ("VVV", "EEE"):
            return "precision_chol", (m, d * (d + 1) // 2)
        return "log_variances", (m, d if code[2] == "I" and code[1] != "I" else 1)

    def blocks(self, k: Any) -> list[Block]:
        name, shape = self._layout(k)
        return [*super().blocks(k), Block(name, shape)]

    def constants(self, X: np.ndarray, k: int, priors: Any) -> dict[str, np.ndarray]:
        c = super().constants(X, k, priors)
        resolved = priors.resolve(X, k)
        lam = resolved.terms.scale
        d = self.d
        c.update(
            alpha=np.asarray(1.0),
            kappa=np.asarray(float(resolved.shrinkage)),
            prior_mean=np.asarray(resolved.mean, dtype=float),
            dof=np.asarray(float(resolved.terms.dof)),
            scale_chol=np.linalg.cholesky(lam),
            scale_diag=(
                np.diag(lam) if self._layout(1)[1][1] == d else np.full(1, np.trace(lam) / d)
            ),
        )
        return c

    def means(self, blocks: dict[str, Any], c: dict[str, Any], k: Any, sd: Any) -> Any:
        raise NotImplementedError  # the means depend on the covariances: see graph

    def graph(self, theta: Any, k: Any, c: dict[str, Any]) -> dict[str, Any]:
        import pytensor.tensor as pt

        d = self.d
        blocks = self.split(theta, k)
        logw, lp_w = self.weights(blocks, k, c["alpha"])
        ones = pt.ones((k,))
        mu = c["center"] + c["spread"] * blocks["means_free"]
        kappa, mu_p, nu = c["kappa"], c["prior_mean"], c["dof"]
        lp = lp_w
        name, _ = self._layout(k)
        if name == "precision_chol":
            packed = blocks[name]
            u = _unpack_lower(packed, d) * ones[:, None, None]  # (K, D, D)
            logdiag = packed[:, :d]
            # Wishart(P | ν, Λ⁻¹) with P = U Uᵀ: (ν − D − 1)/2 log|P| − tr(ΛP)/2 + ν/2 log|Λ|
            # − νD/2 log 2 − log Γ_D(ν/2), plus the Jacobian of (log diag, off-diagonal) → P.
            cu = pt.matmul(c["scale_chol"].T, _unpack_lower(packed, d))
            log_lam = 2.0 * pt.log(pt.diagonal(c["scale_chol"])).sum()
            lp = (
                lp
                + (
                    (nu - d - 1) * logdiag.sum(axis=-1)
                    - 0.5 * (cu**2).sum(axis=(-2, -1))
                    + 0.5 * nu * log_lam
                    - 0.5 * nu * d * math.log(2.0)
                    - _multigammaln(nu / 2.0, d)
                    + d * math.log(2.0)
                    + (logdiag * (d + 2 - np.arange(1, d + 1))).sum(axis=-1)
                ).sum()
            )
            log_det = -2.0 * logdiag.sum(axis=-1) * ones
            # μ_k | Σ_k ~ N(μ_p, Σ_k / κ): −κ/2 ‖U_kᵀ (μ_k − μ_p)‖² + log|U_k| + D/2 log κ − ...
            dm = pt.matmul((mu - mu_p)[:, None, :], u)[:, 0, :]
            lp = lp + (
                -0.5 * kappa * (dm**2).sum()
                + (0.5 * d * pt.log(kappa) - 0.5 * d * _LOG_2PI) * k
                - 0.5 * log_det.sum()
            )

            def whiten(resid: Any) -> Any:
                return pt.matmul(resid, u)

            prec = pt.matmul(u, u.swapaxes(-1, -2))
            covs = pt.linalg.inv(prec)
        else:
            logv = blocks[name]  # (m, 1 or D)
            beta = 0.5 * c["scale_diag"]
            alpha = 0.5 * nu
            # inverse-gamma on σ² and the Jacobian σ² of the log.
            lp = (
                lp
                + (
                    alpha * pt.log(beta) - pt.gammaln(alpha) - alpha * logv - beta * pt.exp(-logv)
                ).sum()
            )
            logv_full = logv * pt.ones((k, d))  # (K, D)
            log_det = logv_full.sum(axis=-1)
            sd = pt.exp(0.5 * logv_full)
            lp = lp + _normal_logp(mu, mu_p, sd / pt.sqrt(kappa)).sum()
            inv_sd = pt.exp(-0.5 * logv_full)

            def whiten(resid: Any) -> Any:
                return resid * inv_sd[:, None, :]

            covs = pt.exp(logv_full)[:, :, None] * np.eye(d)
        # The standardised means' block has no Jacobian of its own: the prior above is on μ,
        # so the change of variables z → μ adds Σ_j log s_j per component.
        lp = lp + pt.log(c["spread"]).sum() * k
        return {
            "log_prior": lp,
            "log_weights": logw,
            "means": mu,
            "whiten": whiten,
            "log_det": log_det,
            "covariances": covs,
        }

    def covariance_values(self, covs: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, Any]:
        name, (m, width) = self._layout(covs.shape[0])
        d = self.d
        if name == "precision_chol":
            return {name: pack_lower(np.linalg.cholesky(np.linalg.inv(covs[:m])))}
        var = np.einsum("kii->ki", covs)[:m]
        return {name: np.log(var if width == d else var[:, :1])}

    def sample_means_and_covariances(
        self, c: dict[str, np.ndarray], k: int, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from scipy.stats import wishart

        d = self.d
        name, (m, width) = self._layout(k)
        nu = float(c["dof"])
        if name == "precision_chol":
            lam = c["scale_chol"] @ c["scale_chol"].T
            prec = wishart.rvs(df=nu, scale=np.linalg.inv(lam), size=size * m, random_state=rng)
            block = pack_lower(np.linalg.cholesky(np.reshape(prec, (size, m, d, d))))
            covs = np.linalg.inv(np.reshape(prec, (size, m, d, d)))
        else:
            var = 0.5 * c["scale_diag"] / rng.gamma(0.5 * nu, size=(size, m, width))
            block = np.log(var)
            covs = np.broadcast_to(var, (size, m, d))[..., None] * np.eye(d)
        covs = np.broadcast_to(covs, (size, k, d, d))
        chol = np.linalg.cholesky(covs / float(c["kappa"]))
        mu = c["prior_mean"] + (chol @ rng.normal(size=(size, k, d, 1)))[..., 0]
        return (mu - c["center"]) / c["spread"], {name: block}


def _multigammaln(a: Any, d: int) -> Any:
    import pytensor.tensor as pt

    return 0.25 * d * (d - 1) * math.log(math.pi) + sum(pt.gammaln(a - 0.5 * j) for j in range(d))


def pack_lower(u: np.ndarray) -> np.ndarray:
    """(..., d + d(d−1)/2) from lower-triangular U (..., d, d) with a positive diagonal: the
    logs of the diagonal, then the entries below it, row by row (the inverse of
    :func:`unpack_lower`)."""
    d = u.shape[-1]
    rows, cols = np.tril_indices(d, -1)
    return np.concatenate([np.log(np.diagonal(u, axis1=-2, axis2=-1)), u[..., rows, cols]], -1)


def unpack_lower(packed: np.ndarray, d: int) -> np.ndarray:
    """U (..., d, d) from its packed form (numpy; :func:`_unpack_lower` is the PyTensor one)."""
    rows, cols = np.tril_indices(d, -1)
    u = np.zeros((*packed.shape[:-1], d, d))
    u[..., np.arange(d), np.arange(d)] = np.exp(packed[..., :d])
    u[..., rows, cols] = packed[..., d:]
    return u


def _unpack_lower(packed: Any, d: int) -> Any:
    """U (..., d, d) lower-triangular from (..., d + d(d−1)/2): exp of the first d entries on
    the diagonal, the rest below it, row by row."""
    import pytensor.tensor as pt

    rows, cols = np.tril_indices(d, -1)
    u = pt.zeros((*packed.shape[:-1], d, d))
    u = pt.set_subtensor(u[..., np.arange(d), np.arange(d)], pt.exp(packed[..., :d]))
    if d > 1:
        u = pt.set_subtensor(u[..., rows, cols], packed[..., d:])
    return u


def parametrisation(
    covariance_type: str | CovarianceStructure,
    d: int,
    *,
    priors: Any = None,
    identify: str | None = "ordered",
) -> Parametrisation:
    """The parametrisation of a structure under ``priors`` (default or conjugate), checked
    before anything is compiled."""
    structure = get_structure(covariance_type, d)
    if identify not in ("ordered", None):
        raise ValueError(f"identify must be 'ordered' or None; got {identify!r}.")
    if priors is None or isinstance(priors, Priors):
        return Eigen(structure, d, identify)
    if isinstance(priors, ConjugatePrior):
        if structure.name not in CONJUGATE_STRUCTURES:
            raise ValueError(
                f"covariance_type={structure.name!r} has no conjugate prior in PyMC (it exists "
                f"for {', '.join(CONJUGATE_STRUCTURES)}); use priors=None (the default priors, "
                "every structure) or one of those structures."
            )
        if priors.shrinkage <= 0:
            raise ValueError(
                "a ConjugatePrior with shrinkage=0 puts a flat, improper prior on the means; the "
                "PyMC model needs shrinkage > 0 (mclust's default is 0.01)."
            )
        if identify == "ordered":
            raise ValueError(
                "identify='ordered' is not available with a ConjugatePrior (its means are not "
                "independent of the covariances, so they cannot be reparametrised in order); "
                "use identify=None here, or identify='relabel' in fit_bayes."
            )
        return Conjugate(structure, d, identify)
    raise TypeError(
        f"priors must be a bayesgmm.Priors or a bayesgmm.ConjugatePrior; got {priors!r}."
    )
