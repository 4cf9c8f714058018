"""`esr-local run`: Experiment 1 and its conditions, logged to SQLite, resumable."""

from __future__ import annotations

import json
import sys

import click

from esr_local.experiment import ExperimentRunner, ExperimentSettings

from .common import calibration_options, finite_float, model_options, sampling_options
from .options import db_option, open_store


def judge_options(f):
    """--judge, --judge-model-path, --judge-base-url, --restart-gating."""
    f = click.option("--restart-gating", is_flag=True,
                     help="Accept an attempt boundary only where restart language occurs in the response (recorded).")(f)
    f = click.option("--judge-base-url", default=None, envvar="ESR_JUDGE_BASE_URL",
                     help="Base URL of an OpenAI-compatible endpoint (openai:MODEL) or the Anthropic API.")(f)
    f = click.option("--judge-model-path", default=None, type=click.Path(),
                     help="GGUF for the local judge (default: the embedded SmolLM2 - a plumbing check, not a research judge).")(f)
    f = click.option("--judge", "judge", default="local", show_default=True, envvar="ESR_JUDGE",
                     help="local[:PATH.gguf] | openai:MODEL | anthropic:MODEL (paper: anthropic:claude-haiku-4-5-20251001).")(f)
    return f


@click.command(name="run")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True, help="Latent to steer (repeatable).")
@click.option("--n-latents", type=click.IntRange(1), default=None, help="Or: this many latents drawn at random (seeded).")
@click.option("--sae", default=None, help="SAE source (default: the catalog's; the embedded dictionary for SmolLM2).")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--layer", type=int, default=None, help="Steering layer (default: the catalog's).")
@click.option("--prompts", "prompts_file", default=None, type=click.Path(), help="One prompt per line (default: the shipped 38+).")
@click.option("--n-prompts", "prompts_per_latent", type=click.IntRange(1), default=5, show_default=True,
              help="Prompts per latent, drawn without replacement.")
@click.option("--replicates", type=click.IntRange(1), default=1, show_default=True, help="Trials per (latent, prompt).")
@click.option("--boost", type=float, default=None, callback=finite_float, help="Fixed boost for every latent (skips calibration).")
@click.option("--condition", "conditions", multiple=True,
              help="steered (default), baseline (no steering; the judge still sees the label), meta:<id> (repeatable).")
@click.option("--meta-prompt", "meta_prompts", multiple=True,
              help="Shorthand for --condition meta:<id>: dont_get_distracted, ignore_latent_label, self_monitor, "
                   "resist_manipulation, an id from --meta-prompts-file, or a sentence in quotes ({label} = the latent's label).")
@click.option("--meta-prompts-file", default=None, type=click.Path(), help="TOML file of extra meta-prompt templates (id = \"text {label}\").")
@click.option("--sweep-levels", type=click.IntRange(0), default=0, help="Add a boost sweep: N levels from mean-3sd to mean+3sd of the calibrated boosts.")
@click.option("--replay", "replay_run", default=None, help="Reuse an earlier run's latents, boosts, prompts and seeds with new conditions.")
@click.option("--resume", "resume_run", default=None, help="Continue a run that stopped (killed, Ctrl-C, error).")
@click.option("--target-score", type=click.FloatRange(0, 1), default=0.30, show_default=True, help="Calibration target (first-attempt score / 100).")
@click.option("--calibration-steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--calibration-samples", type=click.IntRange(1), default=None, help="Prompts averaged per bisection step (catalog default).")
@click.option("--calibration-max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=None, help="Run seed (default random, recorded); trial seeds derive from it.")
@click.option("--parallel", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Trials sharing a latent and boost decode as this many parallel sequences of one context "
                   "(2 measured 1.35x faster than 1 on 2 cores; 1 = one at a time).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary and metrics as JSON.")
@calibration_options
@judge_options
@model_options
@sampling_options
@db_option
def run_cmd(db, latents, n_latents, sae, labels, layer, prompts_file, prompts_per_latent, replicates, boost, conditions,
            meta_prompts, meta_prompts_file, sweep_levels, replay_run, resume_run, target_score, calibration_steps,
            calibration_samples, calibration_max_tokens, seed, parallel, as_json, judge, judge_model_path, judge_base_url,
            restart_gating, model, quant, catalog, n_ctx, threads, gpu_layers, chat_mode, boost_lower, boost_upper,
            boost_prior_mean, boost_prior_std, **sampling):
    """Steer each latent at its calibrated boost on N prompts, judge every answer, log it all to SQLite."""
    store = open_store(db)
    runner = ExperimentRunner(store, echo=lambda s: click.echo(s, err=True), progress=progress_printer())
    if resume_run:
        run_id = store.get_run(resume_run)["id"]
    else:
        conds = list(conditions) + [f"meta:{m}" for m in meta_prompts]
        settings = ExperimentSettings(
            model=model, quant=quant, catalog=catalog, sae=sae, labels=labels, layer=layer, latents=list(latents),
            n_latents=n_latents, prompts_file=prompts_file, prompts_per_latent=prompts_per_latent, replicates=replicates,
            boost=boost, conditions=conds or ["steered"], meta_prompts_file=meta_prompts_file, sweep_levels=sweep_levels,
            judge=judge, judge_model_path=judge_model_path, judge_base_url=judge_base_url, restart_gating=restart_gating,
            target_score=target_score, calibration_steps=calibration_steps, calibration_samples=calibration_samples,
            calibration_max_tokens=calibration_max_tokens, seed=seed, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers,
            chat_mode=chat_mode, parallel=parallel, replay_run=replay_run, boost_lower=boost_lower, boost_upper=boost_upper,
            boost_prior_mean=boost_prior_mean, boost_prior_std=boost_prior_std, **sampling,
        )
        run_id = runner.create(settings, ["esr-local", *sys.argv[1:]])
        click.echo(f"run {run_id} created (resume with: esr-local run --resume {run_id})", err=True)
    summary = runner.execute(run_id)
    if sys.stderr.isatty():
        click.echo("", err=True)
    from esr_local.metrics import metrics_for_store

    rows = metrics_for_store(store, [run_id])
    if as_json:
        click.echo(json.dumps({"summary": summary, "metrics": rows}, indent=2))
        return
    click.echo(run_id)
    for r in rows:
        click.echo(f"  {r['condition']}: n={r['n']}  multi-attempt {_fmt(r['multi_attempt_rate'])}%  ESR {_fmt(r['esr_rate'])}%  "
                   f"mean first score {_fmt(r['mean_first_score'])}")


def progress_printer():
    """On a terminal, one progress line rewritten in place; otherwise one line per update (for logs)."""
    if sys.stderr.isatty():
        return lambda line: click.echo("\r" + line.ljust(78), err=True, nl=False)
    return lambda line: click.echo(line, err=True)


def _fmt(x):
    return "-" if x is None else f"{x:.1f}"


commands = [run_cmd]
