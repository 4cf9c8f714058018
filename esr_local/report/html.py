"""The report page: one self-contained HTML file (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import html
import json
from typing import Any

from ..metrics import METRIC_KEYS
from .data import ReportData, RunData, example_trials, failures, flagged_latents, paired_comparisons
from .figures import MAX_CALIBRATION_PANELS

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1rem 1.5rem;
color:#1d1d1f;line-height:1.4}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem}table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.8rem;color:#555}
.attempt{border-left:4px solid #3b6ea8;margin:.3rem 0;padding:.2rem .6rem;background:#f7f9fc;white-space:pre-wrap}
.attempt.later{border-left-color:#d07a2b;background:#fdf8f3}.score{font-weight:600;font-size:.8rem;color:#333}
.trial{border:1px solid #e2e2e2;border-radius:4px;padding:.5rem .8rem;margin:.8rem 0}
.meta{font-size:.8rem;color:#555}pre{white-space:pre-wrap;font-size:.75rem;background:#f6f6f6;padding:.5rem}
.none{color:#777;font-style:italic}mark.a0{background:#dde7f5}mark.a1{background:#f8e3cc}
sup{font-size:.65rem;color:#444;margin-right:.2rem}
"""

_METRIC_HEADERS = (
    ("n", "n"), ("multi_attempt_count", "multi"), ("improved_count", "improved"),
    ("multi_attempt_rate", "multi-attempt %"), ("esr_rate", "ESR %"), ("improvement_rate", "improved|multi %"),
    ("mean_first_score", "first score"), ("mean_score_improvement", "score gain"),
)
# Run columns shown under "Settings and provenance" (the rest is in settings_json).
_RUN_FIELDS = (
    "id", "status", "display_status", "error", "experiment", "created_utc", "finished_utc", "command_line", "esr_local_version",
    "llama_cpp_python_version", "model_name", "model_path", "model_sha256", "sae_source", "sae_family",
    "feature_layer", "steering_layer", "chat_template_mode", "temperature", "max_tokens", "repetition_penalty",
    "top_k", "top_p", "min_p", "n_ctx", "judge_backend", "judge_model", "rubric_version", "restart_gating",
    "prompts_file", "prompts_sha256", "prompts_per_latent", "replicates", "seed_base", "source_run_id", "source_file",
    "judge_key", "summary_json",
)


def esc(value: Any) -> str:
    """HTML-escaped text of a value ('-' for None)."""
    return "-" if value is None else html.escape(str(value), quote=True)


def _num(value: float | None, se: float | None = None, decimals: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value:.{decimals}f}"
    return text if se is None else f"{text} ± {se:.{decimals}f}"


