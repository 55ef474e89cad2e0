"""`tsm model ...`: inspect saved models and import official / mmaction2 checkpoints.

torch is imported inside the commands so that `tsm --help` answers at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jobs.console import fail

if TYPE_CHECKING:
    from tsm_model import TSM, TSMConfig

app = typer.Typer(
    help="Inspect TSM models and import official TSM / mmaction2 checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn expected failures (bad file, bad option) into one line on stderr and exit 2."""
    try:
        yield
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError
        raise fail(str(err)) from None


def _open_model(path: Path, **options: Any) -> TSM:
    from tsm_model import import_checkpoint, load

    if path.is_dir():
        overrides = {k: v for k, v in options.items() if v is not None}
        return load(path, **overrides)
    return import_checkpoint(path, **options)


def _gflops(config: TSMConfig) -> float:
    """FLOPs for one clip (2 per multiply-add), counted on the meta device: no compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tsm_model import build

    with torch.device("meta"):
        model = build(config).eval()
        clip = torch.empty(1, config.num_segments, 3, config.input_size, config.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(clip)
    return counter.get_total_flops() / 1e9


def _read_class_names(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


@app.command()
def info(
    path: Path = typer.Argument(..., help="Saved model directory, or an official/mmaction2 .pth."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print a model's config, parameter count and GFLOPs per clip."""
    with _one_line_errors():
        model = _open_model(path)
        config = model.config
        summary: dict[str, Any] = {
            "path": str(path),
            "config": config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "shift_points": len(model.shift_modules()),
            "gflops_per_clip": round(_gflops(config), 3),
        }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    shown = {k: v for k, v in summary["config"].items() if k != "class_names"}
    names = config.class_names
    typer.echo(f"model: {path}")
    for key, value in shown.items():
        typer.echo(f"  {key}: {value}")
    preview = ", ".join(names[:5]) + (f", ... ({len(names)} total)" if len(names) > 5 else "")
    typer.echo(f"  class_names: {preview}")
    typer.echo(f"parameters: {summary['parameters']:,}")
    typer.echo(f"shift points: {summary['shift_points']}")
    typer.echo(
        f"GFLOPs per clip ({config.num_segments} x {config.input_size}x{config.input_size}): "
        f"{summary['gflops_per_clip']:.2f}"
    )


@app.command("import-official")
def import_official(
    path: Path = typer.Argument(..., help="Official TSM or mmaction2 ResNetTSM .pth file."),
    out: Path = typer.Option(
        ..., "--out", help="Directory to write model.safetensors + config.json."
    ),
    num_segments: int | None = typer.Option(
        None, help="Frames per clip (default: file name, else 8)."
    ),
    shift_div: int | None = typer.Option(
        None, help="1/fraction of shifted channels (default: file name, else 8)."
    ),
    shift_place: str | None = typer.Option(
        None, help="blockres or block (checked against the weights)."
    ),
    temporal_pool: bool | None = typer.Option(
        None, "--temporal-pool/--no-temporal-pool", help="Checked against the weights."
    ),
    class_names: Path | None = typer.Option(None, help="Text file, one class name per line."),
) -> None:
    """Convert a .pth checkpoint into the safetensors + JSON model format."""
    from tsm_model import save

    with _one_line_errors():
        if path.is_dir():
            raise ValueError(f"{path} is already a saved model directory, not a .pth file")
        model = _open_model(
            path,
            num_segments=num_segments,
            shift_div=shift_div,
            shift_place=shift_place,
            temporal_pool=temporal_pool,
            class_names=_read_class_names(class_names),
        )
        save(model, out)
    cfg = model.config
    typer.echo(
        f"wrote {out}: {cfg.arch}, {cfg.num_classes} classes, shift={cfg.shift}"
        f"{f' ({cfg.shift_place}, 1/{cfg.shift_div})' if cfg.shift else ''}, "
        f"temporal_pool={cfg.temporal_pool}, num_segments={cfg.num_segments}"
    )
