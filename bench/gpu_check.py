"""GPU check (run by bench/gpu_check.sh on a machine with a CUDA build of llama-cpp-python).

    python bench/gpu_check.py [--model smollm2|gemma|PATH.gguf] [--tokens 256] [--runs 5] [--json OUT]

1. The build offloads: `llama_supports_gpu_offload()` and llama.cpp's system line.
2. Steering is exact on the GPU (the layer tests' idea): with a vector d at layer L (all layers offloaded),
   `l_out-(L-1)` is unchanged and `l_out-L` moves by d at every token (max deviations reported, checked
   against a tolerance relative to the residual's size).
3. Steered vs unsteered greedy decode (tok/s, median of `--runs`) with all layers on the GPU and, for
   scale, on the CPU; and K parallel steered sequences (aggregate tok/s) on the GPU.
Exit status 1 when steering is not exact or nothing was offloaded.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import llama_cpp

    from esr_local.engine import system_info

    preset = SETTINGS.get(a.model, SETTINGS["smollm2"])
    path = model_path(a.model)
    res: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(path),
                 "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()), "system_info": system_info(),
                 "cpus": os.cpu_count()}
    print(f"gpu offload supported: {res['gpu_offload']}; {res['system_info']}", flush=True)
    res["exactness"] = exactness(path, preset["layer"], -1)
    e = res["exactness"]
    print(f"steering exact on the GPU: {e['exact']} (layer {e['layer']}: l_out-{e['layer'] - 1} max change "
          f"{e['prev_layer_max_change']:.3g}; l_out-{e['layer']} - base - d max {e['moved_minus_vector_max']:.3g}, "
          f"tolerance {e['tolerance']:.3g}, |d| {e['vector_norm']:.1f})", flush=True)
    res["gpu"] = decode(path, preset["layer"], preset["scale"], -1, a.tokens, a.runs, a.parallel)
    g = res["gpu"]
    print(f"GPU decode: unsteered {g['unsteered_tok_s']:.0f} tok/s, steered {g['steered_tok_s']:.0f} tok/s "
          f"(steered/unsteered {g['steered_tok_s'] / g['unsteered_tok_s']:.3f}); {a.parallel} parallel steered "
          f"sequences {g.get(f'parallel_{a.parallel}_aggregate_tok_s', 0):.0f} tok/s aggregate", flush=True)
    if not a.skip_cpu:
        res["cpu"] = decode(path, preset["layer"], preset["scale"], 0, a.tokens, a.runs, 1)
        c = res["cpu"]
        print(f"CPU decode ({os.cpu_count()} cores): unsteered {c['unsteered_tok_s']:.0f} tok/s, "
              f"steered {c['steered_tok_s']:.0f} tok/s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    if not (res["gpu_offload"] and e["exact"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
