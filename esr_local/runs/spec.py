"""The run spec: one frozen, fully resolved description of a run, stored (as JSON) with the run at
creation. Executing or resuming a run reads only this; nothing is re-derived from today's catalog."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..calibration import CalibrationSettings
from ..errors import UserInputError
from ..sampling import SamplingParams

SPEC_VERSION = 1


@dataclass(frozen=True)
class ModelRef:
    """The GGUF file a run generates with."""

    name: str
    path: str
    sha256: str
    size: int
    n_layer: int
    n_embd: int
    chat_mode: str  # auto | chat | raw, as given (after the catalog's raw-only rule)
    chat_template: str | None  # the catalog's template, frozen; None: the GGUF's own
    mtime_ns: int | None = None  # when the file was hashed; a different mtime makes a resume hash it again


@dataclass(frozen=True)
class SaeRef:
    """The SAE files a run reads, fingerprinted, and the decoder rows it steers with."""

    source: str  # as the user (or the catalog) wrote it
    resolved_path: str  # the local file or folder opened
    family: str
    revision: str | None  # the Hugging Face commit for hub sources
    files: list[dict]  # [{path, size, mtime_ns, sha256}] of every file read
    feature_layer: int | None  # the SAE's own hook layer
    d_sae: int
    rows_sha256: str  # sha256 of the float32 decoder rows of the run's latents, in latent order


@dataclass(frozen=True)
class JudgeRef:
    """How to build the judge, what it described itself as, and its check before the run."""

    spec: str
    model_path: str | None
    base_url: str | None
    rubric: str | None
    timeout: float | None
    restart_gating: bool
    description: dict  # Judge.describe() at creation
    key: str  # judge_key: the judgments this run counts
    check: dict  # ensure_judge_checked's record (status passed | weak-allowed | skipped, summary, key)


@dataclass(frozen=True)
class RunSpec:
    """Everything a run's results depend on, resolved once."""

    experiment: str  # esr | replay | calibrate
    model: ModelRef
    sae: SaeRef
    steering_layer: int
    latents: list[int]
    latent_source: dict  # {"kind": "given" | "drawn" | "set" | "replayed", ...}
    labels: dict[str, str]  # latent (as text, JSON keys) -> label the judge sees
    labels_sha256: str
    prompts: list[str]
    prompts_file: str
    prompts_sha256: str
    prompts_per_latent: int
    replicates: int
    sampling: SamplingParams
    conditions: list[str]  # user conditions by name (sweep levels are added at execution)
    meta_prompts: dict[str, str]
    sweep_levels: int
    boost: float | None  # a fixed boost for every latent (None: calibrate)
    judge: JudgeRef
    seed: int
    calibration: CalibrationSettings | None
    n_ctx: int
    parallel: int
    replay: dict | None = None  # {"source_run": id, "rows": [...], "boosts": {latent: boost}}
    version: int = SPEC_VERSION
    runtime: dict = field(default_factory=dict)  # threads, gpu_layers: how, not what (a resume may change them)
    ablation: dict | None = None  # {"latents", "source", "order", "layer"}: zero-ablated in the graph (ablation_runs)
    prefill: dict | None = None  # {"prefixes": {"latent:prompt:replicate": text}}: prefill conditions (prefill_runs)

    def label(self, latent: int) -> str:
        """The label of a latent as the judge sees it."""
        return self.labels.get(str(latent)) or f"latent {latent}"

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Rebuild the stored spec; a spec from a newer esr-local is refused."""
        d = json.loads(text)
        if d.get("version", 0) > SPEC_VERSION:
            raise UserInputError(f"this run was created by a newer esr-local (run spec v{d['version']}); upgrade esr-local")
        d["model"] = ModelRef(**d["model"])
        d["sae"] = SaeRef(**d["sae"])
        d["judge"] = JudgeRef(**d["judge"])
        d["sampling"] = SamplingParams(**d["sampling"])
        if d.get("calibration") is not None:
            names = {f.name for f in fields(CalibrationSettings)}
            d["calibration"] = CalibrationSettings(**{k: v for k, v in d["calibration"].items() if k in names})
        return cls(**d)


def labels_hash(labels: dict[str, str]) -> str:
    """sha256 of the labels (sorted by latent)."""
    return hashlib.sha256(json.dumps(sorted(labels.items()), ensure_ascii=False).encode()).hexdigest()


def judge_key(description: dict[str, Any]) -> str:
    """`backend:model:hash` naming a judge by everything that changes its scores (not by where it is
    served or how patient it is)."""
    ident = {k: v for k, v in description.items() if k not in ("base_url", "max_retries", "timeout", "n_threads")}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{description.get('backend')}:{description.get('model')}:{h}"
