"""GPU check (run by bench/gpu_check.sh on a machine with a CUDA build of llama-cpp-python).

    python bench/gpu_check.py [--model smollm2|gemma|PATH.gguf] [--tokens 256] [--runs 5] [--json OUT]
                              [--gpu-layers -1] [--only all|steering|ablation] [--allow-cpu]

1. The build offloads: `llama_supports_gpu_offload()` and llama.cpp's system line.
2. Steering is exact on the GPU (the layer tests' idea): with a vector d at layer L (all layers offloaded),
   `l_out-(L-1)` is unchanged and `l_out-L` moves by d at every token (max deviations reported, checked
   against a tolerance relative to the residual's size).
3. Steered vs unsteered greedy decode (tok/s, median of `--runs`) with all layers on the GPU and, for
   scale, on the CPU; and K parallel steered sequences (aggregate tok/s) on the GPU.
4. In-graph ablation is exact on the GPU (tests/test_ablation.py's check, same tolerances): a synthetic
   SAE with two latents that fire on SmolLM2's own layer-6 residuals is ablated while generating; the
   re-encoded ablated latents are ~0 at every position (<= 1e-3 x the residual's max), the residual
   outside their decoder span is unchanged (<= 1e-5 x), rows where nothing fired are bit-identical, and
   what the callback saw is the model's layer-6 residual (<= 2e-3 x).
5. Decode tok/s with 0 and 26 ablated latents (bench_ablation.py's method: the concept-notes prompt and the
   shipped dictionary's 26 latents that fire most on the steered text) and the callback's cost per token.
`--allow-cpu --gpu-layers 0` runs the same checks on a CPU build (a smoke test of this script).
Exit status 1 when steering or ablation is not exact, or (without --allow-cpu) nothing was offloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import PROMPT, RAW_PROMPT, SETTINGS, model_path  # noqa: E402


def exactness(path: Path, layer: int, gpu_layers: int) -> dict:
    import llama_cpp

    from esr_local.readout import ResidualReader

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_gpu_layers=gpu_layers, verbose=False)
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 3, add_bos=True)
    with ResidualReader(llm, n_ctx=256) as reader:
        base = reader.read(tokens, [layer - 1, layer])
        norm = float(np.median(np.linalg.norm(base[layer][1:], axis=1)))
        d = np.random.default_rng(1).standard_normal(reader.n_embd).astype(np.float32)
        d = d / np.linalg.norm(d) * np.float32(0.1 * norm)
        steered = reader.read(tokens, [layer - 1, layer], {layer: d})
    llm.close()
    before = float(np.abs(steered[layer - 1] - base[layer - 1]).max())
    moved = float(np.abs(steered[layer] - base[layer] - d).max())
    scale = float(np.abs(base[layer]).max())
    tol = 1e-5 * scale
    return {"layer": layer, "tokens": len(tokens), "residual_abs_max": scale, "vector_norm": float(np.linalg.norm(d)),
            "prev_layer_max_change": before, "moved_minus_vector_max": moved, "tolerance": tol,
            "exact": before <= 1e-6 * float(np.abs(base[layer - 1]).max()) and moved <= tol}


def decode(path: Path, layer: int, scale: float, gpu_layers: int, tokens: int, runs: int, k: int) -> dict:
    from esr_local.engine import SamplingParams, SteeredModel

    t = time.perf_counter()
    m = SteeredModel(path, n_ctx=1024, n_seq=max(1, k), n_gpu_layers=gpu_layers)
    load = time.perf_counter() - t
    text = PROMPT if m.chat_mode == "chat" else RAW_PROMPT
    v = np.random.default_rng(0).standard_normal(m.n_embd).astype(np.float32)
    vec = v / np.linalg.norm(v) * np.float32(scale)
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, repetition_penalty=1.0)
    out: dict = {"gpu_layers": gpu_layers, "load_s": load}
    for name, dirs in (("unsteered", None), ("steered", {layer: vec})):
        m.set_directions(dirs)
        m.generate(text, sp, 0)
        gens = [m.generate(text, sp, 0) for _ in range(runs)]
        out[f"{name}_tok_s"] = statistics.median((len(g.token_ids) - 1) / (g.generation_ms / 1000) for g in gens)
        out[f"{name}_tokens"] = len(gens[0].token_ids)
    if k > 1:
        m.set_directions({layer: vec})
        sp_paper = SamplingParams(temperature=0.6, max_tokens=tokens, repetition_penalty=1.1)
        t = time.perf_counter()
        gens = m.generate_many([text] * k, sp_paper, list(range(k)))
        dt = time.perf_counter() - t
        out[f"parallel_{k}_aggregate_tok_s"] = sum(g.completion_tokens for g in gens) / dt
    m.close()
    return out


ABL_LAYER, ABL_D_SAE, ABL_A, ABL_B, ABL_DEAD = 6, 12, 3, 7, 9
ABL_PROMPTS = ["Explain how to fold a paper plane.", "How do I boil an egg?", "Explain how to tie a tie."]


def synthetic_sae(model, folder: Path) -> Path:
    """A SAELens 'standard' SAE at layer 6 whose latents A and B fire on ~70% / ~50% of the model's own
    residual rows (tied orthonormal encoder/decoder; every other latent never fires)."""
    from safetensors.numpy import save_file

    from esr_local.readout import ResidualReader

    with ResidualReader(model.llm, n_ctx=256, n_threads=model.n_threads) as reader:
        h = np.concatenate([reader.read(model.tokenize(model.format_prompt(p)), [ABL_LAYER])[ABL_LAYER][1:]
                            for p in ABL_PROMPTS]).astype(np.float64)  # BOS skipped: its norm is huge
    d = h.shape[1]
    q, _ = np.linalg.qr(np.column_stack([h.mean(axis=0), np.random.default_rng(1).normal(size=(d, ABL_D_SAE - 1))]))
    u = q.T.copy()
    u[[0, ABL_A]] = u[[ABL_A, 0]]
    b_enc = np.full(ABL_D_SAE, -1e4)
    for j, pct in ((ABL_A, 30), (ABL_B, 50)):
        b_enc[j] = -np.percentile(h @ u[j], pct)
    c32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": c32(u.T), "W_dec": c32(u), "b_enc": c32(b_enc), "b_dec": np.zeros(d, np.float32)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d, "d_sae": ABL_D_SAE, "apply_b_dec_to_input": False,
        "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{ABL_LAYER}.hook_resid_post"}}))
    return folder


def ablation_exactness(path: Path, gpu_layers: int, tokens: int) -> dict:
    """Ablate latents A and B at layer 6 while generating; the checks of tests/test_ablation.py."""
    import tempfile

    from esr_local.ablation import Ablation, span_projector
    from esr_local.engine import SamplingParams, SteeredModel
    from esr_local.readout import ResidualReader
    from esr_local.saes import load_sae

    m = SteeredModel(path, n_ctx=512, n_gpu_layers=gpu_layers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sae = load_sae(str(synthetic_sae(m, Path(tmp) / "sae")))
            ab = Ablation(sae, [ABL_A, ABL_B], ABL_LAYER, record=True)
            m.set_ablation(ab)
            try:
                gen = m.generate(ABL_PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=tokens), 0)
            finally:
                m.set_ablation(None)
            if ab.error:
                raise RuntimeError(f"the ablation callback failed: {ab.error}")
            toks = m.tokenize(m.format_prompt(ABL_PROMPTS[0])) + gen.token_ids[:-1]
            before, f, after = (np.concatenate([r[i] for r in ab.records]) for i in range(3))
            with ResidualReader(m.llm, n_ctx=512, n_threads=m.n_threads) as reader:
                direct = reader.read(toks, [ABL_LAYER])[ABL_LAYER]
            scale = float(np.abs(direct).max())
            fired = f > 0
            quiet = ~fired.any(axis=1)
            p = span_projector(ab.decoder)
            out = {
                "gpu_layers": gpu_layers, "layer": ABL_LAYER, "rows": int(before.shape[0]), "tokens_decoded": len(toks),
                "fired_share": [float(fired[:, 0].mean()), float(fired[:, 1].mean())], "residual_abs_max": scale,
                "seen_vs_readout_max": float(np.abs(before - direct).max()),
                "reencoded_max": float(np.abs(sae.encode(after, [ABL_A, ABL_B])).max()),
                "dead_reencoded_max": float(sae.encode(after, [ABL_DEAD]).max()),
                "outside_span_change_max": float(np.abs(after @ p - before @ p).max()),
                "write_back_max": float(np.abs(after - before)[~quiet].max()) if (~quiet).any() else 0.0,
                "quiet_rows_identical": bool(np.array_equal(after[quiet], before[quiet])),
            }
    finally:
        m.close()
    out["exact"] = bool(
        out["rows"] == len(toks) and out["seen_vs_readout_max"] < 2e-3 * scale and min(out["fired_share"]) > 0.2
        and out["write_back_max"] > 1.0 and out["reencoded_max"] <= 1e-3 * scale and out["dead_reencoded_max"] == 0.0
        and out["outside_span_change_max"] <= 1e-5 * scale and out["quiet_rows_identical"])
    return out


def ablation_speed(path: Path, gpu_layers: int, tokens: int, pairs: int, k: int = 26) -> dict:
    """bench_ablation.py's measurement (26 firing latents of the shipped dictionary, order post) at gpu_layers."""
    from bench_ablation import concept_prompt, firing_latents, measure

    from esr_local.catalog import DEFAULT_MODEL, get_entry
    from esr_local.engine import SamplingParams, SteeredModel
    from esr_local.steering import open_sae

    entry = get_entry(DEFAULT_MODEL)
    sae = open_sae(None, entry)
    layer = int(entry.sae.steering_layer)
    m = SteeredModel(path, n_ctx=1024, n_gpu_layers=gpu_layers, chat_template=entry.chat_template)
    try:
        boost = float(entry.defaults.boost_prior_mean or 4.0)
        m.set_directions({layer: sae.decoder_row(0) * boost})
        sp = SamplingParams(temperature=0.0, max_tokens=tokens)
        prompt = concept_prompt()
        latents, counts, _ = firing_latents(m, sae, layer, prompt, sp, min(k, sae.d_sae), "post")
        res = measure(m, sae, layer, latents, sp, pairs, "post", prompt)
    finally:
        m.close()
    return {"gpu_layers": gpu_layers, "sae": entry.sae.source, "layer": layer, "boost": boost, "tokens": tokens,
            "pairs": pairs, "ablated_latents": latents, "chosen_firing": sum(counts[j] > 0 for j in latents), **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--gpu-layers", type=int, default=-1, help="layers offloaded in the checks (-1: all)")
    ap.add_argument("--only", choices=["all", "steering", "ablation"], default="all")
    ap.add_argument("--ablation-tokens", type=int, default=64)
    ap.add_argument("--ablation-pairs", type=int, default=3)
    ap.add_argument("--allow-cpu", action="store_true", help="a CPU build passes (smoke test of this script)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import llama_cpp

    from esr_local.engine import system_info

    preset = SETTINGS.get(a.model, SETTINGS["smollm2"])
    path = model_path(a.model)
    gl = a.gpu_layers
    res: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(path),
                 "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()), "system_info": system_info(),
                 "cpus": os.cpu_count(), "gpu_layers": gl}
    where = "GPU" if res["gpu_offload"] and gl != 0 else "CPU"
    print(f"gpu offload supported: {res['gpu_offload']}; {res['system_info']}", flush=True)
    ok = True
    if a.only in ("all", "steering"):
        res["exactness"] = exactness(path, preset["layer"], gl)
        e = res["exactness"]
        ok &= e["exact"]
        print(f"steering exact on the {where}: {e['exact']} (layer {e['layer']}: l_out-{e['layer'] - 1} max change "
              f"{e['prev_layer_max_change']:.3g}; l_out-{e['layer']} - base - d max {e['moved_minus_vector_max']:.3g}, "
              f"tolerance {e['tolerance']:.3g}, |d| {e['vector_norm']:.1f})", flush=True)
        res["gpu"] = decode(path, preset["layer"], preset["scale"], gl, a.tokens, a.runs, a.parallel)
        g = res["gpu"]
        print(f"{where} decode: unsteered {g['unsteered_tok_s']:.0f} tok/s, steered {g['steered_tok_s']:.0f} tok/s "
              f"(steered/unsteered {g['steered_tok_s'] / g['unsteered_tok_s']:.3f}); {a.parallel} parallel steered "
              f"sequences {g.get(f'parallel_{a.parallel}_aggregate_tok_s', 0):.0f} tok/s aggregate", flush=True)
        if not a.skip_cpu and gl != 0:
            res["cpu"] = decode(path, preset["layer"], preset["scale"], 0, a.tokens, a.runs, 1)
            c = res["cpu"]
            print(f"CPU decode ({os.cpu_count()} cores): unsteered {c['unsteered_tok_s']:.0f} tok/s, "
                  f"steered {c['steered_tok_s']:.0f} tok/s", flush=True)
    if a.only in ("all", "ablation"):
        sm = model_path("smollm2")  # the ablation checks are SmolLM2's (synthetic SAE, shipped dictionary)
        res["ablation_exactness"] = x = ablation_exactness(sm, gl, min(a.ablation_tokens, 32))
        ok &= x["exact"]
        print(f"ablation exact on the {where}: {x['exact']} ({x['rows']} rows, latents fired on "
              f"{x['fired_share'][0]:.0%} / {x['fired_share'][1]:.0%}; re-encoded max {x['reencoded_max']:.3g}, outside-span "
              f"change max {x['outside_span_change_max']:.3g}, residual max {x['residual_abs_max']:.3g}; quiet rows "
              f"identical: {x['quiet_rows_identical']})", flush=True)
        res["ablation_speed"] = sp = ablation_speed(sm, gl, a.ablation_tokens, a.ablation_pairs)
        print(f"{where} decode with ablation: {sp['tok_s_no_ablation_median']} tok/s without, {sp['tok_s_ablation_median']} "
              f"tok/s with {len(sp['ablated_latents'])} latents ablated ({sp['chosen_firing']} fire on the text; per token "
              f"{sp['firing_per_prompt_token_median']} fire in the prompt, {sp['firing_per_decoded_token_median']} while "
              f"decoding): slowdown {sp['slowdown_median_pct']}%, "
              f"callback {sp['callback_ms_per_token_median']} ms/token (edit {sp['edit_ms_per_decode_step_median']} ms/step, "
              f"other nodes {sp['other_nodes_ms_per_step_median']} ms/step)",
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    if not ok or not (res["gpu_offload"] or a.allow_cpu):
        sys.exit(1)


if __name__ == "__main__":
    main()
