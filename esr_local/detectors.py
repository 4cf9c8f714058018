"""Off-topic detector discovery (paper §3.1): latents that fire when a response does not answer its prompt.

One unsteered response per prompt; matched pairs (prompt i, response i) and mismatched pairs
(prompt i, response π(i)) with π a true derangement (no fixed point); each pair teacher-forced through
the model and read at the feature layer; each latent max-pooled over all positions of the pair. Two
rankings, both from the paper's materials:

- strict: zero on every matched pair and active on at least `min_active` (80%) of mismatched pairs;
- separability: the AUC of mismatched against matched maxima (Mann-Whitney, ties count half).

Stored in the `detector_sets` table with every statistic of every ranked latent.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .activations import max_over_texts
from .errors import UserInputError
from .ids import new_id
from .text_readout import read_residuals

RULES = ("strict", "auc")


def derangement(n: int, seed: int) -> list[int]:
    """A uniformly drawn permutation of range(n) with no fixed point (rejection sampling; n >= 2)."""
    if n < 2:
        raise UserInputError(f"mismatched pairs need at least 2 prompts, got {n}")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def auc_scores(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per-column AUC of `pos` [n_pos, k] against `neg` [n_neg, k]: P(pos > neg) + P(pos == neg) / 2."""
    both = np.concatenate([neg, pos], axis=0).astype(np.float64)
    order = np.argsort(both, axis=0, kind="stable")
    srt = np.take_along_axis(both, order, axis=0)
    ranks = np.empty_like(both)
    n = both.shape[0]
    # Average ranks over ties: for each run of equal values, the mean of its positions.
    for col in range(both.shape[1]):
        s = srt[:, col]
        if s[0] == s[-1]:
            ranks[order[:, col], col] = (n + 1) / 2
            continue
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ends = np.r_[starts[1:], n]
        avg = (starts + ends + 1) / 2.0
        ranks[order[:, col], col] = np.repeat(avg, ends - starts)
    n_neg, n_pos = neg.shape[0], pos.shape[0]
    r_pos = ranks[n_neg:].sum(axis=0)
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class DetectorRanking:
    """Both rankings and the statistics behind them (one dict per latent that fired anywhere)."""

    strict: list[int]
    by_auc: list[int]
    stats: list[dict]
    settings: dict = field(default_factory=dict)


def rank_detectors(matched: np.ndarray, mismatched: np.ndarray, *, min_active: float = 0.8,
                   top: int = 50) -> DetectorRanking:
    """Rank latents from max-pooled activations `matched`, `mismatched` [n_pairs, d_sae].

    strict: latents zero on every matched pair, active on >= min_active of mismatched pairs, ordered by
    mismatched active fraction then mean. by_auc: the `top` latents by AUC (> 0.5), ties broken by index.
    """
    m, mm = np.asarray(matched, np.float64), np.asarray(mismatched, np.float64)
    if m.ndim != 2 or m.shape[1] != mm.shape[1] or m.shape[0] < 1 or mm.shape[0] < 1:
        raise UserInputError(f"matched {m.shape} and mismatched {mm.shape} must be [n_pairs, d_sae] with the same d_sae")
    if not 0 < min_active <= 1:
        raise UserInputError(f"min_active must be in (0, 1], got {min_active}")
    fired = np.flatnonzero((m > 0).any(axis=0) | (mm > 0).any(axis=0))
    auc = auc_scores(mm[:, fired], m[:, fired]) if fired.size else np.zeros(0)
    m_frac, mm_frac = (m[:, fired] > 0).mean(axis=0), (mm[:, fired] > 0).mean(axis=0)
    stats = []
    for k, j in enumerate(fired):
        stats.append({
            "latent": int(j), "auc": float(auc[k]),
            "matched_active": float(m_frac[k]), "mismatched_active": float(mm_frac[k]),
            "matched_max": float(m[:, j].max()), "matched_mean": float(m[:, j].mean()),
            "mismatched_mean": float(mm[:, j].mean()), "mismatched_max": float(mm[:, j].max()),
            "strict": bool(m_frac[k] == 0 and mm_frac[k] >= min_active),
        })
    strict = [s["latent"] for s in sorted((s for s in stats if s["strict"]),
                                          key=lambda s: (-s["mismatched_active"], -s["mismatched_mean"], s["latent"]))]
    by_auc = [s["latent"] for s in sorted((s for s in stats if s["auc"] > 0.5), key=lambda s: (-s["auc"], s["latent"]))][:top]
    keep = set(strict) | set(by_auc)
    for rank, j in enumerate(by_auc):
        next(s for s in stats if s["latent"] == j)["auc_rank"] = rank + 1
    return DetectorRanking(strict=strict, by_auc=by_auc, stats=[s for s in stats if s["latent"] in keep],
                           settings={"min_active": min_active, "top": top, "n_pairs": int(m.shape[0]),
                                     "n_fired": int(fired.size)})


