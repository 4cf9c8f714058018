"""`esr-local judge`: judge commands. `judge RUN ...` is short for `judge grade RUN ...`."""

from __future__ import annotations

import click

from .judge_check import check_command
from .judge_grade import agree_command, grade_command


class JudgeGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, is a run to grade (`judge RUN`)."""

    def resolve_command(self, ctx, args):  # noqa: D102
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["grade", *args]
        return super().resolve_command(ctx, args)


@click.group(name="judge", cls=JudgeGroup)
def judge_group() -> None:
    """Measure, use and compare judges: `judge check [--judge SPEC]`, `judge RUN --judge SPEC`,
    `judge agree RUN --judge A --judge B`."""


judge_group.add_command(grade_command)
judge_group.add_command(agree_command)
judge_group.add_command(check_command)

commands = [judge_group]
