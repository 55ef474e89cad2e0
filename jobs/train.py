"""`tsm train`: train a TSM (or, with --no-shift, TSN) model on a labelled manifest.

Clips come through the shared storage/decode/sampling/transforms path
(`pipeline.clip_dataset`), so a model sees in training what the label job
feeds it. Each epoch logs train loss/accuracy and validation top-1/top-5 to
MLflow; the best validation model is saved with `tsm_model.save` and
registered as a new version of `--name`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

DEFAULT_NAME = "tsm-synthetic"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model config."""

    train_manifest: Path
    val_manifest: Path
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    clip_grad: float = 20.0  # the reference TSM recipe's gradient-norm clip
    seed: int = 0
    name: str = DEFAULT_NAME
    out_dir: Path = Path("runs/train")
    init: Path | None = None
    workers: int = 1
    threads: int = 1
    register: bool = True
    run_name: str | None = None


@dataclass
class TrainResult:
    """What a run produced: the best model's folder and version, and the per-epoch history."""

    best_dir: Path
    best_val_top1: float
    version: str | None
    run_id: str
    history: list[dict[str, float]] = field(default_factory=list)


def topk_correct(logits, labels, k: int) -> int:
    """How many rows have their label among the top-k logits."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def model_config_from(
    spec: str | None, overrides: dict[str, Any], class_names: list[str], init: Path | None
):
    """A TSMConfig from a JSON file or inline JSON (or the init model's), flags and the classes."""
    from tsm_model import TSMConfig, load_config

    if init is not None:
        base: dict[str, Any] = load_config(init).to_dict()
    else:
        base = {"arch": "resnet18", "num_classes": len(class_names)}
    if spec:
        text = Path(spec).read_text() if Path(spec).is_file() else spec
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"--model-config is neither a JSON file nor JSON: {spec}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--model-config must be a JSON object")
        base.update(loaded)
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["num_classes"] = len(class_names)
    base["class_names"] = list(class_names)
    return TSMConfig.from_dict(base)


def _build_model(config, init: Path | None):
    """A fresh model, or the init model's weights with a new classifier if the classes differ."""
    import torch

    import tsm_model

    if init is None:
        return tsm_model.build(config)
    old = tsm_model.load_config(init)
    model = tsm_model.load(init, num_segments=config.num_segments, num_classes=old.num_classes,
                           class_names=old.class_names, dropout=config.dropout)
    if old.num_classes != config.num_classes or old.class_names != config.class_names:
        model.new_fc = torch.nn.Linear(model.feature_dim, config.num_classes)
    model.config = config
    return model


def _evaluate(model, loader, mean, std) -> tuple[float, float, float]:
    """(loss, top-1, top-5) over a loader, in eval mode."""
    import torch

    from pipeline.transforms import normalize

    model.eval()
    n = loss = top1 = top5 = 0.0
    with torch.inference_mode():
        for clips, labels in loader:
            logits = model(normalize(clips, mean, std))
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            top1 += topk_correct(logits, labels, 1)
            top5 += topk_correct(logits, labels, 5)
            n += len(labels)
    return loss / max(n, 1), top1 / max(n, 1), top5 / max(n, 1)


