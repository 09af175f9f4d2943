"""Many small fits: bayesgmm's batched bootstrap, bootstrap likelihood-ratio test and
cross-validated discriminant analysis against R's mclust (``MclustBootstrap``,
``mclustBootstrapLRT``, ``cvMclustDA``), same machine, same run.

1. ``bootstrap_em`` on Old Faithful, EEE, K = 3, 999 replicates of each kind (nonparametric,
   weighted likelihood, parametric) against ``MclustBootstrap(..., type = "bs" / "wlbs" /
   "pb")``: the best of ``--repeat`` runs each (mclust's weighted likelihood bootstrap, R
   code taking about two minutes, once), R's ``system.time`` around the bootstrap call alone
   (R's start-up and Mclust's own fit excluded; ours from the EM fit, one process).
2. The sequential bootstrap LRT on one feature (``--lrt-n`` rows from a three-component
   mixture, seeded; or ``--lrt-csv``, its first numeric column), V, K = 1..5 (four tests), 199
   replicates each: ``compare_k(..., methods=("lrt",))`` against ``mclustBootstrapLRT(X,
   "V", nboot = 199, maxG = 4)``. Ours includes compare_k's EM selection of K = 1..5; mclust's
   includes its mclustBIC.
3. Cross-validated discriminant analysis on iris (or ``--cv-csv``, its numeric columns and the
   class column ``--cv-label``): ``cross_validate_classifier`` with 10 folds and leave-one-out,
   of EDDA and of a mixture per class (K = 1..5), against ``cvMclustDA`` of ``MclustDA(X, y,
   modelType = "EDDA" / "MclustDA")``; the model chosen on all the data is fitted once
   beforehand on both sides, and only the cross-validation is timed. (10-fold errors differ
   with the random folds; leave-one-out has none.)

The R side is skipped when ``Rscript`` or its mclust package is missing (``apt-get install
r-cran-mclust`` on Debian).

    uv run python benchmarks/bootstrap_vs_mclust.py
    uv run python benchmarks/bootstrap_vs_mclust.py --repeat 5 --only lrt
    uv run python benchmarks/bootstrap_vs_mclust.py --only cv --cv-csv wine.csv --cv-label class
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayesgmm as bg

R_BOOT = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1]))
reps <- as.integer(args[2]); nboot <- as.integer(args[3])
fit <- Mclust(X, G = as.integer(args[4]), modelNames = args[5], verbose = FALSE)
out <- c()
for (type in c("bs", "wlbs", "pb")) {
  # mclust's weighted likelihood bootstrap is R code (me.weighted): about 2 minutes, once.
  n_rep <- if (type == "wlbs") 1L else reps
  times <- numeric(n_rep)
  for (i in seq_len(n_rep)) {
    set.seed(i)
    times[i] <- system.time(b <- MclustBootstrap(fit, nboot = nboot, type = type,
                                                 verbose = FALSE))[["elapsed"]]
  }
  out <- c(out, sprintf("\"%s\":%f", type, min(times)))
}
cat(paste0("{\"version\":\"", as.character(packageVersion("mclust")), "\",",
           paste(out, collapse = ","), "}"))
"""

R_LRT = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
x <- as.numeric(read.csv(args[1])[[1]])
reps <- as.integer(args[2]); nboot <- as.integer(args[3])
times <- numeric(reps)
for (i in seq_len(reps)) {
  set.seed(i)
  times[i] <- system.time(t <- mclustBootstrapLRT(x, modelName = "V", nboot = nboot,
                                                  maxG = 4, verbose = FALSE))[["elapsed"]]
}
cat(paste0("{\"seconds\":", min(times), ",\"p\":[", paste(t$p.value, collapse = ","), "]}"))
"""

R_CV = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
y <- factor(d[[args[3]]])
X <- as.matrix(d[, names(d) != args[3]])
reps <- as.integer(args[2])
out <- c()
for (kind in c("EDDA", "MclustDA")) {
  m <- MclustDA(X, y, modelType = kind, verbose = FALSE)
  for (nf in c(10L, nrow(X))) {
    times <- numeric(reps)
    for (i in seq_len(reps)) {
      set.seed(i)
      times[i] <- system.time(cv <- cvMclustDA(m, nfold = nf, verbose = FALSE))[["elapsed"]]
    }
    out <- c(out, sprintf("\"%s_%d\":{\"s\":%f,\"error\":%f}", kind, nf, min(times), cv$ce))
  }
}
cat(paste0("{", paste(out, collapse = ","), "}"))
"""

KINDS = {"nonparametric": "bs", "weighted": "wlbs", "parametric": "pb"}


