"""Store benchmark: log N judged trials (one transaction each, as a run writes them) into a fresh SQLite
file, compute the metrics in Python and through the `run_metrics` view, report seconds and bytes per trial.

    .venv/bin/python bench/bench_store.py [--trials 10000] [--response-chars 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from esr_local.metrics import metrics_for_store
from esr_local.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--response-chars", type=int, default=1500, help="Response length (512 tokens is ~2000 chars).")
    args = ap.parse_args()
    rng = random.Random(0)
    words = "the cat sat on a warm mat while rain fell over quiet hills and rivers".split()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = Store(path)
        run_id = store.create_run({"experiment": "esr", "judge_key": "bench:judge:0"})
        n_latents = max(1, args.trials // 50)
        for latent in range(n_latents):
            store.upsert_latent(run_id, latent, label=f"label {latent}", row_norm=1.0, boost=3.0, boost_source="given")
        t0 = time.perf_counter()
        for i in range(args.trials):
            text = " ".join(rng.choice(words) for _ in range(args.response_chars // 5))[: args.response_chars]
            n_att = 2 if rng.random() < 0.3 else 1
            attempts = [{"text": text[: len(text) // n_att], "score": rng.randint(0, 100)} for _ in range(n_att)]
            store.record_trial(
                {"run_id": run_id, "condition": "steered" if i % 2 else "baseline", "latent": (i // 2) % n_latents,
                 "prompt_index": i // (2 * n_latents), "replicate": 0, "base_prompt": "Explain tides.",
                 "prompt": "Explain tides.", "boost": 3.0, "seed": i, "response": text, "prompt_tokens": 20,
                 "completion_tokens": 400, "stop_reason": "length", "generation_ms": 1000.0},
                {"judge_key": "bench:judge:0", "judge_backend": "bench", "judge_model": "judge",
                 "raw_output": json.dumps({"attempts": attempts}), "parse_status": "ok", "tries": 1, "latency_ms": 5.0},
                attempts,
            )
        t_log = time.perf_counter() - t0
        t0 = time.perf_counter()
        py = metrics_for_store(store, [run_id])
        t_py = time.perf_counter() - t0
        t0 = time.perf_counter()
        view = list(store.db.query("SELECT * FROM run_metrics WHERE run_id = ?", [run_id]))
        t_view = time.perf_counter() - t0
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        size = os.path.getsize(path)
        assert [r["n"] for r in py] == [r["n"] for r in view]
        print(json.dumps({
            "trials": args.trials, "response_chars": args.response_chars,
            "log_s": round(t_log, 2), "trials_per_s": round(args.trials / t_log),
            "metrics_python_s": round(t_py, 2), "metrics_view_s": round(t_view, 2),
            "total_s": round(t_log + t_py + t_view, 2),
            "db_bytes": size, "bytes_per_trial": round(size / args.trials),
        }, indent=2))


if __name__ == "__main__":
    main()
