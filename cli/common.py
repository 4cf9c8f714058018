"""Option decorators shared by the model-running commands (steer, run, calibrate)."""

from __future__ import annotations

import click

from esr_local.engine import MAX_THREADS, SamplingParams, resolve_sampling
from esr_local.sampling import MAX_SEED

# llama.cpp samples with a 32-bit seed (larger values would be folded silently) and reads 2**32 - 1 as
# "random": both are refused.
SEED = click.IntRange(0, MAX_SEED)


def _stack(f, options):
    """Apply click options so they show in --help in the order listed."""
    for option in reversed(options):
        f = option(f)
    return f


def model_options(f):
    """--model, --quant, --catalog, --n-ctx, --threads, --gpu-layers, --chat-mode."""
    return _stack(f, [
        click.option("--model", "-m", default=None, callback=non_empty, help="Catalog name or .gguf path (default: the embedded SmolLM2-135M-Instruct)."),
        click.option("--quant", default=None, help="Quantization to download for a Hugging Face catalog model (e.g. Q4_K_M)."),
        click.option("--catalog", default=None, type=click.Path(), help="Extra catalog file or folder (also ESR_LOCAL_CATALOG)."),
        click.option("--n-ctx", default=2048, show_default=True, type=click.IntRange(64), help="Context size per sequence."),
        click.option("--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="CPU threads (default: all cores, or ESR_LOCAL_THREADS)."),
        click.option("--gpu-layers", default=0, show_default=True, type=click.IntRange(-1), help="Layers to offload to a GPU build of llama.cpp (-1 = all)."),
        click.option("--chat-mode", type=click.Choice(["auto", "chat", "raw"]), default="auto", show_default=True,
                     help="auto: the catalog's choice, else the GGUF's chat template if it has one, else raw completion."),
    ])


def sampling_options(f):
    """--temperature, --max-tokens, --repetition-penalty, --top-k, --top-p, --min-p (paper defaults)."""
    return _stack(f, [
        click.option("--temperature", "-t", type=float, default=None, help="Sampling temperature (paper: 0.6)."),
        click.option("--max-tokens", type=click.IntRange(1), default=None, help="New tokens (paper: 512)."),
        click.option("--repetition-penalty", type=float, default=None,
                     help="Repetition penalty over the whole context (paper: 1.1; catalog default per model)."),
        click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="0 = off (paper)."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True, help="1 = off (paper)."),
        click.option("--min-p", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True, help="0 = off (paper)."),
    ])


def build_sampling(kw: dict, entry=None) -> SamplingParams:
    """SamplingParams from the options, falling back to the catalog entry's defaults, then the paper's."""
    return resolve_sampling(entry.defaults if entry is not None else None, **{k: kw[k] for k in SAMPLING_KEYS})


SAMPLING_KEYS = ("temperature", "max_tokens", "repetition_penalty", "top_k", "top_p", "min_p")


def calibration_options(f):
    """--lower/--upper/--prior-mean/--prior-std (catalog defaults) and --remeasure-samples, shared by `run` and `calibrate`."""
    f = click.option("--remeasure-samples", "calibration_remeasure", type=click.IntRange(1), default=5, show_default=True,
                     help="Samples averaged when the calibrated boost is measured again (the paper: 1).")(f)
    f = click.option("--prior-std", "boost_prior_std", type=float, default=None, callback=positive_float, help="Gaussian prior sd (> 0).")(f)
    f = click.option("--prior-mean", "boost_prior_mean", type=float, default=None, callback=finite_float, help="Gaussian prior mean.")(f)
    f = click.option("--upper", "boost_upper", type=float, default=None, callback=finite_float, help="Upper boost bound (catalog default).")(f)
    f = click.option("--lower", "boost_lower", type=float, default=None, callback=finite_float, help="Lower boost bound (catalog default).")(f)
    return f


def finite_float(ctx, param, value):
    """Click callback rejecting NaN/inf in float options (multiple=True aware)."""
    import math

    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is not None and not math.isfinite(v):
            raise click.BadParameter(f"{v} is not a finite number")
    return value


def positive_float(ctx, param, value):
    """Click callback: a finite number above 0 (or None)."""
    finite_float(ctx, param, value)
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} must be above 0")
    return value


def non_empty(ctx, param, value):
    """Click callback rejecting an empty string (`--sae ""` would otherwise mean "the default")."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is not None and not str(v).strip():
            raise click.BadParameter("must not be empty")
    return value


def folder_path(ctx, param, value):
    """Click callback for an output folder given as a string: a Path, refusing an empty value
    (Path("") would silently be the current folder)."""
    if value is None:
        return None
    if not str(value).strip():
        raise click.BadParameter("must not be empty; give a folder")
    from pathlib import Path

    return Path(value)
