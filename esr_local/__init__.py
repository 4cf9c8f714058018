"""esr-local: steer quantized GGUF models with SAE latents through llama.cpp and measure
endogenous steering resistance (arXiv 2602.06941) on a laptop."""

__version__ = "0.1.0"
