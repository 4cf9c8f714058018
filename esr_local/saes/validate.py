"""Type checks for the fields SAE readers take from config files and file headers.

Hand-edited or corrupt files put strings where numbers belong, lists where strings belong, floats where
integers belong. Each helper returns the value in the type the reader needs, or raises FormatError naming
the file, the field and what was found, so no reader ever calls `int()` or `.strip()` on an unchecked value.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import FormatError


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_int(value: Any, where: str, field: str, *, minimum: int = 0) -> int:
    """An integer >= minimum (an integral float such as 576.0 passes; 576.5, True, "576", inf do not)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: {field} must be an integer, got {_shown(value)}; fix or re-download the file")
    if value < minimum:
        raise FormatError(f"{where}: {field} must be at least {minimum}, got {value}; fix or re-download the file")
    return value


def cfg_int(cfg: dict, key: str, where: str, *, minimum: int = 1) -> int | None:
    """cfg[key] as a checked integer, None when absent or null."""
    value = cfg.get(key)
    return None if value is None else as_int(value, where, key, minimum=minimum)


def cfg_str(cfg: dict, key: str, where: str) -> str | None:
    """cfg[key] as a string, None when absent, null or empty."""
    value = cfg.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormatError(f"{where}: {key} must be a string, got {_shown(value)}; fix or re-download the file")
    return value


def cfg_bool(cfg: dict, key: str, where: str, default: bool) -> bool:
    """cfg[key] as a boolean (absent or null: `default`); "no", 0 or "false" are refused, not guessed."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FormatError(f"{where}: {key} must be true or false, got {_shown(value)}; fix or re-download the file")
    return value


def cfg_dict(cfg: dict, key: str, where: str) -> dict:
    """cfg[key] as a dict ({} when absent or null)."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{where}: {key} must be a JSON object, got {_shown(value)}; fix or re-download the file")
    return value


def int_list(value: Any, where: str, field: str, *, length: int | None = None) -> list[int]:
    """A list of non-negative integers (tensor shapes, byte offsets), optionally of a fixed length."""
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        want = f"a list of {length} integers" if length is not None else "a list of integers"
        raise FormatError(f"{where}: {field} must be {want}, got {_shown(value)}; the file is corrupt")
    return [as_int(v, where, field) for v in value]
