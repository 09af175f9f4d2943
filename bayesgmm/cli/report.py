"""The HTML report: one self-contained file (figures embedded as PNG), tables, the settings and
versions used, and a short reading of the results in words.

Nothing here computes statistics: it lays out what the library returned.
"""

from __future__ import annotations

import base64
import html
import io
import platform
import time
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["Report", "package_versions"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #bbb; }
div.table { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.reading { background: #f6f8fa; border-left: 4px solid #4a7; padding: .6em 1em; }
.notes { color: #a40; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages behind the results."""
    out = {"python": platform.python_version()}
    for name in (
        "bayesgmm",
        "numpy",
        "scipy",
        "pandas",
        "xarray",
        "pymc",
        "pytensor",
        "arviz-base",
        "arviz-stats",
        "arviz-plots",
        "matplotlib",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _figure_html(fig: Any, caption: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


#: Columns on the log-likelihood scale (criteria, ELPD and their standard errors): their
#: differences are what is read, so they get one decimal whatever their size.
_LOG_SCALE = ("loglik", "bic", "icl", "aic", "elpd", "log_ml", "log ml", "marginal", "difference")


def _log_scale(column: Any, columns: Any) -> bool:
    name = str(column).lower()
    if any(key in name for key in _LOG_SCALE):
        return True
    # An ELPD's standard errors are on its scale.
    return name in ("se", "dse") and any("elpd" in str(c).lower() for c in columns)


def format_number(value: Any, log_scale: bool = False) -> str:
    """One number as every table of the report shows it: 4 significant figures, without
    exponents between 0.001 and 10,000 (larger values to the unit, smaller ones as 1.234e-05);
    on the log-likelihood scale one decimal. Integers, booleans and text unchanged."""
    import numpy as np

    if isinstance(value, bool | np.bool_) or not isinstance(value, float | np.floating):
        return "" if value is None else str(value)
    v = float(value)
    if not np.isfinite(v):
        return "" if np.isnan(v) else str(v)
    if log_scale:
        return f"{v:.1f}"
    size = abs(v)
    if size >= 1e4:
        return f"{v:.0f}"
    if 0 < size < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def _table_html(frame: Any) -> str:
    # In a scrolling box: a table wider than the page (the comparison over K has a dozen
    # columns) scrolls on its own instead of pushing the page wider than its 1100 px.
    formatters = {c: partial(format_number, log_scale=_log_scale(c, frame.columns))
                  for c in frame.columns}  # fmt: skip
    body = frame.to_html(formatters=formatters, na_rep="", border=0)
    return f'<div class="table">{body}</div>'


@dataclass
class Report:
    """An HTML report built section by section."""

    title: str
    sections: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self.sections.append(f"<p{cls}>{html.escape(text)}</p>")

    def items(self, lines: list[str], css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        body = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        self.sections.append(f"<ul{cls}>{body}</ul>")

    def reading(self, lines: list[str]) -> None:
        body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        self.sections.append(f'<div class="reading">{body}</div>')

    def table(self, frame: Any) -> None:
        """A table, every number as :func:`format_number` writes it."""
        self.sections.append(_table_html(frame))

    def figure(self, fig: Any, caption: str) -> None:
        self.sections.append(_figure_html(fig, caption))

    def settings(self, settings: dict[str, Any]) -> None:
        import pandas as pd

        self.heading("Settings and versions")
        rows = [(k, str(v)) for k, v in settings.items()]
        rows += [(f"version: {k}", v) for k, v in package_versions().items()]
        rows.append(("seconds to build", f"{time.time() - self.started:.1f}"))
        self.table(pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting"))

    def html(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p>Written by bayesgmm on {stamp}.</p>"
            + "\n".join(self.sections)
            + "</body></html>\n"
        )

    def write(self, path: Any) -> None:
        from pathlib import Path

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.html(), encoding="utf-8")
