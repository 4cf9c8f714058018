"""The one place for layer arithmetic.

Convention (checked numerically on llama.cpp 0.3.36, see README "Layer convention"):

    llama.cpp `direction.N`  ==  output of 0-based block N  ==  graph tensor `l_out-N`
                             ==  HF `hidden_states[N + 1]`   ==  HF `model.layers[N]` output
                             ==  TransformerLens `blocks.N.hook_resid_post`
                             ==  TransformerLens `blocks.(N+1).hook_resid_pre`

llama.cpp's control-vector buffer holds one row per layer starting at layer 1 (row N-1 is layer N),
so the output of block 0 can never be steered, and the last block is n_layer - 1.
"""

from __future__ import annotations

import re

from .errors import UserInputError

_TL_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_TL_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_HF_OUT = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)(?:\.output)?$")
_HF_OUT_ALT = re.compile(r"^model\.model\.(?:language_model\.)?layers\.(\d+)(?:\.output)?$")


def check_steerable(layer: int, n_layer: int | None) -> int:
    """Return `layer` if llama.cpp can steer the output of that block, else raise UserInputError.

    n_layer None (no model known, e.g. exporting a vector from a bare SAE) checks only the lower bound.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise UserInputError(f"layer must be an integer, got {layer!r}")
    if n_layer is None:
        if layer < 1:
            raise UserInputError(
                f"layer {layer} cannot be steered: llama.cpp control vectors start at block 1 "
                "(the output of block 0 has no control-vector slot); use a layer of 1 or more"
            )
        return layer
    if layer < 1:
        raise UserInputError(
            f"layer {layer} cannot be steered: llama.cpp control vectors start at block 1 "
            f"(the output of block 0 has no control-vector slot); use a layer from 1 to {n_layer - 1}"
        )
    if layer > n_layer - 1:
        raise UserInputError(
            f"layer {layer} is out of range: this model has {n_layer} blocks, so steerable layers are 1 to {n_layer - 1}"
        )
    return layer


def cvec_buffer_len(n_layer: int, n_embd: int) -> int:
    """Number of floats in the full control-vector buffer llama.cpp expects: (n_layer - 1) * n_embd."""
    return (n_layer - 1) * n_embd


def cvec_row_slice(layer: int, n_embd: int) -> slice:
    """Slice of the flat control-vector buffer that holds `direction.<layer>` (row layer-1)."""
    if layer < 1:
        raise UserInputError(f"layer {layer} has no control-vector row; layers start at 1")
    return slice((layer - 1) * n_embd, layer * n_embd)


def gguf_tensor_name(layer: int) -> str:
    """Tensor name of a control-vector direction in a GGUF file."""
    if layer < 1:
        raise UserInputError(f"direction.{layer} would be rejected by llama.cpp's loader (index must be >= 1)")
    return f"direction.{layer}"


def layer_from_gguf_tensor_name(name: str) -> int:
    """Inverse of gguf_tensor_name, with llama.cpp's own rules (index must parse and be >= 1)."""
    head, _, tail = name.partition(".")
    if head != "direction" or not tail.isdigit() or int(tail) < 1:
        raise UserInputError(f"tensor {name!r} is not a valid control-vector direction (expected direction.N, N >= 1)")
    return int(tail)


def residual_tensor_name(layer: int) -> str:
    """Name of the eval-callback tensor holding the residual stream after block `layer`."""
    return f"l_out-{layer}"


def hf_hidden_states_index(layer: int) -> int:
    """Index into HF `output_hidden_states` of the residual after block `layer` (hidden_states[0] = embeddings)."""
    return layer + 1


def layer_from_hf_hidden_states_index(index: int) -> int:
    """Inverse of hf_hidden_states_index. hidden_states[0] (the embeddings) has no block."""
    if index < 1:
        raise UserInputError("hidden_states[0] is the embedding output, which llama.cpp cannot steer")
    return index - 1


def layer_from_hook(hook: str) -> int:
    """Block index N whose output a hook point reads, in llama.cpp numbering (`direction.N`).

    Accepts TransformerLens names (`blocks.N.hook_resid_post`, `blocks.N.hook_resid_pre`) and HF module
    paths (`model.layers.N`, `model.layers.N.output`, `model.language_model.layers.N.output`).
    """
    hook = hook.strip()
    if m := _TL_POST.match(hook):
        return int(m.group(1))
    if m := _TL_PRE.match(hook):
        n = int(m.group(1))
        if n == 0:
            raise UserInputError("blocks.0.hook_resid_pre is the embedding output, which llama.cpp cannot steer")
        return n - 1
    if (m := _HF_OUT.match(hook)) or (m := _HF_OUT_ALT.match(hook)):
        return int(m.group(1))
    raise UserInputError(
        f"hook {hook!r} is not a residual-stream hook esr-local can map to a llama.cpp layer "
        "(expected blocks.N.hook_resid_post, blocks.N.hook_resid_pre or model.layers.N.output)"
    )
