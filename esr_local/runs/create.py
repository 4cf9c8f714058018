"""Turn a run's options (or a replayed run) into a frozen RunSpec and a stored run row."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..calibration import CalibrationSettings
from ..errors import MissingResourceError, UserInputError
from ..latent_labels import all_labels, attach_catalog_labels, check_labelled, is_placeholder
from ..model_files import resolve_model
from ..prompts import load_prompts, resolve_meta_prompt
from ..provenance import machine, versions
from ..sampling import MAX_SEED, check_seed, resolve_sampling
from ..steering import check_sae_fits, choose_layer, effective_chat_mode, open_sae
from .conditions import check_conditions
from .gguf_header import model_dims
from .plan import base_trials
from .resources import fingerprint, hub_revision, rows_hash, sae_files
from .spec import JudgeRef, ModelRef, RunSpec, SaeRef, judge_key, labels_hash


@dataclass
class RunOptions:
    """What the user asked for (CLI options); `None` means "catalog / paper default"."""

    model: str | None = None
    quant: str | None = None
    catalog: str | None = None
    sae: str | None = None
    labels: str | None = None
    layer: int | None = None
    latents: list[int] = field(default_factory=list)
    n_latents: int | None = None
    latent_set: str | None = None
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
    judge: str = "offline"
    judge_model_path: str | None = None
    judge_base_url: str | None = None
    rubric: str | None = None
    judge_timeout: float | None = None
    restart_gating: bool = False
    allow_weak_judge: bool = False
    allow_unlabelled: bool = False
    skip_judge_check: bool = False
    target_score: float = 0.30
    calibration_steps: int = 10
    calibration_samples: int | None = None
    calibration_max_tokens: int = 256
    calibration_remeasure: int = 5
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
    ablate: list[int] = field(default_factory=list)  # in-graph ablation (esr_local.ablation_runs); needs replay_run
    ablate_set: str | None = None
    ablate_random: int | None = None
    ablate_seed: int = 0
    ablate_order: str = "pre"
    prefill: bool = False  # with replay_run: the prefill conditions of esr_local.prefill_runs

    def check(self) -> None:
        """Combinations that cannot apply are errors, not silently dropped."""
        if self.latents and self.n_latents:
            raise UserInputError("give --latent or --n-latents, not both")
        if self.latent_set and (self.latents or self.n_latents):
            raise UserInputError("give --latent-set or --latent/--n-latents, not both")
        if self.replay_run and (self.latents or self.n_latents or self.latent_set):
            raise UserInputError("--replay reuses the source run's latents; drop --latent/--n-latents/--latent-set")
        if self.replay_run and self.boost is not None:
            raise UserInputError("--replay reuses the source run's boosts; drop --boost")
        if self.prefill and not self.replay_run:
            raise UserInputError("a prefill run replays an earlier run's steered trials: add --replay RUN")
        if (self.ablate or self.ablate_set or self.ablate_random is not None) and not self.replay_run:
            raise UserInputError("an ablation run replays an earlier run's trials so they pair up: add --replay RUN")
        if self.seed is not None:
            check_seed(self.seed)
        if self.sweep_levels < 0 or self.prompts_per_latent < 1 or self.replicates < 1 or self.parallel < 1:
            raise UserInputError("prompts per latent, replicates and parallel must be >= 1; sweep levels >= 0")
        if self.sweep_levels == 1:
            raise UserInputError("a boost sweep needs at least 2 levels")
        few = not self.latent_set and len(set(self.latents)) + (self.n_latents or 0) < 2  # a set's size shows later
        if self.sweep_levels and (self.boost is not None or few):
            raise UserInputError("a boost sweep spreads around the calibrated boosts of several latents: "
                                 "give at least 2 latents and no --boost")


def _abs(path: str | None) -> str | None:
    if path and "://" not in path and not path.startswith("shipped:") and os.path.exists(path):
        return os.path.abspath(path)
    return path


def build_judge(ref_or_opts, *, n_threads: int | None = None, n_gpu_layers: int | None = None):
    """A judge from a JudgeRef or RunOptions (spec, model path, base URL, rubric, timeout, gating).

    `n_threads` and `n_gpu_layers` (the run's --threads/--gpu-layers) reach in-process judges too."""
    from ..judge import make_judge

    if isinstance(ref_or_opts, JudgeRef):
        spec, path, url, rubric, timeout, gating = (ref_or_opts.spec, ref_or_opts.model_path, ref_or_opts.base_url,
                                                    ref_or_opts.rubric, ref_or_opts.timeout, ref_or_opts.restart_gating)
    else:
        o = ref_or_opts
        spec, path, url, rubric, timeout, gating = (o.judge, o.judge_model_path, o.judge_base_url, o.rubric,
                                                    o.judge_timeout, o.restart_gating)
    extra = {k: v for k, v in (("rubric", rubric), ("timeout", timeout)) if v is not None}
    return make_judge(spec, model_path=path, base_url=url, restart_gating=gating, n_threads=n_threads,
                      n_gpu_layers=n_gpu_layers or 0, **extra)


def _latents(opts: RunOptions, sae, store, seed: int, sae_source: str) -> tuple[list[int], dict, dict[int, str]]:
    """The run's latents, where they came from, and labels a latent set brings (else the SAE's labels)."""
    set_labels: dict[int, str] = {}
    if opts.latent_set:
        from ..latent_sets import load_latent_set

        ls = load_latent_set(store, opts.latent_set)
        if ls.sae_source != sae_source:
            raise UserInputError(f"latent set {ls.name!r} was chosen from the SAE {ls.sae_source}, but this run steers "
                                 f"with {sae_source}; pass --sae {ls.sae_source} or choose another set")
        ids, source = [int(x) for x in ls.latents], {"kind": "set", **ls.spec()}
        raw = getattr(ls, "labels", None) or {}
        set_labels = {int(k): str(v) for k, v in (raw.items() if isinstance(raw, dict) else zip(ids, raw)) if v}
    elif opts.latents:
        ids, source = [int(x) for x in opts.latents], {"kind": "given"}
    elif opts.n_latents:
        # Drawn among the labelled latents when the SAE has labels (the paper drops placeholder labels);
        # `esr-local latents select` applies the paper's other filters.
        labelled = sorted(i for i, lab in all_labels(sae).items() if 0 <= i < sae.d_sae and not is_placeholder(lab))
        pool = labelled or range(sae.d_sae)
        if opts.n_latents > len(pool):
            what = "labelled latents" if labelled else "latents"
            raise UserInputError(f"--n-latents {opts.n_latents} exceeds the SAE's {len(pool)} {what}")
        ids = sorted(random.Random(f"{seed}:latents").sample(pool, opts.n_latents))
        source = {"kind": "drawn", "n": opts.n_latents, "from": "labelled" if labelled else "all"}
    else:
        raise UserInputError("give --latent (repeatable), --n-latents K or --latent-set NAME")
    for i in ids:
        if not 0 <= i < sae.d_sae:
            raise UserInputError(f"latent {i} is out of range: this SAE has latents 0 to {sae.d_sae - 1}")
    return list(dict.fromkeys(ids)), source, set_labels


def _pick(*values):
    for v in values:
        if v is not None and v is not False:
            return float(v)
    return None


def _calibration(opts: RunOptions, entry, sampling, prompts_sha256: str, chat_mode: str, judge_desc: dict) -> CalibrationSettings:
    d = entry.defaults if entry else None
    return CalibrationSettings(
        target=opts.target_score, n_steps=opts.calibration_steps,
        samples_per_step=opts.calibration_samples or (d.calibration_samples_per_step if d else 1),
        lower=_pick(opts.boost_lower, d and d.boost_lower, 0.0), upper=_pick(opts.boost_upper, d and d.boost_upper, 10.0),
        prior_mean=_pick(opts.boost_prior_mean, d and d.boost_prior_mean, 5.0),
        prior_std=_pick(opts.boost_prior_std, d and d.boost_prior_std, 2.5),
        max_tokens=opts.calibration_max_tokens, remeasure_samples=opts.calibration_remeasure,
        temperature=sampling.temperature,
        repetition_penalty=sampling.repetition_penalty, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
        chat_mode=chat_mode, prompts_sha256=prompts_sha256,
        chat_template_sha256=hashlib.sha256((entry.chat_template or "").encode()).hexdigest()[:16] if entry else "",
        rubric_version=str(judge_desc.get("rubric_sha256") or judge_desc.get("rubric_version") or ""),
        restart_gating=opts.restart_gating,
    )


def _replay_source(store, opts: RunOptions) -> tuple[RunSpec, dict]:
    """The source run's spec and a frozen copy of its trials (latent, prompt, replicate, seed) and boosts."""
    src = store.get_run(opts.replay_run)
    if src["experiment"] not in ("esr", "replay"):
        raise UserInputError(f"run {src['id']} is a {src['experiment']} run; only esr-local experiment runs can be replayed")
    if src["status"] != "success":
        raise UserInputError(f"run {src['id']} is {src['status']}; finish it first (esr-local run --resume {src['id']})")
    if not src.get("spec_json"):
        raise UserInputError(f"run {src['id']} was created by an older esr-local without a run spec; it cannot be replayed")
    base = RunSpec.from_json(src["spec_json"])
    seen, rows = set(), []
    for t in store.trials(src["id"]):
        key = (t["latent"], t["prompt_index"], t["replicate"])
        if key not in seen:
            seen.add(key)
            rows.append({"latent": t["latent"], "prompt_index": t["prompt_index"], "replicate": t["replicate"],
                         "base_prompt": t["base_prompt"], "seed": t["seed"]})
    if not rows:
        raise UserInputError(f"run {src['id']} has no trials to replay")
    lat = store.latents(src["id"])
    boosts = {str(r["latent"]): r["boost"] for r in lat if r["boost"] is not None and not r.get("error")}
    if any(c != "baseline" for c in opts.conditions) and boosts and all(r["boost_source"] == "none" for r in lat):
        raise UserInputError(f"run {src['id']} never steered (baseline only), so it has no boosts to replay steered conditions with")
    return base, {"source_run": src["id"], "rows": rows, "boosts": boosts}


def check_options(opts: RunOptions) -> None:
    """The checks that need no database, model or SAE: option combinations and the judge spec (a local
    judge's file or catalog name, remote judges' keys, the rubric; nothing is loaded or downloaded).
    `esr-local run` calls it before it opens, and maybe creates, the database."""
    from ..judge import check_judge_spec

    opts.check()
    check_judge_spec(opts.judge, model_path=_abs(opts.judge_model_path), base_url=opts.judge_base_url,
                     rubric=_abs(opts.rubric))


def create_run(store, opts: RunOptions, command_line: list[str] | None = None,
               echo: Callable[[str], None] = print) -> tuple[str, object]:
    """Validate the options, resolve everything they name into a RunSpec, store the run (status
    `started`). Returns (run id, the judge built for it, to reuse when executing right away)."""
    from ..judge.check import ensure_judge_checked

    check_options(opts)
    replay_base, replay = (None, None)
    if opts.replay_run:
        replay_base, replay = _replay_source(store, opts)
    meta: dict[str, str] = {}
    names = []
    for c in opts.conditions:
        if c.startswith("meta:"):
            mp = resolve_meta_prompt(c[5:], _abs(opts.meta_prompts_file))
            meta[mp.id], c = mp.template, f"meta:{mp.id}"
        names.append(c)
    conditions = [c.name for c in check_conditions(names, meta)]
    seed = opts.seed if opts.seed is not None else random.randint(0, MAX_SEED)
    judge = build_judge(opts, n_threads=opts.threads, n_gpu_layers=opts.gpu_layers)
    try:
        desc = judge.describe()
        jref = JudgeRef(spec=opts.judge if "://" in opts.judge else _judge_spec_abs(opts.judge),
                        model_path=_abs(opts.judge_model_path), base_url=opts.judge_base_url, rubric=_abs(opts.rubric),
                        timeout=opts.judge_timeout, restart_gating=opts.restart_gating, description=desc,
                        key=judge_key(desc), check={})
        spec = (_replay_spec(replay_base, replay, opts, conditions, meta, jref) if replay_base is not None
                else _new_spec(store, opts, conditions, meta, seed, jref))
        if opts.ablate or opts.ablate_set or opts.ablate_random is not None:
            from ..ablation_runs import with_ablation

            spec = with_ablation(store, spec, opts)
        if opts.prefill:
            from ..prefill_runs import with_prefill

            spec = with_prefill(store, spec)
        # Last: the check can take minutes, so every cheap validation above runs (and fails) first.
        check = ensure_judge_checked(judge, allow_weak=opts.allow_weak_judge, skip=opts.skip_judge_check, echo=echo)
        spec = dataclasses.replace(spec, judge=dataclasses.replace(spec.judge, check=check))
    except BaseException:
        judge.close()
        raise
    row = _run_row(spec, command_line)
    return store.create_run(row), judge


def _judge_spec_abs(spec: str) -> str:
    backend, _, rest = spec.partition(":")
    if backend == "local" and rest and os.path.exists(rest):
        return f"local:{os.path.abspath(rest)}"
    return spec


def _new_spec(store, opts: RunOptions, conditions: list[str], meta: dict, seed: int, jref: JudgeRef) -> RunSpec:
    resolved = resolve_model(_abs(opts.model), opts.quant, _abs(opts.catalog))
    entry = resolved.entry
    n_layer, n_embd = model_dims(resolved.path)
    chat_mode = effective_chat_mode(opts.chat_mode, entry)
    fp = fingerprint(resolved.path)
    model = ModelRef(name=resolved.name, path=fp["path"], sha256=fp["sha256"], size=fp["size"], n_layer=n_layer,
                     n_embd=n_embd, chat_mode=chat_mode, chat_template=entry.chat_template if entry else None,
                     mtime_ns=fp["mtime_ns"])
    sae = open_sae(_abs(opts.sae), entry, _abs(opts.labels))
    try:  # the catalog names a label source (Neuronpedia): downloaded once, then read offline
        sae = attach_catalog_labels(sae, entry, explicit=bool(opts.sae or opts.labels))
    except MissingResourceError:
        if not opts.allow_unlabelled:
            raise
    check_sae_fits(sae, n_embd, resolved.name)
    layer = choose_layer(opts.layer, entry, sae, n_layer, user_sae=opts.sae is not None)
    src_text = opts.sae or (entry.sae.source if entry else "")
    latents, latent_source, set_labels = _latents(opts, sae, store, seed, src_text)
    rows = {i: sae.decoder_row(i) for i in latents}
    found = {i: set_labels.get(i) or sae.label(i) for i in latents}
    latent_source = {**latent_source,
                     "labels_check": check_labelled(found, latents, allow_unlabelled=opts.allow_unlabelled)}
    labels = {str(i): found[i] or f"latent {i}" for i in latents}
    prompt_set = load_prompts(_abs(opts.prompts_file))
    if opts.prompts_per_latent > len(prompt_set.prompts):
        raise UserInputError(f"--n-prompts {opts.prompts_per_latent} exceeds the {len(prompt_set.prompts)} prompts "
                             f"in {prompt_set.path}")
    sampling = resolve_sampling(entry.defaults if entry else None, temperature=opts.temperature,
                                max_tokens=opts.max_tokens, repetition_penalty=opts.repetition_penalty,
                                top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p)
    needs_cal = opts.boost is None and (opts.sweep_levels or any(c != "baseline" for c in conditions))
    cal = _calibration(opts, entry, sampling, prompt_set.sha256, chat_mode, jref.description)
    if needs_cal:
        cal.check()
    sae_ref = SaeRef(source=src_text, resolved_path=str(sae.info.resolved_path), family=sae.info.family,
                     revision=hub_revision(sae.info.resolved_path), files=sae_files(sae.info.resolved_path),
                     feature_layer=sae.info.layer, d_sae=sae.d_sae, rows_sha256=rows_hash(rows))
    return RunSpec(
        experiment="calibrate" if opts.calibrate_only else "esr", model=model, sae=sae_ref, steering_layer=layer,
        latents=latents, latent_source=latent_source, labels=labels, labels_sha256=labels_hash(labels),
        prompts=list(prompt_set.prompts), prompts_file=str(prompt_set.path), prompts_sha256=prompt_set.sha256,
        prompts_per_latent=opts.prompts_per_latent, replicates=opts.replicates, sampling=sampling,
        conditions=conditions, meta_prompts=meta, sweep_levels=opts.sweep_levels, boost=opts.boost, judge=jref,
        seed=seed, calibration=cal if needs_cal else None, n_ctx=opts.n_ctx, parallel=opts.parallel,
        runtime={"threads": opts.threads, "gpu_layers": opts.gpu_layers},
    )


def _replay_spec(base: RunSpec, replay: dict, opts: RunOptions, conditions, meta, jref: JudgeRef) -> RunSpec:
    d = {f: getattr(base, f) for f in base.__dataclass_fields__}
    latents = sorted({r["latent"] for r in replay["rows"]})
    d.update(experiment="replay", conditions=conditions, meta_prompts=meta, sweep_levels=0, judge=jref, replay=replay,
             latents=latents, latent_source={"kind": "replayed", "run": replay["source_run"]}, boost=None,
             calibration=None, parallel=opts.parallel, runtime={"threads": opts.threads, "gpu_layers": opts.gpu_layers})
    return RunSpec(**d)


def plan_base(spec: RunSpec) -> list[dict]:
    """The (latent, prompt, replicate, seed) rows of a spec: the replayed ones, or drawn from the seed."""
    if spec.replay is not None:
        return list(spec.replay["rows"])
    return base_trials(spec.seed, spec.latents, spec.prompts, spec.prompts_per_latent, spec.replicates)


def _run_row(spec: RunSpec, command_line: list[str] | None) -> dict:
    """The run's row: the spec (once, in spec_json) and the columns people query."""
    s = spec.sampling
    return {
        "experiment": spec.experiment,
        "command_line": shlex.join(command_line or sys.argv),
        "esr_local_version": versions()["esr_local"],
        "llama_cpp_python_version": versions()["llama_cpp_python"],
        "model_name": spec.model.name, "model_path": spec.model.path, "model_sha256": spec.model.sha256,
        "sae_source": spec.sae.source, "sae_family": spec.sae.family, "feature_layer": spec.sae.feature_layer,
        "steering_layer": spec.steering_layer, "chat_template_mode": spec.model.chat_mode,
        **asdict(s), "n_ctx": spec.n_ctx,
        "judge_backend": spec.judge.description.get("backend"), "judge_model": spec.judge.description.get("model"),
        "rubric_version": spec.judge.description.get("rubric_id") or spec.judge.description.get("rubric_version"),
        "restart_gating": int(spec.judge.restart_gating), "judge_key": spec.judge.key,
        "prompts_file": spec.prompts_file, "prompts_sha256": spec.prompts_sha256,
        "prompts_per_latent": spec.prompts_per_latent, "replicates": spec.replicates, "seed_base": spec.seed,
        "source_run_id": (spec.replay or {}).get("source_run"), "spec_json": spec.to_json(),
        "versions": versions(), "machine": machine(),
    }
