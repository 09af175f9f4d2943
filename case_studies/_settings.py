"""Settings shared by the case studies.

``BAYESGMM_TINY=1`` runs each at tiny settings (a few draws, few K, few replicates) so that CI can
prove it still works; ``BAYESGMM_REPORT_DIR`` says where the reports go (default
``case_studies/reports/``).
"""

from __future__ import annotations

import os
from pathlib import Path

TINY = os.environ.get("BAYESGMM_TINY", "") not in ("", "0")
REPORTS = Path(os.environ.get("BAYESGMM_REPORT_DIR", Path(__file__).resolve().parent / "reports"))


def sizes(full: dict, tiny: dict) -> dict:
    """The settings of this run: ``tiny`` under BAYESGMM_TINY=1, else ``full``."""
    return tiny if TINY else full


def comparison_section(report, cmp, heading: str) -> None:
    """The compare_k table, its figure and its notes, as a report section."""
    from bayesgmm.compare import plots

    report.heading(heading)
    report.table(cmp.table)
    report.figure(plots.plot_criteria(cmp), "Each criterion against K; the chosen K starred.")
    if cmp.notes:
        report.items(cmp.notes, css="notes")


def finish(report, reading: list[str], settings: dict, name: str, started: float) -> None:
    """The reading and the settings, then the report written to REPORTS/name.html."""
    import time

    report.heading("Reading")
    report.reading(reading)
    report.settings({**{k: str(v) for k, v in settings.items()}, "tiny": TINY})
    out = REPORTS / f"{name}.html"
    report.write(out)
    print("\n".join(reading))
    print(f"wrote {out} in {time.time() - started:.0f} s")