@dataclass
class DetectorSearch:
    """A finished search: the ranking, the prompts, responses and the derangement it used."""

    ranking: DetectorRanking
    prompts: list[str]
    responses: list[str]
    derangement: list[int]
    matched: np.ndarray = field(repr=False)
    mismatched: np.ndarray = field(repr=False)


def find_detectors(model, sae, prompts: Sequence[str], *, layer: int, sampling, seed: int = 0,
                   responses: Sequence[str] | None = None, min_active: float = 0.8, top: int = 50,
                   echo=lambda _m: None) -> DetectorSearch:
    """Generate (or take) one unsteered response per prompt, read matched and deranged pairs, rank."""
    prompts = list(prompts)
    perm = derangement(len(prompts), seed)
    if responses is None:
        model.clear()
        responses = []
        for i, p in enumerate(prompts):
            responses.append(model.generate(p, sampling, seed + i).text)
            echo(f"response {i + 1}/{len(prompts)}")
    responses = [r if r.strip() else " " for r in responses]
    if len(responses) != len(prompts):
        raise UserInputError(f"got {len(prompts)} prompts and {len(responses)} responses")
    matched_res = read_residuals(model, prompts, layer, responses=responses)
    mism_res = read_residuals(model, prompts, layer, responses=[responses[perm[i]] for i in range(len(prompts))])
    matched = max_over_texts(sae, [r.residual for r in matched_res])
    mismatched = max_over_texts(sae, [r.residual for r in mism_res])
    ranking = rank_detectors(matched, mismatched, min_active=min_active, top=top)
    ranking.settings.update(layer=int(layer), seed=int(seed), derangement=perm, pooling="max over all positions",
                            sampling=getattr(sampling, "__dict__", None))
    return DetectorSearch(ranking, prompts, list(responses), perm, matched, mismatched)


# -- storage --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSet:
    """A stored detector set: `latents` are the chosen rule's ranking."""

    id: str
    name: str
    created_utc: str
    rule: str
    latents: list[int]
    strict: list[int]
    by_auc: list[int]
    stats: list[dict]
    settings: dict
    model_name: str | None
    sae_source: str
    d_sae: int
    feature_layer: int | None


def save_detector_set(store, name: str, search: DetectorSearch, *, rule: str, sae, sae_source: str,
                      model_name: str | None, extra_settings: dict | None = None, replace: bool = False) -> DetectorSet:
    """Store a search's ranking under `name` (the `latents` follow `rule`: strict or auc)."""
    if rule not in RULES:
        raise UserInputError(f"rule must be strict or auc, got {rule!r}")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise UserInputError("a detector set needs a non-empty name (at most 200 characters)")
    table = store.db["detector_sets"]
    existing = list(table.rows_where("name = ?", [name]))
    if existing and not replace:
        raise UserInputError(f"a detector set named {name!r} already exists; choose another --name or pass --replace")
    r = search.ranking
    settings = {**r.settings, **(extra_settings or {}), "prompts": search.prompts, "responses": search.responses}
    row = {
        "id": new_id(), "name": name, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": model_name, "sae_source": sae_source, "d_sae": int(sae.d_sae),
        "feature_layer": r.settings.get("layer"), "rule": rule,
        "latents_json": json.dumps(r.strict if rule == "strict" else r.by_auc),
        "strict_json": json.dumps(r.strict), "auc_json": json.dumps(r.by_auc),
        "stats_json": json.dumps(r.stats), "settings_json": json.dumps(settings, default=str),
    }
    with store.transaction():
        if existing:
            table.delete_where("name = ?", [name])
        table.insert(row)
    return _from_row(row)


def _from_row(row: dict) -> DetectorSet:
    return DetectorSet(
        id=row["id"], name=row["name"], created_utc=row["created_utc"], rule=row["rule"],
        latents=json.loads(row["latents_json"]), strict=json.loads(row["strict_json"]),
        by_auc=json.loads(row["auc_json"]), stats=json.loads(row["stats_json"]),
        settings=json.loads(row["settings_json"]), model_name=row["model_name"], sae_source=row["sae_source"],
        d_sae=int(row["d_sae"]), feature_layer=row["feature_layer"])


def load_detector_set(store, name: str) -> DetectorSet:
    """The detector set called `name` (or with that id); MissingResourceError listing the known names."""
    return _from_row(store.named_row("detector_sets", name, what="detector set", make_one="esr-local detectors find"))
