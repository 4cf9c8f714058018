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
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .calibration import CalibrationSettings, calibrate_latent
from .engine import SamplingParams, SteeredModel, resolve_sampling, system_info
from .errors import EsrError, UserInputError
from .model_files import file_sha256, resolve_model
from .prompts import apply_meta_prompt, load_prompts, resolve_meta_prompt
from .provenance import machine, versions
from .steering import check_sae_fits, choose_layer, effective_chat_mode, open_sae, sae_display_source
from .store import DuplicateTrialError


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
    if sd == 0:
        raise UserInputError("every latent has the same boost (sd 0), so a sweep of mean +- 3 sd would repeat one level; "
                             "calibrate several latents (no --boost) for a sweep")
    levels = [round(max(0.0, float(x)), 4) for x in np.linspace(mean - 3 * sd, mean + 3 * sd, n_levels)]
    return list(dict.fromkeys(levels))  # clamping can repeat 0.0; each sweep condition is one distinct boost


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
        if c in ("steered", "baseline"):
            continue
        if c.startswith("meta:") and c[5:] in meta:
            continue
        raise UserInputError(
            f"unknown condition {c!r}; use steered, baseline or meta:<id> (a boost sweep comes from --sweep-levels N)"
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
        """Validate settings, resolve everything they name, and store a new run (status `started`).

        Everything a resume needs is frozen here: absolute paths, the prompt texts, the resolved sampling
        and calibration settings, meta-prompt templates and, for a replay, the source's trials and boosts.
        """
        replay = None
        if settings.replay_run:
            settings, replay = self._replay_base(settings)
        _absolutize(settings)
        meta: dict[str, str] = {}
        conditions = []
        for c in settings.conditions:
            if c.startswith("meta:"):
                mp = resolve_meta_prompt(c[5:], settings.meta_prompts_file)
                meta[mp.id], c = mp.template, f"meta:{mp.id}"
            conditions.append(c)
        settings.conditions = list(dict.fromkeys(conditions))  # a condition named twice runs once
        check_conditions(settings.conditions, meta)
        if settings.sweep_levels < 0 or settings.prompts_per_latent < 1 or settings.replicates < 1 or settings.parallel < 1:
            raise UserInputError("prompts per latent, replicates and parallel must be >= 1; sweep levels >= 0")
        if settings.sweep_levels == 1:
            raise UserInputError("a boost sweep needs at least 2 levels")
        if settings.sweep_levels and (settings.boost is not None or len(set(settings.latents)) + (settings.n_latents or 0) < 2):
            raise UserInputError("a boost sweep spreads around the calibrated boosts of several latents: "
                                 "give at least 2 latents and no --boost")
        resolved = resolve_model(settings.model, settings.quant, settings.catalog)
        entry = resolved.entry
        model_sha = file_sha256(resolved.path)
        if replay is not None and model_sha != replay["model_sha256"]:
            raise UserInputError(f"the model file {resolved.path} is not the one run {settings.replay_run} used (sha256 differs); "
                                 "a replay must use the same weights")
        prompt_set = load_prompts(settings.prompts_file)
        if replay is None and settings.prompts_per_latent > len(prompt_set.prompts):
            raise UserInputError(f"--n-prompts {settings.prompts_per_latent} exceeds the {len(prompt_set.prompts)} prompts "
                                 f"in {prompt_set.path}")
        if settings.seed is None:
            settings.seed = random.randint(0, 2**31 - 1)
        sampling = resolve_sampling(entry.defaults if entry else None, temperature=settings.temperature,
                                    max_tokens=settings.max_tokens, repetition_penalty=settings.repetition_penalty,
                                    top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p)
        calibration = self._calibration_settings(settings, entry, sampling, prompt_set.sha256)
        if replay is None and settings.boost is None and (settings.sweep_levels or any(c != "baseline" for c in settings.conditions)):
            calibration.check()
        _check_judge_spec(settings)
        chat_mode = effective_chat_mode(settings.chat_mode, entry)
        run_settings = asdict(settings)
        run_settings.update(prompts=prompt_set.prompts, meta_prompts=meta, sampling=asdict(sampling),
                            calibration=asdict(calibration), replay=replay,
                            chat_template=entry.chat_template if entry else None)
        row = {
            **run_settings,  # first: the resolved values below win over the raw options
            "experiment": "calibrate" if settings.calibrate_only else ("replay" if settings.replay_run else "esr"),
            "command_line": shlex.join(command_line or sys.argv),
            "esr_local_version": versions()["esr_local"],
            "llama_cpp_python_version": versions()["llama_cpp_python"],
            "llama_cpp_system_info": system_info(),
            "model_name": resolved.name,
            "model_path": str(resolved.path),
            "model_sha256": model_sha,
            "sae_source": sae_display_source(settings.sae, entry),
            "feature_layer": entry.sae.feature_layer if entry else None,
            "chat_template_mode": chat_mode,
            **{k: getattr(sampling, k) for k in ("temperature", "max_tokens", "repetition_penalty", "top_k", "top_p", "min_p")},
            "n_ctx": settings.n_ctx,
            "judge_backend": settings.judge.split(":", 1)[0],
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

    def _replay_base(self, settings: ExperimentSettings) -> tuple[ExperimentSettings, dict]:
        """The source run's settings with this run's conditions and judge, plus a frozen copy of the
        source's trials (latent, prompt, replicate, seed) and boosts."""
        src = self.store.get_run(settings.replay_run)
        if src["experiment"] not in ("esr", "replay"):
            raise UserInputError(f"run {src['id']} is a {src['experiment']} run; only esr-local experiment runs can be replayed")
        if src["status"] != "success":
            raise UserInputError(f"run {src['id']} is {src['status']}; finish it first (esr-local run --resume {src['id']})")
        base = ExperimentSettings.from_dict(json.loads(src["settings_json"]))
        base.conditions = settings.conditions
        base.meta_prompts_file = settings.meta_prompts_file or base.meta_prompts_file
        base.sweep_levels = 0
        base.replay_run = src["id"]
        base.judge, base.judge_model_path, base.judge_base_url = settings.judge, settings.judge_model_path, settings.judge_base_url
        base.restart_gating = settings.restart_gating
        base.parallel, base.threads, base.gpu_layers = settings.parallel, settings.threads, settings.gpu_layers
        rows = self._replay_rows(src["id"])
        boosts = {r["latent"]: r["boost"] for r in self.store.latents(src["id"]) if r["boost"] is not None and not r.get("error")}
        sources = {r["latent"]: r["boost_source"] for r in self.store.latents(src["id"])}
        if any(c != "baseline" for c in base.conditions) and boosts and all(sources.get(k) == "none" for k in boosts):
            raise UserInputError(f"run {src['id']} never steered (baseline only), so it has no boosts to replay steered conditions with")
        return base, {"rows": rows, "boosts": {str(k): v for k, v in boosts.items()}, "model_sha256": src["model_sha256"]}

    @staticmethod
    def _calibration_settings(settings: ExperimentSettings, entry, sampling: SamplingParams, prompts_sha256: str) -> CalibrationSettings:
        d = entry.defaults if entry else None
        return CalibrationSettings(
            target=settings.target_score, n_steps=settings.calibration_steps,
            samples_per_step=settings.calibration_samples or (d.calibration_samples_per_step if d else 1),
            lower=_pick(settings.boost_lower, d and d.boost_lower, 0.0), upper=_pick(settings.boost_upper, d and d.boost_upper, 10.0),
            prior_mean=_pick(settings.boost_prior_mean, d and d.boost_prior_mean, 5.0),
            prior_std=_pick(settings.boost_prior_std, d and d.boost_prior_std, 2.5),
            max_tokens=settings.calibration_max_tokens, temperature=sampling.temperature,
            repetition_penalty=sampling.repetition_penalty, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            chat_mode=effective_chat_mode(settings.chat_mode, entry), prompts_sha256=prompts_sha256,
            chat_template_sha256=hashlib.sha256((entry.chat_template or "").encode()).hexdigest()[:16] if entry else "",
            restart_gating=settings.restart_gating,
        )

    # -- executing --------------------------------------------------------------------------------------

    def execute(self, run_id: str) -> dict:
        """Run (or continue) every missing trial of a run. Returns a summary dict."""
        run = self.store.get_run(run_id)
        run_id = run["id"]
        if run["experiment"] not in ("esr", "replay", "calibrate"):
            raise UserInputError(f"run {run_id} is a {run['experiment']} run; only esr-local runs can be resumed")
        stored = json.loads(run["settings_json"])
        self.store.record_session(run_id, command_line=shlex.join(sys.argv), versions=versions(),
                                  system_info=system_info(), machine=machine())
        self.store.set_run_status(run_id, "started")
        try:
            summary = self._execute(run, stored)
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

    def _execute(self, run: dict, stored: dict) -> dict:
        from .judge import make_judge

        if not all(k in stored for k in ("prompts", "sampling", "calibration")):
            raise UserInputError(f"run {run['id']} was created by an older esr-local that did not freeze its settings; "
                                 "start a new run with the same options")
        settings = ExperimentSettings.from_dict(stored)
        prompts: list[str] = stored["prompts"]
        meta = dict(stored.get("meta_prompts") or {})
        sampling = SamplingParams(**stored["sampling"])  # frozen at creation: a resume samples the same way
        run_id = run["id"]
        resolved = resolve_model(run["model_path"])  # the exact file recorded at creation
        if file_sha256(resolved.path) != run["model_sha256"]:
            raise UserInputError(f"the model file {resolved.path} changed since the run started (sha256 differs); start a new run")
        entry = _catalog_entry(settings.model, settings.catalog) or resolved.entry
        lm = SteeredModel(resolved.path, n_ctx=settings.n_ctx, n_seq=settings.parallel, n_threads=settings.threads,
                          n_gpu_layers=settings.gpu_layers, chat_mode=run["chat_template_mode"] or "auto",
                          chat_template=stored.get("chat_template"))
        judge = None
        try:
            sae = open_sae(settings.sae, entry, settings.labels)
            check_sae_fits(sae, lm.n_embd, resolved.name)
            layer = choose_layer(settings.layer, entry, sae, lm.n_layer)
            judge = make_judge(settings.judge, model_path=settings.judge_model_path, base_url=settings.judge_base_url,
                               restart_gating=settings.restart_gating, n_threads=settings.threads)
            jd = judge.describe()
            self.store.update_run(run_id, {"steering_layer": layer, "sae_family": sae.info.family, "judge_model": jd.get("model"),
                                           "rubric_version": jd.get("rubric_version")})
            replay = stored.get("replay")
            latents = sorted({r["latent"] for r in replay["rows"]}) if replay else self._latent_ids(settings, sae)
            boosts, labels, rows = self._boosts(run, settings, stored, lm, sae, judge, jd, layer, latents, prompts)
            if not boosts:
                raise UserInputError("no latent has a boost (every calibration failed; see the latents table); "
                                     "fix the judge or pass --boost, then resume")
            if settings.calibrate_only:
                return {"run_id": run_id, "layer": layer, "boosts": boosts, "labels": {k: labels[k] for k in boosts}}
            levels = list(stored.get("sweep_boost_levels") or [])
            if settings.sweep_levels and not levels:
                # Fixed once, then stored: a latent calibrated later (on resume) must not move them.
                levels = sweep_levels(list(boosts.values()), settings.sweep_levels)
                self.store.merge_run_settings(run_id, {"sweep_boost_levels": levels})
            if levels:
                self.echo(f"boost sweep levels: {', '.join(f'{x:g}' for x in levels)}")
            plan = plan_trials(settings, int(settings.seed), latents, labels, boosts, prompts, levels, meta,
                               replay["rows"] if replay else None)
            retried = self.store.delete_failed_trials(run_id)  # generation or judge failures run again
            if retried:
                self.echo(f"{retried} failed trial(s) will run again")
            done = self.store.finished_trial_keys(run_id)
            pending = [t for t in plan if (t.condition, t.latent, t.prompt_index, t.replicate) not in done]
            self.echo(f"run {run_id}: {len(plan)} trials ({len(plan) - len(pending)} already done), "
                      f"{len(boosts)} latents at layer {layer}, judge {settings.judge}")
            prog = Progress()
            for group in _groups(pending, settings.parallel):
                t = group[0]
                lm.set_directions({layer: rows[t.latent] * np.float32(t.boost)} if t.boost != 0 else None)
                self._run_group(run_id, lm, judge, jd, sampling, group, labels, prog)
                self.progress(prog.line(len(pending)))
            return {"run_id": run_id, "planned": len(plan), "ran": len(pending), "layer": layer}
        finally:
            if judge is not None and hasattr(judge, "close"):
                judge.close()
            lm.close()

    def _latent_ids(self, settings: ExperimentSettings, sae) -> list[int]:
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
        return list(dict.fromkeys(ids))

    def _replay_rows(self, source_run: str) -> list[dict]:
        seen, rows = set(), []
        for t in self.store.trials(source_run):
            key = (t["latent"], t["prompt_index"], t["replicate"])
            if key not in seen:
                seen.add(key)
                rows.append({"latent": t["latent"], "prompt_index": t["prompt_index"], "replicate": t["replicate"],
                             "base_prompt": t["base_prompt"], "seed": t["seed"]})
        if not rows:
            raise UserInputError(f"run {source_run} has no trials to replay")
        return rows

    def _boosts(self, run, settings, stored, lm, sae, judge, jd, layer, latents, prompts):
        """Each latent's boost: already on this run, replayed from the source, given, none, or calibrated.

        A latent whose calibration failed is tried again on resume (failures are often a judge outage).
        """
        run_id = run["id"]
        have = {r["latent"]: r for r in self.store.latents(run_id)}
        replayed = {int(k): float(v) for k, v in ((stored.get("replay") or {}).get("boosts") or {}).items()}
        cal = CalibrationSettings(**{**stored["calibration"], "rubric_version": jd.get("rubric_version", "")})
        ident = dict(jd)
        if jd.get("model_path") and os.path.isfile(jd["model_path"]):
            ident["model_sha256"] = file_sha256(jd["model_path"])  # a local judge is its weights, not its file name
        judge_key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
        judge_key = f"{jd.get('backend')}:{jd.get('model')}:{judge_key}"
        boosts, labels, rows = {}, {}, {}
        for latent in latents:
            row = np.asarray(sae.decoder_row(latent), np.float32)
            rows[latent] = row
            labels[latent] = sae.label(latent) or f"latent {latent}"
            norm = float(np.linalg.norm(row))
            prev = have.get(latent)
            if prev and prev.get("boost") is not None and not prev.get("error"):
                boosts[latent] = float(prev["boost"])
                continue
            if stored.get("replay"):
                if latent not in replayed:
                    continue
                boost, how, cal_id = replayed[latent], "replayed", None
            elif settings.boost is not None:
                boost, how, cal_id = float(settings.boost), "given", None
            elif all(c == "baseline" for c in settings.conditions) and not settings.sweep_levels:
                boost, how, cal_id = 0.0, "none", None
            else:
                # The cache key names what the score depends on: model file, the exact decoder row and
                # label the judge sees, layer, judge (every described setting) and calibration settings.
                identity = hashlib.sha256(row.tobytes() + labels[latent].encode()).hexdigest()[:16]
                key = {"model_sha256": run["model_sha256"], "sae_source": f"{run['sae_source'] or ''}#row-{identity}",
                       "latent": latent, "layer": layer, "judge": judge_key, "settings_hash": cal.settings_hash()}
                try:
                    out = calibrate_latent(lm, judge, row, layer, labels[latent], prompts, cal,
                                           seed=int(settings.seed) + latent, store=self.store, cache_key=key,
                                           on_start=lambda: self.echo(f"calibrating latent {latent} ({labels[latent]}) ..."))
                except EsrError as exc:
                    self.store.upsert_latent(run_id, latent, label=labels[latent], row_norm=norm, boost=None,
                                             boost_source="calibrated", error=str(exc))
                    self.echo(f"latent {latent}: calibration failed: {exc}")
                    continue
                boost, how, cal_id = out.boost, "calibrated", out.calibration_id
                self.echo(f"latent {latent}: boost {boost:g}{' (cached)' if out.cached else ''} "
                          f"(achieved first-attempt score {out.achieved_score:.2f})")
            self.store.upsert_latent(run_id, latent, label=labels[latent], row_norm=norm, boost=boost,
                                     boost_source=how, calibration_id=cal_id, error=None)
            boosts[latent] = float(boost)
        return boosts, labels, rows

    def _run_group(self, run_id, lm, judge, jd: dict, sampling, group: list[TrialSpec], labels, prog: Progress) -> None:
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
                "generation_ms": round(gen.prefill_ms + gen.generation_ms, 1) if gen else None,
                "error": error,
                "extra_json": json.dumps({"parallel_sequences": len(group),
                                          "prefill_ms": round(gen.prefill_ms, 1) if gen else None}),
            }
            judgment, attempts = None, []
            if gen is not None:
                j = judge.judge(t.prompt, gen.text, labels[t.latent])
                judgment = {
                    "judge_backend": jd.get("backend"), "judge_model": jd.get("model"), "rubric_version": jd.get("rubric_version"),
                    "raw_output": j.raw_output, "parse_status": j.parse_status, "error": j.error, "tries": j.tries,
                    "latency_ms": round(j.latency_ms, 1), "restart_gating": int(bool(jd.get("restart_gating"))),
                    "n_attempts_raw": j.n_attempts_raw,
                }
                attempts = [{"attempt_index": i, "text": a.text, "score": a.score} for i, a in enumerate(j.attempts or [])]
            try:
                self.store.record_trial(trial, judgment, attempts)
            except DuplicateTrialError:
                continue  # another process resuming the same run recorded it first; keep the first
            prog.add([a["score"] for a in attempts] if judgment and judgment["parse_status"] == "ok" else None)


def _absolutize(settings: ExperimentSettings) -> None:
    """Local paths become absolute so a resume from another folder opens the same files."""
    for name in ("sae", "labels", "judge_model_path", "catalog", "prompts_file", "meta_prompts_file"):
        value = getattr(settings, name)
        if value and "://" not in value and not value.startswith("shipped:") and os.path.exists(value):
            setattr(settings, name, os.path.abspath(value))
    if settings.model and os.path.exists(settings.model):
        settings.model = os.path.abspath(settings.model)
    backend, _, rest = settings.judge.partition(":")
    if backend == "local" and rest and os.path.exists(rest):
        settings.judge = f"local:{os.path.abspath(rest)}"


def _check_judge_spec(settings: ExperimentSettings) -> None:
    """Catch a bad --judge before anything is generated (remote judges are cheap to build)."""
    from .judge import make_judge

    backend, _, rest = settings.judge.partition(":")
    if backend == "local":
        path = settings.judge_model_path or rest
        if path and not os.path.isfile(path):
            raise UserInputError(f"judge model not found: {path}")
        return
    make_judge(settings.judge, base_url=settings.judge_base_url, restart_gating=settings.restart_gating).close()


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
