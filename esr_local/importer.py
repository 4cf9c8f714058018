"""Import a result file written by the paper's reference implementation into the store.

The file is one JSON object (research notes esr-protocol.md section 7):

    {experiment_config: {model_name, judge_model_name, max_completion_tokens, disable_steering,
                         prompt_variant_id, ...},
     results_by_feature: [{feature_index_in_sae, feature_label, threshold, error,
                           trials: [{prompt, seed, response, threshold, error,
                                     score: {raw_response, attempts: [{attempt_text, score}]}
                                          | {raw_response, error}}]}],
     ...other top-level keys (n_boost_levels, boost_levels, ablated_latents, ...)}

Mapping: one run with experiment 'import'; the condition is 'meta:<prompt_variant_id>' when the config
names a prompt variant, else 'baseline' when steering was disabled, else 'steered'. prompt_index is
the position of the prompt among the distinct prompts in file order; replicate counts earlier trials
with the same (latent, prompt). A feature error goes to latents.error, a score error to a judgment with
parse_status 'error'. The whole file is checked before anything is written, and written in one
transaction, so a bad file leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .errors import FormatError, MissingResourceError
from .runs.conditions import Condition
from .store import Store

_KNOWN_TRIAL_KEYS = {
    "prompt", "feature_index_in_sae", "feature_label", "threshold", "seed", "response", "score", "error",
}
_FORMAT_HINT = "expected a result file of the ESR reference implementation (experiment_config, results_by_feature)"


def _fail(path: Path, where: str, problem: str) -> FormatError:
    return FormatError(f"{path}: {where}: {problem}; {_FORMAT_HINT}")


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingResourceError(f"no such file: {path}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); {_FORMAT_HINT}") from None
    except RecursionError:
        raise FormatError(f"{path} nests JSON arrays/objects too deeply to be a result file; {_FORMAT_HINT}") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level", f"expected a JSON object, got {type(data).__name__}")
    for key, kind in (("experiment_config", dict), ("results_by_feature", list)):
        if not isinstance(data.get(key), kind):
            raise _fail(path, "top level", f"missing or invalid {key!r}")
    config = data["experiment_config"]
    for key in ("model_name", "judge_model_name", "prompt_variant_id", "prompts_file"):
        _text(config.get(key), path, "experiment_config", key)
    for key in ("max_completion_tokens", "n_trials_per_feature"):
        _number(config.get(key), path, "experiment_config", key, integer=True, minimum=0)
    levels = data.get("boost_levels")
    if levels is not None and not isinstance(levels, list):
        raise _fail(path, "top level", f"boost_levels must be a list of numbers, got {type(levels).__name__}")
    for i, level in enumerate(levels or []):
        _number(level, path, f"boost_levels[{i}]", "level")
    return data


def _text(value: Any, path: Path, where: str, field: str) -> str | None:
    """Check an optional string field (None passes)."""
    if value is not None and not isinstance(value, str):
        raise _fail(path, where, f"{field} must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def condition_for(config: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    """The condition name of a reference file from its experiment_config (and top-level keys)."""
    if config.get("prompt_variant_id"):
        return Condition.meta(str(config["prompt_variant_id"])).name
    if config.get("disable_steering"):
        return Condition("baseline").name
    if data and data.get("ablated_latents"):
        return Condition("ablation").name
    return Condition("steered").name


def _sweep_condition(levels: list[float], boost: float | None, fallback: str) -> str:
    """In a multi-boost file, a trial's condition is the boost level its threshold equals (sweep:<k>)."""
    if not levels or boost is None:
        return fallback
    k = min(range(len(levels)), key=lambda i: abs(levels[i] - boost))
    return Condition.sweep(k).name if abs(levels[k] - boost) <= 1e-6 * max(1.0, abs(boost)) else fallback


_SQLITE_INT_MAX = 2**63 - 1


def _number(value: Any, path: Path, where: str, field: str, *, integer: bool = False,
            minimum: float | None = None, maximum: float | None = None) -> Any:
    """Check an optional numeric field (None passes), optionally within [minimum, maximum]."""
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail(path, where, f"{field} must be {'an integer' if integer else 'a number'}, got {str(value)[:40]!r}")
    if integer and maximum is None:
        maximum = _SQLITE_INT_MAX
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else f"{minimum:g}"
        raise _fail(path, where, f"{field} must be between {low} and {maximum:g}, got {str(value)[:40]}")
    return value


def _judgment(score: Any, config: dict[str, Any], path: Path, where: str) -> tuple[dict | None, list[dict]]:
    """The judgment and attempts for one trial's `score` object (None when the trial was not judged)."""
    if score is None:
        return None, []
    if not isinstance(score, dict):
        raise _fail(path, where, f"score must be an object, got {type(score).__name__}")
    judgment: dict[str, Any] = {"judge_model": config.get("judge_model_name"),
                                "raw_output": _text(score.get("raw_response"), path, where, "score.raw_response")}
    if score.get("error") or not isinstance(score.get("attempts"), list):
        judgment.update(parse_status="error", error=str(score.get("error") or "no attempts list in the score"))
        return judgment, []
    attempts = []
    for index, attempt in enumerate(score["attempts"]):
        if not isinstance(attempt, dict):
            raise _fail(path, f"{where}, attempt {index}", "expected an object with attempt_text and score")
        value = _number(attempt.get("score"), path, f"{where}, attempt {index}", "score", minimum=0, maximum=100)
        text = _text(attempt.get("attempt_text"), path, f"{where}, attempt {index}", "attempt_text")
        attempts.append({"text": text, "score": value})
    judgment.update(parse_status="ok", error=None, n_attempts_raw=len(attempts))
    return judgment, attempts