def run_r(script: str, frame: pd.DataFrame, *args: str) -> dict | None:
    if shutil.which("Rscript") is None:
        print("(R side skipped: no Rscript)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data, path = Path(tmp) / "data.csv", Path(tmp) / "bench.R"
        frame.to_csv(data, index=False)
        path.write_text(script)
        proc = subprocess.run(
            ["Rscript", str(path), str(data), *args], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        print(f"(R side skipped: {proc.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(repeat: int, func) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        func(i)
        times.append(time.perf_counter() - t0)
    return min(times)


def bootstrap_part(repeat: int, n_boot: int) -> None:
    X = bg.datasets.load_faithful()
    fit = bg.fit_em(X, 3, covariance_type="EEE")
    print(f"\n== bootstrap_em, Old Faithful EEE,3, {n_boot} replicates, best of {repeat}")
    r = run_r(R_BOOT, X, str(repeat), str(n_boot), "3", "EEE")
    if r is not None:
        print(f"mclust {r['version']}")
    print(f"{'kind':14} {'bayesgmm s':>10} {'mclust s':>9} {'ratio':>6}")
    for kind, rtype in KINDS.items():
        ours = best_of(
            repeat, lambda i, k=kind: bg.bootstrap_em(fit, X, n_boot=n_boot, kind=k, rng=i)
        )
        theirs = None if r is None else float(r[rtype])
        ratio = "" if theirs is None else f"{ours / theirs:6.2f}"
        print(f"{kind:14} {ours:10.2f} {'' if theirs is None else f'{theirs:9.2f}'} {ratio}")


def lrt_part(repeat: int, n_boot: int, n: int, csv: Path | None) -> None:
    if csv is not None:
        frame = pd.read_csv(csv).select_dtypes("number").iloc[:, :1].dropna()
    else:
        gm = bg.GaussianMixture([0.3, 0.4, 0.3], [[0.0], [3.0], [7.0]], [[[1.0]], [[0.6]], [[1.5]]])
        frame = pd.DataFrame({"x": gm.sample(n, rng=0)[0][:, 0]})
    print(
        f"\n== sequential bootstrap LRT, {len(frame)} rows × 1 feature, V, K = 1..5, "
        f"{n_boot} replicates per test, best of {repeat}"
    )
    r = run_r(R_LRT, frame, str(repeat), str(n_boot))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = []

        def one(i: int) -> None:
            comp = bg.compare_k(
                frame, range(1, 6), covariance_type="V", methods=("lrt",), n_boot_lrt=n_boot, rng=i
            )
            tables.append(comp.table)

        ours = best_of(repeat, one)
    print(f"bayesgmm {ours:.2f} s; p-values {tables[-1]['lrt_p'].round(3).tolist()}")
    if r is not None:
        print(f"mclust   {r['seconds']:.2f} s; p-values {np.round(r['p'], 3).tolist()}")
        print(f"ratio bayesgmm / mclust = {ours / r['seconds']:.2f}")


def cv_part(repeat: int, csv: Path | None, label: str) -> None:
    if csv is not None:
        data = pd.read_csv(csv)
        y = data[label]
        X = data.drop(columns=label).select_dtypes("number")
    else:
        data = bg.datasets.load_iris()
        label = "species"
        y, X = data[label], data.drop(columns=label)
    frame = X.assign(**{label: y.to_numpy()})
    print(
        f"\n== cross-validated discriminant analysis, {X.shape[0]} rows × {X.shape[1]} features, "
        f"{y.nunique()} classes, best of {repeat}"
    )
    r = run_r(R_CV, frame, str(repeat), label)
    print(f"{'kind':8} {'folds':>5} {'bayesgmm s':>10} {'mclust s':>9} {'ratio':>6}  errors")
    for kind, rkind in (("edda", "EDDA"), ("mixture", "MclustDA")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = bg.fit_classifier(X, y, kind=kind)
        for folds in (10, X.shape[0]):
            errors: list[float] = []

            def one(
                i: int, f: int = folds, m: bg.ClassifierResult = fit, out: list = errors
            ) -> None:
                out.append(bg.cross_validate_classifier(X, y, n_folds=f, fit=m, rng=i).error)

            ours = best_of(repeat, one)
            theirs = None if r is None else r[f"{rkind}_{folds}"]
            line = f"{kind:8} {folds:5d} {ours:10.3f}"
            if theirs is not None:
                line += f" {theirs['s']:9.3f} {ours / theirs['s']:6.2f}"
                line += f"  {errors[-1]:.4f} / {theirs['error']:.4f}"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=999)
    parser.add_argument("--lrt-boot", type=int, default=199)
    parser.add_argument("--lrt-n", type=int, default=155)
    parser.add_argument("--lrt-csv", type=Path, default=None)
    parser.add_argument("--cv-csv", type=Path, default=None)
    parser.add_argument("--cv-label", default="class")
    parser.add_argument("--only", choices=("bootstrap", "lrt", "cv"))
    args = parser.parse_args()
    if args.only in (None, "bootstrap"):
        bootstrap_part(args.repeat, args.n_boot)
    if args.only in (None, "lrt"):
        lrt_part(args.repeat, args.lrt_boot, args.lrt_n, args.lrt_csv)
    if args.only in (None, "cv"):
        cv_part(args.repeat, args.cv_csv, args.cv_label)


if __name__ == "__main__":
    main()
