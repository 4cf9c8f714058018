"""Token log-likelihoods of one continuation under several chat contexts at once, through llama.cpp.

The offline judge asks a small model one question many times: how likely are these tokens as the
assistant's reply to this user turn, and to that one? `ContinuationScorer` loads a GGUF once through
the engine's `SteeredModel` (chat template, tokenizer, batch decoding) and never sets a control
vector, so it is never steered. Each context is one llama.cpp sequence: context + continuation are
decoded for every context in one batch (from an empty KV cache, so the same input always gives the
same floats) and the logits of each continuation token are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from ..engine import SteeredModel, default_threads
from ..errors import BackendError


class ContinuationScorer:
    """Per-token log-probabilities of a continuation given `n_contexts` chat contexts, unsteered."""

    def __init__(self, model_path: str | Path, *, n_contexts: int = 3, n_ctx: int = 512,
                 n_threads: int | None = None) -> None:
        # SteeredModel's private decode helpers (_fill, _ctx, _clear_memory) are reused on purpose:
        # one place drives llama.cpp batches in this project.
        self.lm: SteeredModel | None = SteeredModel(model_path, n_ctx=n_ctx, n_seq=n_contexts,
                                                    n_threads=n_threads or default_threads(), chat_mode="auto")
        self.n_ctx = n_ctx
        self.n_contexts = n_contexts
        self._format_cache: dict[str, list[int]] = {}

    def close(self) -> None:
        """Free the model and context; safe to call twice."""
        lm, self.lm = self.lm, None
        if lm is not None:
            lm.close()

    def context_tokens(self, user_text: str) -> list[int]:
        """Tokens of the chat context "user: `user_text`, assistant:" (memoised per text)."""
        toks = self._format_cache.get(user_text)
        if toks is None:
            toks = self._model().tokenize(self._model().format_prompt(user_text))
            if len(self._format_cache) > 256:
                self._format_cache.clear()
            self._format_cache[user_text] = toks
        return toks

    def tokenize_continuation(self, text: str) -> list[int]:
        """Tokens of reply text, as the model would produce them (no BOS, no special tokens)."""
        return self._model().llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _model(self) -> SteeredModel:
        if self.lm is None:
            raise BackendError("this offline judge was closed")
        return self.lm

    def logprobs(self, user_texts: Sequence[str], continuation: Sequence[int]) -> list[np.ndarray]:
        """For each user text: log p(token_i | its context, tokens before i) for every continuation token."""
        lm = self._model()
        if len(user_texts) > self.n_contexts:
            raise BackendError(f"{len(user_texts)} contexts for a scorer of {self.n_contexts}")
        continuation = list(continuation)
        if not continuation:
            return [np.zeros(0) for _ in user_texts]
        contexts = [self.context_tokens(t) for t in user_texts]
        for seq, ctx in enumerate(contexts):
            if len(ctx) + len(continuation) > self.n_ctx:
                raise BackendError(f"context ({len(ctx)}) + continuation ({len(continuation)}) tokens exceed the "
                                   f"offline judge's n_ctx={self.n_ctx}")
        # Always from an empty KV cache with the same batch layout: reusing cached context tokens would change
        # how rows are batched, and llama.cpp's float results depend on that (scores must be bit-identical).
        lm._clear_memory()
        rows: list[tuple[int, int, int, bool]] = []
        for seq, ctx in enumerate(contexts):
            tokens = ctx + continuation
            for pos in range(len(tokens) - 1):
                rows.append((tokens[pos], pos, seq, pos >= len(ctx) - 1))
        out = [np.empty(len(continuation)) for _ in contexts]
        n_vocab = lm.n_vocab
        n_batch = lm._n_batch
        try:
            for start in range(0, len(rows), n_batch):
                chunk = rows[start:start + n_batch]
                lm._fill(chunk)
                wanted = [(pos, seq) for (_, pos, seq, want) in chunk if want]
                if not wanted:
                    continue
                # The output rows, in batch order, as one (n_outputs, n_vocab) array: one vectorised log-softmax.
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(lm._ctx), shape=(len(wanted), n_vocab))
                top = logits.max(axis=1)
                lse = top.astype(np.float64) + np.log(np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64))
                for k, (pos, seq) in enumerate(wanted):
                    i = pos - (len(contexts[seq]) - 1)
                    out[seq][i] = float(logits[k, continuation[i]]) - lse[k]
        finally:
            lm._clear_memory()
        return out
