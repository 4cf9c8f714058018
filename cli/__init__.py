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

from . import calibrate, importcmd, metrics, models, run, runs, steer, vector


class EsrGroup(click.Group):
    """Root group that turns library errors into one `Error:` line (exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except EsrError as exc:
            if os.environ.get("ESR_LOCAL_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is saved.", err=True)
            sys.exit(130)


@click.group(cls=EsrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esr-local")
def main() -> None:
    """Steer quantized GGUF models with SAE latents (llama.cpp) and measure endogenous steering resistance."""


for _module in (steer, vector, models, run, calibrate, metrics, importcmd, runs):
    for _command in _module.commands:
        main.add_command(_command)
