"""Benchmark: decode speed with in-graph ablation (0 vs 26 ablated latents that fire) and the callback's cost.

    .venv/bin/python bench/bench_ablation.py [--tokens 64] [--pairs 5] [--latents 26] [--order post]
                                             [--prompt TEXT] [--json OUT]

On the default model (SmolLM2-135M-Instruct Q4_1) and its catalog SAE (the shipped concept dictionary, layer 12,
JumpReLU encoder), steered with latent 0 at the catalog's prior boost. The prompt (unless --prompt) holds the
first text of each of the dictionary's concepts, so its latents fire: on an ordinary how-to prompt only the
steered latent and one other fire (the thresholds keep each latent to its own concept). The ablated latents
are the K that fire on the most positions of the run's own text: one steered greedy generation without
ablation is read back teacher-forced at layer L and every latent encoded as the callback would (order pre:
the residual minus the steering vector; post: as it is); latents are ranked by their firing positions (ties
by index). Then interleaved greedy generations of exactly N tokens without ablation (no callback on the
context) and with the K latents ablated (`SteeredModel.set_ablation`).

Reported: median tok/s of each and the median per-pair slowdown; from the callback's own counts, ablated
latents firing per prompt token and per decoded token, and the share of decode steps with a write-back;
the callback's time per generated token (all of it, the prompt's batches included), the edit's time per
decode step (read l_out-L, encode, write back) and the rest per graph evaluation (llama.cpp's scheduler
asking Python about every other graph node).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from esr_local.ablation import Ablation
from esr_local.catalog import DEFAULT_MODEL, get_entry
from esr_local.engine import SamplingParams, SteeredModel, system_info
from esr_local.model_files import resolve_model
from esr_local.readout import ResidualReader
from esr_local.steering import open_sae

class TimedAblation(Ablation):
    """An Ablation that sums the wall time spent in its callback (and in the edit calls), and keeps per edit
    call, i.e. per graph evaluation, (rows, latent activations > 0, rows where any fired, seconds): the
    prompt's batches have many rows, each decode step one."""

    seconds = 0.0
    edit_seconds = 0.0
    calls = 0
    _edited = False

    def _on_tensor(self, tensor_ptr, ask, user_data):
        t = time.perf_counter()
        try:
            return super()._on_tensor(tensor_ptr, ask, user_data)
        finally:
            dt = time.perf_counter() - t
            self.seconds += dt
            self.calls += 1
            if self._edited:
                self.edit_seconds += dt
                self.per_call[-1] = (*self.per_call[-1], dt)
                self._edited = False

    def _count(self, f: np.ndarray) -> None:
        super()._count(f)
        fired = f > 0
        self.per_call.append((f.shape[0], int(fired.sum()), int(fired.any(axis=1).sum())))
        self._edited = True

    def reset(self) -> None:
        super().reset()
        self.seconds = self.edit_seconds = 0.0
        self.calls = 0
        self.per_call: list[tuple[int, int, int]] = []


def concept_prompt() -> str:
    """A prompt holding the first text of every concept of the shipped dictionary (latent i = concept i), so
    the latents fire on their own texts while the prompt is decoded and, as the model goes through the notes,
    while it generates."""
    from esr_local.dictionary import load_concepts

    notes = "\n".join(f"- {c.texts[0]}" for c in load_concepts().concepts)
    return f"Go through these notes one by one and say what each is about:\n{notes}"


def firing_latents(model: SteeredModel, sae, layer: int, prompt: str, sp: SamplingParams, k: int,
                   order: str) -> tuple[list[int], dict[int, int], int]:
    """The k latents firing on most positions of the steered text (prompt + greedy generation), with every
    latent's firing-position count and the number of positions read."""
    gen = model.generate(prompt, sp, 0)
    toks = model.tokenize(model.format_prompt(prompt)) + gen.token_ids[:-1]
    v = model.directions.get(layer)
    with ResidualReader(model.llm, n_ctx=max(64, len(toks)), n_threads=model.n_threads) as reader:
        h = reader.read(toks, [layer], {layer: v} if v is not None else None)[layer]
    enc_in = h - v if (order == "pre" and v is not None) else h
    acts = sae.encode(enc_in, list(range(sae.d_sae)))
    counts = {j: int((acts[:, j] > 0).sum()) for j in range(sae.d_sae)}
    ranked = sorted(counts, key=lambda j: (-counts[j], j))
    return sorted(ranked[:k]), counts, len(toks)


