"""The paper's latent selection (§1.3): random candidates -> labelled -> concrete -> irrelevant -> chosen.

1. Draw `multiplier x n` distinct latents uniformly from the SAE (seeded).
2. Drop missing and placeholder labels.
3. Keep labels rated at least `threshold` (0-100) for concreteness: by the dictionary's own ratings
   (`concreteness.csv` beside its labels, as the shipped dictionary has) or by a judge.
4. Relevance at the feature layer over the prompt set, each prompt read as the chat-templated user turn
   without generation prompt, unsteered: `strict` keeps latents whose max activation is exactly 0 on every
   prompt (the paper's code); `top-k:K` drops latents among the K most activated of any prompt (the
   paper's text). Dead latents (never active where it can be known, see `dead_latents`) are excluded.
5. Keep the first `n` survivors in draw order.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .activations import max_over_texts
from .concreteness import DEFAULT_THRESHOLD, rate_labels
from .errors import FormatError, UserInputError
from .latent_labels import is_placeholder
from .text_readout import read_residuals

MULTIPLIER = 3
CONCRETENESS_FILE = "concreteness.csv"


@dataclass(frozen=True)
class Relevance:
    """`strict` (max exactly 0 on every prompt) or `top-k` with its k."""

    mode: str
    k: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Relevance:
        s = (spec or "strict").strip().lower()
        if s == "strict":
            return cls("strict")
        if s.startswith("top-k:"):
            try:
                k = int(s.split(":", 1)[1])
            except ValueError:
                k = 0
            if k >= 1:
                return cls("top-k", k)
        raise UserInputError(f"relevance {spec!r} is unknown; use strict or top-k:K (e.g. top-k:100)")

    def describe(self) -> str:
        return "strict" if self.mode == "strict" else f"top-k:{self.k}"


@dataclass
class Selection:
    """The outcome: chosen latents, funnel counts and per-candidate numbers of every filter."""

    chosen: list[int]
    labels: dict[int, str]
    funnel: dict[str, int]
    candidates: list[dict]
    settings: dict
    errors: list[str] = field(default_factory=list)


def dictionary_ratings(sae) -> dict[int, float] | None:
    """The dictionary's own concreteness ratings (`concreteness.csv` beside its labels), if it has them."""
    if sae.labels_path is None:
        return None
    folder = sae.labels_path if sae.labels_path.is_dir() else sae.labels_path.parent
    path = folder / CONCRETENESS_FILE
    if not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return {int(r["index_in_sae"]): float(r["concreteness"]) for r in csv.DictReader(fh)}
    except (KeyError, ValueError, TypeError) as exc:
        raise FormatError(f"{path}: expected columns index_in_sae,concreteness with numbers ({exc})") from None


def dead_latents(sae) -> set[int]:
    """Latents known to never fire: the shipped dictionary's concepts that fire on none of their own
    texts (its cfg records this), and latents with an all-zero decoder row are checked by callers."""
    import json

    cfg_path = Path(sae.info.resolved_path) / "cfg.json"
    if not cfg_path.is_file():
        return set()
    try:
        enc = json.loads(cfg_path.read_text(encoding="utf-8")).get("metadata", {}).get("encoder") or {}
    except (OSError, ValueError):
        return set()
    firing = enc.get("own_texts_firing") or []
    return {i for i, n in enumerate(firing) if n == 0}


def draw_candidates(d_sae: int, n: int, seed: int, multiplier: int = MULTIPLIER) -> list[int]:
    """`multiplier x n` distinct latents (all of them when the SAE is smaller), seeded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"--n must be a positive integer, got {n!r}")
    return random.Random(seed).sample(range(d_sae), min(d_sae, multiplier * n))


def select_latents(
    model,
    sae,
    *,
    n: int,
    seed: int,
    prompts: Sequence[str],
    layer: int,
    judge=None,
    threshold: float = DEFAULT_THRESHOLD,
    relevance: Relevance | None = None,
    multiplier: int = MULTIPLIER,
    echo: Callable[[str], None] | None = None,
    block_size: int = 4096,
) -> Selection:
    """Run the funnel. `judge` rates concreteness unless the dictionary carries its own ratings."""
    relevance = relevance or Relevance("strict")
    if not 0 <= threshold <= 100:
        raise UserInputError(f"concreteness threshold {threshold} must be between 0 and 100")
    cands = draw_candidates(sae.d_sae, n, seed, multiplier)
    rows = {i: {"latent": i, "label": sae.label(i)} for i in cands}
    labelled = [i for i in cands if not is_placeholder(rows[i]["label"])]
    for i in cands:
        rows[i]["labelled"] = i in labelled

    own = dictionary_ratings(sae)
    errors: list[str] = []
    if own is not None:
        source = {"source": "dictionary", "file": CONCRETENESS_FILE}
        scores = {i: own.get(i) for i in labelled}
    elif judge is not None:
        ratings = rate_labels(judge, [rows[i]["label"] for i in labelled], echo=echo)
        errors += ratings.errors
        source = {"source": "judge", "judge": judge.describe(), "rated_now": ratings.rated_now, "cached": ratings.cached}
        scores = {i: ratings.scores[rows[i]["label"]] for i in labelled}
    else:
        raise UserInputError("this SAE's labels carry no concreteness ratings; pass --judge to rate them")
    concrete = [i for i in labelled if scores.get(i) is not None and scores[i] >= threshold]
    for i in labelled:
        rows[i]["concreteness"] = scores.get(i)

    dead = dead_latents(sae) | {i for i in concrete if not np.any(sae.decoder_row(i))}
    residuals = [r.residual for r in read_residuals(model, prompts, layer, mode="user" if model.chat_mode != "raw" else "raw")]
    if relevance.mode == "strict":
        maxima = np.zeros((len(residuals), 0), np.float32)
        if concrete:  # one encode of all prompts' tokens, then the max per prompt
            acts = sae.encode(np.concatenate(residuals), concrete)
            starts = np.concatenate(([0], np.cumsum([len(r) for r in residuals])[:-1]))
            maxima = np.maximum.reduceat(acts, starts, axis=0)
        relevant = {i for k, i in enumerate(concrete) if np.any(maxima[:, k] != 0)}
        per = {i: float(maxima[:, k].max()) for k, i in enumerate(concrete)}
    else:
        full = max_over_texts(sae, residuals, block_size=block_size)
        k = min(relevance.k, sae.d_sae)
        top = set()
        for row in full:
            order = np.argsort(-row, kind="stable")[:k]
            top |= {int(j) for j in order if row[j] > 0}
        relevant = {i for i in concrete if i in top}
        per = {i: float(full[:, i].max()) for i in concrete}
    irrelevant = [i for i in concrete if i not in relevant and i not in dead]
    for i in concrete:
        rows[i].update(relevance_max=per[i], relevant=i in relevant, dead=i in dead)
    chosen = irrelevant[:n]
    funnel = {"candidates": len(cands), "labelled": len(labelled), "concrete": len(concrete),
              "irrelevant": len(irrelevant), "chosen": len(chosen), "dead": len([i for i in concrete if i in dead])}
    settings = {"n": n, "seed": seed, "multiplier": multiplier, "concreteness_threshold": threshold,
                "concreteness": source, "relevance": relevance.describe(), "layer": layer,
                "prompt_mode": "user" if model.chat_mode != "raw" else "raw", "n_prompts": len(prompts)}
    return Selection(chosen, {i: rows[i]["label"] for i in chosen}, funnel, [rows[i] for i in cands], settings, errors)
