"""Model selection speed and quality: bayesgmm's ``select_em`` against R's ``mclust::mclustBIC``.

Both fit the whole grid, every covariance structure (14 for several features, E and V for one)
× K = 1..9, on the same data in the same run, and the wall time of each is the best of
``--repeat`` runs (R's ``system.time`` around ``mclustBIC`` alone, so R's start-up and the
package load are not counted; likewise our imports). Two settings of ours are timed:

* ``default``: ``select_em(X)`` as users call it: mclust's hierarchical start plus 9 k-means++
  restarts per cell, cross-starts between structures, tolerance 1e-8 (relative);
* ``mclust-like``: the work mclust does: the hierarchical start only, no cross-starts, mclust's
  tolerance 1e-5.

For each, it prints the time, the ratio to mclust, the chosen model and its BIC, and in how many
cells ours is better (by more than 0.01), equal or worse than mclust's. A cell where mclust's
BIC beats ours (or that only mclust fits) is checked on up to 2,000 rows: where mclust's fit is
no valid optimum it is counted apart, with the reason: mclust's own EM, continued from its fit
to a tolerance of 1e-8, stops on a singular covariance (its tolerance of 1e-5 stopped it on the
way there), or our EM from its fit ends degenerate (a component collapsed onto tied points, as
a fit of ours there would be counted). The R side is skipped
when ``Rscript`` or its mclust package is missing (``apt-get install r-cran-mclust`` on Debian).

    uv run python benchmarks/select_vs_mclust.py                 # faithful
    uv run python benchmarks/select_vs_mclust.py --simulated 20000 --d 4
    uv run python benchmarks/select_vs_mclust.py --simulated 100000 --d 5 --only default \
        --repeat 1 --mclust-runs 5
    uv run python benchmarks/select_vs_mclust.py --csv iris.csv      # numeric columns only
    uv run python benchmarks/select_vs_mclust.py --mclust-data acidity   # a data set of R's mclust
    uv run python benchmarks/select_vs_mclust.py --r-data "MASS::geyser" # any R data frame
    uv run python benchmarks/select_vs_mclust.py --panel --only default  # 25 public data sets

``--mclust-runs R`` runs mclust R times instead and compares our table with each run and with
the median of the R BICs of each cell: above 2,000 rows mclust's start is an unseeded random
subset, and which optimum a cell reaches changes from run to run.

``--panel`` runs the default setting on 25 public data sets of R (mclust's, MASS's and R's own
``datasets``: 21 to 1,104 rows, 1 to 7 features), one line each and the totals; ``--panel
more`` on 6 others where our time is furthest from mclust's, ``--panel extra`` on 31 more that
no tuning of ours has looked at (15 to 2,287 rows, 1 to 12 features). A cell that
mclust fits and ours leaves empty (NaN) counts as worse ("lost"). ``--rounds N`` times each
data set in N rounds, mclust then ours in each, and keeps each side's best (with the range of
the rounds' ratios).
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

R_SCRIPT = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1]))
reps <- as.integer(args[2])
times <- numeric(reps)
for (i in seq_len(reps)) {
  times[i] <- system.time(b <- mclustBIC(X, G = 1:9, verbose = FALSE))[["elapsed"]]
}
tab <- unclass(b)[, , drop = FALSE]
out <- list(
  version = as.character(packageVersion("mclust")),
  seconds = min(times),
  models = colnames(tab),
  bic = lapply(seq_len(ncol(tab)), function(j) as.numeric(tab[, j]))
)
cat(paste0(
  "{\"version\":\"", out$version, "\",\"seconds\":", out$seconds, ",\"models\":[",
  paste0("\"", out$models, "\"", collapse = ","), "],\"bic\":[",
  paste(sapply(out$bic, function(v) paste0("[", paste(ifelse(is.na(v), "null",
    format(v, digits = 15)), collapse = ","), "]")), collapse = ","), "]}"
))
"""


