"""The report's matplotlib figures, each returned as SVG text to inline in the page.

Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot, no global state, no display) and
saved with a fixed SVG hash salt and no date, so the same data gives byte-identical SVG.
"""

from __future__ import annotations

import io
import math
from typing import Any

from ..errors import MissingResourceError
from .data import ModelGroup, RunData, condition_family, condition_sort_key, score_distributions, sweep_points

_RC = {
    "svg.hashsalt": "esr-local-report",  # element ids derive from this instead of a random salt
    "svg.fonttype": "path",  # glyphs as paths: no dependence on the viewer's fonts
    "font.family": "DejaVu Sans",  # shipped with matplotlib
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MAX_CALIBRATION_PANELS = 24  # the first 24 calibrated latents (by index) of a run; the table lists them all
_COLORS = ("#3b6ea8", "#d07a2b", "#4f9a55", "#b34a4a", "#7a5fa8", "#8c6d46", "#c25d9b", "#6b6b6b")


def require_matplotlib() -> None:
    """Raise one clear MissingResourceError when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingResourceError(
            "esr-local report draws its figures with matplotlib, which is not installed; "
            "run `pip install 'esr-local[report]'` (or `pip install matplotlib`)"
        ) from None


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_svg(fig) -> str:
    """The figure as SVG markup without the XML prolog (for inlining), deterministic."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        # no RDF metadata block: it carries Dublin Core / Creative Commons URLs; only the SVG namespaces remain
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _styled(draw):
    """Run a figure-drawing function under the report's rc settings (fonts are chosen at draw time)."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_RC):
            fig = draw(*args, **kwargs)
            return None if fig is None else to_svg(fig)

    wrapper.__doc__ = draw.__doc__
    wrapper.__name__ = draw.__name__
    return wrapper


def _err(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else value


def _val(value: float | None) -> float:
    return math.nan if value is None else value


@_styled
def rates_figure(groups: list[ModelGroup]) -> Any:
    """Multi-attempt and ESR rates (%, binomial SE bars) per condition, one bar per model (pooled runs)."""
    conditions = sorted({m["condition"] for g in groups for m in g.metrics
                         if condition_family(m["condition"]) != "sweep"}, key=condition_sort_key)
    if not conditions:
        return None
    fig = _figure(max(4.0, 1.2 + 0.9 * len(conditions) * max(1, len(groups)) ** 0.5), 3.2)
    axes = fig.subplots(1, 2, sharey=False)
    width = 0.8 / max(1, len(groups))
    for ax, (key, title) in zip(axes, (("multi_attempt_rate", "Multi-attempt rate"), ("esr_rate", "ESR rate"))):
        for gi, group in enumerate(groups):
            rows = {m["condition"]: m for m in group.metrics}
            xs = [ci - 0.4 + width * (gi + 0.5) for ci in range(len(conditions))]
            values = [_val(rows.get(c, {}).get(key)) for c in conditions]
            errors = [_err(rows.get(c, {}).get(key + "_se")) for c in conditions]
            ax.bar(xs, values, width * 0.92, yerr=errors, capsize=3, color=_COLORS[gi % len(_COLORS)],
                   label=group.label, error_kw={"elinewidth": 1})
        ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right")
        ax.set_ylabel("% of counted trials")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    if len(groups) > 1:
        axes[1].legend(fontsize=7, frameon=False)
    return fig


@_styled
def score_distribution_figure(runs: list[RunData], conditions: list[str]) -> Any:
    """Histograms of first-attempt scores (counted trials) and last-attempt scores (multi-attempt trials)."""
    conditions = [c for c in conditions if condition_family(c) != "sweep"]
    if not conditions:
        return None
    fig = _figure(2.6 * len(conditions) + 0.6, 2.8)
    axes = fig.subplots(1, len(conditions), squeeze=False)[0]
    bins = [i * 10 for i in range(11)]
    for ax, condition in zip(axes, conditions):
        first, last = score_distributions(runs, condition)
        ax.hist(first, bins=bins, color=_COLORS[0], alpha=0.65, label=f"first attempt (n={len(first)})")
        ax.hist(last, bins=bins, color=_COLORS[1], alpha=0.65, label=f"last attempt, multi (n={len(last)})")
        ax.set_title(condition)
        ax.set_xlabel("score (0-100)")
        ax.set_xlim(0, 100)
        ax.legend(fontsize=6.5, frameon=False, loc="upper right")
    axes[0].set_ylabel("trials")
    return fig


@_styled
def sweep_figure(runs: list[RunData]) -> Any:
    """Multi-attempt and ESR rate against boost, in sd units of the run's latent boosts when defined."""
    series = [(run, sweep_points(run)) for run in runs]
    series = [(run, points) for run, points in series if points]
    if not series:
        return None
    use_sigma = all(p["sigma"] is not None for _, points in series for p in points)
    fig = _figure(6.4, 3.0)
    axes = fig.subplots(1, 2)
    for ax, (key, title) in zip(axes, (("multi_attempt_rate", "Multi-attempt rate"), ("esr_rate", "ESR rate"))):
        for si, (run, points) in enumerate(series):
            xs = [p["sigma"] if use_sigma else p["boost"] for p in points]
            ax.errorbar(xs, [_val(p[key]) for p in points], yerr=[_err(p[key + "_se"]) for p in points],
                        marker="o", ms=3.5, capsize=2.5, color=_COLORS[si % len(_COLORS)],
                        label=f"{run.model_label} ({run.id[-6:]})")
        ax.set_xlabel("boost (sd of the latents' boosts from their mean)" if use_sigma else "boost")
        ax.set_ylabel("% of counted trials")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[1].legend(fontsize=7, frameon=False)
    return fig


@_styled
def comparison_figure(groups: list[ModelGroup], family: str) -> Any:
    """`steered` against each condition of one family (meta, ablation, prefill): the two rates side by side."""
    fig_rows = []
    for group in groups:
        rows = {m["condition"]: m for m in group.metrics}
        others = [c for c in sorted(rows, key=condition_sort_key) if condition_family(c) == family]
        if others:
            fig_rows.append((group, ["steered"] * ("steered" in rows) + others, rows))
    if not fig_rows:
        return None
    fig = _figure(6.4, 2.6 * len(fig_rows) + 0.4)
    axes = fig.subplots(len(fig_rows), 2, squeeze=False)
    for (group, conditions, rows), pair in zip(fig_rows, axes):
        for ax, (key, title) in zip(pair, (("multi_attempt_rate", "Multi-attempt rate"), ("esr_rate", "ESR rate"))):
            xs = range(len(conditions))
            ax.bar(xs, [_val(rows[c][key]) for c in conditions], 0.6,
                   yerr=[_err(rows[c][key + "_se"]) for c in conditions], capsize=3,
                   color=[_COLORS[0] if c == "steered" else _COLORS[2] for c in conditions])
            ax.set_xticks(list(xs), conditions, rotation=25, ha="right")
            ax.set_title(f"{title} - {group.label}")
            ax.set_ylabel("% of counted trials")
            ax.set_ylim(bottom=0)
    return fig


@_styled
def calibration_figure(latents: list[dict[str, Any]], calibrations: dict[int, dict[str, Any]]) -> Any:
    """One panel per calibrated latent (the first MAX_CALIBRATION_PANELS): the boost tried at each bisection
    step (marker colour = the score it gave, 0-100), the calibrated boost as a dashed line."""
    panels = [(l, calibrations[int(l["calibration_id"])]) for l in latents
              if l.get("calibration_id") is not None and int(l["calibration_id"]) in calibrations]
    panels = [(l, c) for l, c in panels if c.get("steps")][:MAX_CALIBRATION_PANELS]
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(2.2 * cols + 0.8, 2.0 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    scatter = None
    for ax, (latent, cal) in zip(axes.flat, panels):
        steps = cal["steps"]
        xs = list(range(1, len(steps) + 1))
        boosts = [float(s["boost"]) for s in steps]
        scores = [100.0 * float(s["score"]) for s in steps]
        ax.plot(xs, boosts, color="#999999", lw=0.8)
        scatter = ax.scatter(xs, boosts, c=scores, cmap="viridis", vmin=0, vmax=100, s=18, zorder=3)
        if cal.get("boost") is not None:
            ax.axhline(float(cal["boost"]), ls="--", lw=0.8, color=_COLORS[3])
        ax.set_title(f"latent {latent['latent']}: boost {_fmt(cal.get('boost'))}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("boost")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, shrink=0.8, label="score at step")
    return fig


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"
