"""Ablation runs: which latents a replayed run zero-ablates, resolved once into the run spec.

An ablation run replays an earlier run's trials (same latent, boost, prompt, seed) with the latents
ablated in the graph, so every trial has a paired twin in the source run. The spec's `ablation` dict
records the latents, where they came from (a stored detector set, a list, or a seeded random draw of
non-detector, non-dead latents: the paper's Experiment 10 control), the order and the layer; its trials
carry the condition `ablation`.
"""

from __future__ import annotations

import random

import numpy as np

from .ablation import ORDERS, Ablation
from .errors import UserInputError


def random_control(sae, k: int, seed: int, exclude: set[int]) -> list[int]:
    """K latents drawn (seeded) among those not in `exclude` and not dead (dead: listed by the dictionary,
    or an all-zero decoder row). Only the drawn rows are read."""
    from .selection import dead_latents

    if k < 1:
        raise UserInputError(f"--ablate-random needs a positive count, got {k}")
    dead = dead_latents(sae)
    order = list(range(sae.d_sae))
    random.Random(f"{seed}:ablate-random").shuffle(order)
    out: list[int] = []
    for j in order:
        if j in exclude or j in dead:
            continue
        if not np.any(sae.decoder_row(j)):
            continue
        out.append(j)
        if len(out) == k:
            return sorted(out)
    raise UserInputError(f"only {len(out)} latents are neither detectors nor dead; ask for fewer with --ablate-random")


def resolve_ablation(store, sae, layer: int, *, latents=(), set_name: str | None = None, n_random: int | None = None,
                     seed: int = 0, order: str = "pre") -> dict | None:
    """The spec's `ablation` dict from the run options, or None when nothing is ablated."""
    given = [bool(latents), bool(set_name), n_random is not None]
    if not any(given):
        return None
    if order not in ORDERS:
        raise UserInputError(f"--ablate-order must be pre or post, got {order!r}")
    if sum(given) > 1 and not (set_name and n_random is not None and not latents):
        raise UserInputError("give one of --ablate, --ablate-set or --ablate-random (with --ablate-set, the random "
                             "draw excludes that set's detectors)")
    source: dict
    if set_name and n_random is None:
        from .detectors import load_detector_set

        ds = load_detector_set(store, set_name)
        chosen, source = list(ds.latents), {"kind": "set", "id": ds.id, "name": ds.name, "rule": ds.rule}
        if not chosen:
            raise UserInputError(f"detector set {ds.name!r} is empty; find detectors with another rule (--rule auc)")
    elif n_random is not None:
        exclude: set[int] = set()
        if set_name:
            from .detectors import load_detector_set

            ds = load_detector_set(store, set_name)
            exclude = set(ds.strict) | set(ds.by_auc) | set(ds.latents)
        chosen = random_control(sae, int(n_random), int(seed), exclude)
        source = {"kind": "random", "n": int(n_random), "seed": int(seed), "excluded_set": set_name}
    else:
        chosen, source = sorted({int(j) for j in latents}), {"kind": "given"}
    Ablation(sae, chosen, layer, order=order)  # validates latents and order now, not at execution
    return {"latents": sorted(int(j) for j in chosen), "source": source, "order": order, "layer": int(layer)}


def ablation_for_spec(spec_ablation: dict | None, sae) -> Ablation | None:
    """The Ablation a run's spec asks for (None: no ablation)."""
    if not spec_ablation:
        return None
    return Ablation(sae, spec_ablation["latents"], int(spec_ablation["layer"]), order=spec_ablation["order"])


def with_ablation(store, spec, opts):
    """The replayed spec with its `ablation` resolved and its steered condition renamed `ablation`."""
    import dataclasses

    from .runs.resources import open_run_sae

    if spec.replay is None:
        raise UserInputError("an ablation run replays an earlier run's trials so they pair up: add --replay RUN")
    if list(spec.conditions) != ["steered"]:
        raise UserInputError(f"an ablation run replays the steered condition only; drop --condition "
                             f"{', '.join(c for c in spec.conditions if c != 'steered')}")
    sae, _rows = open_run_sae(spec)
    abl = resolve_ablation(store, sae, spec.steering_layer, latents=opts.ablate, set_name=opts.ablate_set,
                           n_random=opts.ablate_random, seed=opts.ablate_seed, order=opts.ablate_order)
    return dataclasses.replace(spec, ablation=abl, conditions=["ablation"])
