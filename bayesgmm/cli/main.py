"""The ``bayesgmm`` command: demo, fit, sample, compare, tree and report.

The command has no statistics of its own: it reads the data, calls the library and writes what
it returns. A user error (a bad file, a missing or text column, too few rows, K too large) is
one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesgmm.cli.data import CLIError, is_store, load_labels, load_table, parse_k
from bayesgmm.cli.pipeline import select_quietly

__all__ = ["main"]

METHODS = ("laplace", "pathfinder", "nuts", "nutpie", "advi", "fullrank_advi", "smc")


def _structures(text: str) -> Any:
    return "all" if text == "all" else [s.strip() for s in text.split(",") if s.strip()]


def _check_k(ks: list[int], n_rows: int) -> None:
    if max(ks) > n_rows:
        raise CLIError(
            f"--k asks for up to {max(ks)} components but the data have {n_rows} rows; K cannot "
            "exceed the number of observations. Use a smaller --k."
        )


def _print_model(best: Any) -> None:
    model = best.model
    print(f"Chosen model: {best.covariance_type} with K = {best.n_components} components")
    print(
        f"  loglik = {best.loglik:.3f}, {best.n_parameters} parameters, BIC = {best.bic:.2f}, "
        f"ICL = {best.icl:.2f} (mclust prints −BIC = {-best.bic:.2f})"
    )
    names = model.feature_names or tuple(f"x{j}" for j in range(model.n_features))
    for k in range(model.n_components):
        sd = np.sqrt(np.diag(model.covariances[k]))
        print(f"  component {k}: weight {model.weights[k]:.4f}")
        print(f"    mean  {dict(zip(names, np.round(model.means[k], 4).tolist(), strict=True))}")
        print(f"    sd    {dict(zip(names, np.round(sd, 4).tolist(), strict=True))}")


def _write_tree(tree: Any, path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".zarr":
        tree.to_zarr(p, mode="w", consolidated=False)
    elif p.suffix in (".nc", ".netcdf", ".h5"):
        tree.to_netcdf(p, engine="h5netcdf")
    else:
        raise CLIError(f"--output {path!r}: use a .nc (netCDF) or .zarr path.")
    print(f"wrote {p}")


def _load(args: argparse.Namespace, keep_missing: bool = False) -> Any:
    """DATA as a numeric DataFrame, its notices printed; rows with missing values kept for EM
    (``keep_missing``), dropped under --drop-missing, refused otherwise."""
    X, notices = load_table(args.data, args.columns, _missing_policy(args, keep_missing))
    for n in notices:
        print(f"note: {n}")
    return X


def _fit(args: argparse.Namespace) -> int:

    if is_store(args.data):
        return _fit_out_of_core(args)
    if args.scheduler:
        raise CLIError(
            "--scheduler is for a zarr store or a Parquet directory (out of core); a file is "
            "read into memory and fitted here."
        )
    X = _load(args, keep_missing=True)
    ks = parse_k(args.k)
    _check_k(ks, X.shape[0])
    t0 = time.perf_counter()
    sel = select_quietly(X, ks, _structures(args.structures), args.criterion, args.seed, False)
    _report_fit(args, sel, X, list(X.columns), t0)
    return 0


def _fit_out_of_core(args: argparse.Namespace) -> int:
    """``fit`` on a zarr store or a Parquet directory: select_em over the chunks (dask), on a
    running cluster with --scheduler, a progress line per pass."""
    import contextlib

    from bayesgmm.cli.data import load_lazy
    from bayesgmm.core._dask import pass_log

    X, notices = load_lazy(args.data, args.columns)
    for n in notices:
        print(f"note: {n}")
    ks = parse_k(args.k)
    names = [str(c) for c in (X.columns if hasattr(X, "columns") else X["feature"].values)]
    with contextlib.ExitStack() as stack:
        if args.scheduler:
            try:
                from distributed import Client

                client = stack.enter_context(Client(args.scheduler, timeout="10s"))
            except (OSError, TimeoutError) as err:
                raise CLIError(
                    f"--scheduler {args.scheduler!r}: no dask scheduler answered ({err}); start "
                    "one (dask scheduler) or leave --scheduler out to use this machine's cores."
                ) from None
            print(f"note: running on {client.scheduler.address}")
        stack.enter_context(pass_log(_print_pass(args.quiet)))
        t0 = time.perf_counter()
        sel = select_quietly(X, ks, _structures(args.structures), args.criterion, args.seed,
                             False)  # fmt: skip
        _report_fit(args, sel, None, names, t0)
    return 0


def _print_pass(quiet: bool) -> Any:
    """The progress line of each pass over the chunks (rich, on stderr)."""
    from rich.console import Console

    console = Console(stderr=True)
    count = [0]

    def show(seconds: float, loglik: np.ndarray) -> None:
        count[0] += 1
        if not quiet:
            console.print(
                f"EM pass {count[0]}: {seconds:.1f} s, {loglik.size} run(s), best "
                f"log-likelihood {np.max(loglik):.6g}",
                highlight=False,
            )

    return show


def _report_fit(args: argparse.Namespace, sel: Any, X: Any, features: list[str], t0: float) -> None:
    """What `fit` prints and writes for a selection (X: the data in memory, or None)."""
    import bayesgmm as bg

    print(sel)
    print()
    _print_model(sel.best)
    print(f"\nFitted {len(sel.results)} (structure, K) cells in {time.perf_counter() - t0:.1f} s.")
    if args.output:
        tree = bg.to_datatree(sel.best, X)  # out of core: no data group, lazy responsibilities
        tree["em"].attrs["criterion"] = args.criterion
        _write_tree(tree, args.output)
    if args.json:
        best = sel.best
        out = {
            "covariance_type": best.covariance_type,
            "n_components": best.n_components,
            "loglik": best.loglik,
            "bic": best.bic,
            "icl": best.icl,
            "n_parameters": best.n_parameters,
            "weights": best.model.weights.tolist(),
            "means": best.model.means.tolist(),
            "covariances": best.model.covariances.tolist(),
            "features": features,
            "table": {
                str(s): {str(k): (None if np.isnan(v) else float(v)) for k, v in col.items()}
                for s, col in sel.table.items()
            },
            "criterion": args.criterion,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


def _sample(args: argparse.Namespace) -> int:
    import bayesgmm as bg

    X = _load(args, keep_missing=True)
    [k] = parse_k(args.k) if ":" not in args.k and "," not in args.k else [None]
    if k is None:
        raise CLIError(f"--k must be one number of components for sample; got {args.k!r}.")
    _check_k([k], X.shape[0])
    t0 = time.perf_counter()
    post = bg.fit_bayes(
        X,
        k,
        covariance_type=args.structure,
        method=args.method,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        rng=args.seed,
        progressbar=not args.quiet,
    )
    from arviz_stats import summary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(summary(post, var_names=["weights", "means"]))
    from bayesgmm.bayes import diagnose

    print(f"\n{post.attrs['bayesgmm_method']}: {time.perf_counter() - t0:.1f} s")
    if "bayesgmm_method_reason" in post.attrs:
        print(post.attrs["bayesgmm_method_reason"])
    print(diagnose(post))
    _write_tree(post, args.output)
    return 0


def _compare(args: argparse.Namespace) -> int:
    import bayesgmm as bg

    X = _load(args, keep_missing=True)
    ks = parse_k(args.k)
    _check_k(ks, X.shape[0])
    methods = [m.strip() for m in args.methods.split(",")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.DegenerateFitWarning)
        cmp = bg.compare_k(
            X,
            ks,
            covariance_type=args.structure,
            methods=methods,
            bayes_method=args.method,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            n_boot_lrt=args.n_boot_lrt,
            rng=args.seed,
            progressbar=not args.quiet,
        )
    print(cmp)
    if args.output:
        cmp.table.to_csv(args.output)
        print(f"wrote {args.output}")
    return 0


def _tree(args: argparse.Namespace) -> int:
    import bayesgmm as bg

    X = _load(args)
    if args.k < 1 or args.k > X.shape[0]:
        raise CLIError(
            f"--k {args.k} is outside 1..{X.shape[0]} (the data's rows); use a K in that range."
        )
    tree = bg.hierarchical(
        X,
        args.linkage,
        covariance_type=args.structure,
        use=args.use,
        max_rows=args.max_rows,
        rng=args.seed,
    )
    labels = tree.labels_for(X.to_numpy(), args.k)
    what = f"model-based {tree.covariance_type}" if tree.linkage == "model" else tree.linkage
    sub = "" if tree.n_initial == tree.n_obs else f", built on {tree.n_initial} sampled rows"
    print(
        f"Agglomerative clustering ({what} linkage, {tree.use} coordinates, {tree.n_obs} "
        f"rows{sub}); cut at K = {args.k}:"
    )
    for j, size in enumerate(np.bincount(labels, minlength=args.k)):
        print(f"  cluster {j}: {size} rows")
    if args.labels:
        import pandas as pd

        pd.DataFrame({"cluster": labels}, index=X.index).to_csv(args.labels)
        print(f"wrote {args.labels}")
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
        bg.plots.plot_dendrogram(tree, k=args.k, path=args.output)
        print(f"wrote {args.output}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    import pandas as pd

    import bayesgmm as bg

    y = load_labels(args.data, args.label)
    X, notices = load_table(
        args.data, args.columns, _missing_policy(args, True), exclude=args.label
    )
    for n in notices:
        print(f"note: {n}")
    y = y.loc[X.index]
    t0 = time.perf_counter()
    fit = bg.fit_classifier(
        X, y.to_numpy(), kind=args.kind, n_components=parse_k(args.k),
        covariance_types=_structures(args.structures),
    )  # fmt: skip
    folds = min(args.folds, X.shape[0])
    cv = bg.cross_validate_classifier(X, y.to_numpy(), n_folds=folds, fit=fit, rng=args.seed)
    kind = "EDDA (one Gaussian per class)" if args.kind == "edda" else "a mixture per class"
    print(f"Discriminant analysis, {kind}: {fit.classes.size} classes, {X.shape[0]} rows.")
    print(fit.table.to_string())
    train = fit.error(X, y.to_numpy())
    print(f"\ntraining error {train:.4f} ({round(train * X.shape[0])} rows)")
    print(
        f"{folds}-fold cross-validated error {cv.error:.4f} "
        f"({round(cv.error * X.shape[0])} rows), Brier score {cv.brier:.4f}"
    )
    confusion = pd.crosstab(
        pd.Series(y.to_numpy(), name="class"), pd.Series(cv.predicted, name="predicted")
    )
    print("\nconfusion (cross-validated predictions):")
    print(confusion.to_string())
    print(f"\nFitted and cross-validated in {time.perf_counter() - t0:.1f} s.")
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
        wrong = cv.predicted != y.to_numpy()
        bg.plots.plot_partitions(
            X, {"classes": y.to_numpy(), "cross-validated prediction": cv.predicted},
            features=(0, 1) if X.shape[1] > 1 else (0, 0), path=args.output,
        )  # fmt: skip
        print(f"wrote {args.output} ({int(wrong.sum())} rows misclassified)")
    if args.json:
        out = {
            "kind": args.kind,
            "classes": [str(c) for c in fit.classes],
            "models": {
                str(c): {"structure": str(r["structure"]), "n_components": int(r["n_components"])}
                for c, r in fit.table.iterrows()
            },
            "training_error": train,
            "cv_error": cv.error,
            "cv_brier": cv.brier,
            "n_folds": folds,
            "confusion": {str(k): {str(j): int(v) for j, v in row.items()}
                          for k, row in confusion.iterrows()},
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


def _run_report(X: Any, notices: list[str], args: argparse.Namespace, title: str) -> Path:
    from bayesgmm.cli.pipeline import Settings, run_analysis

    ks = parse_k(args.k)
    _check_k(ks, X.shape[0])
    settings = Settings(
        ks=tuple(ks),
        structures=_structures(args.structures),
        method=args.method,
        draws=args.draws,
        chains=args.chains,
        n_boot=args.n_boot,
        compare_ks=tuple(parse_k(args.compare_k)) if args.compare_k else None,
        loo=not args.no_loo,
        seed=args.seed,
        progress=not args.quiet,
    )
    report, _ = run_analysis(X, settings, title, notices)
    out = Path(args.output)
    report.write(out)
    return out


def _missing_policy(args: argparse.Namespace, keep_missing: bool) -> str:
    if getattr(args, "drop_missing", False):
        return "drop"
    return "keep" if keep_missing else "refuse"


def _report(args: argparse.Namespace) -> int:
    X, notices = load_table(args.data, args.columns, _missing_policy(args, True))
    out = _run_report(X, notices, args, f"Gaussian mixture report: {Path(args.data).name}")
    print(f"wrote {out.resolve()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import bayesgmm as bg

    X = bg.datasets.load_faithful()
    print(
        f"Old Faithful: {X.shape[0]} eruptions × {X.shape[1]} features ({', '.join(X.columns)}).",
        flush=True,
    )
    t0 = time.perf_counter()
    out = _run_report(X, [], args, "Old Faithful: a Gaussian mixture report (bayesgmm demo)")
    print(f"\nThe whole pipeline took {time.perf_counter() - t0:.1f} s.")
    print(f"Report: {out.resolve()}")
    return 0


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="a CSV, Parquet or netCDF file")
    p.add_argument("--columns", help="comma-separated columns to use (default: every numeric one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--drop-missing",
        action="store_true",
        help="drop rows with missing values (otherwise each row's observed values are used; "
        "tree needs complete rows)",
    )


def _add_bayes(p: argparse.ArgumentParser, draws: int, chains: int) -> None:
    p.add_argument(
        "--method",
        choices=("auto", *METHODS),
        default="auto",
        help="how to draw the posterior (default auto: the Laplace approximation, or NUTS "
        "where Laplace fails its own check)",
    )
    p.add_argument("--draws", type=int, default=draws, help=f"draws per chain (default {draws})")
    p.add_argument("--tune", type=int, default=1000, help="NUTS tuning steps (default 1000)")
    p.add_argument("--chains", type=int, default=chains, help=f"chains (default {chains})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_report(
    p: argparse.ArgumentParser,
    k: str,
    compare_k: str | None,
    draws: int,
    chains: int,
    n_boot: int,
    output: str,
) -> None:
    p.add_argument("--k", default=k, help=f"K for EM selection, e.g. 1:9 (default {k})")
    p.add_argument("--structures", default="all", help="all, or e.g. VVV,EEE (default all)")
    p.add_argument(
        "--compare-k",
        default=compare_k,
        help="K compared by BIC, ICL and LOO (default: the --k range)",
    )
    p.add_argument("--no-loo", action="store_true", help="compare K by BIC and ICL only")
    p.add_argument("--n-boot", type=int, default=n_boot, help=f"bootstrap replicates ({n_boot})")
    p.add_argument("--output", default=output, help=f"the HTML file (default {output})")
    _add_bayes(p, draws, chains)


def _build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="bayesgmm",
        description="Gaussian mixture models: EM with mclust's covariance structures, the same "
        "model's posterior in PyMC, and the two compared in ArviZ.",
        epilog="Run 'bayesgmm COMMAND --help' for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        formatter_class=raw,
        help="the whole pipeline on the bundled Old Faithful data, written as a report",
        description="EM selection over K and every structure, the posterior at the chosen "
        "model, the bootstrap, the comparison over K, and an HTML report, on Old Faithful at "
        "small settings.\n\nexamples:\n  bayesgmm demo\n  bayesgmm demo --output demo.html "
        "--method nuts --draws 500",
    )
    _add_report(demo, "1:9", "2:4", 500, 2, 99, "bayesgmm-demo/report.html")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)

    fit = sub.add_parser(
        "fit",
        formatter_class=raw,
        help="EM selection over K and covariance structures",
        description="Fit every (structure, K) by EM and choose by BIC or ICL, as mclust's "
        "Mclust; print the table and the chosen model.\n\nexamples:\n  bayesgmm fit data.csv "
        "--k 1:9\n  bayesgmm fit data.csv --k 2:5 --structures VVV,EEE --criterion icl "
        "--columns x,y --output fit.nc --json fit.json\n  bayesgmm fit cytometry.zarr --k 1:12 "
        "--scheduler tcp://10.0.0.1:8786   (out of core: a zarr store or Parquet directory)",
    )
    _add_data(fit)
    fit.add_argument("--k", default="1:9", help="K to try: 1:9, 3 or 2,4 (default 1:9)")
    fit.add_argument("--structures", default="all", help="all, or e.g. VVV,EEE (default all)")
    fit.add_argument("--criterion", choices=("bic", "icl"), default="bic")
    fit.add_argument("--output", help="write the chosen fit as a DataTree (.nc or .zarr)")
    fit.add_argument("--json", help="write the chosen fit and the table as JSON")
    fit.add_argument(
        "--scheduler",
        help="address of a running dask scheduler (e.g. tcp://10.0.0.1:8786) for a zarr store "
        "or Parquet directory (default: this machine's cores)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress line per pass")
    fit.set_defaults(func=_fit)

    sample = sub.add_parser(
        "sample",
        formatter_class=raw,
        help="the posterior of one mixture (PyMC), to netCDF/zarr",
        description="Draw the posterior of the K-component mixture, started from EM, and "
        "write it as an ArviZ DataTree.\n\nexamples:\n  bayesgmm sample data.csv --k 3 "
        "--method nuts --output posterior.nc\n  bayesgmm sample data.csv --k 2 --structure V "
        "--method smc --output posterior.zarr",
    )
    _add_data(sample)
    sample.add_argument("--k", required=True, help="the number of components")
    sample.add_argument("--structure", default="VVV", help="covariance structure (default VVV)")
    sample.add_argument("--output", default="posterior.nc", help="a .nc or .zarr path")
    _add_bayes(sample, 1000, 4)
    sample.set_defaults(func=_sample)

    compare = sub.add_parser(
        "compare",
        formatter_class=raw,
        help="the choice of K by BIC, ICL, LRT, LOO and SMC",
        description="Compare numbers of components by EM's BIC and ICL, the bootstrap LRT, "
        "the posterior's PSIS-LOO (with a parsimony rule) and SMC's evidence.\n\nexamples:\n"
        "  bayesgmm compare data.csv --k 1:5\n  bayesgmm compare data.csv --k 1:7 --structure V "
        "--methods bic,icl,loo,smc --output criteria.csv",
    )
    _add_data(compare)
    compare.add_argument("--k", default="1:5", help="K to compare (default 1:5)")
    compare.add_argument("--structure", default="VVV", help="covariance structure (default VVV)")
    compare.add_argument(
        "--methods",
        default="bic,icl,loo",
        help="criteria among bic,icl,lrt,loo,smc (default bic,icl,loo)",
    )
    compare.add_argument("--n-boot-lrt", type=int, default=99, help="LRT replicates (99)")
    compare.add_argument("--output", help="write the table as CSV")
    _add_bayes(compare, 1000, 4)
    compare.set_defaults(func=_compare)

    tree = sub.add_parser(
        "tree",
        formatter_class=raw,
        help="agglomerative hierarchical clustering: cut sizes and the dendrogram",
        description="Build the agglomerative tree (mclust's model-based one, or scipy's "
        "linkages), cut it at K, print the clusters' sizes and write the dendrogram.\n\n"
        "examples:\n  bayesgmm tree data.csv --k 3\n  bayesgmm tree data.csv --linkage ward "
        "--k 3 --output dendrogram.png --labels clusters.csv",
    )
    _add_data(tree)
    tree.add_argument(
        "--linkage",
        default="model",
        choices=("model", "ward", "average", "complete", "single"),
        help="model (mclust's model-based criterion; default) or scipy's linkage",
    )
    tree.add_argument(
        "--structure",
        help="model-based criterion: VVV, VII, EEE or EII; V or E for one feature (default VVV, "
        "or V for one feature)",
    )
    tree.add_argument(
        "--use",
        choices=("svd", "standardised", "raw"),
        help="coordinates (default svd for model, raw for the others)",
    )
    tree.add_argument("--k", type=int, default=3, help="the cut (default 3)")
    tree.add_argument("--max-rows", type=int, help="build the tree on this many sampled rows")
    tree.add_argument("--output", default="dendrogram.png", help="the dendrogram (PNG, SVG, PDF)")
    tree.add_argument("--labels", help="write each row's cluster as CSV")
    tree.set_defaults(func=_tree)

    classify = sub.add_parser(
        "classify",
        formatter_class=raw,
        help="discriminant analysis of a labelled data set, cross-validated",
        description="Fit each class's density (EDDA: one Gaussian per class under a common "
        "structure chosen by BIC; or a mixture per class), classify by Bayes' rule, and "
        "cross-validate: the chosen models, the error and Brier score, the confusion matrix."
        "\n\nexamples:\n  bayesgmm classify iris.csv --label species\n  bayesgmm classify "
        "iris.csv --label species --kind mixture --k 1:3 --folds 150 --output classes.png",
    )
    _add_data(classify)
    classify.add_argument("--label", required=True, help="the column holding each row's class")
    classify.add_argument("--kind", choices=("edda", "mixture"), default="edda")
    classify.add_argument("--k", default="1:5", help="K per class for --kind mixture (1:5)")
    classify.add_argument("--structures", default="all", help="all, or e.g. VVV,EEE")
    classify.add_argument(
        "--folds", type=int, default=10, help="cross-validation folds (default 10; n: LOO)"
    )
    classify.add_argument("--output", help="a figure of the classes and the predictions")
    classify.add_argument("--json", help="write the models, errors and confusion as JSON")
    classify.set_defaults(func=_classify)

    report = sub.add_parser(
        "report",
        formatter_class=raw,
        help="a self-contained HTML report of the whole analysis",
        description="EM selection, the posterior at the chosen model, the bootstrap, the "
        "comparison over K, figures and a reading in words, in one HTML file.\n\nexamples:\n"
        "  bayesgmm report data.csv --output report.html\n  bayesgmm report data.csv --k 1:6 "
        "--method nuts --draws 1000 --chains 4",
    )
    _add_data(report)
    _add_report(report, "1:9", None, 1000, 4, 199, "report.html")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    for name in ("draws", "chains", "n_boot", "tune", "n_boot_lrt"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    try:
        return int(args.func(args))
    except CLIError as err:
        print(f"bayesgmm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        # The library's own errors name the argument and the fix: one line, not a traceback
        # (BAYESGMM_DEBUG=1 shows the traceback).
        if os.environ.get("BAYESGMM_DEBUG"):
            raise
        print(f"bayesgmm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
