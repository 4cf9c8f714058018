"""Does the offline judge's first-attempt score fall as steering grows? A boost sweep on the default model.

    .venv/bin/python bench/sweep_offline_judge.py [--latent 0 --latent 3] [--boosts 0,1.5,3,4.5,6] \
        [--n-prompts 3] [--max-tokens 128] [--json out.json]

For each latent of the shipped SmolLM2 concept dictionary (layer 12) and each boost, generates one answer
to each of the first `--n-prompts` shipped prompts (T 0.6, penalty 1.1, seed = prompt index) and prints
the mean first-attempt score of the offline judge. Boost 0 is the unsteered baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esr_local.engine import SteeredModel  # noqa: E402
from esr_local.judge.local import default_judge_model_path  # noqa: E402
from esr_local.judge.offline import OfflineJudge  # noqa: E402
from esr_local.prompts import load_prompts  # noqa: E402
from esr_local.sampling import SamplingParams  # noqa: E402
from esr_local.saes import load_sae  # noqa: E402
from esr_local.steering import resolve_sae_source  # noqa: E402

LAYER = 12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, action="append", default=None)
    ap.add_argument("--boosts", default="0,1.5,3,4.5,6")
    ap.add_argument("--n-prompts", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    latents = args.latent or [0, 3]
    boosts = [float(b) for b in args.boosts.split(",")]

    sae = load_sae(resolve_sae_source("shipped:smollm2-135m-concepts"))
    prompts = list(load_prompts(None).prompts)[: args.n_prompts]
    path = default_judge_model_path()
    lm = SteeredModel(path, n_ctx=1024)
    judge = OfflineJudge(path)
    sampling = SamplingParams(temperature=0.6, max_tokens=args.max_tokens, repetition_penalty=1.1)
    out = {}
    for latent in latents:
        row, label = sae.decoder_row(latent), sae.label(latent)
        means = []
        for boost in boosts:
            lm.set_directions({LAYER: row * np.float32(boost)} if boost else None)
            scores = []
            for seed, prompt in enumerate(prompts):
                text = lm.generate(prompt, sampling, seed).text
                j = judge.judge(prompt, text, label)
                scores.append(j.attempts[0].score if j.attempts else 0.0)
                print(f"  latent {latent} boost {boost:g}: {scores[-1]:6.2f} {text[:80]!r}", flush=True)
            means.append(round(statistics.mean(scores), 2))
            print(f"latent {latent} ({label}) boost {boost:g}: mean first-attempt score {means[-1]}", flush=True)
        out[str(latent)] = {"label": label, "boosts": boosts, "mean_first_score": means}
    lm.close()
    judge.close()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
