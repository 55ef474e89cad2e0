"""`tsm model info|import-official`: the old spelling of `tsm models info|import` (deprecated).

Hidden from `tsm --help`; it runs the same commands and prints a one-line note
on stderr. Scripts written for it keep working; new ones use `tsm models`.
"""

from __future__ import annotations

import typer

from jobs import models_cmd

NOTE = ("note: `tsm model` is deprecated and will be removed; use `tsm models info` and "
        "`tsm models import`")

app = typer.Typer(help="Deprecated: use `tsm models info` / `tsm models import`.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _deprecated() -> None:
    typer.echo(NOTE, err=True)


app.command("info")(models_cmd.info)
app.command("import-official")(models_cmd.import_cmd)
