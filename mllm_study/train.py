"""The training loop on accelerate: AdamW, warm-up + cosine schedule, gradient accumulation, loss log, progress bar.

Usage: ``result = train_model(model, collator, records, param_groups, TrainSettings(epochs=3, batch_size=16))``

The loop never assumes one device: it runs under ``accelerate launch`` (DDP) unchanged. Labels are computed by the
:class:`~mllm_study.data.Collator` (answer tokens only). Explicit ``position_ids`` from the attention mask keep
left-padded batches consistent with generation (prefix-tuning pitfall, CONTRIBUTING.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

__all__ = ["TrainSettings", "TrainResult", "TrainingDiverged", "train_model", "forward_inputs", "get_accelerator",
           "set_seed"]

_ACCELERATOR = None
# Models whose position ids are not a plain 0..n-1 range (multimodal rotary); let them compute their own.
_OWN_POSITIONS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``step`` says when."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step
        self.loss = loss


@dataclass
class TrainSettings:
    """How long and how to train (learning rates live in the parameter groups)."""

    epochs: float = 3.0  # may be fractional; ignored when max_steps is set
    max_steps: int | None = None  # optimiser steps; overrides epochs
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    desc: str = "train"
    progress: bool = True


@dataclass
class TrainResult:
    """What the loop measured."""

    steps: int
    samples: int
    seconds: float
    final_loss: float
    log: list[dict] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_accelerator():
    """The process-wide Accelerator (accelerate allows one state per process; see CONTRIBUTING.md)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available())
    return _ACCELERATOR


def forward_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``position_ids`` from the attention mask (left padding), as ``generate`` does, where the model allows."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if "attention_mask" in batch and model_type not in _OWN_POSITIONS and "position_ids" not in batch:
        batch = dict(batch)
        batch["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return batch


def train_model(model: torch.nn.Module, collator: Callable, records: list[dict], param_groups: list[dict],
                settings: TrainSettings, log_path: str | Path | None = None,
                on_epoch_end: Callable[[int, torch.nn.Module], dict | None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``records``.

    Args:
        model: the (PEFT-wrapped) model; only parameters in ``param_groups`` are optimised.
        collator: records -> batch (e.g. :class:`~mllm_study.data.Collator` in train mode).
        records: training records.
        param_groups: AdamW parameter groups, each with its own ``lr`` (e.g. PEFT weights and the connector).
        settings: schedule, batch size, accumulation, logging.
        log_path: optional JSON-lines loss log, appended as training goes.
        on_epoch_end: called as ``fn(epoch, model)`` after each full epoch and at the end (in eval mode); a dict it
            returns is added to the log with the epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (checked at every log point and at the end).
    """
    if not records:
        raise ValueError("no training records")
    groups = [g for g in param_groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter group is empty")
    acc = get_accelerator()
    set_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(records, batch_size=settings.batch_size, shuffle=True, collate_fn=collator,
                        generator=generator, drop_last=False)
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    # after prepare: under several processes the loader is sharded, so an epoch has fewer steps per process
    per_epoch = math.ceil(len(loader) / settings.grad_accum)
    total = settings.max_steps or max(1, math.ceil(per_epoch * settings.epochs))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else math.ceil(total * settings.warmup_ratio)
    # not passed through acc.prepare: its wrapper would step the schedule once per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    params = [p for g in groups for p in g["params"]]
    model.train()
    log: list[dict] = []
    log_file = open(log_path, "a") if log_path else None
    bar = tqdm(total=total, desc=settings.desc, disable=not settings.progress or not acc.is_main_process,
               dynamic_ncols=True, leave=False)
    start, step, samples, micro = time.perf_counter(), 0, 0, 0
    running, running_n = torch.zeros((), device=acc.device), 0
    try:
        while step < total:
            for batch in loader:
                micro += 1
                sync = micro % settings.grad_accum == 0
                ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
                with ctx:
                    out = model(**forward_inputs(model, batch))
                    acc.backward(out.loss / settings.grad_accum)
                running += out.loss.detach()
                running_n += 1
                samples += batch["input_ids"].shape[0] * acc.num_processes
                if not sync:
                    continue
                if settings.max_grad_norm:
                    acc.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % settings.log_every == 0 or step == total:
                    loss = (running / running_n).item()  # the only host sync, once per log interval
                    running, running_n = torch.zeros((), device=acc.device), 0
                    if not math.isfinite(loss):
                        raise TrainingDiverged(step, loss)
                    entry = {"step": step, "epoch": round(step / per_epoch, 4), "loss": loss,
                             "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 3)}
                    log.append(entry)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if log_file:
                        log_file.write(json.dumps(entry) + "\n")
                        log_file.flush()
                if on_epoch_end is not None and (step % per_epoch == 0 or step == total):
                    epoch = math.ceil(step / per_epoch)
                    if not log or log[-1].get("epoch_end") != epoch:
                        model.eval()
                        extra = on_epoch_end(epoch, acc.unwrap_model(model)) or {}
                        model.train()
                        entry = {"step": step, "epoch_end": epoch, **extra}
                        log.append(entry)
                        if log_file:
                            log_file.write(json.dumps(entry) + "\n")
                            log_file.flush()
                if step >= total:
                    break
    finally:
        bar.close()
        if log_file:
            log_file.close()
        acc.free_memory()  # drop the accelerator's references so a sweep does not accumulate models
    model = acc.unwrap_model(model)
    model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(steps=step, samples=samples, seconds=seconds,
                       final_loss=next((e["loss"] for e in reversed(log) if "loss" in e), float("nan")), log=log)


def trainable_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts (peft's convention: total includes the PEFT parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "all_params": total,
            "trainable_percent": 100.0 * trainable / total if total else 0.0}


__all__.append("trainable_summary")
