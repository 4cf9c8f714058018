"""The `esr-local` command line: a thin Click layer over the esr_local library.

Each command group lives in its own module of this folder and exposes `commands`, a list of Click
commands added to the root group here. Library errors (EsrError) become one `Error:` line.
"""

from __future__ import annotations

import os
import sys

import click

from esr_local import __version__
from esr_local.errors import EsrError

from . import activations, calibrate, detectors, doctor, importcmd, judge, latents, metrics, models, report, run, runs, steer, trace, trials, vector


class EsrGroup(click.Group):
    """Root group: library errors and bad options become one `Error:` line on stderr, no traceback.

    Exit codes: 1 for EsrError, 2 for bad options/usage, 130 for Ctrl-C. Set ESR_LOCAL_RAISE_ERRORS=1 to
    see the traceback of an EsrError.
    """

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except EsrError as exc:
            if os.environ.get("ESR_LOCAL_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Interrupted; finished work is saved.", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is saved.", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            msg = " ".join(exc.format_message().split())
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"Error: {msg}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=EsrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esr-local")
@click.option("--offline", is_flag=True,
              help="Never touch the network: use only cached models, SAEs, labels and paper assets, and say what is "
                   "missing (same as ESR_LOCAL_OFFLINE=1).")
def main(offline: bool = False) -> None:
    """Steer quantized GGUF models with SAE latents (llama.cpp) and measure endogenous steering resistance."""
    if offline:  # read by esr_local.download.is_offline and huggingface_hub (imported lazily, after this)
        os.environ["ESR_LOCAL_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


for _module in (steer, vector, models, run, calibrate, metrics, importcmd, runs, report, trials, doctor, judge, activations, latents, detectors, trace):
    for _command in _module.commands:
        main.add_command(_command)
