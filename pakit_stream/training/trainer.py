"""Train a batch model: minibatches, early stopping on validation loss, best weights kept.

The loop is the same for every :class:`~pakit_stream.batch.base.BatchModel` (they all choose
one of several classes: a codec, or the next block): AdamW, an optional learning-rate
schedule, gradient accumulation, mixed precision on CUDA, a checkpoint of the best epoch
(safetensors) and TensorBoard scalars (``Loss/train``, ``Loss/val``, ``Accuracy/train``,
``Accuracy/val``). Targets are class indices (cross-entropy) or, for cost-sensitive models, a
matrix of each class's cost (the expected cost of the softmax choice; "accuracy" is then the
share of samples where the choice is the cheapest class).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pakit_stream.exceptions import DataError
from pakit_stream.training.config import TrainingConfig

__all__ = ["ModelTrainer"]

log = logging.getLogger(__name__)


def _threads(config: TrainingConfig) -> int:
    # leave a core to the event loop: default threads made a 20k-sample retrain 10x slower here
    return config.num_threads or max(1, (os.cpu_count() or 2) - 1)


def _expected_cost(logits: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Mean expected cost of choosing by ``softmax(logits)``: a cost-sensitive objective."""
    return (torch.softmax(logits.float(), dim=1) * costs).sum(1).mean()


def _correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    target = y.argmin(1) if y.is_floating_point() else y
    return int((logits.argmax(1) == target).sum())


class ModelTrainer:
    def __init__(self, config: TrainingConfig | None = None) -> None:
        self.config = config or TrainingConfig()
        self.history: list[dict[str, float]] = []

    def train(self, model, train_data, val_data) -> dict[str, Any]:
        """Prepare ``model`` from ``train_data``, fit it, keep the epoch best on ``val_data``.

        Returns the validation metrics of the kept epoch (``accuracy``, ``loss``) and the run's
        bookkeeping (``epochs``, ``best_epoch``, ``seconds``, ``device``, ``samples``).
        """
        cfg = self.config
        if cfg.device:
            model.config.device = cfg.device
        torch.manual_seed(cfg.seed)  # before prepare: it builds the net, whose init is random
        model.prepare(train_data, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
        x, y = model.encode(train_data)
        xv, yv = model.encode(val_data)
        if len(y) == 0:
            raise DataError("no usable training samples")
        if len(yv) == 0:  # nothing held out: validate on training data, and say so
            log.warning("empty validation set: early stopping watches the training loss")
            xv, yv = x, y
        metrics = self.fit(model.net, x, y, xv, yv, model.device)
        if cfg.checkpoint_dir:
            model.save(Path(cfg.checkpoint_dir) / "best.safetensors")
        return {**metrics, "samples": int(len(y))}

    def fit(self, net: nn.Module, x, y, xv, yv, device: torch.device) -> dict[str, Any]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(_threads(cfg))
        net.to(device)
        amp = cfg.mixed_precision if cfg.mixed_precision is not None else device.type == "cuda"
        amp = amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = None
        if cfg.lr_schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        elif cfg.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.num_epochs)
        loss_fn = _expected_cost if y.is_floating_point() else nn.CrossEntropyLoss()
        writer = self._writer()
        x, y, xv, yv = x.to(device), y.to(device), xv.to(device), yv.to(device)
        best = (float("inf"), -1, None, 0.0)
        started, stale = time.perf_counter(), 0
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        epoch = -1
        for epoch in range(cfg.num_epochs):
            net.train()
            order = torch.randperm(len(y), generator=gen).to(device)
            total, correct = 0.0, 0
            opt.zero_grad(set_to_none=True)
            steps = range(0, len(y), cfg.batch_size)
            for step, i in enumerate(steps):
                idx = order[i:i + cfg.batch_size]
                with torch.autocast(device.type, dtype=torch.float16) if amp else contextlib.nullcontext():
                    out = net(x[idx])
                    loss = loss_fn(out, y[idx])
                scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
                if (step + 1) % cfg.gradient_accumulation_steps == 0 or step == len(steps) - 1:
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(idx)
                correct += _correct(out, y[idx])
            val_loss, val_acc = self._evaluate(net, xv, yv, loss_fn)
            row = {"epoch": epoch, "train_loss": total / len(y), "train_accuracy": correct / len(y),
                   "val_loss": val_loss, "val_accuracy": val_acc,
                   "lr": opt.param_groups[0]["lr"]}
            self.history.append(row)
            if writer is not None:
                writer.add_scalar("Loss/train", row["train_loss"], epoch)
                writer.add_scalar("Loss/val", val_loss, epoch)
                writer.add_scalar("Accuracy/train", row["train_accuracy"], epoch)
                writer.add_scalar("Accuracy/val", val_acc, epoch)
            if sched is not None:
                sched.step(val_loss) if cfg.lr_schedule == "plateau" else sched.step()
            if val_loss < best[0] - 1e-6:
                best = (val_loss, epoch, copy.deepcopy(net.state_dict()), val_acc)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.early_stopping_patience:
                    break
        if writer is not None:
            writer.close()
        if best[2] is not None:
            net.load_state_dict(best[2])
        net.eval()
        return {"accuracy": best[3], "loss": best[0], "best_epoch": best[1], "epochs": epoch + 1,
                "seconds": time.perf_counter() - started, "device": str(device),
                "mixed_precision": amp}

    @staticmethod
    @torch.no_grad()
    def _evaluate(net, x, y, loss_fn, batch: int = 8192) -> tuple[float, float]:
        net.eval()
        total, correct = 0.0, 0
        for i in range(0, len(y), batch):
            out = net(x[i:i + batch])
            total += float(loss_fn(out, y[i:i + batch])) * len(out)
            correct += _correct(out, y[i:i + batch])
        return total / len(y), correct / len(y)

    def _writer(self):
        cfg = self.config
        log_dir = cfg.tensorboard_dir or (Path(cfg.checkpoint_dir) / "runs" if cfg.checkpoint_dir
                                          else None)
        if log_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(log_dir))
