"""The training loop: AdamW, linear warm-up then cosine decay, validation after every epoch.

Plain PyTorch with no logging of its own: `fit` reports each step and each
epoch through callbacks, so the caller decides what to record (MLflow, a
progress bar, a checkpoint of the best model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from pipeline.transforms import normalize


@dataclass(frozen=True)
class Schedule:
    """How the weights move: optimiser, learning-rate schedule, gradient clipping."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    clip_grad: float  # the reference TSM recipe's gradient-norm clip


@dataclass(frozen=True)
class EpochResult:
    """One epoch's numbers (what MLflow records per step)."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    epoch_time_s: float

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "epoch"}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many rows have their label among the top-k logits."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def evaluate(model, loader: DataLoader) -> tuple[float, float, float]:
    """(loss, top-1, top-5) of `model` over a loader of uint8 clips, in eval mode."""
    mean, std = model.config.mean, model.config.std
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


def _lr_lambda(steps_per_epoch: int, schedule: Schedule) -> Callable[[int], float]:
    total = max(1, schedule.epochs * steps_per_epoch)
    warmup = max(1, round(schedule.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        # linear warm-up, then cosine decay to zero over the remaining steps
        progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def fit(
    model,
    train_loader: DataLoader,
    val_loader: DataLoader,
    schedule: Schedule,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train `model` in place; returns one `EpochResult` per epoch.

    `on_step(epoch, running loss, running accuracy)` follows the batches;
    `on_epoch(result)` comes after each epoch's validation. A dataset with a
    `set_epoch` method gets it called, so its randomness depends on the epoch.
    """
    mean, std = model.config.mean, model.config.std
    opt = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(len(train_loader), schedule))
    history: list[EpochResult] = []
    for epoch in range(1, schedule.epochs + 1):
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch - 1)
        model.train()
        started = time.monotonic()
        seen = loss_sum = correct = 0.0
        for clips, labels in train_loader:
            logits = model(normalize(clips, mean, std))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.clip_grad)
            opt.step()
            sched.step()
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
            correct += topk_correct(logits.detach(), labels, 1)
            if on_step:
                on_step(epoch, loss_sum / seen, correct / seen)
        val_loss, top1, top5 = evaluate(model, val_loader)
        result = EpochResult(epoch, loss_sum / max(seen, 1), correct / max(seen, 1), val_loss,
                             top1, top5, opt.param_groups[0]["lr"], time.monotonic() - started)
        history.append(result)
        if on_epoch:
            on_epoch(result)
    return history
