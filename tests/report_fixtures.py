"""Reference-implementation result files with known scores, imported into a real SQLite store: the test
databases of the report, trials and Datasette tests (numbers worked out by hand in those tests)."""

from __future__ import annotations

import json
from pathlib import Path

from esr_local.importer import import_reference
from esr_local.store import Store


def trial(prompt: str, scores: list[float | None], threshold: float = 2.0, seed: int = 1) -> dict:
    return {"prompt": prompt, "seed": seed, "response": " | ".join(f"part {i}" for i in range(len(scores))),
            "threshold": threshold,
            "score": {"raw_response": "<json>", "attempts": [{"attempt_text": f"attempt {i} of {prompt}", "score": s}
                                                             for i, s in enumerate(scores)]}}


def feature(index: int, label: str, threshold: float, trials: list[dict], error: str | None = None) -> dict:
    return {"feature_index_in_sae": index, "feature_label": label, "threshold": threshold, "error": error,
            "trials": trials}


def reference_files(folder: Path) -> dict[str, Path]:
    """Four files of model 'toy-model': steered, a second steered file (pooled with the first), a
    self_monitor meta-prompt file on the same prompts, and a 3-level boost sweep."""
    config = {"model_name": "toy-model", "judge_model_name": "toy-judge"}
    files = {
        # steered: 4 counted, 3 multi-attempt, 2 improved; first scores 10, 20, 40, 5
        "steered": {"experiment_config": config, "results_by_feature": [
            feature(1, "weddings", 2.0, [trial("How to bake?", [10, 80]), trial("How to swim?", [20])]),
            feature(2, "volcanoes", 3.0, [trial("How to bake?", [40, 30], 3.0), trial("How to swim?", [5, 50, 90], 3.0)]),
        ]},
        # steered again: 2 counted, 1 multi-attempt, 1 improved; one trial with a judge error (not counted)
        "steered2": {"experiment_config": config, "results_by_feature": [
            feature(1, "weddings", 2.0, [trial("How to bake?", [10, 20]), trial("How to swim?", [50]),
                                         {**trial("How to run?", [1]), "score": {"raw_response": "?", "error": "no json"}}]),
        ]},
        # meta: same latents and prompts as "steered"
        "meta": {"experiment_config": {**config, "prompt_variant_id": "self_monitor"}, "results_by_feature": [
            feature(1, "weddings", 2.0, [trial("How to bake?", [10]), trial("How to swim?", [20, 60])]),
            feature(2, "volcanoes", 3.0, [trial("How to bake?", [30], 3.0), trial("How to swim?", [5], 3.0)]),
        ]},
        # sweep: latent boosts 2 and 3 (mean 2.5, sd 0.5), levels 1, 2.5, 4 = -3, 0, +3 sd
        "sweep": {"experiment_config": config, "boost_levels": [1.0, 2.5, 4.0], "results_by_feature": [
            feature(1, "weddings", 2.0, [trial("How to bake?", [10 + 20 * k, 50], b) for k, b in enumerate([1.0, 2.5, 4.0])]),
            feature(2, "volcanoes", 3.0, [trial("How to swim?", [30], b) for b in [1.0, 2.5, 4.0]]),
        ]},
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    return paths


def imported_store(folder: Path) -> tuple[Path, dict[str, str]]:
    """A database at folder/runs.db holding the four reference files; returns its path and the run ids."""
    paths = reference_files(folder)
    db = folder / "runs.db"
    with Store(db) as store:
        ids = {name: import_reference(store, path) for name, path in paths.items()}
    return db, ids
