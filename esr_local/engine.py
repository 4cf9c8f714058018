"""Steered generation on a GGUF model, in process, through llama.cpp (llama-cpp-python's low-level API).

One `SteeredModel` loads the weights once and owns one generation context. Changing the control vector
never reloads the model; it replaces the context's vector (always the full buffer) and drops the KV cache,
because cached positions computed under the old vector would otherwise be reused.

The decode loop is our own rather than `Llama.generate` for three reasons: the paper's repetition penalty
covers the whole context (llama-cpp-python's high-level sampler only looks at the last 64 tokens), the
prefix cache must never survive a vector change, and trials that share a vector can decode as parallel
sequences of one context.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from .cvec import apply_to_context
from .errors import BackendError, FormatError, MissingResourceError, UserInputError
from .sampling import SamplingParams, check_seed, make_sampler, resolve_sampling

_make_sampler = make_sampler  # the old private name, kept for tests and benches
__all__ = ["Generation", "SamplingParams", "SteeredModel", "check_seed", "resolve_sampling", "system_info"]

# ---------------------------------------------------------------------------------------------- results


@dataclass
class Generation:
    """One generated completion and how it was made."""

    text: str
    prompt_text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str  # "eos" | "length"
    seed: int
    prefill_ms: float  # this sequence's own prompt decode
    generation_ms: float  # from the end of all prefills to this sequence's last token (shared steps)
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed (completion tokens over decode time)."""
        return self.completion_tokens / (self.generation_ms / 1000) if self.generation_ms > 0 else 0.0


# ---------------------------------------------------------------------------------------------- model


MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS; far more aborts the process (std::bad_alloc)


def default_threads() -> int:
    """Threads for llama.cpp: ESR_LOCAL_THREADS (an integer from 1 to MAX_THREADS), else all cores."""
    env = os.environ.get("ESR_LOCAL_THREADS", "").strip()
    if not env:
        return max(1, min(MAX_THREADS, os.cpu_count() or 1))
    try:
        n = int(env)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise UserInputError(f"ESR_LOCAL_THREADS={env!r} is not a thread count; set it to a whole number from 1 to "
                             f"{MAX_THREADS} (e.g. the number of CPU cores), or unset it")
    return n


