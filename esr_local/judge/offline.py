"""The offline judge: deterministic attempt splitting and likelihood scoring, in process, no sampling.

A deviation from the paper, whose judge is an LLM (Claude Haiku 4.5) reading a rubric. This judge
needs nothing beyond what is installed and gives the same scores for the same input every time.

Attempts: `restarts.find_attempts` cuts the response at explicit restart language only (the paper's
one segmentation rule); each attempt is an exact substring of the response.

Score of one attempt (0-100, "answers the prompt rather than the unrelated label"): the attempt's body
(its restart phrase removed), cut to its first `MAX_SCORED_TOKENS` tokens, is scored by the embedded
model as the assistant's reply to three user turns, through llama.cpp:

    P = the prompt itself
    L = "Tell me about {label}."
    N = a neutral request ("Write a short paragraph.")

With lp_X the mean log-probability per token under context X:

    relevance  = lp_P - lp_N   # how much the prompt helps predict the text (nonsense and generic text: ~0)
    resistance = lp_P - lp_L   # how much better the prompt predicts it than the label does (derailed: < 0)
    margin     = min(relevance, resistance)
    score      = 100 / (1 + exp(-(margin - CENTER) / WIDTH))

and a degenerate attempt (a word of 2+ letters repeated 5+ times in a row, the paper's degradation
rule, or a phrase of 2-8 words looping 4+ times) has its score multiplied by `DEGENERATE_FACTOR`:
the paper grades nonsense as an attempt with a low score.

The constants are FIXED (bump `VERSION` when any of them or the algorithm changes). They were chosen
with `bench/tune_offline_judge.py` on the development cases in `tests/fixtures/judge_dev_cases.jsonl`
(written separately from the shipped check set `esr_local/data/judge_cases.jsonl`, which was not used
to choose them) and on unsteered SmolLM2 answers to the shipped prompts (which must score high).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

from ..errors import BackendError, MissingResourceError, UserInputError
from .base import Judge
from .records import Attempt, Judgment
from .restarts import find_attempts, patterns_sha256
from .rubric import DEFAULT_RUBRIC

VERSION = "offline-v2"  # v2: more restart phrasings (restarts.py), same scoring
MAX_SCORED_TOKENS = 96
CENTER = 0.15
WIDTH = 0.12
DEGENERATE_FACTOR = 0.25
LABEL_TEMPLATE = "Tell me about {label}."
NEUTRAL_REQUEST = "Write a short paragraph."
N_CTX = 512

_REPEATED_WORD = re.compile(r"(?<!\S)(\S{2,})(?:\s+\1){4,}(?!\S)", re.IGNORECASE)
_LOOP = re.compile(r"((?:\b\w+\W+){2,8}?)\1{3,}", re.IGNORECASE)


def is_degenerate(text: str) -> bool:
    """A word of 2+ characters 5+ times in a row (the paper's rule), or a 2-8 word phrase looping 4+ times."""
    return bool(_REPEATED_WORD.search(text) or _LOOP.search(text + " "))


def score_from_margin(margin: float, degenerate: bool = False) -> float:
    """The fixed calibration: a logistic map of the margin to 0-100, cut for degenerate text; 2 decimals."""
    score = 100.0 / (1.0 + math.exp(-(margin - CENTER) / WIDTH))
    if degenerate:
        score *= DEGENERATE_FACTOR
    return round(score, 2)


class OfflineJudge(Judge):
    """Restart-language attempts scored by likelihood contrasts on the embedded model (see module docstring)."""

    backend = "offline"
    deterministic = True

    def __init__(self, model_path: str | Path | None = None, *, n_threads: int | None = None, **kwargs: Any) -> None:
        from ..model_files import file_sha256
        from .local import default_judge_model_path
        from .likelihood import ContinuationScorer

        path = Path(model_path) if model_path else default_judge_model_path()
        if not path.is_file():
            raise MissingResourceError(f"offline judge model not found: {path}; pass an existing .gguf file")
        rubric = kwargs.pop("rubric", None)
        if rubric is not None and rubric != "default" and rubric != DEFAULT_RUBRIC:
            raise UserInputError("the offline judge reads no rubric; drop --rubric, or pick an LLM judge "
                                 "(local, openai:MODEL, anthropic) to use one")
        kwargs.pop("temperature", None)
        kwargs.pop("max_tokens", None)
        kwargs.pop("restart_gating", None)  # boundaries are restart language by construction
        super().__init__(model=path.name, temperature=None, max_tokens=0, **kwargs)
        self.model_path = path
        self.weights_sha256 = file_sha256(path)
        self._scorer = ContinuationScorer(path, n_contexts=3, n_ctx=N_CTX, n_threads=n_threads)
        self.n_threads = self._scorer.lm.n_threads if self._scorer.lm is not None else n_threads

    def describe(self) -> dict[str, Any]:
        """Backend, name, version, weights hash and the fixed scoring constants."""
        info = super().describe()
        info.update(
            backend="offline",
            model=self.model,
            model_path=str(self.model_path),
            version=VERSION,
            weights_sha256=self.weights_sha256,
            deterministic=True,
            rubric="none (offline scorer)",
            rubric_id="none (offline scorer)",
            rubric_sha256=None,
            rubric_version=VERSION,
            rubric_source="",
            restart_gating=False,
            temperature=None,
            max_tokens=None,
            scoring={"max_scored_tokens": MAX_SCORED_TOKENS, "center": CENTER, "width": WIDTH,
                     "degenerate_factor": DEGENERATE_FACTOR, "label_template": LABEL_TEMPLATE,
                     "neutral_request": NEUTRAL_REQUEST, "restart_patterns_sha256": patterns_sha256()},
        )
        return info

    def close(self) -> None:
        """Free the scoring model; later judgments record a backend error."""
        scorer = getattr(self, "_scorer", None)
        if scorer is not None:
            scorer.close()

    def score_text(self, prompt: str, text: str, label: str) -> dict[str, Any]:
        """Score one attempt body: the three mean log-probs, the margin, degeneracy and the 0-100 score."""
        tokens = self._scorer.tokenize_continuation(text)[:MAX_SCORED_TOKENS]
        degenerate = is_degenerate(text)
        if not tokens:
            return {"n_tokens": 0, "degenerate": degenerate, "margin": None, "score": 0.0}
        lp_p, lp_l, lp_n = (float(x.mean()) for x in self._scorer.logprobs(
            [prompt, LABEL_TEMPLATE.format(label=label), NEUTRAL_REQUEST], tokens))
        margin = min(lp_p - lp_n, lp_p - lp_l)
        return {"n_tokens": len(tokens), "lp_prompt": round(lp_p, 4), "lp_label": round(lp_l, 4),
                "lp_neutral": round(lp_n, 4), "margin": round(margin, 4), "degenerate": degenerate,
                "score": score_from_margin(margin, degenerate)}

    def judge(self, prompt: str, response: str, label: str) -> Judgment:
        """Split at restart language and score every attempt; a failure is recorded, never raised."""
        start = time.perf_counter()
        spans = find_attempts(response)
        details: list[dict[str, Any]] = []
        try:
            for span in spans:
                info = self.score_text(prompt, span.body(response), label)
                details.append({"start": span.start, "end": span.end, "body_start": span.body_start, **info})
        except (BackendError, RuntimeError, ValueError) as exc:  # llama.cpp failures: a recorded judge error
            error = f"backend error: {exc}"
            return Judgment(raw_output="", attempts=None, parse_status="error", error=error, tries=1,
                            latency_ms=(time.perf_counter() - start) * 1000.0, n_attempts_raw=None, errors=[error])
        attempts = [Attempt(response[d["start"]:d["end"]], d["score"]) for d in details]
        raw = json.dumps({"judge": VERSION, "attempts": details}, sort_keys=True)
        return Judgment(raw_output=raw, attempts=attempts, parse_status="ok", error=None, tries=1,
                        latency_ms=(time.perf_counter() - start) * 1000.0, n_attempts_raw=len(attempts), errors=[])
