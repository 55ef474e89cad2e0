"""`tsm models list|promote|register`: the model registry from the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from jobs.console import fail

app = typer.Typer(help="Registered model versions: list, register, promote.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


@app.command("list")
def list_cmd(name: str | None = typer.Argument(None, help="only this registered model")) -> None:
    """Registered versions, their aliases and their latest accuracy per evaluation dataset."""
    from rich.console import Console
    from rich.table import Column, Table

    from registry.versions import ModelNotFoundError, list_versions

    try:
        versions = list_versions(name)
    except ModelNotFoundError as e:
        raise fail(str(e)) from None
    if not versions:
        typer.echo("no registered models")
        return
    # names and aliases are what people copy into models:/ URIs: never wrap or cut them
    table = Table(Column("name", no_wrap=True), "version", Column("aliases", no_wrap=True),
                  "top-1", "top-5", Column("evaluated on (dataset digest)", no_wrap=True),
                  "val top-1", "temporal", "created (UTC)")
    for v in versions:
        evals = list(v.latest_evaluations().values()) or [None]
        for i, e in enumerate(evals):  # one line per dataset, the newest first
            first = i == 0
            table.add_row(
                v.name if first else "", v.version if first else "",
                ",".join(v.aliases) if first else "",
                _fmt(e.top1 if e else None), _fmt(e.top5 if e else None),
                f"{e.dataset_name} {e.dataset_digest}" if e else "-",
                _fmt(v.tag_number("val_top1")) if first else "",
                v.tags.get("temporal", "") if first else "", _when(v.created_ms) if first else "")
    Console().print(table)


@app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="registered model name"),
    version: str = typer.Argument(..., help="version to promote"),
    alias: str = typer.Option("champion", help="alias to move"),
    force: bool = typer.Option(False, "--force",
                               help="promote even if unmeasured, measured elsewhere or worse"),
) -> None:
    """Point ALIAS at VERSION if it measures at least as well on the holder's dataset."""
    from registry.versions import ModelNotFoundError, PromotionRefused, promote

    try:
        before = promote(name, version, alias, force=force)
    except (ModelNotFoundError, PromotionRefused) as e:
        raise fail(str(e)) from None
    was = f" (was version {before})" if before else ""
    typer.echo(f"models:/{name}@{alias} -> version {version}{was}")


@app.command("register")
def register_cmd(
    model_dir: Path = typer.Argument(..., help="folder with model.safetensors + config.json"),
    name: str = typer.Option(..., "--name", help="registered model name"),
) -> None:
    """Register a saved model folder as a version of NAME (once: same weights, same version)."""
    import tsm_model
    from registry.versions import ModelNotFoundError, check_model_dir, register_if_new

    try:
        check_model_dir(model_dir)
        config = tsm_model.load_config(model_dir)  # refuse folders that are not a TSM model
    except (ModelNotFoundError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    version, created = register_if_new(model_dir, name, tags={
        "arch": config.arch, "temporal": "tsm" if config.shift else "tsn",
        "num_segments": str(config.num_segments), "input_size": str(config.input_size)})
    if created:
        typer.echo(f"registered {model_dir} as models:/{name}/{version}")
    else:
        typer.echo(f"{model_dir}: same weights already registered as version {version} "
                   f"(models:/{name}/{version}); nothing registered")
