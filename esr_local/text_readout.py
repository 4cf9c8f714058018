"""Residual activations of texts at a layer, and SAE latent activations per token.

Three ways to present a text, as the paper's procedures need them:

- `user`: the chat template around one user turn, no generation prompt (the paper's relevance
  filter reads prompts this way);
- `response`: the chat-templated user turn with its generation prompt, followed by a response
  (teacher forcing: what the model saw while writing it);
- `raw`: the text alone (base models, or `--chat-mode raw`).

Reads go through `ResidualReader`, a second llama.cpp context on the weights of a loaded
`SteeredModel`, so the generation context and its control vector are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np

from .errors import UserInputError
from .readout import ResidualReader

MODES = ("user", "response", "raw")


@dataclass(frozen=True)
class TextResidual:
    """One text as the model read it: its tokens, their pieces and the residual after block `layer`."""

    text: str
    response: str | None
    mode: str
    layer: int
    token_ids: list[int]
    pieces: list[str]
    residual: np.ndarray  # float32 [n_tokens, n_embd]


def _chat_text(model, user_text: str, add_generation_prompt: bool) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = model.vocab
    eos = model._token_text(llama_cpp.llama_vocab_eos(vocab))
    bos = model._token_text(llama_cpp.llama_vocab_bos(vocab))
    formatter = Jinja2ChatFormatter(template=model.chat_template, eos_token=eos, bos_token=bos,
                                    add_generation_prompt=add_generation_prompt)
    return formatter(messages=[{"role": "user", "content": user_text}]).prompt


def readout_mode(model, response: str | None) -> str:
    """The presentation a text gets on `model`: `raw` when the model reads raw text (its chat mode),
    else `response` when a response is given, else `user`."""
    if model.chat_mode == "raw":
        return "raw"
    return "response" if response is not None else "user"


def format_text(model, text: str, response: str | None = None, mode: str | None = None) -> tuple[str, str]:
    """(the string the model reads, mode). See the module docstring for the modes."""
    mode = mode or readout_mode(model, response)
    if mode not in MODES:
        raise UserInputError(f"readout mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "raw":
        return text + (response or ""), mode
    if not model.chat_template:
        raise UserInputError(f"{model.model_path.name} has no chat template; read it as raw text (--chat-mode raw)")
    if mode == "user":
        if response is not None:
            raise UserInputError("a response needs the `response` mode (prompt + response, teacher-forced)")
        return _chat_text(model, text, add_generation_prompt=False), mode
    if response is None:
        raise UserInputError("the `response` mode needs a response text")
    return _chat_text(model, text, add_generation_prompt=True) + response, mode


def tokens_for(model, formatted: str, mode: str) -> list[int]:
    """Tokens of a formatted text: special tokens parsed in chat modes, literal in raw mode."""
    if mode == "raw":
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(model.vocab))
        return model.llm.tokenize(formatted.encode("utf-8"), add_bos=add_bos, special=False)
    return model.tokenize(formatted)


def token_pieces(model, token_ids: Sequence[int]) -> list[str]:
    """The text of each token (special tokens spelled out)."""
    return [model.llm.detokenize([t], special=True).decode("utf-8", errors="replace") for t in token_ids]


def read_residuals(
    model,
    texts: Sequence[str],
    layer: int,
    *,
    responses: Sequence[str | None] | None = None,
    mode: str | None = None,
    reader: ResidualReader | None = None,
) -> list[TextResidual]:
    """The residual after block `layer` for each text (unsteered), one llama.cpp batch per text.

    `responses` (one per text, or None) switches to teacher forcing. A `reader` may be passed to
    reuse one context over many calls; otherwise one sized to the longest text is made and freed.
    """
    if not texts:
        raise UserInputError("give at least one text to read")
    responses = list(responses) if responses is not None else [None] * len(texts)
    if len(responses) != len(texts):
        raise UserInputError(f"got {len(texts)} texts and {len(responses)} responses; give one response per text")
    prepared = []
    for text, resp in zip(texts, responses):
        if not isinstance(text, str) or not text.strip():
            raise UserInputError("texts must be non-empty strings")
        formatted, used = format_text(model, text, resp, mode)
        prepared.append((text, resp, used, tokens_for(model, formatted, used)))
    own = reader is None
    if own:
        longest = max(len(p[3]) for p in prepared)
        reader = ResidualReader(model.llm, n_ctx=max(64, longest), n_threads=model.n_threads)
    try:
        out = []
        for text, resp, used, toks in prepared:
            acts = reader.read(toks, [layer])[layer]
            out.append(TextResidual(text, resp, used, layer, toks, token_pieces(model, toks), acts))
        return out
    finally:
        if own:
            reader.close()
