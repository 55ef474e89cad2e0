"""`tsm model info|import-official`: the old spelling of `tsm models info|import` (deprecated).

Hidden from `tsm --help`; it runs the same commands and prints a one-line note
on stderr when one of them runs (not on a usage error, which stays one line).
Scripts written for it keep working; new ones use `tsm models`.
"""

from __future__ import annotations

import typer

from jobs import models_cmd
from jobs.console import TsmCommand, note

NOTE = ("note: `tsm model` is deprecated and will be removed; use `tsm models info` and "
        "`tsm models import`")

app = typer.Typer(help="Deprecated: use `tsm models info` / `tsm models import`.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class DeprecatedCommand(TsmCommand):
    """A command of the old spelling: says so on stderr, then runs."""

    def invoke(self, ctx):
        note(NOTE)
        return super().invoke(ctx)


app.command("info", cls=DeprecatedCommand)(models_cmd.info)
app.command("import-official", cls=DeprecatedCommand)(models_cmd.import_cmd)
