"""`tsm models list|register|promote|info|import`: models and the registry from the command line.

torch and mlflow are imported inside the commands so that `tsm --help` answers at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jobs.console import TsmCommand, fail, out, results_console

if TYPE_CHECKING:
    from tsm_model import TSM, TSMConfig

app = typer.Typer(
    help="Models: list, register and promote registered versions; inspect any model; "
    "import official TSM / mmaction2 checkpoints.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn expected failures (bad file, bad option, unknown model) into one line, exit 2."""
    from registry.versions import ModelNotFoundError

    try:
        yield
    except (ValueError, OSError, ModelNotFoundError) as err:  # CheckpointError is a ValueError
        raise fail(str(err)) from None


# ------------------------------------------------------------------ the registry


@app.command("list", cls=TsmCommand)
def list_cmd(
    name: str | None = typer.Argument(None, help="only this registered model",
                                      show_default="every registered model"),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print one JSON array (one object per version)."),
) -> None:
    """Registered versions, their aliases and their latest accuracy per evaluation dataset."""
    from rich import box
    from rich.table import Column, Table

    from registry.versions import ModelNotFoundError, list_versions

    try:
        versions = list_versions(name)
        latest = [list(v.latest_evaluations().values()) for v in versions]
    except ModelNotFoundError as e:
        raise fail(str(e)) from None
    if as_json:
        out(json.dumps([_version_json(v, evals) for v, evals in zip(versions, latest,
                                                                    strict=True)]))
        return
    if not versions:
        out("no registered models")
        return
    # names, aliases and digests are what people copy: never wrap or cut them
    # (the training tags, val top-1 among them, are in `tsm models info`)
    table = Table(Column("name", no_wrap=True), "version", Column("aliases", no_wrap=True),
                  Column("top-1", no_wrap=True), Column("top-5", no_wrap=True),
                  Column("dataset / digest", no_wrap=True), "created (UTC)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for v, evals in zip(versions, latest, strict=True):
        for i, e in enumerate(evals or [None]):  # one row per evaluation dataset, newest first
            first = i == 0
            table.add_row(
                v.name if first else "", v.version if first else "",
                ",".join(v.aliases) if first else "",
                _fmt(e.top1 if e else None), _fmt(e.top5 if e else None),
                f"{e.dataset_name}\n{e.dataset_digest}" if e else "-",
                _when(v.created_ms) if first else "")
    results_console().print(table)


def _version_json(v, evals) -> dict[str, Any]:
    """One version as `tsm models list --json` prints it."""
    return {
        "name": v.name, "version": v.version, "aliases": list(v.aliases),
        "created": _when(v.created_ms), "created_ms": v.created_ms, "model_id": v.model_id,
        "run_id": v.run_id, "source": v.source, "tags": dict(v.tags),
        "latest_evaluations": [
            {"dataset_name": e.dataset_name, "dataset_digest": e.dataset_digest,
             "num_videos": e.num_videos, "top1": e.top1, "top5": e.top5, "run_id": e.run_id,
             "measured_at": _when(e.timestamp_ms)} for e in evals],
    }


@app.command("promote", cls=TsmCommand)
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
    out(f"models:/{name}@{alias} -> version {version}{was}")


@app.command("register", cls=TsmCommand)
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
        out(f"registered {model_dir} as models:/{name}/{version}")
    else:
        out(f"{model_dir}: same weights already registered as version {version} "
                   f"(models:/{name}/{version}); nothing registered")


# ------------------------------------------------------------------ any model


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


def _registered(uri: str) -> tuple[Path, dict[str, Any]]:
    """A `models:/` URI: its local files (fetched like the label job does) and registry facts."""
    from registry import versions

    ref = versions.resolve_model(uri)
    v = versions.get_version(ref.name, ref.version)
    evals = v.latest_evaluations()
    facts = {
        "name": v.name, "version": v.version, "aliases": list(v.aliases),
        "model_id": v.model_id, "weights_sha256": v.tags.get(versions.DIGEST_TAG),
        "pyfunc": v.model_id is not None, "source": v.source, "run_id": v.run_id,
        "tags": {k: val for k, val in v.tags.items() if k != versions.DIGEST_TAG},
        "num_evaluations": len(v.evaluations()),
        "latest_evaluations": [
            {"dataset_name": e.dataset_name, "dataset_digest": e.dataset_digest,
             "num_videos": e.num_videos, "top1": e.top1, "top5": e.top5, "run_id": e.run_id,
             "measured_at": _when(e.timestamp_ms)} for e in evals.values()],
    }
    return ref.path, facts


def _print_registered(r: dict[str, Any]) -> None:
    aliases = f" (@{', @'.join(r['aliases'])})" if r["aliases"] else ""
    out(f"registered: {r['name']} version {r['version']}{aliases}")
    if r["pyfunc"]:
        out(f"  MLflow model: {r['model_id']} (mlflow.pyfunc.load_model works)")
    else:
        out("  MLflow model: none (registered before versions were MLflow models)")
    out(f"  weights sha256: {r['weights_sha256']}")
    if r["tags"]:
        out("  tags: " + ", ".join(f"{k}={v}" for k, v in sorted(r["tags"].items())))
    out(f"  evaluations: {r['num_evaluations']}"
               + ("; latest per dataset:" if r["latest_evaluations"] else ""))
    for e in r["latest_evaluations"]:
        size = f", {e['num_videos']} videos" if e["num_videos"] is not None else ""
        out(f"    {e['dataset_name']} (digest {e['dataset_digest']}{size}): "
                   f"top-1 {_fmt(e['top1'])} top-5 {_fmt(e['top5'])} "
                   f"({e['measured_at']} UTC, run {e['run_id']})")


def info(
    target: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION, a saved "
                                 "model folder, or an official/mmaction2 .pth"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print a model's config, parameter count and GFLOPs per clip (and registry facts)."""
    with _one_line_errors():
        registered = None
        if target.startswith("models:/"):
            path, registered = _registered(target)
        else:
            path = Path(target)
        model = _open_model(path)
        config = model.config
        summary: dict[str, Any] = {
            "path": target,
            "config": config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "shift_points": len(model.shift_modules()),
            "gflops_per_clip": round(_gflops(config), 3),
        }
        if registered is not None:
            summary["files"] = str(path)
            summary["registered"] = registered
    if as_json:
        out(json.dumps(summary))
        return
    shown = {k: v for k, v in summary["config"].items() if k != "class_names"}
    names = config.class_names
    out(f"model: {target}" + (f" (files in {path})" if registered else ""))
    for key, value in shown.items():
        out(f"  {key}: {value}")
    preview = ", ".join(names[:5]) + (f", ... ({len(names)} total)" if len(names) > 5 else "")
    out(f"  class_names: {preview}")
    out(f"parameters: {summary['parameters']:,}")
    out(f"shift points: {summary['shift_points']}")
    out(
        f"GFLOPs per clip ({config.num_segments} x {config.input_size}x{config.input_size}): "
        f"{summary['gflops_per_clip']:.2f}"
    )
    if registered is not None:
        _print_registered(registered)


def import_cmd(
    path: Path = typer.Argument(..., help="Official TSM or mmaction2 ResNetTSM .pth file."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Directory to write model.safetensors + config.json."
    ),
    num_segments: int | None = typer.Option(
        None, help="Frames per clip.", show_default="the file name's, else 8"
    ),
    shift_div: int | None = typer.Option(
        None, help="1/fraction of shifted channels.", show_default="the file name's, else 8"
    ),
    shift_place: str | None = typer.Option(
        None, help="blockres or block (checked against the weights).",
        show_default="read from the weights"
    ),
    temporal_pool: bool | None = typer.Option(
        None, "--temporal-pool/--no-temporal-pool", help="Checked against the weights.",
        show_default="read from the weights"
    ),
    class_names: Path | None = typer.Option(None, help="Text file, one class name per line.",
                                            show_default="class_0, class_1, ..."),
) -> None:
    """Convert a .pth checkpoint into the safetensors + JSON model format (then `register` it)."""
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
        save(model, out_dir)
    cfg = model.config
    out(
        f"wrote {out_dir}: {cfg.arch}, {cfg.num_classes} classes, shift={cfg.shift}"
        f"{f' ({cfg.shift_place}, 1/{cfg.shift_div})' if cfg.shift else ''}, "
        f"temporal_pool={cfg.temporal_pool}, num_segments={cfg.num_segments}"
    )


app.command("info", cls=TsmCommand)(info)
app.command("import", cls=TsmCommand)(import_cmd)
