"""Plain values of the experiment log: statuses, column lists, ids, timestamps and JSON encoding (no SQL)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from .errors import EsrError

RUN_STATUSES = ("started", "success", "partial", "error", "cancelled")
TERMINAL_STATUSES = ("success", "partial", "error", "cancelled")
BOOST_SOURCES = ("calibrated", "given", "imported", "replayed", "none")
CALIBRATION_KEY_COLUMNS = ("model_sha256", "sae_source", "latent", "layer", "judge", "settings_hash")

TRIAL_COLUMNS = (
    "run_id", "condition", "latent", "prompt_index", "replicate", "base_prompt", "prompt", "boost", "seed",
    "response", "prompt_tokens", "completion_tokens", "stop_reason", "generation_ms", "error", "created_utc",
)
JUDGMENT_COLUMNS = (
    "judge_key", "judge_spec", "judge_backend", "judge_model", "rubric_version", "raw_output", "parse_status",
    "error", "errors_json", "tries", "latency_ms", "restart_gating", "n_attempts_raw", "created_utc",
)
LIST_RUNS_HINT = "run `esr-local runs` to list the runs in this database"


class DuplicateTrialError(EsrError):
    """A trial with the same (run, condition, latent, prompt_index, replicate) is already recorded."""


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with milliseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def trial_key(run_id: str, condition: str, latent: int, prompt_index: int, replicate: int) -> str:
    """The deterministic id of a trial: `run_id:condition:latent:prompt_index:replicate`.

    Unambiguous even when the condition contains ':' because run ids never do and the last three
    parts are integers.
    """
    return f"{run_id}:{condition}:{int(latent)}:{int(prompt_index)}:{int(replicate)}"


def to_json(value: Any) -> str:
    """Stable JSON text (sorted keys; anything else as its str)."""
    return json.dumps(value, sort_keys=True, default=str)


def column_value(value: Any) -> Any:
    """A settings value as SQLite can store it: scalars as-is, paths as text, containers as JSON."""
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    if isinstance(value, Path):
        return str(value)
    return to_json(value)


def extra_fields(record: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The extra_json content of a record: its `extra_json` (JSON text or dict), its `extra` dict, then any
    keys that are not columns."""
    given = record.get("extra_json") or {}
    extra = dict(json.loads(given) if isinstance(given, str) else given)
    extra.update(record.get("extra") or {})
    extra.update({k: v for k, v in record.items() if k not in skip and k not in ("extra", "extra_json")})
    return extra
