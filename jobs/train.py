"""`tsm train`: train a TSM (or, with --no-shift, TSN) model on a labelled manifest."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from jobs.console import (
    fail,
    log_file,
    out,
    progress_display,
    results_console,
    terminal_stderr,
    to_log,
)
from training.train_job import TrainConfig as T


def _model_default(value: object) -> str:
    """Where a model setting comes from when its flag is not given."""
    return f"--model-config's, else the --init model's, else {value}"


def command(
    train_manifest: Path = typer.Option(..., "--train", help="labelled manifest (uri,label)"),
    val_manifest: Path = typer.Option(..., "--val", help="labelled validation manifest"),
    model_config: str | None = typer.Option(
        None, "--model-config", help="TSM config as a JSON file or inline JSON",
        show_default="resnet18, or the --init model's config"),
    arch: str | None = typer.Option(None, help="backbone: resnet18|34|50|101|mobilenetv2",
                                    show_default=_model_default("resnet18")),
    segments: int | None = typer.Option(None, help="frames per clip (TSN segments)",
                                        show_default=_model_default(8)),
    input_size: int | None = typer.Option(None, help="crop size fed to the network",
                                          show_default=_model_default(224)),
    resize_size: int | None = typer.Option(None, help="shorter side before the centre crop",
                                           show_default=_model_default(256)),
    dropout: float | None = typer.Option(None, help="dropout before the classifier",
                                         show_default=_model_default(0.5)),
    no_shift: bool = typer.Option(False, "--no-shift", help="train the TSN baseline (no shift)"),
    epochs: int = typer.Option(T.epochs, help="passes over the training manifest"),
    batch_size: int = typer.Option(T.batch_size, help="clips per optimisation step"),
    lr: float = typer.Option(T.lr, help="peak learning rate (linear warm-up, then cosine decay)"),
    weight_decay: float = typer.Option(T.weight_decay, help="AdamW weight decay"),
    seed: int = typer.Option(T.seed, help="seed for initialisation, order and augmentation"),
    name: str = typer.Option(T.name, help="registered model name (and MLflow experiment)"),
    out_dir: Path = typer.Option(T.out_dir, "--out", help="where the best model and history go"),
    init: Path | None = typer.Option(T.init, help="fine-tune from this saved model directory",
                                     show_default="from scratch"),
    workers: int = typer.Option(T.workers, help="DataLoader worker processes"),
    threads: int | None = typer.Option(T.threads, help="torch intra-op threads",
                                       show_default="half the CPUs"),
    register: bool = typer.Option(T.register, help="register the best model as a new version"),
    run_name: str | None = typer.Option(T.run_name, help="MLflow run name",
                                        show_default="tsm|tsn-ARCH-seedSEED"),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show the progress on stderr."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the result as one JSON object on stdout."),
) -> None:
    """Train a TSM model (TSN with --no-shift) and register the best validation model."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from pipeline.errors import LabelError
    from training.train_job import train

    overrides = {"arch": arch, "num_segments": segments, "input_size": input_size,
                 "resize_size": resize_size, "dropout": dropout}
    if no_shift:
        overrides["shift"] = False
    try:
        cfg = T(train_manifest, val_manifest, epochs, batch_size, lr, weight_decay, seed=seed,
                name=name, out_dir=out_dir, init=init, workers=workers, threads=threads,
                register=register, run_name=run_name)
    except LabelError as e:
        raise fail(str(e)) from None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    tasks: dict[int, int] = {}
    log_path = log_file("train")
    # MLflow's and torch's own notes go to the log; the progress to the terminal's stderr
    with terminal_stderr() as stream, to_log(log_path), progress_display(
            stream, *columns, disable=not progress) as bar:

        def on_step(epoch: int, loss: float, acc: float) -> None:
            if epoch not in tasks:
                tasks[epoch] = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=None, info="")
            bar.update(tasks[epoch], advance=1, info=f"loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(r) -> None:
            task = tasks.get(r.epoch)
            if task is not None:
                bar.update(task, total=bar.tasks[task].completed,
                           info=f"loss {r.train_loss:.3f} acc {r.train_acc:.3f} "
                           f"val top1 {r.val_top1:.3f} top5 {r.val_top5:.3f}")

        try:
            result = train(cfg, model_config, overrides, on_step=on_step, on_epoch=on_epoch)
        except (ValueError, FileNotFoundError) as e:
            error = e
        else:
            error = None
    if error is not None:
        raise fail(str(error)) from None
    if as_json:
        out(json.dumps({
            "name": name, "version": result.version, "registered": result.registered,
            "best_dir": str(result.best_dir), "best_val_top1": result.best_val_top1,
            "run_id": result.run_id, "history": result.history, "log": str(log_path)}))
        return
    msg = f"best val top-1 {result.best_val_top1:.4f}; model in {result.best_dir}"
    if result.version and result.registered:
        msg += f"; registered {name} version {result.version}"
    elif result.version:
        msg += f"; same weights already registered as {name} version {result.version}"
    results_console(soft_wrap=True, highlight=False).print(msg)
