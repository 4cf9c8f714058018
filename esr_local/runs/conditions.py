"""The conditions a trial can run under: one small type used by the runner, the importer and the metrics.

A condition is stored as its `name`: `steered`, `baseline`, `meta:<id>`, `sweep:<k>`, `imported`,
`ablation` (a replay with latents zero-ablated in the graph, esr_local.ablation_runs) and
`prefill:first-attempt` / `prefill:matched` (esr_local.prefill_runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError
from ..prompts import apply_meta_prompt

KINDS = ("steered", "baseline", "meta", "sweep", "imported", "ablation", "prefill")
_WITH_ARG = ("meta", "sweep", "prefill")
PREFILL_ARGS = ("first-attempt", "matched")  # esr_local.prefill_runs: off-topic prefix / length-matched on-topic
USER_KINDS = ("steered", "baseline", "meta")  # what `--condition` may name; sweeps come from --sweep-levels


@dataclass(frozen=True, order=True)
class Condition:
    """One condition: its kind and, for meta-prompts and sweep levels, the meta-prompt id or level index."""

    kind: str
    arg: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserInputError(f"unknown condition {self.kind!r}; known: {', '.join(KINDS)}")
        if (self.kind in _WITH_ARG) != bool(self.arg):
            form = f"{self.kind}:<{'id' if self.kind == 'meta' else 'level'}>" if self.kind in _WITH_ARG else self.kind
            raise UserInputError(f"condition {self.name!r} is malformed; write it as {form}")
        if self.kind == "prefill" and self.arg not in PREFILL_ARGS:
            raise UserInputError(f"prefill condition {self.name!r} must be prefill:first-attempt or prefill:matched")
        if self.kind == "sweep" and not str(self.arg).isdigit():
            raise UserInputError(f"sweep condition {self.name!r} needs a level index (sweep:0, sweep:1, ...)")

    @property
    def name(self) -> str:
        """The stored form (`meta:self_monitor`, `sweep:3`, `steered`)."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Condition:
        """A condition from its stored name."""
        kind, sep, arg = str(name).partition(":")
        return cls(kind, arg if sep else None)

    @classmethod
    def meta(cls, meta_id: str) -> Condition:
        return cls("meta", meta_id)

    @classmethod
    def sweep(cls, level: int) -> Condition:
        return cls("sweep", str(int(level)))

    @property
    def steers(self) -> bool:
        """Whether the condition applies the latent's direction (only the baseline does not)."""
        return self.kind not in ("baseline", "prefill")  # prefill conditions continue unsteered

    @property
    def sort_key(self) -> tuple:
        """Display order: steered, baseline, meta-prompts by id, sweep levels by number, the rest."""
        arg = int(self.arg) if self.kind == "sweep" else (self.arg or "")
        return (KINDS.index(self.kind), arg)

    def boost(self, latent_boost: float, levels: list[float]) -> float:
        """The boost this condition steers with: 0 for the baseline, a sweep level, else the latent's boost."""
        if self.kind in ("baseline", "prefill"):
            return 0.0
        if self.kind == "sweep":
            return levels[int(self.arg)]
        return latent_boost

    def prompt(self, base_prompt: str, label: str, meta: dict[str, str]) -> str:
        """The prompt as sent under this condition (a meta-prompt condition appends its template)."""
        if self.kind != "meta":
            return base_prompt
        if self.arg not in meta:
            raise UserInputError(f"unknown meta-prompt {self.arg!r}; known: {', '.join(sorted(meta))}")
        return apply_meta_prompt(base_prompt, meta[self.arg], label)


def check_conditions(names: list[str], meta: dict[str, str]) -> list[Condition]:
    """The user's conditions, each named once (first occurrence wins); unknown names are refused."""
    out: list[Condition] = []
    for name in names:
        try:
            c = Condition.parse(name)
        except UserInputError:
            c = None
        if c is None or c.kind not in USER_KINDS or (c.kind == "meta" and c.arg not in meta):
            raise UserInputError(
                f"unknown condition {name!r}; use steered, baseline or meta:<id> (a boost sweep comes from --sweep-levels N)"
            )
        if c not in out:
            out.append(c)
    return out


def sweep_levels(boosts: list[float], n_levels: int) -> list[float]:
    """Boost levels from mean - 3 sd to mean + 3 sd of the calibrated boosts, clamped at 0 (paper, Exp. 2)."""
    if not boosts:
        raise UserInputError("a boost sweep needs at least one calibrated latent")
    mean, sd = float(np.mean(boosts)), float(np.std(boosts))
    if sd == 0:
        raise UserInputError("every latent has the same boost (sd 0), so a sweep of mean +- 3 sd would repeat one level; "
                             "calibrate several latents (no --boost) for a sweep")
    levels = [round(max(0.0, float(x)), 4) for x in np.linspace(mean - 3 * sd, mean + 3 * sd, n_levels)]
    return list(dict.fromkeys(levels))  # clamping can repeat 0.0; each sweep condition is one distinct boost
