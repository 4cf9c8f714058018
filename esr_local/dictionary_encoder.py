"""The encoder of the shipped concept dictionary: a thresholded projection on each concept direction.

The dictionary is stored as a SAELens `jumprelu` SAE with `normalize_activations =
"constant_norm_rescale"`, so any SAELens-layout reader encodes a residual `x` as

    x~      = x * sqrt(d) / ||x||                      (every token rescaled to the same norm)
    pre_i   = x~ . W_enc[:, i] + b_enc[i]
    f_i     = pre_i if pre_i > threshold[i] else 0

with, for concept direction `w_i = W_dec[i]` (a raw mean difference):

    W_enc[:, i] = w_i / ||w_i||^2 * rho / sqrt(d)        rho = median residual norm over the texts
    b_enc[i]    = -c~ . W_enc[:, i]                      c~ = mean of the concepts' mean rescaled residuals

so for a token of typical norm, `pre_i` is the token's component along `w_i` (relative to the
centroid) in units of one mean difference: 1.0 means "one concept's worth" of that direction.
The norm rescaling keeps the first token, whose residual is ~200x larger than the others
(~2.5e4 vs ~130 on SmolLM2 at block 12), from firing every latent.

Threshold: the largest `pre_i` over every token (first tokens skipped) of the *other* concepts'
texts and the neutral texts, so on the dictionary's own data a latent fires only on its own concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from .readout import ResidualReader

if TYPE_CHECKING:
    from .dictionary import ConceptSet

ENCODER_NORMALIZATION = "constant_norm_rescale"
THRESHOLD_RULE = "max pre-activation over every token of the other concepts' texts and the neutral texts"


@dataclass(frozen=True)
class FittedEncoder:
    """Encoder weights (float32, SAELens orientation) and the numbers they were fitted from."""

    w_enc: np.ndarray  # [d, n_concepts]
    b_enc: np.ndarray  # [n_concepts]
    threshold: np.ndarray  # [n_concepts]
    norm_scale: float  # rho
    own_texts_firing: list[int] = field(default_factory=list)  # per concept: own texts on which it fires
    n_texts: list[int] = field(default_factory=list)

    def describe(self) -> dict:
        """What goes into cfg.json's metadata."""
        return {
            "kind": "thresholded projection on each concept direction (jumprelu, constant_norm_rescale input)",
            "w_enc": "W_dec[i] / ||W_dec[i]||^2 * norm_scale / sqrt(d_in)",
            "b_enc": "-(centroid of the concepts' mean rescaled residuals) . W_enc[:, i]",
            "norm_scale": round(self.norm_scale, 4),
            "threshold_rule": THRESHOLD_RULE,
            "own_texts_firing": self.own_texts_firing,
            "texts_per_concept": self.n_texts,
        }


def rescale(x: np.ndarray) -> np.ndarray:
    """SAELens `constant_norm_rescale`: each row scaled to norm sqrt(d)."""
    return x * (np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True))


def _token_residuals(reader: ResidualReader, llm: llama_cpp.Llama, texts: Sequence[str], layer: int) -> list[np.ndarray]:
    out = []
    for text in texts:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        out.append(reader.read(tokens, [layer])[layer][1:].astype(np.float64))
    return out


def fit_encoder(
    llm: llama_cpp.Llama,
    layer: int,
    w_dec: np.ndarray,
    concepts: ConceptSet,
    *,
    n_ctx: int,
    n_threads: int,
    per_concept: list[list[np.ndarray]] | None = None,
    neutral: list[np.ndarray] | None = None,
) -> FittedEncoder:
    """Fit the projection encoder of `w_dec` (rows = concepts, in `concepts` order) on the concepts' texts.

    `per_concept` / `neutral`: token residuals already read (first token skipped); what is missing is read."""
    if per_concept is None or neutral is None:
        with ResidualReader(llm, n_ctx=n_ctx, n_threads=n_threads, flash_attn=False) as reader:
            if per_concept is None:
                per_concept = [_token_residuals(reader, llm, c.texts, layer) for c in concepts.concepts]
            if neutral is None:
                neutral = _token_residuals(reader, llm, concepts.neutral, layer)
    d = w_dec.shape[1]
    every = np.concatenate([t for texts in per_concept for t in texts] + neutral)
    rho = float(np.median(np.linalg.norm(every, axis=1)))
    w = w_dec.astype(np.float64)
    w_enc = np.ascontiguousarray((w / (w * w).sum(axis=1, keepdims=True) * (rho / np.sqrt(d))).T, dtype=np.float32)
    centroid = np.mean([rescale(np.concatenate(texts)).mean(axis=0) for texts in per_concept], axis=0)
    b_enc = (-(centroid @ w_enc.astype(np.float64))).astype(np.float32)

    def pre(rows: np.ndarray) -> np.ndarray:  # what a reader computes from the stored float32 weights
        return rescale(rows) @ w_enc.astype(np.float64) + b_enc.astype(np.float64)

    concept_pre = [[pre(t) for t in texts] for texts in per_concept]
    neutral_pre = np.concatenate([pre(t) for t in neutral])
    n = len(per_concept)
    threshold = np.empty(n, np.float32)
    firing = []
    for i in range(n):
        others = [p[:, i] for j in range(n) if j != i for p in concept_pre[j]] + [neutral_pre[:, i]]
        top = max(float(o.max()) for o in others)
        t32 = np.float32(top)
        threshold[i] = t32 if float(t32) >= top else np.nextafter(t32, np.float32(np.inf))  # never round below
        firing.append(int(sum(float(p[:, i].max()) > float(threshold[i]) for p in concept_pre[i])))
    return FittedEncoder(w_enc, b_enc, threshold, rho, firing, [len(c.texts) for c in concepts.concepts])