def measure(model: SteeredModel, sae, layer: int, latents: list[int], sp: SamplingParams, pairs: int,
            order: str, prompt: str) -> dict:
    """Interleaved (no ablation, ablation) generation pairs: tok/s, slowdown, firing and callback cost."""
    abl = TimedAblation(sae, latents, layer, order=order)
    abl.reset()
    plain, ablated, ratios, cb_ms, edit_ms, other_ms = [], [], [], [], [], []
    pre_fire, dec_fire, dec_write = [], [], []
    model.set_ablation(None)
    model.generate(prompt, sp, 0)  # warm-up
    for _ in range(pairs):
        model.set_ablation(None)
        g0 = model.generate(prompt, sp, 0)
        model.set_ablation(abl)
        abl.reset()
        g1 = model.generate(prompt, sp, 0)
        if abl.error:
            raise RuntimeError(f"the ablation callback failed: {abl.error}")
        cb_ms.append(1000 * abl.seconds / g1.completion_tokens)
        prefill = [c for c in abl.per_call if c[0] > 1]
        decode = [c for c in abl.per_call if c[0] == 1] or [(1, 0, 0, 0.0)]
        edit_ms.append(1000 * statistics.mean(c[3] for c in decode))
        other_ms.append(1000 * (abl.seconds - abl.edit_seconds) / len(abl.per_call))
        pre_fire.append(sum(c[1] for c in prefill) / max(1, sum(c[0] for c in prefill)))
        dec_fire.append(statistics.mean(c[1] for c in decode))
        dec_write.append(statistics.mean(c[2] for c in decode))
        plain.append(g0.tokens_per_s)
        ablated.append(g1.tokens_per_s)
        ratios.append(g1.tokens_per_s / g0.tokens_per_s)
    model.set_ablation(None)
    return {
        "tok_s_no_ablation_median": round(statistics.median(plain), 1),
        "tok_s_ablation_median": round(statistics.median(ablated), 1),
        "slowdown_median_pct": round(100 * (1 - statistics.median(ratios)), 1),
        "callback_ms_per_token_median": round(statistics.median(cb_ms), 3),
        "edit_ms_per_decode_step_median": round(statistics.median(edit_ms), 3),
        "other_nodes_ms_per_step_median": round(statistics.median(other_ms), 3),
        "firing_per_prompt_token_median": round(statistics.median(pre_fire), 2),
        "firing_per_decoded_token_median": round(statistics.median(dec_fire), 2),
        "decode_steps_with_a_write_back_median": round(statistics.median(dec_write), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--latents", type=int, default=26)
    ap.add_argument("--order", choices=["pre", "post"], default="post")
    ap.add_argument("--prompt", default=None, help="a plain prompt instead of the concept notes")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    entry = get_entry(DEFAULT_MODEL)
    resolved = resolve_model(None, None, None)
    sae = open_sae(None, entry)
    layer = int(entry.sae.steering_layer)
    m = SteeredModel(resolved.path, n_ctx=1024, chat_template=entry.chat_template)
    boost = float(entry.defaults.boost_prior_mean or 4.0)
    m.set_directions({layer: sae.decoder_row(0) * boost})
    sp = SamplingParams(temperature=0.0, max_tokens=a.tokens)
    prompt = a.prompt or concept_prompt()
    latents, counts, n_pos = firing_latents(m, sae, layer, prompt, sp, min(a.latents, sae.d_sae), a.order)
    res = measure(m, sae, layer, latents, sp, a.pairs, a.order, prompt)
    m.close()
    out = {
        "model": resolved.name, "sae": entry.sae.source, "layer": layer, "boost": boost, "order": a.order,
        "prompt": "concept notes (concept_prompt)" if a.prompt is None else a.prompt, "tokens": a.tokens,
        "pairs": a.pairs, "threads": m.n_threads,
        "ablated_latents": latents, "n_ablated": len(latents),
        "chosen_latents_firing_on_the_text": sum(counts[j] > 0 for j in latents),
        "firing_positions_of_chosen": {str(j): counts[j] for j in latents}, "positions_read": n_pos,
        **res,
        "machine": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "platform": platform.platform()},
        "system_info": system_info(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
