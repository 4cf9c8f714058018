"""Each latent's boost: already on the run, replayed, given, none (baseline only) or calibrated (cached);
calibrated boosts at a bound or far from the target are flagged."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..calibration import calibrate_latent
from ..errors import EsrError
from .spec import RunSpec

# A re-measured first-attempt score further than this from the target flags the latent (issue 6 §6).
SCORE_TOLERANCE = 0.15
# A boost within this share of the search range from a bound "sits at the bound".
BOUND_SHARE = 0.01


@dataclass
class BoostResult:
    """The latents that have a boost, and how many failed calibration."""

    boosts: dict[int, float]
    failed: int
    flagged: int


def calibration_flags(boost: float, achieved: float | None, lower: float, upper: float, target: float) -> str | None:
    """Why a calibrated boost is suspect ('; '-joined), or None."""
    reasons = []
    margin = BOUND_SHARE * (upper - lower)
    if boost <= lower + margin:
        reasons.append(f"boost {boost:g} at the lower bound {lower:g}")
    if boost >= upper - margin:
        reasons.append(f"boost {boost:g} at the upper bound {upper:g}")
    if achieved is not None and abs(achieved - target) > SCORE_TOLERANCE:
        reasons.append(f"re-measured score {achieved:.2f} is more than {SCORE_TOLERANCE} from the target {target:.2f}")
    return "; ".join(reasons) or None


def resolve_boosts(store, run_id: str, spec: RunSpec, lm, judge, rows: dict[int, np.ndarray],
                   echo: Callable[[str], None], check_lease: Callable[[], None] | None = None) -> BoostResult:
    """Boosts of the run's latents, recording each on its latent row. A latent whose calibration failed
    is tried again on a resume (failures are often a judge outage). `check_lease` runs inside each
    latent row's write transaction and raises when this process no longer holds the run."""
    def record(latent: int, **fields) -> None:
        with store.transaction():
            if check_lease is not None:
                check_lease()
            store.upsert_latent(run_id, latent, **fields)

    have = {r["latent"]: r for r in store.latents(run_id)}
    replayed = {int(k): float(v) for k, v in ((spec.replay or {}).get("boosts") or {}).items()}
    baseline_only = all(c == "baseline" for c in spec.conditions) and not spec.sweep_levels
    out = BoostResult({}, 0, 0)
    for latent in spec.latents:
        row, label = rows[latent], spec.label(latent)
        norm = float(np.linalg.norm(row))
        prev = have.get(latent)
        if prev and prev.get("boost") is not None and not prev.get("error"):
            out.boosts[latent] = float(prev["boost"])
            out.flagged += bool(prev.get("flags"))
            continue
        achieved, flags, cal_id = None, None, None
        if spec.replay is not None:
            if latent not in replayed:
                continue
            boost, how = replayed[latent], "replayed"
        elif spec.boost is not None:
            boost, how = float(spec.boost), "given"
        elif baseline_only:
            boost, how = 0.0, "none"
        else:
            cal = spec.calibration
            identity = hashlib.sha256(row.tobytes() + label.encode()).hexdigest()[:16]
            key = {"model_sha256": spec.model.sha256, "sae_source": f"{spec.sae.source}#row-{identity}",
                   "latent": latent, "layer": spec.steering_layer, "judge": spec.judge.key,
                   "settings_hash": cal.settings_hash()}
            try:
                res = calibrate_latent(lm, judge, row, spec.steering_layer, label, spec.prompts, cal,
                                       seed=spec.seed + latent, store=store, cache_key=key,
                                       on_start=lambda: echo(f"calibrating latent {latent} ({label}) ..."))
            except EsrError as exc:
                record(latent, label=label, row_norm=norm, boost=None, boost_source="calibrated", error=str(exc))
                echo(f"latent {latent}: calibration failed: {exc}")
                out.failed += 1
                continue
            boost, how, cal_id, achieved = res.boost, "calibrated", res.calibration_id, res.achieved_score
            flags = calibration_flags(boost, achieved, cal.lower, cal.upper, cal.target)
            echo(f"latent {latent}: boost {boost:g}{' (cached)' if res.cached else ''} "
                 f"(achieved first-attempt score {achieved:.2f}){'; FLAGGED: ' + flags if flags else ''}")
        record(latent, label=label, row_norm=norm, boost=boost, boost_source=how, calibration_id=cal_id, error=None,
               achieved_score=achieved, flags=flags)
        out.boosts[latent] = float(boost)
        out.flagged += bool(flags)
    return out
