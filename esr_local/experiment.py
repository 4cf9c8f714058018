"""Experiment 1 of the paper and its conditions (baseline, meta-prompts, boost sweep, replay), resumable.

A run is fully described by its settings (stored as JSON on the run row). From them the trial plan is
rebuilt deterministically: which prompts each latent gets (drawn without replacement), each trial's seed
(a hash of the run seed, latent, prompt and replicate, so conditions of one run share seeds), and each
trial's identity (run, condition, latent, prompt, replicate). Executing a run means: calibrate or reuse
each latent's boost, then generate + judge every trial not yet in the database, writing each trial with
its judgment and attempts in one transaction. A run killed at any moment resumes with no duplicate and no
lost trial.
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .calibration import CalibrationSettings, calibrate_latent
from .engine import SamplingParams, SteeredModel, system_info
from .errors import EsrError, UserInputError
from .model_files import file_sha256, resolve_model
from .prompts import apply_meta_prompt, load_meta_prompts, load_prompts
from .provenance import machine, versions
from .steering import check_sae_fits, choose_layer, open_sae, resolve_sae_source, sae_display_source


@dataclass
class ExperimentSettings:
    """Every knob of a run. Stored verbatim on the run; `None` means "catalog / paper default"."""

    model: str | None = None
    quant: str | None = None
    catalog: str | None = None
    sae: str | None = None
    labels: str | None = None
    layer: int | None = None
    latents: list[int] = field(default_factory=list)
    n_latents: int | None = None
    prompts_file: str | None = None
    prompts_per_latent: int = 5
    replicates: int = 1
    boost: float | None = None
    conditions: list[str] = field(default_factory=lambda: ["steered"])
    meta_prompts_file: str | None = None
    sweep_levels: int = 0
    temperature: float | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    judge: str = "local"
    judge_model_path: str | None = None
    judge_base_url: str | None = None
    restart_gating: bool = False
    target_score: float = 0.30
    calibration_steps: int = 10
    calibration_samples: int | None = None
    calibration_max_tokens: int = 256
    boost_lower: float | None = None
    boost_upper: float | None = None
    boost_prior_mean: float | None = None
    boost_prior_std: float | None = None
    seed: int | None = None
    n_ctx: int = 2048
    threads: int | None = None
    gpu_layers: int = 0
    chat_mode: str = "auto"
    # Two parallel sequences per context measured 1.35x the trials/hour of one-at-a-time decoding on a
    # 2-core machine (BENCHMARKS.md), so that is the default.
    parallel: int = 2
    replay_run: str | None = None
    calibrate_only: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSettings:
        """Rebuild from stored JSON, ignoring keys this version does not know."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def trial_seed(run_seed: int, latent: int, prompt_index: int, replicate: int) -> int:
    """A fresh pseudo-random seed per trial in [0, 1_000_000] (the paper's range), reproducible on resume."""
    h = hashlib.sha256(f"{run_seed}:{latent}:{prompt_index}:{replicate}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 1_000_001


def choose_prompt_indices(run_seed: int, latent: int, n_prompts: int, k: int) -> list[int]:
    """k prompt indices for one latent, drawn without replacement."""
    if k > n_prompts:
        raise UserInputError(f"{k} prompts per latent requested but the prompt set has only {n_prompts}")
    return random.Random(f"{run_seed}:prompts:{latent}").sample(range(n_prompts), k)


def sweep_levels(boosts: list[float], n_levels: int) -> list[float]:
    """Boost levels from mean - 3 sd to mean + 3 sd of the calibrated boosts, clamped at 0 (paper, Exp. 2)."""
    if not boosts:
        raise UserInputError("a boost sweep needs at least one calibrated latent")
    mean, sd = float(np.mean(boosts)), float(np.std(boosts))
    return [round(max(0.0, float(x)), 4) for x in np.linspace(mean - 3 * sd, mean + 3 * sd, n_levels)]


def condition_prompt(condition: str, base_prompt: str, label: str, meta: dict[str, str]) -> str:
    """The prompt as sent under a condition (meta-prompt conditions append their template)."""
    if condition.startswith("meta:"):
        key = condition[5:]
        if key not in meta:
            raise UserInputError(f"unknown meta-prompt {key!r}; known: {', '.join(sorted(meta))}")
        return apply_meta_prompt(base_prompt, meta[key], label)
    return base_prompt


def condition_boost(condition: str, latent_boost: float, levels: list[float]) -> float:
    """The boost a condition steers with: 0 for the baseline, a sweep level, else the latent's boost."""
    if condition == "baseline":
        return 0.0
    if condition.startswith("sweep:"):
        return levels[int(condition[6:])]
    return latent_boost


def check_conditions(conditions: list[str], meta: dict[str, str]) -> None:
    """Reject unknown condition names early."""
    for c in conditions:
        if c in ("steered", "baseline") or c.startswith("sweep:"):
            continue
        if c.startswith("meta:") and c[5:] in meta:
            continue
        raise UserInputError(
            f"unknown condition {c!r}; use steered, baseline, meta:<id> (ids: {', '.join(sorted(meta))}) or --sweep-levels"
        )


def plan_trials(
    settings: ExperimentSettings,
    run_seed: int,
    latents: list[int],
    labels: dict[int, str],
    boosts: dict[int, float],
    prompts: list[str],
    levels: list[float],
    meta: dict[str, str],
    replay: list[dict] | None = None,
) -> list[TrialSpec]:
    """The full, ordered trial list of a run (latent-major so the control vector changes rarely)."""
    conditions = list(settings.conditions) + [f"sweep:{i}" for i in range(len(levels))]
    base: list[tuple[int, int, int, str, int]] = []  # latent, prompt_index, replicate, base prompt, seed
    if replay is not None:
        base = [(r["latent"], r["prompt_index"], r["replicate"], r["base_prompt"], r["seed"]) for r in replay]
    else:
        for latent in latents:
            for pi in choose_prompt_indices(run_seed, latent, len(prompts), settings.prompts_per_latent):
                for rep in range(settings.replicates):
                    base.append((latent, pi, rep, prompts[pi], trial_seed(run_seed, latent, pi, rep)))
    plan = []
    for latent, pi, rep, bp, seed in base:
        if latent not in boosts:
            continue  # the latent failed calibration; recorded on the latent row
        for cond in conditions:
            plan.append(TrialSpec(cond, latent, pi, rep, bp, condition_prompt(cond, bp, labels.get(latent, ""), meta),
                                  condition_boost(cond, boosts[latent], levels), seed))
    plan.sort(key=lambda t: (t.latent, t.boost, t.condition))
    return plan


@dataclass
class Progress:
    """Running counts for the progress line."""

    done: int = 0
    counted: int = 0
    multi: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, scores: list[float | None] | None) -> None:
        """Count one finished trial's scored attempts."""
        self.done += 1
        s = [x for x in (scores or []) if x is not None]
        if s:
            self.counted += 1
            self.multi += len(s) > 1

    def line(self, total: int) -> str:
        """`[12/40] ETA 03:10 | multi-attempt 1/12 (8.3%)`."""
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (total - self.done) if self.done else 0
        rate = 100 * self.multi / self.counted if self.counted else 0.0
        return f"[{self.done}/{total}] ETA {int(eta // 60):02d}:{int(eta % 60):02d} | multi-attempt {self.multi}/{self.counted} ({rate:.1f}%)"