class SteeredModel:
    """A GGUF model loaded once, with one generation context whose control vector can be swapped.

    `n_seq` > 1 lets `generate_many` decode that many prompts as parallel sequences of one context
    (they all share the context's control vector).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_seq: int = 1,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        chat_mode: str = "auto",
        chat_template: str | None = None,
        flash_attn: bool = True,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise MissingResourceError(f"model file not found: {path}; pass --model with a GGUF path or a catalog name")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise FormatError(f"{path} is not a GGUF file (bad magic); pass a .gguf model file")
        self.model_path = path
        self.n_ctx = int(n_ctx)
        self.n_seq = max(1, int(n_seq))
        self.n_threads = n_threads or default_threads()
        try:
            # The high-level object only holds the weights, tokenizer and metadata; its own context is tiny.
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=64,
                n_batch=64,
                n_threads=self.n_threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise FormatError(f"llama.cpp could not load {path}: {exc}; check that the file is a complete GGUF model") from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.llm.model))
        self.n_embd = int(self.llm.n_embd())
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.architecture = str(self.llm.metadata.get("general.architecture", "unknown"))
        self.chat_template = chat_template or self.llm.metadata.get("tokenizer.chat_template")
        self.chat_mode = self._resolve_chat_mode(chat_mode)
        self._flash_attn = flash_attn
        self._ablation = None  # esr_local.ablation.Ablation: an eval callback on this context (set_ablation)
        self._ctx = self._new_context()
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, self.n_seq)
        self.directions: dict[int, np.ndarray] = {}

    # -- context ----------------------------------------------------------------------------------------

    @property
    def _n_batch(self) -> int:
        return min(512, self.n_ctx * self.n_seq)

    def _new_context(self):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = self.n_ctx * self.n_seq
        p.n_batch = self._n_batch
        p.n_ubatch = self._n_batch
        p.n_seq_max = self.n_seq
        p.n_threads = self.n_threads
        p.n_threads_batch = self.n_threads
        p.kv_unified = False
        # Flash attention on: llama.cpp's CLI default on CPU, and what makes our output match
        # `llama-completion --control-vector` token for token.
        p.flash_attn_type = 1 if self._flash_attn else 0
        if self._ablation is not None:
            p.cb_eval = self._ablation.c_callback
            p.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(self.llm.model, p)
        if not ctx:
            raise BackendError(
                f"llama.cpp could not create a context of {self.n_ctx} tokens x {self.n_seq} sequences; lower --n-ctx"
            )
        return ctx

    def close(self) -> None:
        """Free the context and the model."""
        if getattr(self, "_batch", None) is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()

    def __enter__(self) -> SteeredModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- steering ---------------------------------------------------------------------------------------

    def set_directions(self, directions: Mapping[int, np.ndarray] | None) -> None:
        """Steer with `{layer: vector}` (summed per layer), or clear with None / {}; drops the KV cache."""
        new = {int(k): np.array(v, np.float32, copy=True) for k, v in (directions or {}).items()}
        if new.keys() == self.directions.keys() and all(np.array_equal(new[k], self.directions[k]) for k in new):
            return  # same vector: nothing to re-apply (every generation starts from an empty KV cache anyway)
        apply_to_context(self._ctx, directions, self.n_layer, self.n_embd)
        self.directions = new
        self._clear_memory()

    def set_ablation(self, ablation=None) -> None:
        """Zero-ablate SAE latents in the graph while generating (an `esr_local.ablation.Ablation`), or stop with None.

        llama.cpp takes an eval callback only when a context is created, so this rebuilds the context and
        re-applies the control vector; without an ablation the context has no callback and costs nothing extra.
        """
        if ablation is self._ablation:
            return
        if ablation is not None:
            ablation.bind(self)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None
        self._ablation = ablation
        self._ctx = self._new_context()
        if self.directions:
            apply_to_context(self._ctx, self.directions, self.n_layer, self.n_embd)

    @property
    def ablation(self):
        """The active in-graph ablation, or None."""
        return self._ablation

    def clear(self) -> None:
        """Remove the control vector."""
        self.set_directions(None)

    def _clear_memory(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)

    # -- prompts ----------------------------------------------------------------------------------------

    def _resolve_chat_mode(self, mode: str) -> str:
        if mode not in ("auto", "chat", "raw"):
            raise UserInputError(f"chat mode must be auto, chat or raw, got {mode!r}")
        if mode == "auto":
            return "chat" if self.chat_template else "raw"
        if mode == "chat" and not self.chat_template:
            raise UserInputError(
                f"{self.model_path.name} has no chat template; use raw completion (--chat-mode raw) or give a template"
            )
        return mode

    def format_prompt(self, user_text: str) -> str:
        """The text the model sees for one user turn: the chat template with a generation prompt, or raw text."""
        if self.chat_mode == "raw":
            return user_text
        formatter = getattr(self, "_formatter", None)
        if formatter is None or formatter[0] != self.chat_template:
            # Compiling the Jinja template costs milliseconds; do it once per template, not per prompt.
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = self._token_text(llama_cpp.llama_vocab_eos(self.vocab))
            bos = self._token_text(llama_cpp.llama_vocab_bos(self.vocab))
            formatter = (self.chat_template, Jinja2ChatFormatter(template=self.chat_template, eos_token=eos, bos_token=bos))
            self._formatter = formatter
        return formatter[1](messages=[{"role": "user", "content": user_text}]).prompt

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a formatted prompt: BOS once (if the model wants one), special tokens parsed."""
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]  # the template already wrote BOS
        return tokens

    # -- generation -------------------------------------------------------------------------------------

    def generate(
        self,
        user_text: str,
        sampling: SamplingParams,
        seed: int,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Generate one completion of `user_text` under the current control vector."""
        return self.generate_many([user_text], sampling, [seed], on_text=on_text)[0]

    def generate_many(
        self,
        user_texts: Sequence[str],
        sampling: SamplingParams,
        seeds: Sequence[int],
        on_text: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """Generate completions for up to `n_seq` prompts at once, as parallel sequences of this context.

        Each sequence has its own sampler (seed, penalty history). `on_text` streams sequence 0's text.
        """
        sampling.validate()
        k = len(user_texts)
        if k == 0:
            return []
        if k > self.n_seq or len(seeds) != k:
            raise UserInputError(f"generate_many got {k} prompts and {len(seeds)} seeds for a context of {self.n_seq} sequences")
        for s in seeds:
            check_seed(s)
        prompt_texts = [self.format_prompt(t) for t in user_texts]
        prompts = [self.tokenize(t) for t in prompt_texts]
        for toks in prompts:
            self._check_fits(len(toks), sampling.max_tokens)
        self._clear_memory()
        samplers = [make_sampler(sampling, int(s), self.n_ctx, self.n_vocab) for s in seeds]
        try:
            return self._decode_loop(prompt_texts, prompts, samplers, sampling, seeds, on_text)
        finally:
            for smpl in samplers:
                llama_cpp.llama_sampler_free(smpl)

    def _check_fits(self, n_prompt_tokens: int, max_tokens: int) -> None:
        if n_prompt_tokens + max_tokens > self.n_ctx:
            raise UserInputError(
                f"the prompt ({n_prompt_tokens} tokens) plus max tokens ({max_tokens}) exceeds the context "
                f"of {self.n_ctx} tokens; raise --n-ctx or lower --max-tokens"
            )

    def fit_error(self, user_text: str, max_tokens: int) -> str | None:
        """Why `user_text` cannot be generated in this context (too long), or None when it fits."""
        try:
            self._check_fits(len(self.tokenize(self.format_prompt(user_text))), max_tokens)
        except UserInputError as exc:
            return str(exc)
        return None

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Load (token, pos, seq, want_logits) rows into the batch and decode it."""
        b = self._batch
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = llama_cpp.llama_decode(self._ctx, b)
        if self._ablation is not None and self._ablation.error:  # checked per decode: every path, this batch's own
            error, self._ablation.error = self._ablation.error, None
            raise BackendError(f"in-graph ablation failed: {error}")
        if rc != 0:
            raise BackendError(f"llama_decode failed (rc={rc}); the context may be full, raise --n-ctx")

    def _decode_loop(self, prompt_texts, prompts, samplers, sampling, seeds, on_text) -> list[Generation]:
        k = len(prompts)
        n_batch = self._n_batch
        # Prefill: each sequence's prompt in chunks; remember the batch row of its last token.
        logit_row: list[int] = [0] * k
        prefill_ms = [0.0] * k
        for seq, toks in enumerate(prompts):
            ts = time.perf_counter()
            for smpl_tok in toks:  # the penalty covers the prompt too
                llama_cpp.llama_sampler_accept(samplers[seq], smpl_tok)
            for start in range(0, len(toks), n_batch):
                chunk = toks[start : start + n_batch]
                last = start + len(chunk) == len(toks)
                self._fill([(t, start + j, seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
                if last:
                    # Sample now, before the next sequence's decode overwrites the logits.
                    logit_row[seq] = len(chunk) - 1
                    first = llama_cpp.llama_sampler_sample(samplers[seq], self._ctx, logit_row[seq])
                    prompts[seq] = (toks, first)
            prefill_ms[seq] = (time.perf_counter() - ts) * 1000
        t1 = time.perf_counter()
        finished_at = [t1] * k  # when each sequence stopped (they share each decode step's time)
        out: list[list[int]] = [[] for _ in range(k)]
        done = [False] * k
        stop = ["length"] * k
        pos = [len(p[0]) for p in prompts]
        decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(k)]
        pending = [p[1] for p in prompts]
        while True:
            rows = []
            for seq in range(k):
                if done[seq]:
                    continue
                tok = pending[seq]
                if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                    done[seq], stop[seq] = True, "eos"
                    finished_at[seq] = time.perf_counter()
                    continue
                out[seq].append(tok)
                if seq == 0 and on_text is not None:
                    piece = self.llm.detokenize([tok], prev_tokens=out[0][:-1])
                    on_text(decoders[0].decode(piece))
                if len(out[seq]) >= sampling.max_tokens:
                    done[seq] = True
                    finished_at[seq] = time.perf_counter()
                    continue
                rows.append((tok, pos[seq], seq, True))
                pos[seq] += 1
            if not rows:
                break
            self._fill(rows)
            for i, (_, _, seq, _) in enumerate(rows):
                pending[seq] = llama_cpp.llama_sampler_sample(samplers[seq], self._ctx, i)
        if on_text is not None:
            on_text(decoders[0].decode(b"", final=True))
        gens = []
        for seq in range(k):
            text = self.llm.detokenize(out[seq]).decode("utf-8", errors="replace")
            gens.append(
                Generation(
                    text=text,
                    prompt_text=prompt_texts[seq],
                    prompt_tokens=len(prompts[seq][0]),
                    completion_tokens=len(out[seq]),
                    stop_reason=stop[seq],
                    seed=int(seeds[seq]),
                    prefill_ms=prefill_ms[seq],
                    generation_ms=(finished_at[seq] - t1) * 1000,
                    token_ids=out[seq],
                )
            )
        return gens


def system_info() -> str:
    """llama.cpp's build/system line (SIMD flags, backends), recorded with every run."""
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
