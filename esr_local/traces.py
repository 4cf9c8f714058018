"""Per-token activations of chosen latents along a trial's response (paper Experiments 6 and 9).

The trial's prompt (as the model saw it) and its response are teacher-forced through the model once,
with or without the trial's steering vector, and the residual at the SAE's feature layer is encoded
for the requested latents. Each response token is marked with the judge's attempt it falls in and with
its region (`trace_regions`), so the paper's off-topic / correction / on-topic statistics can be computed.
Storing and reading traces back is `trace_store`.

The response is re-tokenized from its text (trials store text, not token ids); for the greedy and
sampled outputs of llama.cpp's own tokenizer that is the same sequence in practice, not by guarantee.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import UserInputError
from .trace_regions import Regions, attempt_spans, mark_regions, token_starts


@dataclass
class Trace:
    """Activations [n_response_tokens, n_latents] with token pieces, attempt indices (-1: none) and regions."""

    trial_id: str
    latents: list[int]
    layer: int
    steered: bool
    boost: float
    prompt_tokens: int
    tokens: list[int]
    pieces: list[str]
    attempt: list[int]
    acts: np.ndarray
    region: list[str | None] = field(default_factory=list)
    trace_id: str | None = None  # set once stored (trace_store)
    regions_note: str | None = None  # "regions not located" when a multi-attempt response's cuts were not found

    def records(self) -> list[dict]:
        """One dict per response token."""
        regions = self.region or [None] * len(self.tokens)
        return [{"position": i, "token": t, "piece": p, "attempt": a, "region": r,
                 **{f"latent_{j}": float(v) for j, v in zip(self.latents, row)}}
                for i, (t, p, a, r, row) in enumerate(zip(self.tokens, self.pieces, self.attempt, regions, self.acts))]

    def to_dict(self) -> dict:
        return {"trace_id": self.trace_id, "trial_id": self.trial_id, "latents": self.latents, "layer": self.layer,
                "steered": self.steered, "boost": self.boost, "prompt_tokens": self.prompt_tokens,
                "regions_note": self.regions_note, "tokens": self.records()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def to_csv(self) -> str:
        """Wide CSV: one row per response token, one column per latent."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["position", "token", "piece", "attempt", "region",
                                            *[f"latent_{j}" for j in self.latents]])
        w.writeheader()
        w.writerows(self.records())
        return buf.getvalue()


def attempt_of_tokens(pieces: Sequence[str] | Sequence[bytes], response: str, attempts: Sequence[str]) -> list[int]:
    """For each token, the index of the attempt whose text span (found in order in `response`) holds the
    token's first non-space character; -1 outside every attempt. Give the tokens' raw bytes where a
    character may be split across tokens (their decoded pieces then no longer add up to the text)."""
    spans = attempt_spans(response, attempts)
    return [next((k for a, b, k in spans if a <= first < b), -1) for first in token_starts(pieces)]


def trace_tokens(model, sae, prompt: str, response: str, latents: Sequence[int], layer: int,
                 directions: dict | None = None) -> tuple[int, list[int], np.ndarray]:
    """(prompt token count, response tokens, acts [n_response, k]) of one teacher-forced read."""
    from .readout import ResidualReader

    if not response:
        raise UserInputError("the trial has no response to trace")
    p_toks = model.tokenize(model.format_prompt(prompt))
    r_toks = model.llm.tokenize(response.encode("utf-8"), add_bos=False, special=False)
    toks = p_toks + r_toks
    with ResidualReader(model.llm, n_ctx=max(64, len(toks)), n_threads=model.n_threads) as reader:
        h = reader.read(toks, [layer], directions)[layer]
    return len(p_toks), r_toks, sae.encode(h[len(p_toks):], list(latents))


@dataclass
class TraceRequest:
    """A resolved request: the trial, its run's spec, the latents, layer and whether the vector is applied."""

    trial: dict
    spec: object  # RunSpec
    latents: list[int]
    layer: int
    steered: bool
    boost: float
    judgment: dict | None
    attempts: list[dict]
    latent_source: dict = field(default_factory=lambda: {"kind": "given"})

    @property
    def judgment_sha256(self) -> str:
        """Fingerprint of what the marks come from: the judge and its attempts' texts and scores (a re-grade
        writes a new judgment row whose id SQLite may reuse, so the id alone cannot tell)."""
        import hashlib

        j = self.judgment or {}
        blob = [j.get("judge_key"), [(a.get("text"), a.get("score")) for a in self.attempts]]
        return hashlib.sha256(json.dumps(blob).encode()).hexdigest()

    @property
    def key(self) -> tuple[str, str, int]:
        """What makes two requests identical (trace_store): trial, latents in order, steered."""
        return self.trial["id"], json.dumps(self.latents), int(self.steered)


def find_trial(store, trial_id: str) -> dict:
    """The trials row of an id or unique id prefix; UserInputError otherwise."""
    rows = store.db.execute("SELECT * FROM trials WHERE id = ? OR id LIKE ?", (trial_id, f"{trial_id}%")).fetchall()
    if len(rows) != 1:
        raise UserInputError(f"{'no' if not rows else 'more than one'} trial matches {trial_id!r}; give a trial id "
                             "(esr-local trials RUN lists them)")
    cols = [d[0] for d in store.db.execute("SELECT * FROM trials LIMIT 0").description]
    return dict(zip(cols, rows[0]))