#: For cells where mclust's BIC beats ours: mclust's fit of the cell (``Mclust`` with the same
#: hierarchical start as ``mclustBIC``'s), and mclust's own EM continued from it to a relative
#: tolerance of 1e-8 (its return code: 0 converged, < 0 a singular covariance).
CHECK_SCRIPT = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1]))
cells <- strsplit(strsplit(args[2], ",")[[1]], ":")
num <- function(v) paste0("[", paste(format(as.numeric(v), digits = 17), collapse = ","), "]")
out <- character(0)
for (cell in cells) {
  model <- cell[1]; k <- as.integer(cell[2])
  m <- Mclust(X, G = k, modelNames = model, verbose = FALSE)
  if (is.null(m)) next
  p <- m$parameters
  d <- ncol(X)
  sigma <- if (d == 1) rep_len(p$variance$sigmasq, k) else p$variance$sigma
  data <- if (d == 1) X[, 1] else X
  e <- em(data = data, modelName = model, parameters = p,
          control = emControl(tol = c(1e-8, sqrt(.Machine$double.eps))), warn = FALSE)
  code <- attr(e, "returnCode")
  out <- c(out, paste0(
    "{\"model\":\"", model, "\",\"k\":", k, ",\"bic\":", format(-m$bic, digits = 15),
    ",\"code\":", if (is.null(code)) 0 else code, ",\"weights\":", num(p$pro),
    ",\"means\":", num(p$mean), ",\"covariances\":", num(sigma), "}"))
}
cat(paste0("[", paste(out, collapse = ","), "]"))
"""


def run_mclust(X: pd.DataFrame, repeat: int) -> dict | None:
    """mclustBIC's best time over ``repeat`` runs and its BIC table, or None without R."""
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        script = Path(tmp) / "bench.R"
        X.to_csv(data, index=False)
        script.write_text(R_SCRIPT)
        proc = subprocess.run(
            ["Rscript", str(script), str(data), str(repeat)],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        print(f"(R side skipped: {proc.stderr.strip().splitlines()[-1:]})")
        return None
    out = json.loads(proc.stdout)
    table = pd.DataFrame(
        {
            m: [np.nan if v is None else -v for v in col]
            for m, col in zip(out["models"], out["bic"], strict=True)
        },
        index=pd.Index(range(1, 10), name="K"),
    )  # textbook sign, as ours
    return {"version": out["version"], "seconds": out["seconds"], "table": table}


def mclust_data(name: str) -> pd.DataFrame:
    """A data set shipped with R's mclust (its numeric columns), exported by Rscript."""
    return r_data(name)


def r_data(expression: str) -> pd.DataFrame:
    """The numeric columns of an R data frame (any expression, with mclust and MASS loaded and
    mclust's Baudry et al. examples ex4.1-ex4.3 in scope), exported by Rscript."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        code = (
            "suppressMessages({library(mclust); library(MASS)}); "
            "data(Baudry_etal_2010_JCGS_examples, package = 'mclust'); "
            f"d <- as.data.frame({expression}); "
            f"write.csv(d[sapply(d, is.numeric)], '{path}', row.names = FALSE)"
        )
        subprocess.run(["Rscript", "-e", code], check=True, capture_output=True)
        return pd.read_csv(path)


#: --panel's data sets: name → R expression (mclust's, MASS's and R's datasets).
PANEL = {
    "faithful": "faithful", "diabetes": "diabetes", "acidity": "acidity", "iris": "iris",
    "banknote": "banknote", "thyroid": "thyroid", "wreath": "wreath", "chevron": "chevron",
    "EuroUnemployment": "EuroUnemployment", "galaxies": "data.frame(v = galaxies / 1000)",
    "USArrests": "USArrests", "trees": "trees", "quakes": "quakes", "swiss": "swiss",
    "ex4.1": "ex4.1", "ex4.2": "ex4.2", "ex4.3": "ex4.3", "crabs": "crabs", "geyser": "geyser",
    "Boston": "Boston[, c('crim', 'nox', 'rm', 'lstat', 'medv')]", "cars": "cars",
    "stackloss": "stackloss", "rock": "rock", "mtcars": "mtcars[, 1:4]", "attitude": "attitude",
}  # fmt: skip

#: Data sets outside PANEL (``--panel more``) where our time is furthest from mclust's: one
#: feature (mclust's one-dimensional EM is its cheapest case) and heavy ties (DNase's
#: concentrations take 8 values: runs climb onto components of zero variance).
PANEL_MORE = {
    "sunspot.year": "data.frame(x = as.numeric(sunspot.year))",
    "eruptions": "data.frame(x = faithful$eruptions)", "rivers": "data.frame(x = rivers)",
    "lynx": "data.frame(x = as.numeric(lynx))", "DNase": "DNase[, 2:3]",
    "Pima.te": "MASS::Pima.te[, 1:7]",
}  # fmt: skip


#: Data sets that no tuning of ours has looked at (``--panel extra``), for checking the panels'
#: findings on new data: 31 from R's datasets and MASS, 15 to 2,287 rows, 1 to 12 features,
#: many with tied values.
PANEL_EXTRA = {
    "cats": "MASS::cats[, 2:3]", "birthwt": "MASS::birthwt[, c('age', 'lwt', 'bwt')]",
    "cpus": "MASS::cpus[, 2:7]", "airquality": "airquality[complete.cases(airquality), 1:4]",
    "ChickWeight": "ChickWeight[, 1:2]",
    "Melanoma": "MASS::Melanoma[, c('time', 'thickness', 'age')]", "CO2": "CO2[, 4:5]",
    "morley": "data.frame(x = morley[, 3])", "LifeCycleSavings": "LifeCycleSavings",
    "precip": "data.frame(x = precip)", "hills": "MASS::hills",
    "UScereal": "MASS::UScereal[, c('calories', 'protein', 'fat', 'sodium', 'fibre', 'carbo', "
    "'sugars', 'potassium')]",
    "cabbages": "MASS::cabbages[, 3:4]", "Loblolly": "Loblolly[, 1:2]", "Orange": "Orange[, 2:3]",
    "Cars93": "MASS::Cars93[, c('Price', 'MPG.city', 'Horsepower', 'RPM', 'Weight')]",
    "biopsy": "MASS::biopsy[complete.cases(MASS::biopsy), 2:10]", "Pima.tr": "MASS::Pima.tr[, 1:7]",
    "nlschools": "MASS::nlschools[, c('lang', 'IQ', 'SES')]",
    "survey": "na.omit(MASS::survey[, c('Wr.Hnd', 'NW.Hnd', 'Pulse', 'Height', 'Age')])",
    "islands": "data.frame(x = islands)", "longley": "longley", "fgl": "MASS::fgl[, 1:9]",
    "leuk": "MASS::leuk[, 1:2]", "USJudgeRatings": "USJudgeRatings", "road": "MASS::road",
    "women": "women", "Animals": "MASS::Animals", "nhtemp": "data.frame(x = as.numeric(nhtemp))",
    "Nile": "data.frame(x = as.numeric(Nile))",
    "log geyser": "data.frame(x = log(MASS::geyser[, 1]))",
}  # fmt: skip


def run_ours(X: pd.DataFrame, repeat: int, **kwargs) -> tuple[float, bg.SelectionResult]:
    best, sel = np.inf, None
    for _ in range(repeat):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            sel = bg.select_em(X, **kwargs)
            best = min(best, time.perf_counter() - t)
    assert sel is not None
    return best, sel


def compare_cells(ours: pd.DataFrame, theirs: pd.DataFrame, X: pd.DataFrame | None = None) -> str:
    """Cells better / equal / worse than mclust's (by 0.01); one mclust fits and ours leaves
    empty is worse ("lost"). With the data ``X``, each cell where mclust's BIC beats ours is
    checked (:func:`check_worse`): one whose mclust fit is no valid optimum is counted apart,
    with the reason."""
    better = equal = 0
    worse: list[tuple[str, int, str]] = []
    for model in theirs.columns:
        if model not in ours.columns:
            continue
        for k in theirs.index:
            a, b = ours.loc[k, model], theirs.loc[k, model]
            if np.isnan(a) and not np.isnan(b):
                worse.append((model, int(k), "lost"))
                continue
            if np.isnan(a) or np.isnan(b):
                continue
            if a < b - 0.01:
                better += 1
            elif a > b + 0.01:
                worse.append((model, int(k), f"+{a - b:.2f}"))
            else:
                equal += 1
    checked = {} if X is None or not worse else check_worse(X, [(m, k) for m, k, _ in worse])
    # (Only where the check refitted the table's own fit: the same BIC.)
    invalid = {
        key: why
        for key, (bic, why) in checked.items()
        if why and abs(bic - theirs.loc[key[1], key[0]]) <= 1e-6 * (1.0 + abs(bic))
    }
    real = [f"{m},{k} {gap}" for m, k, gap in worse if (m, k) not in invalid]
    text = f"{better} better / {equal} equal / {len(real)} worse"
    if real:
        text += " (" + ", ".join(real[:6]) + (", ..." if len(real) > 6 else "") + ")"
    if invalid:
        text += (
            f"; {len(invalid)} where mclust's fit is no valid optimum ("
            + "; ".join(
                f"{m},{k} {gap}: {invalid[(m, k)]}" for m, k, gap in worse if (m, k) in invalid
            )
            + ")"
        )
    return text


def check_worse(
    X: pd.DataFrame, cells: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[float, str | None]]:
    """For each of ``cells`` (structure, K): mclust's BIC of the cell refitted alone (the
    table's own fit where it is the same) and why that fit is no valid optimum, or None:
    mclust's own EM, continued from it to a relative tolerance of 1e-8, stops on a singular
    covariance (its tolerance of 1e-5 stopped it on the way), or our EM from it ends at a
    mixture that our rules call degenerate (a component collapsed onto tied points, docs/
    theory.md), as a fit of ours would be counted. Empty without R, and on more than 2,000
    rows (mclust's start is then a random subset: the refit is another fit)."""
    if X.shape[0] > 2000:
        return {}
    if shutil.which("Rscript") is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        script = Path(tmp) / "check.R"
        X.to_csv(data, index=False)
        script.write_text(CHECK_SCRIPT)
        spec = ",".join(f"{m}:{k}" for m, k in cells)
        proc = subprocess.run(
            ["Rscript", str(script), str(data), spec], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        return {}
    arr = X.to_numpy(dtype=float)
    d = arr.shape[1]
    out = {}
    for cell in json.loads(proc.stdout):
        key, k = (cell["model"], int(cell["k"])), int(cell["k"])
        if cell["code"] < 0:
            out[key] = (cell["bic"], "its own EM from it, to 1e-8, stops on a singular covariance")
            continue
        # (As VVV: mclust's constraint may hold to its inner tolerance only; fit_em starts
        # from the mixture itself where ours holds, else from its E-step.)
        mix = bg.GaussianMixture(
            np.asarray(cell["weights"]),
            np.asarray(cell["means"]).reshape(k, d),
            np.asarray(cell["covariances"]).reshape(k, d, d),
            covariance_type="VVV",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = bg.fit_em(arr, k, covariance_type=cell["model"], init=mix)
        why = None
        if fit.degenerate:
            why = f"our EM from it ends degenerate: {(fit.degenerate_reason or '').split(' (')[0]}"
        out[key] = (cell["bic"], why)
    return out


#: The work mclust does: its hierarchical start only, no cross-starts, its tolerance.
MCLUST_LIKE = {"n_init": 1, "cross_starts": False, "tol": 1e-5}


def run_panel(repeat: int, kwargs: dict, rounds: int = 1, panel: dict | None = None) -> None:
    """One line per data set of ``panel`` (PANEL by default), then the totals. With ``rounds``
    > 1 each data set is timed in that many rounds, mclust then ours in each (each side's best
    of ``repeat`` per round), and each side's best over the rounds is kept, with the range of
    the rounds' ratios: on a small shared VM one run's timings move by 20-50%, so one round's
    ratio near 1 decides nothing."""
    total_ours = total_theirs = 0.0
    print(f"{'data':<17} {'rows × cols':>11} {'mclust':>8} {'ours':>8} {'ratio':>6}  cells")
    for name, expression in (PANEL if panel is None else panel).items():
        X = r_data(expression)
        mine: list[float] = []
        theirs_s: list[float] = []
        theirs = None
        for _ in range(rounds):
            theirs = run_mclust(X, repeat)
            seconds, sel = run_ours(X, repeat, **kwargs)
            mine.append(seconds)
            if theirs is not None:
                theirs_s.append(theirs["seconds"])
        seconds = min(mine)
        total_ours += seconds
        shape = f"{X.shape[0]} × {X.shape[1]}"
        if theirs is None:
            print(f"{name:<17} {shape:>11} {'—':>8} {seconds:>7.3f}s")
            continue
        best_theirs = min(theirs_s)
        total_theirs += best_theirs
        cells = compare_cells(sel.table, theirs["table"], X)
        spread = ""
        if rounds > 1:
            ratios = [m / t for m, t in zip(mine, theirs_s, strict=True)]
            spread = f" (rounds {min(ratios):.2f}–{max(ratios):.2f})"
        print(
            f"{name:<17} {shape:>11} {best_theirs:>7.3f}s {seconds:>7.3f}s "
            f"{seconds / best_theirs:>6.2f}  {cells}{spread}",
            flush=True,
        )
    print(f"total: mclust {total_theirs:.2f} s, ours {total_ours:.2f} s")


def compare_runs(X: pd.DataFrame, runs: int, repeat: int, only: str | None) -> None:
    """Our table against each of ``runs`` runs of mclust and against their median BIC per cell
    (mclust's start on more than 2,000 rows is an unseeded random subset: which optimum a cell
    reaches changes from run to run)."""
    tables = []
    for i in range(runs):
        theirs = run_mclust(X, 1)
        if theirs is None:
            print("mclust: not run (Rscript with the mclust package is not installed).")
            return
        tables.append(theirs["table"])
        print(f"mclust run {i + 1}: {theirs['seconds']:.2f} s", flush=True)
    median = pd.concat(tables).groupby(level=0).median()
    settings = {"default": {}, "mclust-like": MCLUST_LIKE}
    for label, kwargs in settings.items():
        if only and label != only:
            continue
        seconds, sel = run_ours(X, repeat, **kwargs)
        print(f"bayesgmm {label:<11}: {seconds:.2f} s")
        for i, table in enumerate(tables, start=1):
            print(f"  against mclust run {i}: {compare_cells(sel.table, table)}")
        print(f"  against the median of the {runs} runs: {compare_cells(sel.table, median)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="a CSV file of numeric columns to use instead")
    parser.add_argument("--simulated", type=int, default=0, help="rows of simulated data")
    parser.add_argument("--mclust-data", help="a data set of R's mclust, e.g. acidity, thyroid")
    parser.add_argument("--r-data", help="an R expression giving a data frame, e.g. MASS::geyser")
    parser.add_argument(
        "--panel",
        nargs="?",
        const="main",
        choices=["main", "more", "extra"],
        help="the 25 data sets of PANEL, (more) the 6 of PANEL_MORE or (extra) the 31 of "
        "PANEL_EXTRA",
    )
    parser.add_argument("--d", type=int, default=3, help="features of the simulated data")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (best is kept)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --panel: time each data set in this many rounds, mclust then ours, and keep "
        "each side's best",
    )
    parser.add_argument(
        "--only", choices=["default", "mclust-like"], help="time one of our settings only"
    )
    parser.add_argument(
        "--mclust-runs",
        type=int,
        default=1,
        help="run mclust this many times (above 2,000 rows each draws its own random subset) "
        "and compare our table with each run and with the median of their BICs",
    )
    args = parser.parse_args()
    from bayesgmm.core import _compiled

    # The compiled code users run once numba's cache is built (in the background, the first
    # time): wait for it rather than time the numpy fallback by accident.
    print(f"compiled: {'yes' if _compiled.ready(wait=900) else 'no (BAYESGMM_COMPILED=0?)'}")

    if args.panel:
        run_panel(
            args.repeat,
            {} if args.only != "mclust-like" else MCLUST_LIKE,
            args.rounds,
            {"main": PANEL, "more": PANEL_MORE, "extra": PANEL_EXTRA}[args.panel],
        )
        return
    if args.r_data:
        X = r_data(args.r_data)
        name = f"R's {args.r_data} ({X.shape[0]} × {X.shape[1]})"
    elif args.mclust_data:
        X = mclust_data(args.mclust_data)
        name = f"mclust's {args.mclust_data} ({X.shape[0]} × {X.shape[1]})"
    elif args.csv:
        X = pd.read_csv(args.csv).select_dtypes("number")
        name = f"{args.csv} ({X.shape[0]} × {X.shape[1]})"
    elif args.simulated:
        rng = np.random.default_rng(0)
        k = 4
        means = rng.normal(scale=3.0, size=(k, args.d))
        covs = np.stack([np.cov(rng.normal(size=(args.d, 3 * args.d))) for _ in range(k)])
        truth = bg.GaussianMixture(np.full(k, 1 / k), means, covs, "VVV")
        X = pd.DataFrame(
            truth.sample(args.simulated, rng=1)[0], columns=[f"x{i}" for i in range(args.d)]
        )
        name = f"simulated {args.simulated} × {args.d}, 4 VVV components"
    else:
        X = bg.datasets.load_faithful()
        name = "faithful (272 × 2)"

    print(f"Data: {name}; grid: every structure × K = 1..9; best of {args.repeat} runs each.")
    if args.mclust_runs > 1:
        compare_runs(X, args.mclust_runs, args.repeat, args.only)
        return
    theirs = run_mclust(X, args.repeat)
    if theirs is None:
        print("mclust: not run (Rscript with the mclust package is not installed).")
    else:
        best = theirs["table"].stack().idxmin()
        print(
            f"mclust {theirs['version']}: {theirs['seconds']:.2f} s; best {best[1]},{best[0]} "
            f"BIC {theirs['table'].stack().min():.3f} (textbook sign)"
        )
    settings = {"default": {}, "mclust-like": MCLUST_LIKE}
    for label, kwargs in settings.items():
        if args.only and label != args.only:
            continue
        seconds, sel = run_ours(X, args.repeat, **kwargs)
        line = (
            f"bayesgmm {label:<11}: {seconds:.2f} s; best {sel.best.covariance_type},"
            f"{sel.best.n_components} BIC {sel.best.bic:.3f}"
        )
        if theirs is not None:
            ratio = theirs["seconds"] / seconds
            word = "faster" if ratio >= 1 else "slower"
            line += (
                f"; {max(ratio, 1 / ratio):.2f}× {word} than mclust; cells: "
                f"{compare_cells(sel.table, theirs['table'], X)}"
            )
        print(line)


if __name__ == "__main__":
    main()
