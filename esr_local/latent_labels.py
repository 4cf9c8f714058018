"""Latent labels: where they come from, which ones are placeholders, search, and the run-side check.

Label sources, in order: `--labels FILE` (CSV `index_in_sae,label` or Neuronpedia `.jsonl[.gz]`), a
`labels.csv` beside the weights (the shipped dictionary has one), the catalog entry's `labels`, and
the Neuronpedia export named by the catalog's `neuronpedia_id` (or the SAE file's own), downloaded
once into the data folder (see `saes/neuronpedia.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import UserInputError

_PLACEHOLDER = re.compile(r"^\s*(feature|latent|neuron)[ _#-]?\d+\s*$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")


def is_placeholder(label: str | None) -> bool:
    """True for a missing/empty label or one that only names the latent (`feature_1234`, `latent 7`)."""
    return label is None or not label.strip() or bool(_PLACEHOLDER.match(label))


def usable_labels(labels: Mapping[int, str | None]) -> dict[int, str]:
    """The labels that say something (placeholders and empty ones dropped)."""
    return {i: lab for i, lab in labels.items() if not is_placeholder(lab)}


@dataclass(frozen=True)
class LabelMatch:
    latent: int
    label: str
    how: str  # "substring" | "words"


def search_labels(labels: Mapping[int, str], query: str) -> list[LabelMatch]:
    """Latents whose label contains `query` (case-insensitive), then those containing all its words.

    Substring matches come first, each group in latent order; placeholders never match.
    """
    q = query.strip().lower()
    if not q:
        raise UserInputError("give some text to search for")
    words = set(_WORD.findall(q))
    sub, word = [], []
    for i in sorted(labels):
        label = labels[i]
        if is_placeholder(label):
            continue
        low = label.lower()
        if q in low:
            sub.append(LabelMatch(i, label, "substring"))
        elif words and words <= set(_WORD.findall(low)):
            word.append(LabelMatch(i, label, "words"))
    return sub + word


def check_labelled(labels: Mapping[int, str | None], latents: Iterable[int], *, allow_unlabelled: bool) -> dict:
    """The run-side check: every steered latent must have a real label unless the user allowed it.

    Returns `{"unlabelled": [...], "allowed": bool}` for the run spec; raises UserInputError listing
    the unlabelled latents when there are some and `allow_unlabelled` is false.
    """
    missing = sorted({int(i) for i in latents if is_placeholder(labels.get(int(i)))})
    if missing and not allow_unlabelled:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserInputError(
            f"{len(missing)} latent(s) have no label ({shown}): the judge would be told a placeholder. Pass a labels "
            "file (--labels), download the catalog's Neuronpedia labels, choose labelled latents "
            "(`esr-local latents select`), or pass --allow-unlabelled to run anyway (recorded in the run)"
        )
    return {"unlabelled": missing, "allowed": bool(missing) and allow_unlabelled}


def all_labels(sae) -> dict[int, str]:
    """Every label of an opened SAE ({} when it has no labels file)."""
    if sae.labels_path is None:
        return {}
    sae.label(0)  # loads the file once
    return dict(sae._labels or {})


def attach_catalog_labels(sae, entry, *, explicit: bool, progress: bool = True, offline: bool | None = None):
    """Give `sae` the catalog's Neuronpedia labels when it has none and none were asked for.

    `explicit` is true when the user named the SAE or a labels file; the catalog's labels are then
    not substituted. Returns the SAE (with labels when found). The Neuronpedia id is the catalog
    entry's, else the SAE file's own (SAELens v6 metadata).
    """
    if sae.labels_path is not None or explicit:
        return sae
    np_id = (entry.sae.neuronpedia_id if entry is not None else None) or sae.info.neuronpedia_id
    if not np_id:
        return sae
    from .saes.neuronpedia import download_explanations

    sae.set_labels_path(download_explanations(np_id, progress=progress, offline=offline))
    return sae
