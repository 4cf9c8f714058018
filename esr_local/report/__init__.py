"""`esr-local report`: a self-contained HTML report of one or more runs (figures, metrics, examples,
provenance). `build_report(store, run_ids, out_dir)` writes `index.html` and `report.json` there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..store import Store
from .data import ReportData, load_report_data
from .figures import (calibration_figure, comparison_figure, rates_figure, require_matplotlib,
                      score_distribution_figure, sweep_figure)
from .html import render_page, summary_json
from .write import write_text

__all__ = ["build_report", "load_report_data", "ReportData"]


def draw_figures(data: ReportData) -> dict[str, str | None]:
    """Every figure of the report as inline SVG (None where a run has nothing to draw)."""
    conditions = data.conditions()
    figures: dict[str, str | None] = {
        "rates": rates_figure(data.groups),
        "scores": score_distribution_figure(data.runs, conditions),
        "sweep": sweep_figure(data.runs),
        "meta": comparison_figure(data.groups, "meta"),
        "ablation": comparison_figure(data.groups, "ablation"),
        "prefill": comparison_figure(data.groups, "prefill"),
    }
    for run in data.runs:
        figures[f"calibration:{run.id}"] = calibration_figure(run.latents, run.calibrations)
    return figures


def build_report(store: Store, run_ids: list[str], out_dir: str | Path, *, title: str | None = None,
                 judge: str | None = None, exclude_flagged: bool = False) -> dict[str, Any]:
    """Write the report of `run_ids` (ids or unique prefixes; runs of one model are pooled) to `out_dir`.
    `judge` and `exclude_flagged` are those of `esr-local metrics`.

    Returns a summary: the files written, the runs, and the number of figures drawn. The same database
    and arguments give byte-identical files.
    """
    require_matplotlib()
    data = load_report_data(store, list(run_ids), judge=judge, exclude_flagged=exclude_flagged)
    figures = draw_figures(data)
    title = title or ("esr-local report: " + ", ".join(r.id for r in data.runs))
    out = Path(out_dir).expanduser()
    page = render_page(data, figures, title=title, version=__version__)
    summary = summary_json(data)
    index = write_text(out / "index.html", page)
    numbers = write_text(out / "report.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {"index": str(index), "json": str(numbers), "runs": summary["runs"],
            "figures": sorted(k for k, v in figures.items() if v is not None)}
