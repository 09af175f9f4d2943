"""The command line: every subcommand's help, its outputs, and its error paths (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesgmm as bg
from bayesgmm.cli.main import main

COMMANDS = ("demo", "fit", "sample", "compare", "tree", "report", "classify")


@pytest.fixture(scope="module")
def faithful_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "faithful.csv"
    frame = bg.datasets.load_faithful()
    frame.insert(0, "label", [f"e{i}" for i in range(len(frame))])  # a text column
    frame.to_csv(path, index=False)
    return path


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "bayesgmm.cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"bayesgmm {command}" in out


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def test_error_paths(tmp_path, capsys, faithful_csv):
    assert "does not exist" in _error(capsys, ["fit", str(tmp_path / "nope.csv")])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "is empty" in _error(capsys, ["fit", str(empty)])
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    assert "has no rows" in _error(capsys, ["fit", str(header_only)])
    err = _error(capsys, ["fit", str(faithful_csv), "--columns", "label,waiting"])
    assert "['label'] are not numeric" in err
    assert "not in DATA" in _error(capsys, ["fit", str(faithful_csv), "--columns", "nope"])
    err = _error(capsys, ["fit", str(faithful_csv), "--k", "1:300"])
    assert "up to 300 components but the data have 272 rows" in err
    assert "--k must be" in _error(capsys, ["fit", str(faithful_csv), "--k", "two"])
    wrong = tmp_path / "data.xlsx"
    wrong.write_text("x")
    assert "pass a .csv" in _error(capsys, ["fit", str(wrong)])
    # the library's own errors come through in one line too
    err = _error(capsys, ["fit", str(faithful_csv), "--k", "2", "--structures", "XYZ"])
    assert "XYZ" in err
    missing = tmp_path / "missing.csv"
    missing.write_text("a,b\n1,2\n,3\n4,5\n")
    err = _error(capsys, ["tree", str(missing), "--k", "2"])
    assert "1 values missing in 1 of 3 rows (a 1)" in err and "--drop-missing" in err
    err = _error(capsys, ["sample", str(faithful_csv), "--k", "1:3"])
    assert "one number of components" in err


def test_bad_counts_are_usage_errors(capsys, faithful_csv):
    with pytest.raises(SystemExit) as err:
        main(["sample", str(faithful_csv), "--k", "2", "--draws", "0"])
    assert err.value.code == 2
    assert "--draws must be at least 1" in capsys.readouterr().err


def test_fit_writes_a_datatree_and_json(tmp_path, capsys, faithful_csv):
    nc, js = tmp_path / "fit.nc", tmp_path / "fit.json"
    argv = ["fit", str(faithful_csv), "--k", "1:4", "--output", str(nc), "--json", str(js)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "non-numeric columns dropped: label" in out
    assert "Chosen model: EEE with K = 3" in out  # as mclust (tests/reference/mclust.json)
    tree = xr.open_datatree(nc, engine="h5netcdf")
    assert tree["em"].attrs["covariance_type"] == "EEE"
    assert list(tree["em"].coords["feature"].values) == ["eruptions", "waiting"]
    data = json.loads(js.read_text())
    assert data["n_components"] == 3 and len(data["means"]) == 3
    assert data["table"]["EEE"]["3"] == pytest.approx(data["bic"])


def test_fit_uses_rows_with_missing_values(tmp_path, capsys, faithful_csv):
    frame = bg.datasets.load_faithful()
    holes = frame.copy()
    holes.iloc[::10, 0] = np.nan  # 28 of 272 eruptions missing
    path = tmp_path / "holes.csv"
    holes.to_csv(path, index=False)
    nc = tmp_path / "fit.nc"
    argv = ["fit", str(path), "--k", "3", "--structures", "EEE", "--output", str(nc)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "28 values missing in 28 of 272 rows (eruptions 28)" in out
    assert "modelled as missing at random" in out
    tree = xr.open_datatree(nc, engine="h5netcdf")
    assert tree["observed_data"]["x"].shape == (272, 2)
    # The chosen fit's log-likelihood is the library's on the data with its holes (fit_em's
    # runs stop on a relative change of 1e-8 per iteration, on other paths than the grid's:
    # the optimum agrees to about that).
    ref = bg.fit_em(holes, 3, covariance_type="EEE")
    assert tree["em"].attrs["loglik"] == pytest.approx(ref.loglik, rel=1e-7)
    tree.close()
    assert main([*argv[:-2], "--drop-missing"]) == 0
    assert "--drop-missing dropped those rows" in capsys.readouterr().out


def test_parquet_and_netcdf_inputs(tmp_path, capsys):
    frame = bg.datasets.load_faithful()
    pq = tmp_path / "f.parquet"
    frame.to_parquet(pq)
    nc = tmp_path / "f.nc"
    xr.Dataset(
        {"x": (("obs", "feature"), frame.to_numpy())},
        coords={"feature": list(frame.columns)},
    ).to_netcdf(nc, engine="h5netcdf")
    for path in (pq, nc):
        assert main(["fit", str(path), "--k", "3", "--structures", "EEE"]) == 0
        out = capsys.readouterr().out
        assert "Chosen model: EEE with K = 3" in out


@pytest.fixture(scope="module")
def faithful_report(tmp_path_factory, faithful_csv):
    out = tmp_path_factory.mktemp("r") / "report.html"
    argv = [
        "report",
        str(faithful_csv),
        "--k",
        "1:3",
        "--structures",
        "EEE,VVV",
        "--compare-k",
        "2:3",
        "--draws",
        "60",
        "--chains",
        "2",
        "--n-boot",
        "10",
        "--method",
        "laplace",  # the default, auto, is test_demo_small's
        "--output",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    return out


def test_report_is_self_contained_html(faithful_report):
    text = faithful_report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # BIC per structure, the mixture, the dendrogram, the forest plot, the criteria against
    # K: all embedded
    assert text.count('src="data:image/png;base64,') == 5
    for heading in (
        "EM: model selection by BIC",
        "The hierarchical tree",
        "EM against the posterior",
        "How many components?",
        "Reading",
        "Settings and versions",
    ):
        assert heading in text
    assert "pymc" in text  # the versions used
    assert "http" not in text and "<script" not in text  # nothing fetched, nothing run
    # Every table in a box that scrolls sideways, so none widens the page past its 1100 px.
    assert text.count("<table") == text.count('<div class="table"><table')
    assert "div.table { max-width: 100%; overflow-x: auto; }" in text


_MEASURE = """<script>
window.addEventListener("load", () => {
  const rect = (e) => e.getBoundingClientRect().width;
  const out = {
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    body: document.body.clientWidth,
    tables: [...document.querySelectorAll("div.table")].map((d) => ({
      box: rect(d), content: d.scrollWidth, scrolls: getComputedStyle(d).overflowX,
    })),
    images: [...document.images].map((i) => ({
      decoded: i.complete && i.naturalWidth > 0, width: rect(i), natural: i.naturalWidth,
    })),
  };
  const pre = document.createElement("pre");
  pre.id = "measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_renders_in_a_browser(faithful_report, tmp_path):
    # The report as a reader sees it, 1100 px wide (issue 15): headless Chromium lays the page
    # out, a measuring script (added to a copy: the report itself runs none) reports every
    # table's and figure's rendered width, and a screenshot must show the page.
    import re

    import matplotlib.image as mpimg

    browser = _browser()
    page = tmp_path / "measured.html"
    page.write_text(faithful_report.read_text().replace("</body>", _MEASURE + "</body>"))
    # No network: the background-networking flags keep Chromium from trying to reach out.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,4000",
             "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, "the page did not finish loading in Chromium"
    m = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert m["page"] <= m["viewport"]  # nothing widens the page: no sideways scrolling
    assert len(m["tables"]) >= 6
    for table in m["tables"]:
        assert table["box"] <= m["body"] + 1  # every table's box fits the page ...
        assert table["scrolls"] == "auto"  # ... and a wider table scrolls inside it
    assert any(t["content"] <= t["box"] + 1 for t in m["tables"])
    assert len(m["images"]) == 5
    for image in m["images"]:
        assert image["decoded"] and image["natural"] > 200  # every figure decoded ...
        assert 200 < image["width"] <= m["body"] + 1  # ... shown, within the page
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", faithful_report.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[1] == 1100
    inked = (pixels.min(axis=2) < 0.9).mean()  # the share of pixels that are not white
    assert 0.02 < inked < 0.9


def test_table_numbers_have_one_format():
    # 4 significant figures; the log-likelihood scale (criteria, ELPD and its SE) one decimal.
    from bayesgmm.cli.report import _table_html, format_number

    assert format_number(0.028741) == "0.02874"
    assert format_number(11.408) == "11.41"
    assert format_number(77.4712) == "77.47"
    assert format_number(123456.7) == "123457"
    assert format_number(2.5e-5) == "2.500e-05"
    assert format_number(2314.2961, log_scale=True) == "2314.3"
    assert format_number(np.nan) == "" and format_number(3) == "3" and format_number(True) == "True"
    frame = pd.DataFrame({"bic": [2314.2961], "elpd_loo": [-1150.04], "se": [11.408],
                          "weight": [0.35642]})  # fmt: skip
    import re

    cells = re.findall(r"<td>(.*?)</td>", _table_html(frame))
    assert cells == ["2314.3", "-1150.0", "11.4", "0.3564"]


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo.html"
    argv = [
        "demo",
        "--k",
        "1:3",
        "--structures",
        "EEE",
        "--compare-k",
        "3",
        "--draws",
        "40",
        "--chains",
        "2",
        "--n-boot",
        "10",
        "--output",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Old Faithful: 272 eruptions" in printed
    assert f"Report: {out.resolve()}" in printed
    text = out.read_text()
    assert "EEE, K = 3" in text
    # The method that drew the posterior, why, and its diagnostics (method auto).
    assert "Method: " in text and ("pareto_k" in text or "rhat" in text)
    assert "The posterior at EEE, K = 3 was drawn by" in text


def test_compare_prints_the_table(tmp_path, capsys, faithful_csv):
    csv = tmp_path / "criteria.csv"
    argv = [
        "compare",
        str(faithful_csv),
        "--k",
        "1:4",
        "--structure",
        "EEE",
        "--methods",
        "bic,icl",
        "--output",
        str(csv),
        "--quiet",
    ]
    assert main(argv) == 0
    assert "BIC: K=3" in capsys.readouterr().out
    table = pd.read_csv(csv, index_col=0)
    assert list(table.index) == [1, 2, 3, 4]
    assert np.isfinite(table["bic"]).all()


def test_sample_writes_the_posterior(tmp_path, capsys, faithful_csv):
    out = tmp_path / "post.zarr"
    argv = [
        "sample",
        str(faithful_csv),
        "--k",
        "3",
        "--structure",
        "EEE",
        "--draws",
        "30",
        "--chains",
        "2",
        "--method",
        "laplace",
        "--output",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "laplace:" in printed and "means[" in printed  # ArviZ's summary
    assert "Diagnosis(laplace" in printed and "pareto_k" in printed
    tree = xr.open_datatree(out, engine="zarr", consolidated=False)
    assert tree["posterior"]["means"].shape == (2, 30, 3, 2)
    assert "log_likelihood" in tree.children and "em" in tree.children
    with pytest.raises(SystemExit):
        main(["sample", str(faithful_csv), "--k", "3", "--method", "gibbs"])


def test_tree_prints_the_cut_and_writes_the_dendrogram(tmp_path, capsys, faithful_csv):
    png, labels = tmp_path / "d.png", tmp_path / "labels.csv"
    argv = ["tree", str(faithful_csv), "--linkage", "ward", "--k", "3"]
    assert main([*argv, "--output", str(png), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    X = bg.datasets.load_faithful()
    sizes = np.bincount(bg.hierarchical(X, "ward").cut(3))  # the library's cut, printed
    for j, size in enumerate(sizes):
        assert f"cluster {j}: {size} rows" in out
    assert png.stat().st_size > 0
    written = pd.read_csv(labels)["cluster"].to_numpy()
    np.testing.assert_array_equal(np.bincount(written), sizes)
    assert _error(capsys, ["tree", str(faithful_csv), "--k", "0"]).startswith(
        "bayesgmm tree: error: --k 0 is outside 1..272"
    )


def test_classify_prints_models_errors_and_confusion(tmp_path, capsys):
    path = tmp_path / "iris.csv"
    bg.datasets.load_iris().to_csv(path, index=False)
    js = tmp_path / "cls.json"
    argv = ["classify", str(path), "--label", "species", "--folds", "150", "--json", str(js)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "EDDA" in out and "VEV" in out  # mclust 6.0.0's EDDA choice (tests/reference)
    assert "training error 0.0200 (3 rows)" in out
    assert "150-fold cross-validated error 0.0267 (4 rows)" in out  # mclust's LOO: 4 rows
    data = json.loads(js.read_text())
    assert sum(sum(r.values()) for r in data["confusion"].values()) == 150
    assert "--label 'nope' is not a column" in _error(
        capsys, ["classify", str(path), "--label", "nope"]
    )


def test_fit_reads_a_zarr_store_and_a_parquet_directory_out_of_core(tmp_path, capsys):
    # A directory DATA is read lazily (dask) and never gathered; a progress line per pass.
    da = pytest.importorskip("dask.array")
    import zarr

    frame = bg.datasets.load_faithful()
    data = frame.to_numpy()
    store = tmp_path / "f.zarr"
    da.from_array(data, chunks=(68, 2)).to_zarr(str(store))
    zarr.open_array(str(store), mode="r+").attrs["columns"] = ["eruptions", "waiting"]
    out = tmp_path / "f.json"
    argv = ["fit", str(store), "--k", "2:3", "--structures", "EEE", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "272 rows × 2 in a zarr store, 4 chunks: read out of core (dask)" in printed.out
    assert "EM pass 1:" in printed.err
    fit = json.loads(out.read_text())
    assert fit["features"] == ["eruptions", "waiting"] and fit["n_components"] == 3
    model = bg.GaussianMixture(fit["weights"], fit["means"], fit["covariances"], "EEE")
    assert fit["loglik"] == pytest.approx(model.score(data), rel=1e-10)  # a full-data number
    parquet = tmp_path / "pq"
    parquet.mkdir()
    with_text = frame.assign(label="x")
    for i in range(2):
        with_text.iloc[i * 136 : (i + 1) * 136].to_parquet(parquet / f"part{i}.parquet")
    assert main(["fit", str(parquet), "--k", "3", "--structures", "EEE", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "non-numeric columns dropped: label" in printed.out
    assert "EM pass" not in printed.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fit", str(empty), "--k", "2"]) == 2
    assert "neither a zarr store" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "f.json"), "--k", "2", "--scheduler", "tcp://x:1"]) == 2
    assert "--scheduler is for a zarr store" in capsys.readouterr().err
