"""Layer arithmetic: exact values of the one module that owns it."""

import pytest

from esr_local import layers
from esr_local.errors import UserInputError


def test_buffer_layout_row_n_minus_1_is_layer_n():
    assert layers.cvec_buffer_len(30, 576) == 29 * 576
    assert layers.cvec_row_slice(1, 576) == slice(0, 576)
    assert layers.cvec_row_slice(19, 4096) == slice(18 * 4096, 19 * 4096)


@pytest.mark.parametrize("layer,n_layer", [(0, 30), (-1, 30), (30, 30), (31, 30)])
def test_unsteerable_layers_rejected(layer, n_layer):
    with pytest.raises(UserInputError):
        layers.check_steerable(layer, n_layer)


def test_steerable_range_is_1_to_n_layer_minus_1():
    assert layers.check_steerable(1, 30) == 1
    assert layers.check_steerable(29, 30) == 29


@pytest.mark.parametrize(
    "hook,expected",
    [
        ("blocks.19.hook_resid_post", 19),
        ("blocks.16.hook_resid_pre", 15),
        ("model.layers.12.output", 12),
        ("model.layers.50", 50),
        ("model.language_model.layers.22.output", 22),
    ],
)
def test_hook_names_map_to_llama_cpp_layer(hook, expected):
    assert layers.layer_from_hook(hook) == expected


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.3.hook_mlp_out", "hook_embed", "layers.x"])
def test_unmappable_hooks_rejected(hook):
    with pytest.raises(UserInputError):
        layers.layer_from_hook(hook)


def test_hf_hidden_states_is_layer_plus_one():
    assert layers.hf_hidden_states_index(19) == 20
    assert layers.layer_from_hf_hidden_states_index(20) == 19
    with pytest.raises(UserInputError):
        layers.layer_from_hf_hidden_states_index(0)


def test_gguf_names_round_trip_and_loader_rules():
    assert layers.gguf_tensor_name(12) == "direction.12"
    assert layers.layer_from_gguf_tensor_name("direction.12") == 12
    for bad in ("direction.0", "direction.x", "dir.3", "direction.-1"):
        with pytest.raises(UserInputError):
            layers.layer_from_gguf_tensor_name(bad)
    assert layers.residual_tensor_name(7) == "l_out-7"
