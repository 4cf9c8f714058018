"""`esr-local run`: Experiment 1 and its conditions, logged to SQLite, resumable."""

from __future__ import annotations

import json
import shlex
import sys

import click
from click.core import ParameterSource

from esr_local.errors import MissingResourceError, UserInputError
from esr_local.leases import break_lease as break_run_lease
from esr_local.paths import default_db_path
from esr_local.runs import RunOptions, create_run, execute_run
from esr_local.runs.create import check_options
from esr_local.sampling import MAX_SEED
from esr_local.store_files import store_kept_only_with_a_run

from .common import calibration_options, finite_float, model_options, sampling_options
from .judge_options import judge_options as shared_judge_options
from .options import db_option, open_store


def judge_options(f):
    """The judge options shared by `run` and `calibrate`, plus the judge-check switches."""
    f = click.option("--allow-unlabelled", is_flag=True,
                     help="Steer latents without a real label (the judge sees a placeholder; recorded).")(f)
    f = click.option("--skip-judge-check", is_flag=True, help="Do not check the judge on the annotated cases (recorded).")(f)
    f = click.option("--allow-weak-judge", is_flag=True,
                     help="Run even if the judge misses the check's thresholds (warned and recorded).")(f)
    return shared_judge_options(f)


# Options that define what a run does: with --resume they would be ignored, so they are refused.
RESUME_CONFLICTS = (
    "latents", "n_latents", "latent_set", "sae", "labels", "layer", "prompts_file", "prompts_per_latent", "replicates",
    "boost", "conditions", "meta_prompts", "meta_prompts_file", "sweep_levels", "replay_run", "target_score",
    "calibration_steps", "calibration_samples", "calibration_max_tokens", "calibration_remeasure", "seed", "parallel", "judge",
    "judge_model_path", "judge_base_url", "rubric", "judge_timeout", "restart_gating", "allow_weak_judge", "allow_unlabelled",
    "skip_judge_check", "model", "quant", "catalog", "n_ctx", "chat_mode", "boost_lower", "boost_upper",
    "boost_prior_mean", "boost_prior_std", "temperature", "max_tokens", "repetition_penalty", "top_k", "top_p", "min_p",
    "ablate", "ablate_set", "ablate_random", "ablate_seed", "ablate_order", "prefill",
)


# What a replay takes from its source run (only conditions, the judge and how to run may differ).
REPLAY_CONFLICTS = tuple(n for n in RESUME_CONFLICTS if n not in (
    "conditions", "meta_prompts", "meta_prompts_file", "replay_run", "parallel", "judge", "judge_model_path",
    "judge_base_url", "rubric", "judge_timeout", "restart_gating", "allow_weak_judge", "skip_judge_check",
    "ablate", "ablate_set", "ablate_random", "ablate_seed", "ablate_order", "prefill"))


def given_options(ctx: click.Context, names) -> list[str]:
    """The options among `names` that were typed on the command line."""
    out = []
    for p in ctx.command.params:
        if p.name in names and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE:
            out.append(p.opts[0])
    return out


@click.command(name="run")
@click.option("--latent", "-l", "latents", type=click.IntRange(min=0), multiple=True, help="Latent to steer (repeatable).")
@click.option("--n-latents", type=click.IntRange(1), default=None, help="Or: this many latents drawn at random (seeded).")
@click.option("--latent-set", default=None, help="Or: a stored latent set (esr-local latents).")
@click.option("--sae", default=None, help="SAE source (default: the catalog's); steered at its own layer unless --layer.")
@click.option("--labels", default=None, type=click.Path(), help="Labels file for the SAE.")
@click.option("--layer", type=int, default=None, help="Steering layer (default: a given SAE's own, else the catalog's).")
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
@click.option("--resume", "resume_run", default=None, help="Continue a run that stopped (killed, Ctrl-C, error, partial).")
@click.option("--break-lease", is_flag=True,
              help="With --resume: take the run over from the process holding its lease when that process is "
                   "gone (dead here, or on another host, which cannot be checked from here); recorded in lease_breaks. "
                   "Refused while the holder runs on this machine.")
@click.option("--ablate", type=click.IntRange(min=0), multiple=True, help="With --replay: zero-ablate this latent in the graph (repeatable).")
@click.option("--ablate-set", default=None, help="With --replay: ablate a stored detector set (esr-local detectors find).")
@click.option("--ablate-random", type=click.IntRange(min=1), default=None,
              help="With --replay: ablate K random non-detector (of --ablate-set, if given), non-dead latents (control).")
@click.option("--prefill", is_flag=True, help="With --replay: the prefill controls (prefill:first-attempt, "
              "prefill:matched), continued unsteered, paired with the source run's steered trials.")
@click.option("--ablate-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of --ablate-random.")
@click.option("--ablate-order", type=click.Choice(["pre", "post"]), default="pre", show_default=True,
              help="Encode ablated latents before (paper) or after the steering vector.")
