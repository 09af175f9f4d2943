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
