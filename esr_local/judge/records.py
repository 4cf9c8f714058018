"""Judge records: an attempt and a judgment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Attempt:
    """One attempt found in a response: its text and its 0-100 score (None when the judge gave none)."""

    text: str
    score: float | None


@dataclass
class Judgment:
    """The outcome of judging one response. Failures are recorded here, never raised.

    `attempts` is None when `parse_status == "error"`; `raw_output` keeps the judge's last reply
    (empty when the backend never answered); `tries` counts backend calls; `latency_ms` is the
    total time over all tries; `n_attempts_raw` is the judge's attempt count before restart gating;
    `errors` holds the error of every failed try, in order (also when a later try succeeded), and
    `error` is the last of them when the judgment failed.
    """

    raw_output: str
    attempts: list[Attempt] | None
    parse_status: str
    error: str | None
    tries: int
    latency_ms: float
    n_attempts_raw: int | None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (attempts as `{"text", "score"}` dicts)."""
        return asdict(self)