def train(cfg: TrainConfig, model_config_spec: str | None = None,
          overrides: dict[str, Any] | None = None) -> TrainResult:
    """Run the training; returns where the best model is and its registered version."""
    import mlflow
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from torch.utils.data import DataLoader

    import tsm_model
    from pipeline import registry
    from pipeline.clip_dataset import ClipDataset, class_names_for, read_labelled_manifest
    from pipeline.tracking import configure_mlflow
    from pipeline.transforms import normalize

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_rows = read_labelled_manifest(cfg.train_manifest)
    val_rows = read_labelled_manifest(cfg.val_manifest)
    if not train_rows or not val_rows:
        raise ValueError("the train and val manifests must both have rows")
    classes = class_names_for(cfg.train_manifest, [lab for _, lab in train_rows])
    ids = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for _, lab in val_rows} - set(ids))
    if unknown:
        raise ValueError(f"val labels not seen in training: {', '.join(unknown)}")
    mc = model_config_from(model_config_spec, overrides or {}, classes, cfg.init)
    model = _build_model(mc, cfg.init)

    def dataset(rows, train: bool) -> ClipDataset:
        return ClipDataset([(u, ids[lab]) for u, lab in rows], mc.num_segments, mc.input_size,
                           mc.resize_size, train=train, seed=cfg.seed)

    train_ds, val_ds = dataset(train_rows, True), dataset(val_rows, False)
    loader_args: dict[str, Any] = {"batch_size": cfg.batch_size, "num_workers": cfg.workers}
    if cfg.workers > 0:
        loader_args["persistent_workers"] = True
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                              generator=gen, **loader_args)
    val_loader = DataLoader(val_ds, shuffle=False, **loader_args)

    steps_per_epoch = len(train_loader)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        # linear warm-up, then cosine decay to zero over the remaining steps
        lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total - warmup)))),
    )

    configure_mlflow()
    mlflow.set_experiment(cfg.name)
    out = Path(cfg.out_dir)
    best_dir = out / "best"
    history: list[dict[str, float]] = []
    best = -1.0
    kind = "tsm" if mc.shift else "tsn"
    run_name = cfg.run_name or f"{kind}-{mc.arch}-seed{cfg.seed}"
    with mlflow.start_run(run_name=run_name) as run:
        params = {f"model.{k}": v for k, v in mc.to_dict().items() if k != "class_names"}
        params.update({f"train.{k}": str(v) for k, v in asdict(cfg).items()})
        params.update({"train.num_train": len(train_rows), "train.num_val": len(val_rows)})
        mlflow.log_params(params)
        mlflow.set_tags({"model_name": cfg.name, "temporal": kind})
        mlflow.log_dict(mc.to_dict(), "model_config.json")
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn()]
        with Progress(*columns) as progress:
            for epoch in range(cfg.epochs):
                train_ds.set_epoch(epoch)
                model.train()
                task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}",
                                         total=steps_per_epoch, info="")
                t0 = time.monotonic()
                seen = loss_sum = correct = 0.0
                for clips, labels in train_loader:
                    logits = model(normalize(clips, mc.mean, mc.std))
                    loss = torch.nn.functional.cross_entropy(logits, labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    opt.step()
                    sched.step()
                    seen += len(labels)
                    loss_sum += float(loss.detach()) * len(labels)
                    correct += topk_correct(logits.detach(), labels, 1)
                    progress.update(task, advance=1,
                                    info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
                val_loss, top1, top5 = _evaluate(model, val_loader, mc.mean, mc.std)
                row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                       "train_acc": correct / max(seen, 1), "val_loss": val_loss,
                       "val_top1": top1, "val_top5": top5, "lr": opt.param_groups[0]["lr"],
                       "epoch_time_s": time.monotonic() - t0}
                history.append(row)
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
                progress.update(task, info=f"loss {row['train_loss']:.3f} "
                                f"acc {row['train_acc']:.3f} val top1 {top1:.3f} top5 {top5:.3f}")
                if top1 > best:
                    best = top1
                    tsm_model.save(model, best_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        mlflow.log_artifact(str(out / "history.json"))
        mlflow.log_metric("best_val_top1", best)
        version = None
        if cfg.register:
            version = registry.register_model(
                best_dir, cfg.name, run_id=run.info.run_id,
                tags={"arch": mc.arch, "temporal": kind, "val_top1": f"{best:.6f}",
                      "num_segments": str(mc.num_segments), "input_size": str(mc.input_size)},
            )
            mlflow.set_tag("registered_version", version)
    return TrainResult(best_dir, best, version, run.info.run_id, history)


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
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(1e-3, min=0.0),
    weight_decay: float = typer.Option(1e-4, min=0.0),
    seed: int = typer.Option(0),
    name: str = typer.Option(DEFAULT_NAME, help="registered model name"),
    out: Path = typer.Option(Path("runs/train"), help="where the best model and history go"),
    init: Path | None = typer.Option(None, help="fine-tune from this saved model directory"),
    workers: int = typer.Option(1, min=0, help="DataLoader worker processes"),
    threads: int = typer.Option(max(1, (os.cpu_count() or 2) // 2), min=1,
                                help="torch intra-op threads"),
    register: bool = typer.Option(True, help="register the best model as a new version"),
    run_name: str | None = typer.Option(None, help="MLflow run name"),
) -> None:
    """Train a TSM model (TSN with --no-shift) and register the best validation model."""
    from rich.console import Console

    overrides = {"arch": arch, "num_segments": segments, "input_size": input_size,
                 "resize_size": resize_size, "dropout": dropout}
    if no_shift:
        overrides["shift"] = False
    cfg = TrainConfig(train_manifest, val_manifest, epochs, batch_size, lr, weight_decay,
                      seed=seed, name=name, out_dir=out, init=init, workers=workers,
                      threads=threads, register=register, run_name=run_name)
    try:
        result = train(cfg, model_config, overrides)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    msg = f"best val top-1 {result.best_val_top1:.4f}; model in {result.best_dir}"
    if result.version:
        msg += f"; registered {name} version {result.version}"
    Console().print(msg)
