"""The judge options shared by every command that judges: --judge, --judge-model-path, --judge-base-url,
--rubric, --judge-timeout, --restart-gating."""

from __future__ import annotations

import click

from esr_local.judge import DEFAULT_TIMEOUT, SPEC_HELP, make_judge

DEFAULT_JUDGE = "offline"


def judge_options(f):
    """Add the judge options; the command receives judge, judge_model_path, judge_base_url, rubric,
    judge_timeout and restart_gating."""
    f = click.option("--restart-gating", is_flag=True,
                     help="Accept an attempt boundary only where restart language occurs in the response (recorded).")(f)
    f = click.option("--judge-timeout", type=click.FloatRange(0, min_open=True), default=None,
                     help=f"Total seconds one judgment may take, every try and wait included (default {DEFAULT_TIMEOUT:g}; "
                          "at most 3 tries): a hung judge costs at most this per trial.")(f)
    f = click.option("--rubric", default=None, envvar="ESR_JUDGE_RUBRIC",
                     help="What the judge is told: default (ours), paper (the reference judge.py's own text, "
                          "downloaded once at a pinned commit and verified), or a TOML/JSON FILE.")(f)
    f = click.option("--judge-base-url", default=None, envvar="ESR_JUDGE_BASE_URL",
                     help="Base URL of an OpenAI-compatible endpoint (openai:MODEL) or the Anthropic API.")(f)
    f = click.option("--judge-model-path", default=None, type=click.Path(),
                     help="GGUF for the local judge (overrides PATH/NAME of --judge local:...).")(f)
    f = click.option("--judge", "judge", default=DEFAULT_JUDGE, show_default=True, envvar="ESR_JUDGE",
                     help=f"{SPEC_HELP} (the paper's: anthropic:claude-haiku-4-5-20251001; NAME: qwen2.5-7b-instruct, llama-3.1-8b-instruct, gemma-2-9b-it, ...).")(f)
    return f


def judge_from_options(*, judge: str, judge_model_path: str | None = None, judge_base_url: str | None = None,
                       rubric: str | None = None, judge_timeout: float | None = None, restart_gating: bool = False,
                       **extra):
    """Build the judge the options describe (extra keyword arguments go to make_judge)."""
    return make_judge(judge, model_path=judge_model_path, base_url=judge_base_url, rubric=rubric,
                      timeout=judge_timeout, restart_gating=restart_gating, **extra)
