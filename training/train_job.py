"""Training a TSM (or, with shift off, TSN) model on labelled manifests, recorded in MLflow.

Clips come through the label job's own storage, decoder, sampler and
transforms (`training.clip_dataset`), so a model sees in training what the
label job feeds it. `training.loop.fit` does the optimisation; this module
sets it up and records it: parameters, per-epoch metrics, the best model
(saved with `tsm_model.save`) and its registration: an MLflow model logged
by the training run and a new version, unless a version already has the
same weights (then that version is reused and said so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import check

if TYPE_CHECKING:  # the loop imports torch: only when training, not for `tsm --help`
    from training.loop import EpochResult, Schedule

DEFAULT_NAME = "tsm-synthetic"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model config (the CLI's defaults)."""

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
    init: Path | None = None  # fine-tune from this saved model
    workers: int = 1  # DataLoader worker processes
    threads: int | None = None  # torch intra-op threads; None: half the CPUs
    register: bool = True
    run_name: str | None = None

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        check(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        check(self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        check(self.threads is None or self.threads >= 1,
              f"threads must be >= 1, got {self.threads}")

    @property
    def schedule(self) -> Schedule:
        from training.loop import Schedule

        return Schedule(self.epochs, self.lr, self.weight_decay, self.warmup_epochs,
                        self.clip_grad)

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)


@dataclass
class TrainResult:
    """What a run produced: the best model's folder and version, and the per-epoch history."""

    best_dir: Path
    best_val_top1: float
    version: str | None
    run_id: str
    history: list[dict[str, float]] = field(default_factory=list)
    registered: bool = False  # False with a version: the same weights were registered before


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


def build_model(config, init: Path | None):
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


def _loaders(cfg: TrainConfig, mc, train_rows, val_rows, ids):
    import torch
    from torch.utils.data import DataLoader

    from training.clip_dataset import ClipDataset

    def dataset(rows, train: bool) -> ClipDataset:
        return ClipDataset([(u, ids[lab]) for u, lab in rows], mc.num_segments, mc.input_size,
                           mc.resize_size, train=train, seed=cfg.seed)

    train_ds, val_ds = dataset(train_rows, True), dataset(val_rows, False)
    args: dict[str, Any] = {"batch_size": cfg.batch_size, "num_workers": cfg.workers}
    if cfg.workers > 0:
        args["persistent_workers"] = True
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                              generator=gen, **args)
    return train_loader, DataLoader(val_ds, shuffle=False, **args)


def train(
    cfg: TrainConfig,
    model_config_spec: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train, keep the best validation model, record the run; returns where the model is.

    `on_step` / `on_epoch` are `training.loop.fit`'s progress callbacks.
    """
    import torch

    import tsm_model
    from registry import versions
    from registry.tracking import TrackedRun
    from training.clip_dataset import class_names_for, read_labelled_manifest
    from training.loop import fit

    torch.set_num_threads(cfg.torch_threads)
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
    model = build_model(mc, cfg.init)
    train_loader, val_loader = _loaders(cfg, mc, train_rows, val_rows, ids)

    out = Path(cfg.out_dir)
    best_dir = out / "best"
    kind = "tsm" if mc.shift else "tsn"
    best = -1.0
    with TrackedRun(cfg.name, cfg.run_name or f"{kind}-{mc.arch}-seed{cfg.seed}",
                    tags={"model_name": cfg.name, "temporal": kind}) as run:
        params = {f"model.{k}": v for k, v in mc.to_dict().items() if k != "class_names"}
        params.update({f"train.{k}": v for k, v in asdict(cfg).items()})
        params.update({"train.num_train": len(train_rows), "train.num_val": len(val_rows)})
        run.log_params(params)
        run.log_dict(mc.to_dict(), "model_config.json")

        def epoch_done(result: EpochResult) -> None:
            nonlocal best
            run.log_metrics(result.metrics(), step=result.epoch)
            if result.val_top1 > best:
                best = result.val_top1
                tsm_model.save(model, best_dir)
            if on_epoch:
                on_epoch(result)

        history = fit(model, train_loader, val_loader, cfg.schedule, on_step=on_step,
                      on_epoch=epoch_done)
        rows = [asdict(h) for h in history]
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(rows, indent=1) + "\n")
        run.log_artifact(out / "history.json")
        run.log_metrics({"best_val_top1": best})
        version, created = None, False
        if cfg.register:
            # the weights' digest is the version's identity: the same weights reuse their version
            version, created = versions.register_if_new(
                best_dir, cfg.name, run_id=run.run_id,
                tags={"arch": mc.arch, "temporal": kind, "val_top1": f"{best:.6f}",
                      "num_segments": str(mc.num_segments), "input_size": str(mc.input_size)},
            )
            run.set_tags({"registered_version": version})
    return TrainResult(best_dir, best, version, run.run_id, rows, created)
