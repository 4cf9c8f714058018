"""The trials of a run and the batches they decode in, computed from the run spec alone.

Trial seeds hash the run seed, latent, prompt and replicate (so all conditions of one run share seeds);
prompts are drawn per latent without replacement. Batch groups are cut from the FULL plan, never from
what is left to do, so a trial decodes with the same partners on a resume as in an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UserInputError
from .conditions import Condition


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial."""

    condition: str
    latent: int
    prompt_index: int
    replicate: int
    base_prompt: str
    prompt: str
    boost: float
    seed: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        """(condition, latent, prompt_index, replicate): the trial's identity within its run."""
        return (self.condition, self.latent, self.prompt_index, self.replicate)


def trial_seed(run_seed: int, latent: int, prompt_index: int, replicate: int) -> int:
    """A fresh pseudo-random seed per trial in [0, 1_000_000] (the paper's range), reproducible on resume."""
    h = hashlib.sha256(f"{run_seed}:{latent}:{prompt_index}:{replicate}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 1_000_001


def choose_prompt_indices(run_seed: int, latent: int, n_prompts: int, k: int) -> list[int]:
    """k prompt indices for one latent, drawn without replacement."""
    if k > n_prompts:
        raise UserInputError(f"{k} prompts per latent requested but the prompt set has only {n_prompts}")
    return random.Random(f"{run_seed}:prompts:{latent}").sample(range(n_prompts), k)


def base_trials(run_seed: int, latents: list[int], prompts: list[str], prompts_per_latent: int,
                replicates: int) -> list[dict]:
    """(latent, prompt_index, replicate, base_prompt, seed) of every planned (latent, prompt, replicate)."""
    rows = []
    for latent in latents:
        for pi in choose_prompt_indices(run_seed, latent, len(prompts), prompts_per_latent):
            for rep in range(replicates):
                rows.append({"latent": latent, "prompt_index": pi, "replicate": rep, "base_prompt": prompts[pi],
                             "seed": trial_seed(run_seed, latent, pi, rep)})
    return rows


def plan_trials(base: list[dict], conditions: list[Condition], labels: dict[int, str], boosts: dict[int, float],
                levels: list[float], meta: dict[str, str]) -> list[TrialSpec]:
    """Every trial: each base row under each condition (plus one sweep condition per level), for the
    latents that have a boost; latent-major so the control vector changes rarely."""
    conds = list(conditions) + [Condition.sweep(i) for i in range(len(levels))]
    plan = []
    for r in base:
        latent = r["latent"]
        if latent not in boosts:
            continue  # the latent failed calibration; recorded on the latent row
        for c in conds:
            plan.append(TrialSpec(c.name, latent, r["prompt_index"], r["replicate"], r["base_prompt"],
                                  c.prompt(r["base_prompt"], labels.get(latent, ""), meta),
                                  c.boost(boosts[latent], levels), r["seed"]))
    plan.sort(key=lambda t: (t.latent, t.boost, t.condition, t.prompt_index, t.replicate))
    return plan


def groups(plan: list[TrialSpec], size: int) -> Iterator[list[TrialSpec]]:
    """Consecutive trials sharing (latent, boost), in chunks of `size` (one control vector per chunk)."""
    chunk: list[TrialSpec] = []
    for t in plan:
        if chunk and ((t.latent, t.boost) != (chunk[0].latent, chunk[0].boost) or len(chunk) >= size):
            yield chunk
            chunk = []
        chunk.append(t)
    if chunk:
        yield chunk