def _plan(path: Path, data: dict[str, Any]) -> tuple[list[dict], list[tuple[dict, dict | None, list[dict]]]]:
    """Check the whole file and turn it into latent records and (trial, judgment, attempts) triples."""
    config = data["experiment_config"]
    base_condition = condition_for(config, data)
    # Distinct levels, as esr-local's own sweeps: the reference clamps at 0, which can repeat 0.0.
    levels = list(dict.fromkeys(float(x) for x in data.get("boost_levels") or [] if isinstance(x, (int, float))))
    prompt_indexes: dict[str, int] = {}
    seen: dict[tuple[int, str, str], int] = {}
    latents: list[dict] = []
    trials: list[tuple[dict, dict | None, list[dict]]] = []
    for f_index, feature in enumerate(data["results_by_feature"]):
        where = f"results_by_feature[{f_index}]"
        if not isinstance(feature, dict):
            raise _fail(path, where, "expected an object")
        latent = _number(feature.get("feature_index_in_sae"), path, where, "feature_index_in_sae", integer=True, minimum=0)
        _text(feature.get("feature_label"), path, where, "feature_label")
        if latent is None:
            raise _fail(path, where, "missing feature_index_in_sae")
        threshold = _number(feature.get("threshold"), path, where, "threshold")
        latents.append({
            "latent": latent,
            "label": feature.get("feature_label"),
            "boost": threshold,
            "boost_source": "imported" if threshold is not None else "none",
            "error": str(feature["error"]) if feature.get("error") else None,
        })
        feature_trials = feature.get("trials") or []
        if not isinstance(feature_trials, list):
            raise _fail(path, where, "trials must be a list")
        for t_index, trial in enumerate(feature_trials):
            t_where = f"{where}.trials[{t_index}]"
            if not isinstance(trial, dict) or not isinstance(trial.get("prompt"), str):
                raise _fail(path, t_where, "expected an object with a prompt string")
            prompt = trial["prompt"]
            prompt_index = prompt_indexes.setdefault(prompt, len(prompt_indexes))
            boost = _number(trial.get("threshold"), path, t_where, "threshold")
            condition = _sweep_condition(levels, boost, base_condition)
            replicate = seen.get((latent, prompt, condition), 0)
            seen[(latent, prompt, condition)] = replicate + 1
            judgment, attempts = _judgment(trial.get("score"), config, path, t_where)
            record = {
                "condition": condition,
                "latent": latent,
                "prompt_index": prompt_index,
                "replicate": replicate,
                "base_prompt": prompt,  # the file keeps only the prompt as sent (meta-prompt included)
                "prompt": prompt,
                "boost": boost,
                "seed": _number(trial.get("seed"), path, t_where, "seed", integer=True, minimum=0),
                "response": _text(trial.get("response"), path, t_where, "response"),
                "error": str(trial["error"]) if trial.get("error") else None,
                "extra": {"feature_label": trial.get("feature_label"),
                          **{k: v for k, v in trial.items() if k not in _KNOWN_TRIAL_KEYS}},
            }
            trials.append((record, judgment, attempts))
    return latents, trials


def read_reference(path: str | Path) -> tuple[Path, dict[str, Any], list[dict], list]:
    """Read and check a reference-implementation result file without touching any database.

    Raises MissingResourceError if the file does not exist and FormatError (one line, naming the
    offending entry) if it is not in the reference format. The result is what `import_reference` takes.
    """
    path = Path(path).expanduser()
    data = _load(path)
    latents, trials = _plan(path, data)
    return path, data, latents, trials


def import_reference(store: Store, path: str | Path | tuple) -> str:
    """Import a reference-implementation result file (a path, or what `read_reference` returned) as a new
    run; returns the run id. Errors as for `read_reference`, raised before anything is written.
    """
    path, data, latents, trials = path if isinstance(path, tuple) else read_reference(path)
    config = data["experiment_config"]
    settings = {
        "experiment": "import",
        "source_file": str(path.resolve()),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "model_name": config.get("model_name"),
        "judge_model": config.get("judge_model_name"),
        "max_tokens": config.get("max_completion_tokens"),
        "prompts_file": config.get("prompts_file"),
        "prompts_per_latent": config.get("n_trials_per_feature"),
        "condition": condition_for(config, data),
        "experiment_config": config,
        "file_metadata": {k: v for k, v in data.items() if k not in ("experiment_config", "results_by_feature")},
    }
    with store.transaction():
        run_id = store.create_run(settings)
        for latent in latents:
            store.upsert_latent(run_id, latent["latent"], label=latent["label"], row_norm=None,
                                boost=latent["boost"], boost_source=latent["boost_source"], error=latent["error"])
        for record, judgment, attempts in trials:
            store.record_trial({"run_id": run_id, **record}, judgment, attempts)
        store.set_run_status(run_id, "success")
    return run_id
