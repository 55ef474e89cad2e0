"""The `tsm` command line.

Each command group lives in its own module under `jobs/` and is registered
here. Command modules import torch, ray and mlflow inside their functions so
that `tsm --help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import typer

from jobs import model_cmd

app = typer.Typer(
    name="tsm",
    help="Label videos at scale with TSM (Temporal Shift Module).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(model_cmd.app, name="model")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
