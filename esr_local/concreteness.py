"""Label concreteness ratings (0-100) through any judge backend's raw `Judge.complete`, cached on disk.

Labels go to the judge in batches of 50; the reply must be a JSON list of `{"label", "rating"}`
objects. A batch whose reply cannot be read scores 0 for all its labels (as the paper's code), and
the failure is recorded. Ratings are cached per judge model (backend + model + weights hash) and
label hash in `<data dir>/concreteness/<model key>.json`, so a label is rated once per model.
The instructions below are esr-local's own wording of the paper's scale.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EsrError
from .paths import data_dir

BATCH_SIZE = 50
DEFAULT_THRESHOLD = 65.0

SYSTEM = (
    "You rate short descriptions of features found inside a language model. For each description, give a "
    "concreteness rating from 0 to 100: 0 means very abstract and general (grammar, punctuation, broad moods, "
    "generic conversation moves), 100 means very concrete and tied to one specific domain or kind of thing "
    "(a particular animal, sport, food, place, profession, object). Descriptions of the assistant's own "
    "conversational behaviour (asking for clarification, refusing, greeting) are abstract and rate low. "
    "Answer with a JSON list only, one object per description, in the order given: "
    '[{"label": "<the description>", "rating": <0-100>}, ...]'
)


def label_hash(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8")).hexdigest()[:16]


def model_key(judge) -> str:
    """Cache key of a judge's language model (not its rubric: ratings do not use the rubric)."""
    d = judge.describe()
    ident = {k: d.get(k) for k in ("backend", "model", "weights_sha256")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def _cache_path(judge) -> Path:
    return data_dir() / "concreteness" / f"{model_key(judge)}.json"


@dataclass
class Ratings:
    """Ratings by label, how many were new, and any batch failures."""

    scores: dict[str, float]
    rated_now: int = 0
    cached: int = 0
    errors: list[str] = field(default_factory=list)


def user_message(labels: Sequence[str]) -> str:
    return "Rate these descriptions:\n" + "\n".join(f"{k + 1}. {json.dumps(lab)}" for k, lab in enumerate(labels))


def parse_reply(reply: str, labels: Sequence[str]) -> list[float]:
    """Ratings for `labels` from a reply; ValueError when it is not a list with one rating per label."""
    m = re.search(r"\[.*\]", reply, re.DOTALL)
    if m is None:
        raise ValueError("no JSON list in the reply")
    items = json.loads(m.group(0))
    if not isinstance(items, list) or len(items) != len(labels):
        raise ValueError(f"expected {len(labels)} ratings, got {len(items) if isinstance(items, list) else 'none'}")
    by_label = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("label"), str):
            by_label[item["label"].strip()] = item.get("rating")
    out = []
    for k, lab in enumerate(labels):
        item = items[k]
        value = by_label.get(lab.strip(), item.get("rating") if isinstance(item, dict) else item)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"rating for {lab!r} is {value!r}, not a number")
        out.append(min(100.0, max(0.0, float(value))))
    return out


def rate_labels(judge, labels: Sequence[str], *, batch_size: int = BATCH_SIZE, echo=None) -> Ratings:
    """Concreteness of each distinct label (cached ones are not sent again)."""
    path = _cache_path(judge)
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    unique = list(dict.fromkeys(labels))
    todo = [lab for lab in unique if label_hash(lab) not in cache]
    ratings = Ratings({}, cached=len(unique) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        if echo:
            echo(f"rating concreteness of labels {start + 1}-{start + len(batch)} of {len(todo)}")
        try:
            scores = parse_reply(judge.complete(SYSTEM, user_message(batch)), batch)
        except (ValueError, EsrError) as exc:
            ratings.errors.append(f"batch {start // batch_size}: {exc}")
            scores = [0.0] * len(batch)  # the paper's rule: an unreadable batch scores 0
        else:
            for lab, score in zip(batch, scores):
                cache[label_hash(lab)] = score  # only readable ratings are cached
            ratings.rated_now += len(batch)
        for lab, score in zip(batch, scores):
            ratings.scores[lab] = score
    for lab in unique:
        if lab not in ratings.scores:
            ratings.scores[lab] = float(cache[label_hash(lab)])
    if ratings.rated_now:
        from .atomic import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode="w") as fh:
            json.dump(cache, fh, sort_keys=True)
    return ratings