class ExperimentRunner:
    """Creates, executes and resumes runs against a Store."""

    def __init__(self, store, *, echo: Callable[[str], None] | None = None,
                 progress: Callable[[str], None] | None = None):
        """`echo` receives status lines; `progress` the running progress line (None: sent to `echo`)."""
        self.store = store
        self.echo = echo or (lambda s: print(s, file=sys.stderr))
        self.progress = progress or self.echo

    # -- creating runs ----------------------------------------------------------------------------------

    def create(self, settings: ExperimentSettings, command_line: list[str] | None = None) -> str:
        """Validate settings, resolve everything they name, and store a new run (status `started`)."""
        if settings.replay_run:
            src = self.store.get_run(settings.replay_run)
            base = ExperimentSettings.from_dict(json.loads(src["settings_json"]))
            # Replay keeps the source's model, SAE, layer, latents, prompts, seeds and sampling; the new
            # run only changes conditions (and the judge, if given).
            base.conditions = settings.conditions
            base.meta_prompts_file = settings.meta_prompts_file or base.meta_prompts_file
            base.sweep_levels = 0
            base.replay_run = src["id"]
            base.judge, base.judge_model_path, base.judge_base_url = settings.judge, settings.judge_model_path, settings.judge_base_url
            base.restart_gating = settings.restart_gating
            base.parallel, base.threads, base.gpu_layers = settings.parallel, settings.threads, settings.gpu_layers
            settings = base
        meta = load_meta_prompts(settings.meta_prompts_file)
        check_conditions(settings.conditions, meta)
        if settings.sweep_levels < 0 or settings.prompts_per_latent < 1 or settings.replicates < 1 or settings.parallel < 1:
            raise UserInputError("prompts per latent, replicates and parallel must be >= 1; sweep levels >= 0")
        resolved = resolve_model(settings.model, settings.quant, settings.catalog)
        entry = resolved.entry
        prompt_set = load_prompts(settings.prompts_file)
        if settings.seed is None:
            settings.seed = random.randint(0, 2**31 - 1)
        sampling = self._sampling(settings, entry)
        run_settings = asdict(settings)
        run_settings["prompts"] = prompt_set.prompts
        run_settings["meta_prompts"] = {c[5:]: meta[c[5:]] for c in settings.conditions if c.startswith("meta:")}
        row = {
            **run_settings,  # first: the resolved values below win over the raw options
            "experiment": "calibrate" if settings.calibrate_only else ("replay" if settings.replay_run else "esr"),
            "command_line": shlex.join(command_line or sys.argv),
            "esr_local_version": versions()["esr_local"],
            "llama_cpp_python_version": versions()["llama_cpp_python"],
            "llama_cpp_system_info": system_info(),
            "model_name": resolved.name,
            "model_path": str(resolved.path),
            "model_sha256": file_sha256(resolved.path),
            "sae_source": sae_display_source(settings.sae, entry),
            "sae_family": entry.sae.family if entry and not settings.sae else None,
            "feature_layer": entry.sae.feature_layer if entry else None,
            "steering_layer": settings.layer if settings.layer is not None else (entry.sae.steering_layer if entry else None),
            "chat_template_mode": settings.chat_mode,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens,
            "repetition_penalty": sampling.repetition_penalty,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": sampling.min_p,
            "n_ctx": settings.n_ctx,
            "judge_backend": settings.judge.split(":", 1)[0],
            "judge_model": settings.judge.split(":", 1)[1] if ":" in settings.judge else settings.judge_model_path,
            "restart_gating": int(settings.restart_gating),
            "prompts_file": prompt_set.path,
            "prompts_sha256": prompt_set.sha256,
            "prompts_per_latent": settings.prompts_per_latent,
            "replicates": settings.replicates,
            "seed_base": settings.seed,
            "source_run_id": settings.replay_run,
            "versions": versions(),
            "machine": machine(),
        }
        return self.store.create_run(row)

    @staticmethod
    def _sampling(settings: ExperimentSettings, entry) -> SamplingParams:
        d = entry.defaults if entry else None
        return SamplingParams(
            temperature=settings.temperature if settings.temperature is not None else (d.temperature if d else 0.6),
            max_tokens=settings.max_tokens or (d.max_tokens if d else 512),
            repetition_penalty=settings.repetition_penalty if settings.repetition_penalty is not None else (d.repetition_penalty if d else 1.1),
            top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p,
        ).validate()

    # -- executing --------------------------------------------------------------------------------------

    def execute(self, run_id: str) -> dict:
        """Run (or continue) every missing trial of a run. Returns a summary dict."""
        run = self.store.get_run(run_id)
        run_id = run["id"]
        stored = json.loads(run["settings_json"])
        settings = ExperimentSettings.from_dict(stored)
        prompts: list[str] = stored["prompts"]
        meta = dict(stored.get("meta_prompts") or {})
        self.store.set_run_status(run_id, "started")
        try:
            summary = self._execute(run, settings, prompts, meta)
        except KeyboardInterrupt:
            self.store.set_run_status(run_id, "cancelled", "interrupted (Ctrl-C); resume with --resume")
            raise
        except EsrError as exc:
            self.store.set_run_status(run_id, "error", str(exc))
            raise
        except Exception as exc:
            self.store.set_run_status(run_id, "error", f"{exc.__class__.__name__}: {exc}")
            raise
        self.store.set_run_status(run_id, "success")
        return summary

    def _execute(self, run: dict, settings: ExperimentSettings, prompts: list[str], meta: dict[str, str]) -> dict:
        from .judge import make_judge

        run_id = run["id"]
        resolved = resolve_model(run["model_path"])  # the exact file recorded at creation
        if file_sha256(resolved.path) != run["model_sha256"]:
            raise UserInputError(f"the model file {resolved.path} changed since the run started (sha256 differs); start a new run")
        entry = _catalog_entry(settings.model, settings.catalog) or resolved.entry
        lm = SteeredModel(resolved.path, n_ctx=settings.n_ctx, n_seq=settings.parallel, n_threads=settings.threads,
                          n_gpu_layers=settings.gpu_layers, chat_mode=settings.chat_mode)
        try:
            sae = open_sae(settings.sae, entry, settings.labels)
            check_sae_fits(sae, lm.n_embd, resolved.name)
            layer = choose_layer(settings.layer, entry, sae, lm.n_layer)
            judge = make_judge(settings.judge, model_path=settings.judge_model_path, base_url=settings.judge_base_url,
                               restart_gating=settings.restart_gating, n_threads=settings.threads)
            latents = self._latent_ids(settings, sae, run)
            replay = self._replay_rows(settings) if settings.replay_run else None
            boosts, labels, rows = self._boosts(run, settings, entry, lm, sae, judge, layer, latents, prompts, replay)
            if settings.calibrate_only:
                return {"run_id": run_id, "layer": layer, "boosts": boosts, "labels": {k: labels[k] for k in boosts}}
            levels = []
            if settings.sweep_levels:
                # Recomputed on resume from the stored boosts, so the levels are always the same; each
                # sweep trial records its level in `boost`.
                levels = sweep_levels(list(boosts.values()), settings.sweep_levels)
                self.echo(f"boost sweep levels: {', '.join(f'{x:g}' for x in levels)}")
            plan = plan_trials(settings, int(settings.seed), latents, labels, boosts, prompts, levels, meta, replay)
            done = self.store.finished_trial_keys(run_id)
            pending = [t for t in plan if (t.condition, t.latent, t.prompt_index, t.replicate) not in done]
            sampling = self._sampling(settings, entry)
            self.echo(f"run {run_id}: {len(plan)} trials ({len(plan) - len(pending)} already done), "
                      f"{len(boosts)} latents at layer {layer}, judge {settings.judge}")
            prog = Progress()
            for group in _groups(pending, settings.parallel):
                t = group[0]
                lm.set_directions({layer: rows[t.latent] * np.float32(t.boost)} if t.boost != 0 else None)
                self._run_group(run_id, lm, judge, sampling, group, labels, prog)
                self.progress(prog.line(len(pending)))
            return {"run_id": run_id, "planned": len(plan), "ran": len(pending), "layer": layer}
        finally:
            lm.close()

    def _latent_ids(self, settings: ExperimentSettings, sae, run: dict) -> list[int]:
        if settings.replay_run:
            return [r["latent"] for r in self.store.latents(settings.replay_run) if not r.get("error")]
        if settings.latents:
            ids = [int(x) for x in settings.latents]
        elif settings.n_latents:
            if settings.n_latents > sae.d_sae:
                raise UserInputError(f"--n-latents {settings.n_latents} exceeds the SAE's {sae.d_sae} latents")
            ids = sorted(random.Random(f"{settings.seed}:latents").sample(range(sae.d_sae), settings.n_latents))
        else:
            raise UserInputError("give --latent (repeatable) or --n-latents K")
        for i in ids:
            if not 0 <= i < sae.d_sae:
                raise UserInputError(f"latent {i} is out of range: this SAE has latents 0 to {sae.d_sae - 1}")
        return ids

    def _replay_rows(self, settings: ExperimentSettings) -> list[dict]:
        seen, rows = set(), []
        for t in self.store.trials(settings.replay_run):
            key = (t["latent"], t["prompt_index"], t["replicate"])
            if key not in seen:
                seen.add(key)
                rows.append({"latent": t["latent"], "prompt_index": t["prompt_index"], "replicate": t["replicate"],
                             "base_prompt": t["base_prompt"], "seed": t["seed"]})
        if not rows:
            raise UserInputError(f"run {settings.replay_run} has no trials to replay")
        return rows

    def _boosts(self, run, settings, entry, lm, sae, judge, layer, latents, prompts, replay):
        """Each latent's boost: given, already on this run, replayed from the source run, or calibrated."""
        run_id = run["id"]
        have = {r["latent"]: r for r in self.store.latents(run_id)}
        source = {r["latent"]: r for r in self.store.latents(settings.replay_run)} if settings.replay_run else {}
        d = entry.defaults if entry else None
        cal = CalibrationSettings(
            target=settings.target_score, n_steps=settings.calibration_steps,
            samples_per_step=settings.calibration_samples or (d.calibration_samples_per_step if d else 1),
            lower=_pick(settings.boost_lower, d and d.boost_lower, 0.0), upper=_pick(settings.boost_upper, d and d.boost_upper, 10.0),
            prior_mean=_pick(settings.boost_prior_mean, d and d.boost_prior_mean, 5.0),
            prior_std=_pick(settings.boost_prior_std, d and d.boost_prior_std, 2.5),
            max_tokens=settings.calibration_max_tokens,
            temperature=self._sampling(settings, entry).temperature,
            repetition_penalty=self._sampling(settings, entry).repetition_penalty,
            chat_mode=lm.chat_mode, rubric_version=judge.describe().get("rubric_version", ""),
            restart_gating=settings.restart_gating,
        )
        judge_key = json.dumps({k: v for k, v in judge.describe().items() if k in ("backend", "model")}, sort_keys=True)
        boosts, labels, rows = {}, {}, {}
        for latent in latents:
            row = np.asarray(sae.decoder_row(latent), np.float32)
            rows[latent] = row
            labels[latent] = sae.label(latent) or f"latent {latent}"
            norm = float(np.linalg.norm(row))
            if latent in have and have[latent].get("error"):
                continue
            if latent in have and have[latent].get("boost") is not None:
                boosts[latent] = float(have[latent]["boost"])
                continue
            if latent in source:
                boost, how, cal_id = source[latent]["boost"], "replayed", source[latent].get("calibration_id")
            elif settings.boost is not None:
                boost, how, cal_id = float(settings.boost), "given", None
            elif all(c == "baseline" for c in settings.conditions) and not settings.sweep_levels:
                boost, how, cal_id = 0.0, "none", None
            else:
                key = {"model_sha256": run["model_sha256"], "sae_source": run["sae_source"] or "", "latent": latent,
                       "layer": layer, "judge": judge_key, "settings_hash": cal.settings_hash()}
                try:
                    out = calibrate_latent(lm, judge, row, layer, labels[latent], prompts, cal,
                                           seed=int(settings.seed) + latent, store=self.store, cache_key=key,
                                           on_start=lambda: self.echo(f"calibrating latent {latent} ({labels[latent]}) ..."))
                except EsrError as exc:
                    self.store.upsert_latent(run_id, latent, label=labels[latent], row_norm=norm, boost=None,
                                             boost_source="calibrated", error=str(exc))
                    self.echo(f"latent {latent}: calibration failed: {exc}")
                    continue
                boost, how, cal_id = out.boost, "calibrated" + (" (cached)" if out.cached else ""), out.calibration_id
                self.echo(f"latent {latent}: boost {boost:g} (achieved first-attempt score {out.achieved_score:.2f})")
            self.store.upsert_latent(run_id, latent, label=labels[latent], row_norm=norm, boost=boost,
                                     boost_source=how.split(" ")[0], calibration_id=cal_id)
            boosts[latent] = float(boost)
        return boosts, labels, rows

    def _run_group(self, run_id, lm, judge, sampling, group: list[TrialSpec], labels, prog: Progress) -> None:
        """Generate a group of trials that share one vector (as parallel sequences), judge, record each."""
        error = None
        try:
            gens = lm.generate_many([t.prompt for t in group], sampling, [t.seed for t in group])
        except EsrError as exc:
            gens, error = [None] * len(group), str(exc)
        for t, gen in zip(group, gens):
            trial = {
                "run_id": run_id, "condition": t.condition, "latent": t.latent, "prompt_index": t.prompt_index,
                "replicate": t.replicate, "base_prompt": t.base_prompt, "prompt": t.prompt, "boost": t.boost, "seed": t.seed,
                "response": gen.text if gen else None,
                "prompt_tokens": gen.prompt_tokens if gen else None,
                "completion_tokens": gen.completion_tokens if gen else None,
                "stop_reason": gen.stop_reason if gen else None,
                "generation_ms": round(gen.generation_ms + gen.prefill_ms, 1) if gen else None,
                "error": error,
                "extra_json": json.dumps({"parallel_sequences": len(group)}),
            }
            judgment, attempts = None, []
            if gen is not None:
                j = judge.judge(t.prompt, gen.text, labels[t.latent])
                d = judge.describe()
                judgment = {
                    "judge_backend": d.get("backend"), "judge_model": d.get("model"), "rubric_version": d.get("rubric_version"),
                    "raw_output": j.raw_output, "parse_status": j.parse_status, "error": j.error, "tries": j.tries,
                    "latency_ms": round(j.latency_ms, 1), "restart_gating": int(bool(d.get("restart_gating"))),
                    "n_attempts_raw": j.n_attempts_raw,
                }
                attempts = [{"attempt_index": i, "text": a.text, "score": a.score} for i, a in enumerate(j.attempts or [])]
            self.store.record_trial(trial, judgment, attempts)
            prog.add([a["score"] for a in attempts] if judgment and judgment["parse_status"] == "ok" else None)


def _catalog_entry(model: str | None, catalog: str | None):
    """The catalog entry a run named (without downloading anything), or None for a bare path."""
    from .catalog import load_catalog

    return load_catalog(catalog).get(model) if model else None


def _pick(*values):
    for v in values:
        if v is not None and v is not False:
            return float(v)
    return None


def _groups(pending: list[TrialSpec], size: int):
    """Consecutive trials sharing (latent, boost), in chunks of `size` (one control vector per chunk)."""
    chunk: list[TrialSpec] = []
    for t in pending:
        if chunk and ((t.latent, t.boost) != (chunk[0].latent, chunk[0].boost) or len(chunk) >= size):
            yield chunk
            chunk = []
        chunk.append(t)
    if chunk:
        yield chunk
