"""Stored traces: compute once, read back on an identical request, trace a whole run resumably.

A trace is identified by (trial, latents in the order given, steered). An identical request reads the
stored trace; `recompute=True` replaces it; so does a request whose trial has been re-judged since, or
whose region rule (trace_regions.region_rule) changed (the attempt and region marks come from both). A run's
recompute replaces only traces stored before a given time, so it resumes. Each trace is written in one transaction (the
`traces` row and all its `trace_values`), so a trace killed or failing midway leaves nothing behind.
Tables and view: store_schema_traces (m013), store_migrations_traces (m016).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UserInputError
from .ids import new_id
from .store_values import utc_now
from .trace_regions import NOT_LOCATED
from .traces import Trace, TraceRequest, compute_trace, find_trial, resolve_request


@dataclass
class TraceResult:
    """A stored trace and whether this call computed it (False: read back)."""

    trace: Trace
    computed: bool


def _stored_row(store, req: TraceRequest) -> dict | None:
    trial_id, latents_json, steered = req.key
    rows = list(store.db.query("SELECT id, created_utc, "
                               "json_extract(settings_json, '$.judgment_sha256') AS judgment_sha256, "
                               "json_extract(settings_json, '$.region_rule') AS region_rule "
                               "FROM traces WHERE trial_id = ? AND latents_json = ? AND steered = ?",
                               (trial_id, latents_json, steered)))
    return rows[0] if rows else None


def _is_current(row: dict | None, req: TraceRequest) -> bool:
    """Stored, from the same judgment and under the same region rule (the marks depend on both)."""
    from .trace_regions import region_rule

    return (row is not None and row["judgment_sha256"] == req.judgment_sha256
            and json.loads(row["region_rule"] or "null") == region_rule())


def _settings(req: TraceRequest, trace: Trace, sae, model) -> dict:
    from .engine import system_info
    from .provenance import machine, versions
    from .trace_regions import region_rule

    return {"judgment_sha256": req.judgment_sha256, "latent_source": req.latent_source,
            # the trace never applies a run's ablation (the readout's callback is the context's only one)
            "run_ablation_not_applied": req.spec.ablation,
            "sae_files": req.spec.sae.files, "sae_family": sae.info.family,
            "sae_activation": sae.info.activation,
            "sae_hook_name": sae.info.hook_name, "d_sae": req.spec.sae.d_sae,
            "n_ctx": max(64, trace.prompt_tokens + len(trace.tokens)), "threads": model.n_threads,
            "chat_mode": req.spec.model.chat_mode, "chat_template": req.spec.model.chat_template,
            "region_rule": region_rule(),
            "versions": versions(), "llama_cpp_system_info": system_info(), "machine": machine()}


def save_trace(store, req: TraceRequest, trace: Trace, regions, sae, model) -> str:
    """Write `trace` (replacing any stored trace of the same request) in one transaction; its id."""
    from . import __version__
    from .provenance import versions

    spec, trial = req.spec, req.trial
    scores = [a["score"] for a in req.attempts if a.get("score") is not None]  # as trial_outcomes counts them
    trace_id = new_id()
    row = {
        "id": trace_id, "trial_id": trial["id"], "run_id": trial["run_id"], "latents_json": req.key[1],
        "layer": trace.layer, "steered": int(trace.steered), "boost": trace.boost,
        "steering_layer": spec.steering_layer, "steered_latent": int(trial["latent"]),
        "prompt_tokens": trace.prompt_tokens, "n_tokens": len(trace.tokens),
        "response_sha256": hashlib.sha256((trial["response"] or "").encode("utf-8")).hexdigest(),
        "judgment_id": (req.judgment or {}).get("id"), "judge_key": (req.judgment or {}).get("judge_key"),
        "n_attempts": len(scores), "n_judged_attempts": len(req.attempts),
        "first_score": scores[0] if scores else None, "last_score": scores[-1] if scores else None,
        "regions_note": None if regions.located else NOT_LOCATED,
        "attempt_spans_json": json.dumps([list(s) for s in regions.spans]),
        "correction_start": regions.correction_start, "on_topic_start": regions.on_topic_start,
        "model_sha256": spec.model.sha256, "model_path": spec.model.path, "sae_source": spec.sae.source,
        "sae_revision": spec.sae.revision,
        "sae_sha256": hashlib.sha256("\n".join(f["sha256"] for f in spec.sae.files).encode()).hexdigest(),
        "encoder": f"{sae.info.family}:{sae.info.activation}", "esr_local_version": __version__,
        "llama_cpp_python_version": versions()["llama_cpp_python"],
        "settings_json": json.dumps(_settings(req, trace, sae, model), default=str), "created_utc": utc_now(),
    }
    values = [(trace_id, pos, int(tok), piece, int(att), reg, int(j), float(trace.acts[pos, k]))
              for k, j in enumerate(trace.latents)
              for pos, (tok, piece, att, reg) in enumerate(zip(trace.tokens, trace.pieces, trace.attempt, trace.region))]
    with store.transaction():
        old = _stored_row(store, req)
        if old is not None:
            store.db.execute("DELETE FROM trace_values WHERE trace_id = ?", (old["id"],))
            store.db.execute("DELETE FROM traces WHERE id = ?", (old["id"],))
        store.db["traces"].insert(row)
        store.db.conn.executemany("INSERT INTO trace_values (trace_id, position, token, piece, attempt, region, "
                                  "latent, activation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
    return trace_id


def load_trace(store, trace_id: str) -> Trace:
    """A stored trace by id, rebuilt from its rows (activations exactly as computed: float32)."""
    rows = list(store.db.query("SELECT * FROM traces WHERE id = ?", (trace_id,)))
    if not rows:
        raise UserInputError(f"no trace {trace_id!r} in {store.path}")
    t = rows[0]
    latents = json.loads(t["latents_json"])
    vals = list(store.db.query("SELECT position, token, piece, attempt, region, latent, activation FROM trace_values "
                               "WHERE trace_id = ? ORDER BY latent, position", (trace_id,)))
    n = int(t["n_tokens"])
    acts = np.zeros((n, len(latents)), np.float32)
    col = {j: k for k, j in enumerate(latents)}
    tokens, pieces, attempt, region = [0] * n, [""] * n, [-1] * n, [None] * n
    for v in vals:
        acts[v["position"], col[v["latent"]]] = v["activation"]
        tokens[v["position"]], pieces[v["position"]] = v["token"], v["piece"]
        attempt[v["position"]], region[v["position"]] = v["attempt"], v["region"]
    if len(vals) != n * len(latents):
        raise UserInputError(f"trace {trace_id} has {len(vals)} values, not {n * len(latents)}; "
                             "trace it again with --recompute")
    return Trace(trial_id=t["trial_id"], latents=latents, layer=t["layer"], steered=bool(t["steered"]),
                 boost=t["boost"], prompt_tokens=t["prompt_tokens"], tokens=tokens, pieces=pieces, attempt=attempt,
                 acts=acts, region=region, trace_id=trace_id, regions_note=t.get("regions_note"))


class _Resources:
    """The run's model and SAE, checked and opened on first use (a run whose traces are all stored opens neither)."""

    def __init__(self, spec, model=None) -> None:
        self.spec, self.model, self._own = spec, model, model is None
        self.sae = self.rows = None

    def get(self):
        from .engine import SteeredModel
        from .runs.resources import check_model, open_run_sae

        if self.sae is None:
            if self.model is None:
                check_model(self.spec.model)  # the trace is of the model the trial ran on, as on resume
            self.sae, self.rows = open_run_sae(self.spec)
        if self.model is None:
            s = self.spec
            self.model = SteeredModel(s.model.path, n_ctx=s.n_ctx, chat_mode=s.model.chat_mode,
                                      chat_template=s.model.chat_template)
        return self.model, self.sae, self.rows

    def close(self) -> None:
        if self._own and self.model is not None:
            self.model.close()
            self.model = None


