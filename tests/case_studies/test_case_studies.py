"""Every case study runs end to end at tiny settings (BAYESGMM_TINY=1) and writes its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = ("old_faithful", "galaxies", "iris", "simulated_recovery", "iris_species")


@pytest.mark.parametrize("name", CASES)
def test_case_study_runs_and_writes_its_report(name, tmp_path):
    env = dict(os.environ, BAYESGMM_TINY="1", BAYESGMM_REPORT_DIR=str(tmp_path), MPLBACKEND="Agg")
    run = subprocess.run(
        [sys.executable, str(ROOT / "case_studies" / f"{name}.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = (tmp_path / f"{name}.html").read_text()
    assert report.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,' in report
    assert "Reading" in report and "Settings and versions" in report
    if name == "galaxies":
        # all five criteria (BIC, ICL, bootstrap LRT, LOO, SMC evidence) in the table
        for column in ("bic", "icl", "lrt_p", "elpd_loo", "log_ml"):
            assert f"<th>{column}</th>" in report
