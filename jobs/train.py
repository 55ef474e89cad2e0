"""`tsm train`: train a TSM (or, with --no-shift, TSN) model on a labelled manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.console import fail
from training.train_job import TrainConfig as T


def command(
    train_manifest: Path = typer.Option(..., "--train", help="labelled manifest (uri,label)"),
    val_manifest: Path = typer.Option(..., "--val", help="labelled validation manifest"),
    model_config: str | None = typer.Option(
        None, "--model-config", help="TSM config as a JSON file or inline JSON"),
    arch: str | None = typer.Option(None, help="backbone: resnet18|34|50|101|mobilenetv2"),
    segments: int | None = typer.Option(None, help="frames per clip (TSN segments)"),
    input_size: int | None = typer.Option(None, help="crop size fed to the network"),
    resize_size: int | None = typer.Option(None, help="shorter side before the centre crop"),
    dropout: float | None = typer.Option(None, help="dropout before the classifier"),
    no_shift: bool = typer.Option(False, "--no-shift", help="train the TSN baseline (no shift)"),
    epochs: int = typer.Option(T.epochs),
    batch_size: int = typer.Option(T.batch_size),
    lr: float = typer.Option(T.lr),
    weight_decay: float = typer.Option(T.weight_decay),
    seed: int = typer.Option(T.seed),
    name: str = typer.Option(T.name, help="registered model name"),
    out: Path = typer.Option(T.out_dir, help="where the best model and history go"),
    init: Path | None = typer.Option(T.init, help="fine-tune from this saved model directory"),
    workers: int = typer.Option(T.workers, help="DataLoader worker processes"),
    threads: int | None = typer.Option(
        T.threads, help="torch intra-op threads [default: half the CPUs]", show_default=False),
    register: bool = typer.Option(T.register, help="register the best model as a new version"),
    run_name: str | None = typer.Option(T.run_name, help="MLflow run name"),
) -> None:
    """Train a TSM model (TSN with --no-shift) and register the best validation model."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.errors import LabelError
    from training.train_job import train

    overrides = {"arch": arch, "num_segments": segments, "input_size": input_size,
                 "resize_size": resize_size, "dropout": dropout}
    if no_shift:
        overrides["shift"] = False
    try:
        cfg = T(train_manifest, val_manifest, epochs, batch_size, lr, weight_decay, seed=seed,
                name=name, out_dir=out, init=init, workers=workers, threads=threads,
                register=register, run_name=run_name)
    except LabelError as e:
        raise fail(str(e)) from None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    tasks: dict[int, int] = {}
    with Progress(*columns) as progress:

        def on_step(epoch: int, loss: float, acc: float) -> None:
            if epoch not in tasks:
                tasks[epoch] = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=None,
                                                 info="")
            progress.update(tasks[epoch], advance=1, info=f"loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(r) -> None:
            task = tasks.get(r.epoch)
            if task is not None:
                progress.update(task, total=progress.tasks[task].completed,
                                info=f"loss {r.train_loss:.3f} acc {r.train_acc:.3f} "
                                f"val top1 {r.val_top1:.3f} top5 {r.val_top5:.3f}")

        try:
            result = train(cfg, model_config, overrides, on_step=on_step, on_epoch=on_epoch)
        except (ValueError, FileNotFoundError) as e:
            raise fail(str(e)) from None
    msg = f"best val top-1 {result.best_val_top1:.4f}; model in {result.best_dir}"
    if result.version and result.registered:
        msg += f"; registered {name} version {result.version}"
    elif result.version:
        msg += f"; same weights already registered as {name} version {result.version}"
    Console().print(msg)
