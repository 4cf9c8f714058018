"""Guard: layer arithmetic edges and messages, the control-vector buffer, and the layer range llama.cpp
really applies (first and last steerable block) on the embedded SmolLM2 (30 blocks, n_embd 576)."""

from __future__ import annotations

import numpy as np
import pytest

from esr_local import layers as L
from esr_local.cvec import build_buffer, check_scale
from esr_local.errors import UserInputError
from esr_local.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
PROMPT = "Explain how to change a bike tire."


# -- layers.py ------------------------------------------------------------------------------------------------

def test_layer_one_is_the_first_valid_index_everywhere():
    assert L.check_steerable(1, 30) == 1 and L.check_steerable(1, None) == 1
    assert L.gguf_tensor_name(1) == "direction.1"
    assert L.layer_from_gguf_tensor_name("direction.1") == 1
    assert L.layer_from_hf_hidden_states_index(1) == 0 and L.layer_from_hf_hidden_states_index(2) == 1
    assert L.cvec_row_slice(1, 4) == slice(0, 4) and L.cvec_row_slice(3, 4) == slice(8, 12)


@pytest.mark.parametrize("value", [3.0, "3", None, 2.5])
def test_a_non_integer_layer_is_rejected(value):
    with pytest.raises(UserInputError, match="layer must be an integer, got"):
        L.check_steerable(value, 30)


@pytest.mark.parametrize("call, message", [
    (lambda: L.check_steerable(0, 30), r"layer 0 cannot be steered: .*use a layer from 1 to 29$"),
    (lambda: L.check_steerable(0, None), r"layer 0 cannot be steered: .*use a layer of 1 or more$"),
    (lambda: L.check_steerable(30, 30), r"layer 30 is out of range: this model has 30 blocks, so steerable layers are 1 to 29$"),
    (lambda: L.cvec_row_slice(0, 8), "layer 0 has no control-vector row; layers start at 1"),
    (lambda: L.gguf_tensor_name(0), r"direction\.0 would be rejected by llama\.cpp's loader \(index must be >= 1\)"),
    (lambda: L.layer_from_gguf_tensor_name("direction.0"), r"tensor 'direction\.0' is not a valid control-vector direction \(expected direction\.N, N >= 1\)"),
    (lambda: L.layer_from_hf_hidden_states_index(0), r"^hidden_states\[0\] is the embedding output, which llama\.cpp cannot steer$"),
    (lambda: L.layer_from_hook("blocks.0.hook_resid_pre"), r"^blocks\.0\.hook_resid_pre is the embedding output, which llama\.cpp cannot steer$"),
    (lambda: L.layer_from_hook("blocks.x.attn"), r"is not a residual-stream hook esr-local can map to a llama\.cpp layer \(expected blocks\.N\.hook_resid_post, blocks\.N\.hook_resid_pre or model\.layers\.N\.output\)$"),
])
def test_layer_errors_say_what_is_wrong_and_what_to_use(call, message):
    with pytest.raises(UserInputError, match=message):
        call()


# -- cvec.py --------------------------------------------------------------------------------------------------

def test_buffer_holds_each_layer_in_its_row_and_nothing_else():
    n_layer, n_embd = 5, 3
    buf = build_buffer({1: [1, 2, 3], 4: np.array([7, 8, 9], np.float64)}, n_layer, n_embd)
    assert buf.dtype == np.float32 and buf.shape == ((n_layer - 1) * n_embd,)
    assert buf.tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 0, 7, 8, 9]
    assert build_buffer({}, n_layer, n_embd).tolist() == [0.0] * 12
    # A (1, n_embd) row is flattened, not rejected.
    assert build_buffer({2: np.ones((1, 3))}, n_layer, n_embd).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("directions, message", [
    ({0: [1, 2, 3]}, "layer 0 cannot be steered"),
    ({5: [1, 2, 3]}, "layer 5 is out of range"),
    ({2: [1, 2]}, r"steering vector for layer 2 has 2 values but the model's residual width \(n_embd\) is 3; use an SAE or vector made for this model"),
    ({2: [1, np.nan, 3]}, "steering vector for layer 2 contains NaN or infinite values"),
    ({3: [1, np.inf, 3]}, "steering vector for layer 3 contains NaN or infinite values"),
])
def test_bad_directions_are_rejected(directions, message):
    with pytest.raises(UserInputError, match=message):
        build_buffer(directions, 5, 3)


def test_check_scale():
    assert check_scale(8) == 8.0 and isinstance(check_scale(8), float) and check_scale(-2.5) == -2.5
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(UserInputError, match="is not a finite number; give a real value such as 8 or -2.5"):
            check_scale(bad)


def _unit(n_embd, seed):
    v = np.random.default_rng(seed).standard_normal(n_embd).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("layer", [1, 29])
def test_first_and_last_steerable_blocks_are_really_applied(smollm2, layer):
    # llama.cpp applies rows il_start..il_end only: both ends of 1..n_layer-1 must take effect.
    assert smollm2.n_layer == 30
    smollm2.clear()
    base = smollm2.generate(PROMPT, GREEDY, 0).token_ids
    smollm2.set_directions({layer: _unit(smollm2.n_embd, layer) * 400})
    steered = smollm2.generate(PROMPT, GREEDY, 0).token_ids
    smollm2.clear()
    assert steered != base
    assert smollm2.generate(PROMPT, GREEDY, 0).token_ids == base


def test_two_layers_at_once_differ_from_each_alone(smollm2):
    smollm2.clear()
    a, b = {5: _unit(smollm2.n_embd, 1) * 60}, {20: _unit(smollm2.n_embd, 2) * 60}
    outs = []
    for d in (a, b, {**a, **b}):
        smollm2.set_directions(d)
        outs.append(smollm2.generate(PROMPT, GREEDY, 0).token_ids)
    smollm2.clear()
    assert outs[2] != outs[0] and outs[2] != outs[1]
