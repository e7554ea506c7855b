"""The training loop on accelerate: AdamW, warm-up + cosine schedule, gradient accumulation, loss log, progress bar.

Usage: ``result = train_model(model, collator, records, param_groups, TrainSettings(epochs=3, batch_size=16))``

The loop never assumes one device: it runs under ``accelerate launch`` (DDP) unchanged. Labels are computed by the
:class:`~mllm_study.data.Collator` (answer tokens only). Explicit ``position_ids`` from the attention mask keep
left-padded batches consistent with generation (prefix-tuning pitfall, CONTRIBUTING.md).

Fast path (benchmarks/README.md measures it against transformers' Trainer + peft):

- records are encoded once (``collator.prepare``: tokenised, images preprocessed, cached per process and optionally
  on disk, see :mod:`mllm_study.data`) and only padded per batch;
- the loss is read from the device once per log interval, never per step;
- on CUDA: bf16 autocast (fp16 where bf16 is unsupported) through accelerate, pinned memory with non-blocking
  copies, and logits computed only at answer positions (``TrainSettings.answer_logits``). Override with
  ``MLLM_STUDY_MIXED_PRECISION=no|bf16|fp16`` (read when the process's accelerator is created);
- on CPU: every ``nn.Dropout`` with p > 0 (LoRA's, the bottleneck adapter's) is swapped for :class:`MaskDropout`
  while the loop runs (``TrainSettings.fast_dropout``): the same inverted dropout, its masks drawn from 16-bit
  random integers, four per 64-bit draw, instead of ``bernoulli_``'s one float each. Measured: 12-13% of a LoRA or
  adapter step (``benchmarks/train_throughput.py --levers``). Other masks than torch's, so other (equally
  distributed) losses; the modules are put back when training ends;
- optional, off by default: ``group_by_length`` batches records of similar length (less padding; changes the
  batch composition, deterministically for a seed) and ``answer_logits=True`` on CPU (same loss up to float
  rounding: the output layer runs on fewer rows).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .errors import ConfigError, DataError, RunError, TrainingDiverged

__all__ = ["TrainSettings", "TrainResult", "TrainingDiverged", "train_model", "forward_inputs", "get_accelerator",
           "set_seed", "mixed_precision_setting", "compute_dtype", "precision_context",
           "enable_gradient_checkpointing", "peak_memory", "MaskDropout", "swap_dropout", "is_sharded"]

_ACCELERATOR = None
_KEEP = "_mllm_study_logits_to_keep"  # batch key (int) added by the training collate wrapper; never reaches the model
_IGNORE_INDEX = -100
# Models whose position ids are not a plain 0..n-1 range (multimodal rotary); let them compute their own.
_OWN_POSITIONS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


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
    # Batches of records of similar length (sorted inside shuffled windows of 50 batches, batch order shuffled):
    # less padding, but other batches than the plain shuffle, so off by default. Deterministic for a seed.
    group_by_length: bool = False
    # Compute the output layer and the loss only from the first answer position on (``logits_to_keep``). The same
    # loss up to float rounding; None = on when mixed precision is active (CUDA), off on CPU (bit-identical path).
    answer_logits: bool | None = None
    # How the loss averages over answer tokens: "token" (one mean over every supervised token of the batch, as
    # transformers and LLaVA do: long answers weigh more) or "sample" (each record's own mean, then the mean over
    # records: a one-word answer weighs as much as a long description; used by the tiny model's pre-training).
    loss_average: str = "token"
    # On CPU, draw dropout masks with :class:`MaskDropout` (module docstring); False keeps torch's nn.Dropout.
    fast_dropout: bool = True


@dataclass
class TrainResult:
    """What the loop measured."""

    steps: int
    samples: int
    seconds: float
    final_loss: float
    log: list[dict] = field(default_factory=list)
    mixed_precision: str = "no"  # the accelerator's: no | bf16 | fp16
    answer_logits: bool = False  # whether logits were computed at answer positions only
    tokens: int = 0  # non-padding input tokens trained on (all processes)
    peak_memory_mb: float | None = None  # GPU: max allocated during training; CPU: the process's peak RSS so far
    peak_memory_kind: str = "cpu_rss"  # cuda_max_allocated | cpu_rss
    # Sharded training (FSDP, DeepSpeed ZeRO-3) only: the trained model's full state dict, gathered from every rank
    # before the wrapper goes (on the main process; accelerate gives the others an empty dict). The model this
    # loop returns still holds shards, so evaluation and saving load this state into an unsharded copy.
    full_state: dict | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """(peak MiB, what it measures): CUDA max allocated since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "cuda_max_allocated"
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu_rss"  # KiB on Linux
    except (ImportError, OSError):  # pragma: no cover - not on Linux
        return None, "cpu_rss"


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing in the base model (non-reentrant: works with frozen inputs and every method here).

    Raises:
        ValueError: the model does not support it (named).
    """
    from .methods.placement import unwrap_model

    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        raise ConfigError("run.gradient_checkpointing does not work with prefix tuning: checkpointed training runs "
                          "without the KV cache that carries the prefix (the attention mask and keys then disagree); "
                          "turn it off for this method")
    base = unwrap_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(base).__name__} does not support gradient checkpointing (run.gradient_checkpointing)")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(base.config, "use_cache", None):
        base.config.use_cache = False  # training recomputes; generation passes use_cache explicitly


class MaskDropout(torch.nn.Module):
    """Inverted dropout whose CPU masks come from 16-bit random integers (the loop's stand-in for ``nn.Dropout``).

    In training on CPU an element is zeroed when a uniform int16 falls below ``threshold``, i.e. with probability
    ``round(p * 65536) / 65536`` (p = 0.05: 0.0500031), and the kept ones are scaled by ``1 / (1 - p)`` as torch
    does. One ``randint`` over int64 gives four such integers, so a mask costs a quarter of the draws of
    ``bernoulli_``. The draws come from torch's global generator (seeded by :func:`set_seed`): deterministic for a
    seed. Elsewhere (CUDA, evaluation) it is ``torch.nn.functional.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1) (got {p})")
        self.p = float(p)
        self.threshold = round(self.p * 65536) - 32768
        self.scale = 1.0 / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, self.training)
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        mask = keep * self.scale  # float32
        return x * (mask if mask.dtype == x.dtype else mask.to(x.dtype))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def swap_dropout(model: torch.nn.Module) -> Callable[[], None]:
    """Replace every ``nn.Dropout`` with p > 0 in ``model`` by a :class:`MaskDropout`; returns the undo."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if type(child) is torch.nn.Dropout and child.p > 0:
                parent._modules[name] = MaskDropout(child.p).train(child.training)
                swapped.append((parent, name, child))

    def undo() -> None:
        for parent, name, child in swapped:
            child.train(parent._modules[name].training)
            parent._modules[name] = child

    return undo


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mixed_precision_setting() -> str | None:
    """``MLLM_STUDY_MIXED_PRECISION`` (auto | no | bf16 | fp16) resolved: auto = bf16 on CUDA when supported, else
    fp16 on CUDA, else no. None leaves the choice to ``accelerate launch --mixed_precision`` when it set one.
    """
    choice = os.environ.get("MLLM_STUDY_MIXED_PRECISION", "auto").strip().lower()
    if choice not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"MLLM_STUDY_MIXED_PRECISION must be auto, no, bf16 or fp16 (got {choice!r})")
    if choice != "auto":
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def get_accelerator():
    """The process-wide Accelerator (accelerate allows one state per process; see CONTRIBUTING.md).

    Mixed precision follows :func:`mixed_precision_setting` (bf16/fp16 autocast on CUDA, none on CPU).
    """
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = {"cpu": not cuda, "mixed_precision": mixed_precision_setting()}
        if cuda:
            from accelerate.utils import DataLoaderConfiguration

            kwargs["dataloader_config"] = DataLoaderConfiguration(non_blocking=True)  # with pinned host memory
        _ACCELERATOR = Accelerator(**kwargs)
    return _ACCELERATOR


def _unwrap_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel wrappers (which do not forward ``config``)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def forward_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``position_ids`` from the attention mask (left padding), as ``generate`` does, where the model allows.

    Models with multimodal rotary positions (Qwen2-VL) compute their own, except under prefix tuning: peft lengthens
    the attention mask by the virtual tokens, which the model's 3-D position code cannot index the ids with, so
    the positions are computed here from the real mask (text row + the 3 rotary rows, as ``generate`` builds them;
    peft offsets them by the prefix length).
    """
    inner = _unwrap_parallel(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", "")
    if "attention_mask" not in batch or "position_ids" in batch:
        return batch
    if model_type not in _OWN_POSITIONS:
        batch = dict(batch)
        batch["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    elif getattr(getattr(inner, "active_peft_config", None), "is_prompt_learning", False):
        base = inner.get_base_model()
        mask = batch["attention_mask"]
        rope, _ = base.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch.get("mm_token_type_ids"),
                                            image_grid_thw=batch.get("image_grid_thw"), attention_mask=mask)
        text = (mask.long().cumsum(-1) - 1).clamp(min=0)
        batch = dict(batch)
        batch["position_ids"] = torch.cat([text[None].to(rope.device), rope], dim=0)
    return batch


def compute_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The half-precision dtype of a model's base weights when it also holds float32 ones (fp32 master weights of a
    method beside a float16/bfloat16 base, in training and after reloading), else None (a float32 model, or a pure
    half-precision one: nothing to do)."""
    low = has32 = None
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16):
            low = p.dtype
        elif p.dtype == torch.float32:
            has32 = True
        if low is not None and has32:
            return low
    return None


def precision_context(model: torch.nn.Module):
    """Autocast in the frozen base's half precision where the model mixes it with float32 trainable weights (see
    :func:`compute_dtype`); a no-op context for a float32 model (the tiny model's path is unchanged)."""
    dtype = compute_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=dtype)