@click.option("--target-score", type=click.FloatRange(0, 1), callback=finite_float, default=0.30, show_default=True, help="Calibration target (first-attempt score / 100).")
@click.option("--calibration-steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--calibration-samples", type=click.IntRange(1), default=None, help="Prompts averaged per bisection step (catalog default).")
@click.option("--calibration-max-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None, help="Run seed (default random, recorded); trial seeds derive from it.")
@click.option("--parallel", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Trials sharing a latent and boost decode as this many parallel sequences of one context "
                   "(2 measured 1.35x faster than 1 on 2 cores; 1 = one at a time).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary and metrics as JSON.")
@calibration_options
@judge_options
@model_options
@sampling_options
@db_option
@click.pass_context
def run_cmd(ctx, db, resume_run, break_lease, as_json, threads, gpu_layers, meta_prompts, conditions, **kw):
    """Steer each latent at its calibrated boost on N prompts, judge every answer, log it all to SQLite."""
    echo = lambda s: click.echo(s, err=True)  # noqa: E731
    judge = None
    if break_lease and not resume_run:
        raise UserInputError("--break-lease takes over a stopped run: add --resume RUN")
    if resume_run:
        given = given_options(ctx, RESUME_CONFLICTS)
        if given:
            raise UserInputError(f"--resume continues a run exactly as it was created; drop {', '.join(given)} "
                                 "(only --threads, --gpu-layers, --db and --json may change)")
        path = db if db is not None else default_db_path()
        if not path.expanduser().exists():  # a run to resume is in an existing database: never make an empty one
            raise MissingResourceError(f"no run {resume_run!r} to resume: there is no database {path}; pass --db "
                                       "(or set ESR_LOCAL_DB) to the database the run was created in")
        store = open_store(path, create=False)
        run_id = store.get_run(resume_run)["id"]
        if break_lease:
            broken = break_run_lease(store, run_id, command_line=shlex.join(["esr-local", *sys.argv[1:]]))
            echo(f"run {run_id} held no lease; nothing to break" if broken is None else
                 f"broke the lease of process {broken['holder_pid']} on {broken['holder_host']} "
                 f"({broken['holder_state']}; recorded in lease_breaks)")
        # --threads/--gpu-layers change how the run executes, not what it does: those typed apply.
        runtime = {name: value for name, value in (("threads", threads), ("gpu_layers", gpu_layers))
                   if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    else:
        runtime = None
        given = given_options(ctx, REPLAY_CONFLICTS) if kw.get("replay_run") else []
        if given:
            raise UserInputError(f"--replay reuses the source run's latents, boosts, model, SAE, prompts, seeds and "
                                 f"sampling; drop {', '.join(given)}")
        conds = list(conditions) + [f"meta:{m}" for m in meta_prompts]
        opts = RunOptions(conditions=conds or ["steered"], threads=threads, gpu_layers=gpu_layers,
                          **{k: (list(v) if k == "latents" else v) for k, v in kw.items()})
        check_options(opts)  # before the database is opened (and maybe created)
        # A database this command creates is removed again if the run fails before it is stored.
        with store_kept_only_with_a_run(db if db is not None else default_db_path()) as store:
            run_id, judge = create_run(store, opts, ["esr-local", *sys.argv[1:]], echo=echo)
        echo(f"run {run_id} created (resume with: esr-local run --resume {run_id})")
    summary = execute_run(store, run_id, judge=judge, echo=echo, progress=progress_printer(), runtime=runtime)
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
    click.echo(summary_line(summary))


def summary_line(s: dict) -> str:
    """`success: 20 trials` or `PARTIAL: 14 failed judgment(s), ...` with the flagged latents."""
    failed = [(s.get(k) or 0, what) for k, what in (("failed_calibrations", "failed calibration(s)"),
                                                    ("failed_generations", "failed generation(s)"),
                                                    ("failed_judgments", "failed judgment(s)"))]
    line = (f"PARTIAL: {', '.join(f'{n} {w}' for n, w in failed if n)} of {s.get('planned', 0)} trials / "
            f"{s.get('latents', 0)} latents; resume with --resume {s['run_id']} to retry them"
            if any(n for n, _ in failed) else f"success: {s.get('planned', 0)} trials, {s.get('latents', 0)} latents")
    if s.get("flagged_latents"):
        line += f"; {s['flagged_latents']} latent(s) flagged by calibration (see `esr-local metrics`)"
    return line


def progress_printer():
    """On a terminal, one progress line rewritten in place; otherwise one line per update (for logs)."""
    if sys.stderr.isatty():
        return lambda line: click.echo("\r" + line.ljust(78), err=True, nl=False)
    return lambda line: click.echo(line, err=True)


def _fmt(x):
    return "-" if x is None else f"{x:.1f}"


commands = [run_cmd]
