"""How long a posterior costs: issue 12's floors for the Laplace approximation, measured the way
a user meets them.

1. ``fit_bayes(faithful, 3, method="laplace")`` in a fresh process, imports included (run as a
   subprocess, so nothing is warm but the operating system's file cache), and a second call in
   the same process on other data of the same D;
2. ``compare_k`` over K = 1..9 (BIC, ICL and LOO from the Laplace posterior) on a 215 × 5
   simulated data set with every structure of a few;
3. the log density and gradient: our numpy evaluation against PyMC's compiled ``logp_dlogp``
   of the same model (the PyTensor graph), per call;
4. the BLAS warning: the compiled log density per call when PyTensor searches for a C BLAS
   (and warns: before) and when ``to_pymc`` tells it there is none (after), each in a fresh
   process, and PyTensor's C backend for comparison (the backend the warning is about).

    uv run python benchmarks/posterior_speed.py

For a cold PyTensor cache, run with ``PYTENSOR_FLAGS=compiledir=$(mktemp -d)``; the Laplace
path compiles nothing, so only part 3's PyMC figure depends on it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

FRESH = """
import time
t0 = time.perf_counter()
import bayesgmm as bg
X = bg.datasets.load_faithful()
tree = bg.fit_bayes(X, 3, method="laplace", rng=0)
first = time.perf_counter() - t0
rng = __import__("numpy").random.default_rng(1)
other = X.to_numpy() * rng.uniform(0.9, 1.1, size=2) + rng.normal(size=(272, 2)) * 0.1
t1 = time.perf_counter()
bg.fit_bayes(other, 3, method="laplace", rng=1)
print(f"{first:.2f} {time.perf_counter() - t1:.2f}")
"""


def fresh_process() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRESH], capture_output=True, text=True, check=True
    ).stdout.split()
    print(f"fit_bayes(faithful, 3, 'laplace'), fresh process, imports included: {out[0]} s")
    print(f"  second call, other data of the same D, same process:          {out[1]} s")


def compare_k_grid() -> None:
    import bayesgmm as bg

    rng = np.random.default_rng(0)
    truth = bg.GaussianMixture(
        np.array([0.3, 0.3, 0.4]),
        rng.normal(scale=3.0, size=(3, 5)),
        np.stack([np.eye(5) * s for s in (0.5, 1.0, 1.5)]),
    )
    X, _ = truth.sample(215, rng=1)
    for structure in ("VVV", "EEE", "VEV", "EII"):
        t0 = time.perf_counter()
        bg.compare_k(
            X,
            range(1, 10),
            covariance_type=structure,
            methods=("bic", "icl", "loo"),
            bayes_method="laplace",
            rng=0,
        )
        print(
            f"compare_k K = 1..9, {structure}, 215 × 5, Laplace: {time.perf_counter() - t0:.1f} s"
        )


def density_call() -> None:
    import bayesgmm as bg
    from bayesgmm.bayes.density import evaluate

    X = bg.datasets.load_faithful().to_numpy()
    fit = bg.fit_em(X, 3)
    model = bg.to_pymc(X, 3)
    theta = bg.bayes.model_values(model, fit.model)["theta"]
    param, c = model.bayesgmm_param, model.bayesgmm_constants
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        evaluate(param, theta, 3, X, c)
    ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    fn = model.logp_dlogp_function(ravel_inputs=True)
    fn.set_extra_values({})
    compile_s = time.perf_counter() - t0
    fn(theta)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(theta)
    theirs = (time.perf_counter() - t0) / n
    print(
        f"logp + gradient, faithful VVV K = 3: numpy {ours * 1e3:.3f} ms (nothing to compile); "
        f"PyMC compiled {theirs * 1e3:.3f} ms after {compile_s:.1f} s of compiling; "
        f"ratio {ours / theirs:.2f}"
    )


BLAS = """
import sys, time, warnings
warnings.simplefilter("always")
import bayesgmm as bg
if sys.argv[1] == "before":
    import pytensor
    pytensor.config.blas__ldflags  # PyTensor's own search, as before to_pymc set it
X = bg.datasets.load_faithful().to_numpy()
model = bg.to_pymc(X, 3)
theta = bg.bayes.model_values(model, bg.fit_em(X, 3).model)["theta"]
mode = "FAST_RUN" if sys.argv[1] == "c" else None
fn = model.logp_dlogp_function(ravel_inputs=True, **({"mode": mode} if mode else {}))
fn.set_extra_values({})
fn(theta)
t0 = time.perf_counter()
for _ in range(5000):
    fn(theta)
print(f"{(time.perf_counter() - t0) / 5000 * 1e6:.1f}")
"""


def blas_warning() -> None:
    for case, label in (
        ("before", "Numba backend, PyTensor searched for a C BLAS (before)"),
        ("after", "Numba backend, to_pymc says there is none (after)"),
        ("c", "C backend, no BLAS found"),
    ):
        run = subprocess.run(
            [sys.executable, "-c", BLAS, case], capture_output=True, text=True, check=True
        )
        warned = "could not link to a BLAS" in run.stderr
        print(
            f"  {label:58} {run.stdout.strip():>6} µs per logp + gradient; "
            f"warning {'shown' if warned else 'not shown'}"
        )


if __name__ == "__main__":
    fresh_process()
    compare_k_grid()
    density_call()
    print("logp + gradient, faithful VVV K = 3, compiled, each in a fresh process:")
    blas_warning()