class _LengthGroupedBatches:
    """Index batches of similar length, deterministic for a generator state (HF ``group_by_length`` style).

    Each epoch: a seeded permutation, cut into windows of ``window`` batches, each window sorted by length
    (longest first), cut into batches, and the batch order shuffled.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, window: int = 50):
        self.lengths, self.batch_size, self.generator, self.window = lengths, batch_size, generator, window

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, size = len(self.lengths), self.batch_size
        perm = torch.randperm(n, generator=self.generator).tolist()
        span = size * self.window
        batches = []
        for start in range(0, n, span):
            window = sorted(perm[start:start + span], key=lambda i: -self.lengths[i])
            batches.extend(window[j:j + size] for j in range(0, len(window), size))
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def _first_answer_keep(labels: torch.Tensor) -> int:
    """How many final positions hold every prediction with a label (after the one-token shift)."""
    length = labels.shape[1]
    positions = (labels != _IGNORE_INDEX).any(0).nonzero()
    if positions.numel() == 0:
        return length
    return min(length, length - int(positions[0, 0]) + 1)


class _AnswerLogitsCollate:
    """Wraps the collator: adds (on the host, before any device copy) how many final positions need logits."""

    def __init__(self, collator: Callable):
        self.collator = collator

    def __call__(self, records: list[dict]) -> dict:
        batch = self.collator(records)
        if "labels" in batch:
            batch[_KEEP] = _first_answer_keep(batch["labels"])
        return batch


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    from .methods.placement import unwrap_model

    try:
        return "logits_to_keep" in inspect.signature(type(unwrap_model(model)).forward).parameters
    except (TypeError, ValueError):
        return False


def _answer_loss(logits: torch.Tensor, labels: torch.Tensor, keep: int, average: str = "token") -> torch.Tensor:
    """The causal-LM loss from the last ``keep`` positions' logits: the mean over answer tokens (``average="token"``)
    or the mean over records of each record's mean over its answer tokens (``"sample"``)."""
    length = labels.shape[1]
    shift = torch.nn.functional.pad(labels[:, length - keep + 1:], (0, 1), value=_IGNORE_INDEX)
    logits = logits[:, -keep:].float()
    shift = shift.to(logits.device)
    if average == "token":
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shift.reshape(-1),
                                                 ignore_index=_IGNORE_INDEX)
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shift, ignore_index=_IGNORE_INDEX,
                                                  reduction="none")
    counts = (shift != _IGNORE_INDEX).sum(1)
    has = counts > 0
    return (per_token.sum(1)[has] / counts[has]).mean()


