"""Benchmark: decode speed with in-graph ablation (0 vs 26 ablated latents) and the eval callback's cost.

    .venv/bin/python bench/bench_ablation.py [--tokens 64] [--pairs 5] [--latents 26] [--order post] [--json OUT]

On the default model (SmolLM2-135M-Instruct Q4_1) and its catalog SAE (shipped concept dictionary, layer 12),
steered with latent 0 at the catalog's prior boost: interleaved greedy generations of exactly N tokens
without ablation (no callback on the context) and with K latents ablated (`SteeredModel.set_ablation`).
Reported: median tok/s of each, the median per-pair slowdown, and the time spent inside the callback per
decode step (every graph node is asked once; the l_out-L write-back and the SAE encode happen once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from esr_local.ablation import Ablation
from esr_local.catalog import DEFAULT_MODEL, get_entry
from esr_local.engine import SamplingParams, SteeredModel, system_info
from esr_local.model_files import resolve_model
from esr_local.steering import open_sae

PROMPT = "Explain how to change a bike tire."


class TimedAblation(Ablation):
    """An Ablation that sums the wall time spent in its callback."""

    seconds = 0.0
    calls = 0

    def _on_tensor(self, tensor_ptr, ask, user_data):
        t = time.perf_counter()
        try:
            return super()._on_tensor(tensor_ptr, ask, user_data)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--latents", type=int, default=26)
    ap.add_argument("--order", choices=["pre", "post"], default="post")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    entry = get_entry(DEFAULT_MODEL)
    resolved = resolve_model(None, None, None)
    sae = open_sae(None, entry)
    layer = int(entry.sae.steering_layer)
    m = SteeredModel(resolved.path, n_ctx=1024, chat_template=entry.chat_template)
    boost = float(entry.defaults.boost_prior_mean or 4.0)
    m.set_directions({layer: sae.decoder_row(0) * boost})
    # Latents 0..K-1: the steered latent 0 among them, so (in the post order) the write-back path runs too.
    abl = TimedAblation(sae, list(range(min(a.latents, sae.d_sae))), layer, order=a.order)
    sp = SamplingParams(temperature=0.0, max_tokens=a.tokens)
    m.generate(PROMPT, sp, 0)  # warm-up
    plain, ablated, ratios, cb_ms, fired = [], [], [], [], []
    for _ in range(a.pairs):
        m.set_ablation(None)
        g0 = m.generate(PROMPT, sp, 0)
        m.set_ablation(abl)
        abl.seconds, abl.calls = 0.0, 0
        abl.reset()
        g1 = m.generate(PROMPT, sp, 0)
        steps = g1.completion_tokens  # one prefill call + (n - 1) decode steps, each with one write-back
        cb_ms.append(1000 * abl.seconds / steps)
        fired.append(abl.stats.rows_fired / max(1, abl.stats.rows))
        plain.append(g0.tokens_per_s)
        ablated.append(g1.tokens_per_s)
        ratios.append(g1.tokens_per_s / g0.tokens_per_s)
    m.close()
    out = {
        "model": resolved.name, "sae": entry.sae.source, "layer": layer, "ablated_latents": len(abl.latents), "order": a.order,
        "tokens": a.tokens, "pairs": a.pairs, "threads": m.n_threads,
        "tok_s_no_ablation_median": round(statistics.median(plain), 1),
        "tok_s_ablation_median": round(statistics.median(ablated), 1),
        "slowdown_median_pct": round(100 * (1 - statistics.median(ratios)), 1),
        "callback_ms_per_token_median": round(statistics.median(cb_ms), 3),
        "rows_with_a_firing_latent": round(statistics.median(fired), 3),
        "machine": {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "platform": platform.platform()},
        "system_info": system_info(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