def detector_latents(store, name: str, spec) -> tuple[list[int], dict]:
    """The latents of a stored detector set (`esr-local detectors find`), which must be of the run's SAE."""
    from .detectors import load_detector_set

    ds = load_detector_set(store, name)
    if ds.sae_source != spec.sae.source or ds.d_sae != spec.sae.d_sae:
        raise UserInputError(f"detector set {ds.name!r} belongs to the SAE {ds.sae_source!r} ({ds.d_sae} latents), "
                             f"but this run uses {spec.sae.source!r} ({spec.sae.d_sae}); use a set found with the run's SAE")
    if not ds.latents:
        raise UserInputError(f"detector set {ds.name!r} holds no latents (its {ds.rule} rule kept none); "
                             "choose another set or give --latents")
    return [int(j) for j in ds.latents], {"kind": "detector_set", "name": ds.name, "id": ds.id}


def resolve_request(store, trial: dict, latents: Sequence[int], *, steered: bool = True, spec=None,
                    judged: dict | None = None, detector_set: str | None = None) -> TraceRequest:
    """Check the latents (given, or a detector set's) against the run's SAE and pick the layer and vector,
    without loading anything. `judged` is the trial as `Store.trials` gives it (with judgment and
    attempts), when already at hand."""
    from .runs.execute import load_spec

    spec = spec or load_spec(store.get_run(trial["run_id"]))
    source: dict = {"kind": "given"} if latents else {"kind": "steered latent"}
    if detector_set is not None:
        if latents:
            raise UserInputError("give --latents or --detector-set, not both")
        latents, source = detector_latents(store, detector_set, spec)
    lat = [int(j) for j in latents] or [int(trial["latent"])]
    for j in lat:
        if not 0 <= j < spec.sae.d_sae:
            raise UserInputError(f"latent {j} is out of range: this SAE has latents 0 to {spec.sae.d_sae - 1}")
    if len(set(lat)) != len(lat):
        twice = sorted({j for j in lat if lat.count(j) > 1})
        raise UserInputError(f"latent {twice[0]} is given twice in --latents; give each latent once")
    layer = int(spec.sae.feature_layer if spec.sae.feature_layer is not None else spec.steering_layer)
    boost = float(trial["boost"] or 0.0)
    if judged is None:
        judged = next((t for t in store.trials(trial["run_id"]) if t["id"] == trial["id"]), {})
    judgment = judged.get("judgment")
    ok = judgment is not None and judgment.get("parse_status") == "ok"
    return TraceRequest(trial=trial, spec=spec, latents=lat, layer=layer, steered=bool(steered and boost != 0),
                        boost=boost, judgment=judgment if ok else None,
                        attempts=list(judged.get("attempts") or []) if ok else [], latent_source=source)


def compute_trace(req: TraceRequest, model, sae, decoder_rows: dict) -> tuple[Trace, Regions]:
    """Teacher-force the request's trial through `model` (a SteeredModel) and mark attempts and regions."""
    spec, trial = req.spec, req.trial
    directions = ({spec.steering_layer: decoder_rows[int(trial["latent"])] * np.float32(req.boost)}
                  if req.steered else None)
    response = trial["response"] or ""
    n_prompt, toks, acts = trace_tokens(model, sae, trial["prompt"], response, req.latents, req.layer, directions)
    raw = [model.llm.detokenize([t]) for t in toks]
    texts = [a.get("text") or "" for a in req.attempts]
    regions = mark_regions(raw, response, texts)
    tr = Trace(trial_id=trial["id"], latents=list(req.latents), layer=req.layer, steered=req.steered, boost=req.boost,
               prompt_tokens=n_prompt, tokens=list(toks), pieces=[b.decode("utf-8", errors="replace") for b in raw],
               attempt=attempt_of_tokens(raw, response, texts), acts=acts, region=regions.per_token)
    return tr, regions


def trace_trial(store, trial_id: str, latents: Sequence[int], *, steered: bool = True, model=None) -> Trace:
    """The trace of a stored trial, computed (not stored; see trace_store.get_trace); `model` may be a
    loaded SteeredModel."""
    from .engine import SteeredModel
    from .runs.resources import check_model, open_run_sae

    req = resolve_request(store, find_trial(store, trial_id), latents, steered=steered)
    if model is None:
        check_model(req.spec.model)  # the trace is of the model the trial ran on, as on resume
    sae, dec = open_run_sae(req.spec)
    own = model is None
    lm = model or SteeredModel(req.spec.model.path, n_ctx=req.spec.n_ctx, chat_mode=req.spec.model.chat_mode,
                               chat_template=req.spec.model.chat_template)
    try:
        return compute_trace(req, lm, sae, dec)[0]
    finally:
        if own:
            lm.close()


def long_csv(traces: Sequence[Trace]) -> str:
    """Long CSV of several traces: one row per (trace, response token, latent), as table trace_values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trace_id", "trial_id", "steered", "position", "token", "piece", "attempt", "region", "latent",
                "activation"])
    for tr in traces:
        regions = tr.region or [None] * len(tr.tokens)
        for k, j in enumerate(tr.latents):
            for pos, (tok, piece, att, reg) in enumerate(zip(tr.tokens, tr.pieces, tr.attempt, regions)):
                w.writerow([tr.trace_id, tr.trial_id, int(tr.steered), pos, tok, piece, att, reg or "", j,
                            float(tr.acts[pos, k])])
    return buf.getvalue()