@contextlib.contextmanager
def _without_autocast(model: torch.nn.Module):
    """Temporarily restore the forward that accelerate's mixed-precision wrapper replaced (for evaluation)."""
    original = model.__dict__.get("_original_forward")
    patched = model.__dict__.get("forward")
    if original is None or patched is None:
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = patched


def is_sharded(acc) -> bool:
    """Whether ``acc`` shards parameters across processes (FSDP, DeepSpeed ZeRO-3): then no process holds the whole
    model, and whatever runs the model outside the loop (evaluation, saving) needs the gathered state first."""
    kind = str(getattr(acc, "distributed_type", "")).upper()
    if "FSDP" in kind:
        return True
    if "DEEPSPEED" in kind:
        plugin = getattr(getattr(acc, "state", None), "deepspeed_plugin", None)
        return getattr(plugin, "zero_stage", 0) == 3
    return False


def _release(acc) -> None:
    """Drop the accelerator's references to this run's objects (a sweep must not accumulate models). On CPU without
    the full garbage collection of ``free_memory`` (0.2 s a run): the references go, memory follows.
    """
    if acc.device.type != "cpu":
        acc.free_memory()
        return
    for name in ("_schedulers", "_optimizers", "_models", "_dataloaders"):
        if isinstance(getattr(acc, name, None), list):
            setattr(acc, name, [])
    acc.step = 0


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
        on_epoch_end: called as ``fn(epoch, model)`` after each full epoch and at the end (in eval mode, without
            mixed-precision autocast); a dict it returns is added to the log with the epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (checked at every log point and at the end; the step is
            the first non-finite one) or the final weights are not finite.
    """
    groups = _check_inputs(records, param_groups, settings)
    acc = get_accelerator()
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    start = time.perf_counter()
    prepare = getattr(collator, "prepare", None)
    if callable(prepare):  # encode every record once now (one processor call per chunk), not batch by batch
        prepare(records)
    set_seed(settings.seed)
    loader, answer_logits = _loader(model, collator, records, settings, acc)
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    restore_dropout = swap_dropout(model) if settings.fast_dropout and acc.device.type == "cpu" else None
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    # after prepare: under several processes the loader is sharded, so an epoch has fewer steps per process
    per_epoch = math.ceil(len(loader) / settings.grad_accum)
    total = settings.max_steps or max(1, math.ceil(per_epoch * settings.epochs))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else math.ceil(total * settings.warmup_ratio)
    # not passed through acc.prepare: its wrapper would step the schedule once per process
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    params = [p for g in groups for p in g["params"]]
    autocast = precision_context(acc.unwrap_model(model))  # fp32 master weights beside a half-precision base
    model.train()
    log = _LossLog(log_path, acc.device, per_epoch, scheduler, start)
    bar = tqdm(total=total, desc=settings.desc, disable=None if settings.progress and acc.is_main_process else True,
               dynamic_ncols=True, leave=False)
    step, samples, micro = 0, 0, 0
    tokens = torch.zeros((), dtype=torch.long, device=acc.device)  # summed on device: no host sync per step
    try:
        while step < total:
            for batch in loader:
                micro += 1
                sync = micro % settings.grad_accum == 0
                loss = _forward_backward(model, batch, acc, autocast, settings, sync)
                log.add(step + 1, loss)
                samples += batch["input_ids"].shape[0] * acc.num_processes
                if "attention_mask" in batch:
                    tokens += batch["attention_mask"].sum()
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
                    bar.set_postfix(loss=f"{log.flush(step):.4f}")
                if on_epoch_end is not None and (step % per_epoch == 0 or step == total):
                    log.epoch_end(step, lambda: _evaluate_at_epoch_end(model, acc, on_epoch_end, step, per_epoch))
                if step >= total:
                    break
        _check_weights(params, step)  # the last update is never followed by a loss: check what it left
        # every rank takes part in the gather (a collective): the main process gets the full state dict
        full_state = acc.get_state_dict(model) if is_sharded(acc) else None
    finally:
        bar.close()
        log.close()
        if restore_dropout is not None:
            restore_dropout()
        _release(acc)  # drop the accelerator's references so a sweep does not accumulate models
    model = acc.unwrap_model(model, keep_fp32_wrapper=False)  # evaluation afterwards runs without autocast
    model.eval()
    seconds = time.perf_counter() - start
    peak, kind = peak_memory(acc.device)
    return TrainResult(steps=step, samples=samples, seconds=seconds, final_loss=log.final_loss(), log=log.entries,
                       mixed_precision=str(acc.mixed_precision), answer_logits=answer_logits,
                       tokens=int(tokens) * acc.num_processes, peak_memory_mb=peak, peak_memory_kind=kind,
                       full_state=full_state)


def _check_inputs(records: list[dict], param_groups: list[dict], settings: TrainSettings) -> list[dict]:
    """The non-empty parameter groups; clear errors for nothing to train on, nothing to train, a bad setting."""
    if not records:
        raise DataError("no training records")
    groups = [g for g in param_groups if g["params"]]
    if not groups:
        raise RunError("nothing to train: every parameter group is empty")
    if settings.loss_average not in ("token", "sample"):
        raise ConfigError(f"loss_average must be 'token' or 'sample', got {settings.loss_average!r}")
    return groups


def _loader(model: torch.nn.Module, collator: Callable, records: list[dict], settings: TrainSettings, acc):
    """``(DataLoader, answer_logits)``: the seeded shuffle (or length-grouped batches), batches collated by
    ``collator`` (wrapped to mark the answer positions when logits are computed there only), pinned on CUDA."""
    generator = torch.Generator().manual_seed(settings.seed)
    answer_logits = settings.answer_logits
    if answer_logits is None:
        answer_logits = acc.mixed_precision != "no"
    answer_logits = bool(answer_logits) and _accepts_logits_to_keep(model)
    collate = _AnswerLogitsCollate(collator) if answer_logits else collator
    pin = acc.device.type == "cuda"
    if settings.group_by_length:
        lengths_of = getattr(collator, "lengths", None)
        lengths = lengths_of(records) if callable(lengths_of) else \
            [sum(len(t["value"]) for t in r["conversations"]) for r in records]
        return DataLoader(records, batch_sampler=_LengthGroupedBatches(lengths, settings.batch_size, generator),
                          collate_fn=collate, pin_memory=pin), answer_logits
    return DataLoader(records, batch_size=settings.batch_size, shuffle=True, collate_fn=collate,
                      generator=generator, drop_last=False, pin_memory=pin), answer_logits


def _forward_backward(model, batch: dict, acc, autocast, settings: TrainSettings, sync: bool) -> torch.Tensor:
    """One micro-batch: forward (the model's own loss, or the loss from the answer positions' logits), backward
    scaled for accumulation (gradients synchronised across processes only on the last micro-batch). Returns the
    detached loss."""
    ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
    keep = batch.pop(_KEEP, None)
    with ctx, autocast:
        if keep is None and settings.loss_average == "token":
            loss = model(**forward_inputs(model, batch)).loss
        else:
            inputs = forward_inputs(model, batch)
            labels = inputs.pop("labels")
            if keep is None:
                keep = labels.shape[1]
                logits = model(**inputs).logits
            else:
                logits = model(**inputs, logits_to_keep=keep).logits
            loss = _answer_loss(logits, labels, keep, settings.loss_average)
        acc.backward(loss / settings.grad_accum)
    return loss.detach()


def _evaluate_at_epoch_end(model, acc, on_epoch_end: Callable, step: int, per_epoch: int) -> tuple[int, dict]:
    """``on_epoch_end(epoch, model)`` in eval mode without autocast, then back to training: ``(epoch, its dict)``."""
    epoch = math.ceil(step / per_epoch)
    model.eval()
    with _without_autocast(acc.unwrap_model(model)) as plain:
        extra = on_epoch_end(epoch, plain) or {}
    model.train()
    return epoch, extra


class _LossLog:
    """The loop's loss log: losses stay on the device until a log point (one host sync per interval), entries
    (``step``, ``epoch``, ``loss``, ``lr``, ``seconds``; epoch ends with what the callback returned) appended to
    :attr:`entries` and to the JSON-lines file as they come. A non-finite interval mean raises
    :class:`TrainingDiverged` naming the first non-finite step."""

    def __init__(self, path: str | Path | None, device: torch.device, per_epoch: int, scheduler, start: float):
        self.file = open(path, "a") if path else None
        self.device, self.per_epoch, self.scheduler, self.start = device, per_epoch, scheduler, start
        self.entries: list[dict] = []
        self.running, self.running_n = torch.zeros((), device=device), 0
        self.interval: list[tuple[int, torch.Tensor]] = []  # this interval's (step, loss) on device

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.running += loss
        self.running_n += 1
        self.interval.append((step, loss))

    def flush(self, step: int) -> float:
        loss = (self.running / self.running_n).item()  # the only host sync, once per log interval
        self.running, self.running_n = torch.zeros((), device=self.device), 0
        if not math.isfinite(loss):
            raise TrainingDiverged(*_first_non_finite(self.interval, step, loss))
        self.interval = []
        self._write({"step": step, "epoch": round(step / self.per_epoch, 4), "loss": loss,
                     "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - self.start, 3)})
        return loss

    def epoch_end(self, step: int, evaluate: Callable[[], tuple[int, dict]]) -> None:
        """Run ``evaluate`` once per epoch (not again when the last step also ends an epoch) and log its figures."""
        epoch = math.ceil(step / self.per_epoch)
        if self.entries and self.entries[-1].get("epoch_end") == epoch:
            return
        epoch, extra = evaluate()
        self._write({"step": step, "epoch_end": epoch, **extra})

    def final_loss(self) -> float:
        return next((e["loss"] for e in reversed(self.entries) if "loss" in e), float("nan"))

    def _write(self, entry: dict) -> None:
        self.entries.append(entry)
        if self.file:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def _first_non_finite(interval: list[tuple[int, torch.Tensor]], step: int, mean: float) -> tuple[int, float]:
    """(step, loss) of the first non-finite loss of a log interval whose mean tripped (one host sync, on failure)."""
    flags = torch.isfinite(torch.stack([loss for _, loss in interval])).tolist() if interval else []
    first = next((i for i, ok in enumerate(flags) if not ok), None)
    return (step, mean) if first is None else (interval[first][0], float(interval[first][1]))


def _check_weights(params: list[torch.Tensor], step: int) -> None:
    """TrainingDiverged when an update left a trained weight NaN or infinite (e.g. a non-finite learning rate)."""
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise TrainingDiverged(step, float("nan"), what="trained weights")


def trainable_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts (peft's convention: total includes the PEFT parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "all_params": total,
            "trainable_percent": 100.0 * trainable / total if total else 0.0}


__all__.append("trainable_summary")
