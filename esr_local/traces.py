"""Per-token activations of chosen latents along a trial's response (paper Experiments 6 and 9).

The trial's prompt (as the model saw it) and its response are teacher-forced through the model once,
with or without the trial's steering vector, and the residual at the SAE's feature layer is encoded
for the requested latents. Each response token is marked with the judge's attempt it falls in, so the
off-topic / correction / on-topic regions can be told apart.

The response is re-tokenized from its text (trials store text, not token ids); for the greedy and
sampled outputs of llama.cpp's own tokenizer that is the same sequence in practice, not by guarantee.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UserInputError


@dataclass
class Trace:
    """Activations [n_response_tokens, n_latents] with token pieces and attempt indices (-1: none)."""

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

    def records(self) -> list[dict]:
        """One dict per response token."""
        return [{"position": i, "token": t, "piece": p, "attempt": a,
                 **{f"latent_{j}": float(v) for j, v in zip(self.latents, row)}}
                for i, (t, p, a, row) in enumerate(zip(self.tokens, self.pieces, self.attempt, self.acts))]

    def to_json(self) -> str:
        return json.dumps({"trial_id": self.trial_id, "latents": self.latents, "layer": self.layer,
                           "steered": self.steered, "boost": self.boost, "prompt_tokens": self.prompt_tokens,
                           "tokens": self.records()}, ensure_ascii=False)

    def to_csv(self) -> str:
        buf = io.StringIO()
        rows = self.records()
        w = csv.DictWriter(buf, fieldnames=["position", "token", "piece", "attempt", *[f"latent_{j}" for j in self.latents]])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()


def _char_starts(pieces: Sequence[bytes]) -> list[int]:
    """The character offset in the joined text of each token's first non-space byte (a token that
    continues a character split across tokens maps to that character)."""
    starts, done = [], b""
    for piece in pieces:
        lead = len(piece) - len(piece.lstrip()) if piece.strip() else 0
        starts.append(len((done + piece[:lead]).decode("utf-8", "ignore")))
        done += piece
    return starts


def attempt_of_tokens(pieces: Sequence[str] | Sequence[bytes], response: str, attempts: Sequence[str]) -> list[int]:
    """For each token, the index of the attempt whose text span (found in order in `response`) holds the
    token's first non-space character; -1 outside every attempt. Give the tokens' raw bytes where a
    character may be split across tokens (their decoded pieces then no longer add up to the text)."""
    spans, cursor = [], 0
    for k, text in enumerate(attempts):
        t = (text or "").strip()
        at = response.find(t, cursor) if t else -1
        if at >= 0:
            spans.append((at, at + len(t), k))
            cursor = at + len(t)
    if pieces and isinstance(pieces[0], bytes):
        starts = _char_starts(pieces)
    else:
        starts, pos = [], 0
        for piece in pieces:
            starts.append(pos + (len(piece) - len(piece.lstrip()) if piece.strip() else 0))  # first visible character
            pos += len(piece)
    return [next((k for a, b, k in spans if a <= first < b), -1) for first in starts]


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


def trace_trial(store, trial_id: str, latents: Sequence[int], *, steered: bool = True, model=None) -> Trace:
    """The trace of a stored trial (see module docstring); `model` may be a loaded SteeredModel."""
    from .engine import SteeredModel
    from .runs.execute import load_spec
    from .runs.resources import check_model, open_run_sae

    rows = store.db.execute("SELECT * FROM trials WHERE id = ? OR id LIKE ?", (trial_id, f"{trial_id}%")).fetchall()
    if len(rows) != 1:
        raise UserInputError(f"{'no' if not rows else 'more than one'} trial matches {trial_id!r}; give a trial id "
                             "(esr-local trials RUN lists them)")
    cols = [d[0] for d in store.db.execute("SELECT * FROM trials LIMIT 0").description]
    trial = dict(zip(cols, rows[0]))
    spec = load_spec(store.get_run(trial["run_id"]))
    if model is None:
        check_model(spec.model)  # the trace is of the model the trial ran on, as on resume
    sae, dec = open_run_sae(spec)
    lat = [int(j) for j in latents] or [int(trial["latent"])]
    for j in lat:
        if not 0 <= j < sae.d_sae:
            raise UserInputError(f"latent {j} is out of range: this SAE has latents 0 to {sae.d_sae - 1}")
    layer = int(spec.sae.feature_layer if spec.sae.feature_layer is not None else spec.steering_layer)
    boost = float(trial["boost"] or 0.0)
    directions = ({spec.steering_layer: dec[int(trial["latent"])] * np.float32(boost)}
                  if steered and boost != 0 else None)
    own = model is None
    lm = model or SteeredModel(spec.model.path, n_ctx=spec.n_ctx, chat_mode=spec.model.chat_mode,
                               chat_template=spec.model.chat_template)
    try:
        n_prompt, toks, acts = trace_tokens(lm, sae, trial["prompt"], trial["response"] or "", lat, layer, directions)
        raw = [lm.llm.detokenize([t]) for t in toks]
        pieces = [b.decode("utf-8", errors="replace") for b in raw]
    finally:
        if own:
            lm.close()
    judged = [t for t in store.trials(trial["run_id"]) if t["id"] == trial["id"]]
    attempts = [a.get("text") or "" for a in (judged[0]["attempts"] if judged else [])]
    return Trace(trial_id=trial["id"], latents=lat, layer=layer, steered=directions is not None, boost=boost,
                 prompt_tokens=n_prompt, tokens=list(toks), pieces=pieces,
                 attempt=attempt_of_tokens(raw, trial["response"] or "", attempts), acts=acts)