def _get(store, req: TraceRequest, res: _Resources, recompute_before: str | None) -> TraceResult:
    """Read back a current stored trace (one created at or after `recompute_before`, when given);
    otherwise compute and store it."""
    row = _stored_row(store, req)
    if _is_current(row, req) and (recompute_before is None or row["created_utc"] >= recompute_before):
        return TraceResult(load_trace(store, row["id"]), computed=False)
    model, sae, rows = res.get()
    trace, regions = compute_trace(req, model, sae, rows)
    return TraceResult(load_trace(store, save_trace(store, req, trace, regions, sae, model)), computed=True)


def parse_recompute_before(value: str) -> str:
    """`value` (an ISO-8601 UTC time, as `--recompute` prints it) in the stored `created_utc` form."""
    import datetime as dt

    try:
        at = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserInputError(f"--recompute-before {value!r} is not an ISO-8601 time; give the time an interrupted "
                             "--recompute printed, e.g. 2026-12-02T01:30:00.000+00:00") from None
    if at.tzinfo is None:
        raise UserInputError(f"--recompute-before {value!r} has no time zone; add +00:00 (UTC)")
    return at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def get_trace(store, trial_id: str, latents: Sequence[int], *, steered: bool = True, recompute: bool = False,
              model=None, detector_set: str | None = None) -> TraceResult:
    """The stored trace of a trial, computed and stored first when there is none (or `recompute`).
    `detector_set` names a stored detector set whose latents are traced instead of `latents`."""
    req = resolve_request(store, find_trial(store, trial_id), latents, steered=steered, detector_set=detector_set)
    res = _Resources(req.spec, model)
    try:
        return _get(store, req, res, utc_now() if recompute else None)
    finally:
        res.close()


def trace_run(store, run_id: str, latents: Sequence[int], *, steered: bool = True, limit: int | None = None,
              recompute: bool = False, recompute_before: str | None = None, model=None,
              detector_set: str | None = None,
              progress: Callable[[TraceResult], None] | None = None) -> list[TraceResult]:
    """Trace the first `limit` judged trials of a run (all by default), in the run's trial order; stored
    traces are read back, so an interrupted call resumes where it stopped. `recompute_before` (a
    `created_utc` time) replaces the traces stored before it and keeps later ones, so an interrupted
    recompute resumes when given its start time again; `recompute` means "before now"."""
    from .runs.execute import load_spec

    if limit is not None and limit < 1:
        raise UserInputError(f"--limit must be at least 1, got {limit}")
    run = store.get_run(run_id)
    judged = [t for t in store.trials(run["id"]) if t.get("judgment") and t["judgment"]["parse_status"] == "ok"
              and t.get("response")]
    if not judged:
        raise UserInputError(f"run {run['id']} has no judged trials to trace; judge it first "
                             f"(esr-local judge grade {run['id']}) or trace one trial by id")
    spec = load_spec(run)
    reqs = [resolve_request(store, t, latents, steered=steered, spec=spec, judged=t, detector_set=detector_set)
            for t in judged[:limit]]
    if recompute and recompute_before is None:
        recompute_before = utc_now()
    res = _Resources(spec, model)
    out = []
    try:
        for req in reqs:
            out.append(_get(store, req, res, recompute_before))
            if progress is not None:
                progress(out[-1])
    finally:
        res.close()
    return out