def metrics_table(rows: list[dict[str, Any]], *, with_run: bool, table_id: str) -> str:
    """Metric rows as a table; rates and means carry their standard errors."""
    head = (["run"] if with_run else []) + ["condition"] + [h for _, h in _METRIC_HEADERS]
    out = [f'<table id="{table_id}" class="metrics"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for row in rows:
        cells = ([f"<td>{esc(row['run_id'])}</td>"] if with_run else []) + [f"<td>{esc(row['condition'])}</td>"]
        for key, _ in _METRIC_HEADERS:
            if key.endswith("count") or key == "n":
                cells.append(f'<td class="num">{esc(row[key])}</td>')
            else:
                cells.append(f'<td class="num">{esc(_num(row[key], row.get(key + "_se")))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _table(rows: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(svg: str | None, fig_id: str, caption: str) -> str:
    """A <figure> holding inline SVG, or a note when there was nothing to draw."""
    if svg is None:
        return f'<p class="none" id="{fig_id}-none">{esc(caption)}: nothing to show for these runs.</p>'
    return f'<figure id="{fig_id}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _trial_block(example: dict[str, Any]) -> str:
    trial, outcome = example["trial"], example["outcome"]
    verdict = "improved" if outcome["is_improved"] else "multi-attempt" if outcome["is_multi_attempt"] else "one attempt"
    parts = [f'<div class="trial" data-trial="{esc(trial["id"])}">',
             f'<p class="meta">{esc(trial["id"])} · condition {esc(trial["condition"])} · latent {esc(trial["latent"])}'
             f' · boost {esc(_num(trial.get("boost"), decimals=3))} · seed {esc(trial.get("seed"))} · {verdict}</p>',
             f"<p><b>Prompt:</b> {esc(trial.get('prompt'))}</p>"]
    for i, attempt in enumerate(trial["attempts"]):
        score = "no score" if attempt.get("score") is None else f"score {attempt['score']:g}"
        parts.append(f'<div class="attempt{" later" if i else ""}"><span class="score">attempt {i + 1} · {score}'
                     f"</span>\n{esc(attempt.get('text'))}</div>")
    parts.append(f"<details><summary>full response, attempts marked</summary><pre>{marked_response(trial)}</pre>"
                 "</details></div>")
    return "".join(parts)


def marked_response(trial: dict[str, Any]) -> str:
    """The response as escaped HTML with each attempt's text (found in order) wrapped in <mark>, labelled with
    its number and score; attempts the judge paraphrased (not found verbatim) stay unmarked."""
    response = trial.get("response") or ""
    out, pos = [], 0
    for i, attempt in enumerate(trial["attempts"]):
        text = (attempt.get("text") or "").strip()
        at = response.find(text, pos) if text else -1
        if at < 0:
            continue
        score = "no score" if attempt.get("score") is None else f"{attempt['score']:g}"
        out.append(esc(response[pos:at]))
        out.append(f'<mark class="a{min(i, 1)}" title="attempt {i + 1}, score {score}">'
                   f'<sup>[{i + 1}: {score}]</sup>{esc(text)}</mark>')
        pos = at + len(text)
    out.append(esc(response[pos:]))
    return "".join(out)


def _provenance(run: RunData) -> str:
    fields = [(k, run.run.get(k)) for k in _RUN_FIELDS if run.run.get(k) not in (None, "")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in fields)
    sessions = [{"started_utc": s.get("started_utc"), "command_line": s.get("command_line"),
                 "versions": s.get("versions_json"), "llama.cpp": s.get("llama_cpp_system_info")}
                for s in run.sessions]
    settings = json.dumps(run.run.get("settings") or {}, indent=1, sort_keys=True, default=str)
    spec = run.run.get("spec_json")
    return (f'<h3>Run {esc(run.id)}</h3><table id="provenance-{esc(run.id)}" class="provenance">{rows}</table>'
            f"<h4>Judges</h4>{_table(run.judges, ['judge_key', 'judge_spec', 'n', 'n_failed'], 'judges-' + run.id)}"
            f"<h4>Executions</h4>{_table(sessions, ['started_utc', 'command_line', 'versions', 'llama.cpp'], 'sessions-' + run.id)}"
            f"<details><summary>settings_json</summary><pre>{esc(settings)}</pre></details>"
            + (f"<details><summary>spec_json (the frozen run spec)</summary><pre>{esc(spec)}</pre></details>" if spec else ""))


def _latent_rows(run: RunData) -> list[dict[str, Any]]:
    rows = []
    for latent in run.latents:
        cal = run.calibrations.get(int(latent["calibration_id"])) if latent.get("calibration_id") is not None else None
        achieved = latent.get("achieved_score", cal.get("achieved_score") if cal else None)
        rows.append({**latent, "boost": _num(latent.get("boost"), decimals=4),
                     "row_norm": _num(latent.get("row_norm"), decimals=3) if latent.get("row_norm") is not None else None,
                     "achieved_score": _num(achieved, decimals=3) if achieved is not None else None,
                     "steps": None if cal is None else len(cal.get("steps") or [])})
    return rows


def render_page(data: ReportData, figures: dict[str, str | None], *, title: str, version: str) -> str:
    """The whole report page as HTML text (deterministic for the same data and figures)."""
    run_list = ", ".join(esc(r.id) for r in data.runs)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="meta">esr-local {esc(version)} · runs {run_list} · metrics as in <code>esr-local metrics</code>'
             " (the paper's rules; rates ± binomial SE, means ± SE)</p>",
             '<h2 id="metrics">Metrics</h2>']
    for gi, group in enumerate(data.groups):
        pooled = f" (pooled over {len(group.run_ids)} runs)" if len(group.run_ids) > 1 else ""
        parts.append(f"<h3>{esc(group.label)}{esc(pooled)}</h3>")
        parts.append(metrics_table(group.metrics, with_run=False, table_id=f"metrics-model-{gi}"))
    if any(len(g.run_ids) > 1 for g in data.groups):
        parts.append("<h3>Per run</h3>")
        parts.append(metrics_table([m for r in data.runs for m in r.metrics], with_run=True, table_id="metrics-per-run"))
    parts += ['<h2 id="figures">Figures</h2>',
              figure(figures.get("rates"), "fig-rates", "Multi-attempt and ESR rates per condition and model (SE bars)"),
              figure(figures.get("scores"), "fig-scores", "First- and last-attempt score distributions"),
              figure(figures.get("sweep"), "fig-sweep", "Boost sweep: rates against boost in sd units"),
              figure(figures.get("meta"), "fig-meta", "Meta-prompt conditions against steered (paired trials)")]
    paired = []
    for gi, group in enumerate(data.groups):
        for row in paired_comparisons([r for r in data.runs if r.id in group.run_ids]):
            paired.append({"model": group.label, **row,
                           "multi-attempt Δ (pp)": _num(row["multi_attempt_diff"], row["multi_attempt_diff_se"]),
                           "ESR Δ (pp)": _num(row["esr_diff"], row["esr_diff_se"])})
    if paired:
        parts.append("<h3>Paired against steered (same latent, prompt and replicate)</h3>")
        parts.append(_table(paired, ["model", "condition", "reference", "pairs", "multi-attempt Δ (pp)", "ESR Δ (pp)"],
                            "paired"))
    for family in ("ablation", "prefill"):
        if figures.get(family) is not None:
            parts.append(figure(figures[family], f"fig-{family}", f"{family.capitalize()} conditions against steered"))
    parts.append('<h2 id="calibration">Calibration</h2>')
    for run in data.runs:
        parts.append(figure(figures.get(f"calibration:{run.id}"), f"fig-calibration-{run.id}",
                            f"Bisection steps per latent (up to {MAX_CALIBRATION_PANELS}), run {run.id}"))
        parts.append(_table(_latent_rows(run), ["latent", "label", "boost", "boost_source", "row_norm",
                                                 "achieved_score", "steps", "flags", "error"], f"latents-{run.id}"))
    parts.append('<h2 id="flags">Flagged latents and failures</h2>')
    for run in data.runs:
        parts.append(f"<h3>Run {esc(run.id)}</h3>")
        flagged = [{**f, "flags": json.dumps(f["flags"], sort_keys=True, default=str)} for f in flagged_latents(run)]
        parts.append("<h4>Flagged latents</h4>")
        parts.append(_table(flagged, ["latent", "label", "error", "flags"], f"flagged-{run.id}"))
        parts.append("<h4>Failed latents, generations and judgments</h4>")
        parts.append(_table(failures(run), ["what", "id", "error"], f"failures-{run.id}"))
    parts.append('<h2 id="examples">Example trials</h2>')
    examples = example_trials(data.runs)
    parts += [_trial_block(e) for e in examples] or ['<p class="none">no counted trials</p>']
    parts.append('<h2 id="provenance">Settings and provenance</h2>')
    parts += [_provenance(run) for run in data.runs]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def summary_json(data: ReportData) -> dict[str, Any]:
    """The report's numbers as JSON: pooled metrics per model (METRIC_KEYS) and the per-run rows of
    `metrics_for_store` unchanged."""
    return {
        "runs": [r.id for r in data.runs],
        "models": [{"model": g.label, "key": g.key, "runs": g.run_ids,
                    "metrics": [{"condition": m["condition"], **{k: m[k] for k in METRIC_KEYS}} for m in g.metrics]}
                   for g in data.groups],
        "per_run": [dict(m) for r in data.runs for m in r.metrics],  # metrics_for_store rows, as `metrics --json`
    }
