"""The report page: report.html from the analyses and the figures, through the Jinja2 template
templates/report.html.j2 (autoescaped: every value from the record is HTML-escaped).

The page is self-contained: every figure is embedded as a data URI, and linked to the PNG
written beside the page.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from service.analysis.figures import NO_RUNGS, format_param
from service.analysis.tables import format_value

TEMPLATE = "report.html.j2"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("service.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the report instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=_fmt, param=format_param, percent=_percent, json=json.dumps, in_sweep=in_sweep)
    return env


def render_html(ctx: dict, figures: dict[str, bytes]) -> str:
    """The page. ``ctx``: ``index`` (SweepIndex), ``trials`` (list[TrialRecord]), ``params`` (the
    varied parameters), ``names`` (their short names), ``generated_at``, ``options`` (the report's
    options), ``spec_seed``, ``rules`` (the texts of the rules applied), and the analyses as
    report.json holds them: ``cards``, ``leaderboard``, ``indistinguishable``, ``replicates``,
    ``budget``, ``overfitting``, ``curves``, ``heatmap``, ``heatmap_note``, ``importance``,
    ``early_stopping``, ``pbt``, ``compute``, ``evaluation`` (evaluation.json with the test
    accuracy's SE, or None). ``figures``: PNG name → bytes; a figure not there is left out."""
    encoded = {name: base64.b64encode(png).decode() for name, png in figures.items()}
    return environment().get_template(TEMPLATE).render(
        **ctx,
        param_names=[ctx["names"][p] for p in ctx["params"]],
        no_rungs=NO_RUNGS,
        figures=encoded,
    )


def in_sweep(path: str, sweep: str) -> str:
    """A checkpoint path from the sweep's directory on (readable, and the same on every machine)."""
    parts = Path(str(path)).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index(sweep):]) if sweep in parts else str(path)


def _fmt(value):
    # Markup (already-escaped HTML) passes through; anything else is formatted, then escaped.
    return value if isinstance(value, Markup) else format_value(value)


def _percent(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}%}"
