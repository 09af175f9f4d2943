"""The core is numpy/scipy only: importing it loads no pymc, pytensor or arviz."""

import subprocess
import sys


def test_core_import_loads_no_heavy_layer():
    code = (
        "import sys, bayesgmm, bayesgmm.core\n"
        "import bayesgmm as bg\n"
        "bg.fit_em(bg.datasets.load_faithful(), 2)\n"
        "mods = ('pymc', 'pytensor', 'arviz', 'xarray', 'sklearn')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
