"""SAE loaders: Goodfire (.pth), GemmaScope (params.npz), Gemma Scope 2 and SAELens folders.

    sae = load_sae("hf://google/gemma-scope-2b-pt-res/layer_16/width_16k/average_l0_78")
    v = sae.decoder_row(1234)        # float32 [d_model], raw W_dec[1234] (no b_dec)
    sae.info.layer                   # llama.cpp layer, i.e. direction.N
"""

from .base import Sae, SaeInfo
from .loader import load_sae
from .source import SaeSource, parse_source

__all__ = ["Sae", "SaeInfo", "SaeSource", "load_sae", "parse_source"]
