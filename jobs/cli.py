"""The `tsm` command line.

Each command group lives in its own module under `jobs/` and is registered
here. Command modules import torch, ray and mlflow inside their functions so
that `tsm --help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import typer

from jobs import demo as demo_cmd
from jobs import evaluate as evaluate_cmd
from jobs import label as label_cmd
from jobs import model_cmd, models_cmd
from jobs import synth as synth_cmd
from jobs import train as train_cmd

app = typer.Typer(
    name="tsm",
    help="Label videos at scale with TSM (Temporal Shift Module).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(synth_cmd.app, name="data")
app.command("train")(train_cmd.command)
app.command("evaluate")(evaluate_cmd.command)
app.add_typer(models_cmd.app, name="models")
app.add_typer(model_cmd.app, name="model", hidden=True)  # deprecated: `tsm models`
app.command("demo")(demo_cmd.command)
app.command("label")(label_cmd.label)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
