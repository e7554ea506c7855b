"""The project's training loop vs transformers' ``Trainer`` + peft, set up fairly, and against the machine's limit.

Usage: ``python benchmarks/train_throughput.py --profile quick --repeats 3`` (``--limit``, ``--levers``: below)

Both sides train a fresh copy of the same pre-trained tiny LLaVA, adapted by the same method
(``apply_method``: peft for LoRA, IA3 and prefix tuning; the bottleneck adapter, which peft lacks, is the
project's module under both), on the same records with the same batch size, learning rate, warm-up + cosine
schedule, gradient clipping, explicit ``position_ids`` (:func:`mllm_study.train.forward_inputs`) and number of
optimiser steps. Three sides alternate in one process (A B C A B C ..., ``--repeats`` rounds, fresh model copies):

- project: ``train_model`` with one :class:`~mllm_study.data.Collator` per processor (records encoded once);
- Trainer (fair): ``Trainer`` as a competent user sets it up: the *same* collator object, prepared once (the same
  pre-encoded tensors, checked with ``torch.equal``), ``optim="adamw_torch"`` (``torch.optim.AdamW`` with torch's
  defaults, the class and settings the project's loop builds; checked after each run);
- Trainer (out of the box): ``Trainer``'s defaults (``adamw_torch_fused`` on torch >= 2.8) and a data collator that
  runs the processor on each batch's records every time they are drawn (what LLaVA, LLaMA-Factory and ms-swift do).

Each side is timed around the same call (``train_model(...)`` / ``trainer.train()``: every fixed cost of a run
included). Reported per method, each as the median of the repeats with [min, max], for wall clock and per CPU-second
of the training thread (``time.thread_time``, steadier when other processes share the machine):

- short: ``--steps`` (40) steps; long: ``--long-steps`` (160) steps; ratio = project samples/s / Trainer samples/s;
- steady: seconds per step between step ``--skip`` (10) and the last step of the long runs (fixed costs excluded),
  from a clock on the collate call (both sides fetch batch k+1 right before step k, through accelerate's loader),
  cross-checked against the project's train log ``seconds`` and a Trainer ``on_step_end`` callback.

``--limit``: FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``, forward + backward), the
achieved GFLOP/s = FLOPs per step / steady seconds per step, the machine's fp32 matmul peak (1024x1024 and the
model's own shapes, 1 and 2 threads) and a ``torch.profiler`` table of the project's steps (top 8 by self CPU).

``--levers``: what optional changes would buy, measured on the project loop only (nothing in the library changes):
LoRA / adapter dropout 0 instead of 0.05, torch's ``nn.Dropout`` masks instead of the loop's
:class:`~mllm_study.train.MaskDropout` (what the CPU fast path saves; the Trainer sides keep torch's),
``torch.optim.AdamW(foreach=True)`` or ``(fused=True)`` instead of the
plain for-loop implementation, and two torch threads instead of one. Each lever alternates with the baseline.

One torch thread (``MLLM_STUDY_THREADS``, default 1).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import inspect
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm_study.config import load_params  # noqa: E402
from mllm_study.data import Collator, load_split  # noqa: E402
from mllm_study.methods import apply_method  # noqa: E402
from mllm_study.runs import param_groups, base_model, resolve_dataset  # noqa: E402
from mllm_study.train import TrainSettings, forward_inputs, set_seed, train_model  # noqa: E402

METHODS = ("lora", "ia3", "prefix", "adapter")
LEVERS = ("foreach AdamW", "fused AdamW", "2 threads", "dropout 0", "torch dropout")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """glibc's bytes in use (small blocks + mmapped large blocks: torch's CPU tensors), or None without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def read() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return read


_HEAP = _heap_in_use()


class PeakMemory:
    """Peak memory above the starting point while the block runs: the CUDA allocator's peak on GPU; on CPU the
    malloc heap in use (glibc ``mallinfo2``, so memory freed and reused counts once; resident set size where that
    is unavailable), sampled every 5 ms by a thread.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_bytes = 0

    @staticmethod
    def _in_use() -> int:
        if _HEAP is not None:
            return _HEAP()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._in_use())
            self._stop.wait(self.interval)

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = self._max = self._in_use()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._in_use())
            self.peak_bytes = self._max - self._start
        return False


def fresh_model(params, method: str):
    model, processor = base_model(params, progress=False)  # a deep copy of the process's one loaded base model
    model = apply_method(model, method, params.resolved_method_params(), params.run.placement, params.run.connector)
    return model, processor


def held_out_loss(model, processor, held_out: list[dict]) -> float:
    from mllm_study.evaluate import evaluate_loss

    model.eval()
    return evaluate_loss(model, processor, held_out, batch_size=64)


class StepClock:
    """Wraps a collate function: (wall, thread CPU) time of each call. Both loops fetch through accelerate's loader,
    which collates batch k+1 right before yielding batch k, so call k+1 marks the start of step k on both sides."""

    def __init__(self, collate):
        self.collate = collate
        self.marks: list[tuple[float, float]] = []

    def __getattr__(self, name):  # prepare, lengths, ... of the wrapped collator
        return getattr(self.__dict__["collate"], name)

    def __call__(self, records):
        self.marks.append((time.perf_counter(), time.thread_time()))
        return self.collate(records)

    def per_step(self, skip: int, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds per step from step ``skip`` to the last step, or NaN when the run is too short."""
        first, last = skip + 1, min(steps, len(self.marks) - 1)  # marks[k] ~ start of step k (0-based call index)
        if last - first < 1:
            return float("nan"), float("nan")
        (w0, c0), (w1, c1) = self.marks[first], self.marks[last]
        return (w1 - w0) / (last - first), (c1 - c0) / (last - first)


def _steady_from_log(log: list[dict], skip: int) -> float:
    """Seconds per step between log entries at step >= skip (the project's train log)."""
    entries = [e for e in log if "seconds" in e and e["step"] >= skip]
    if len(entries) < 2:
        return float("nan")
    return (entries[-1]["seconds"] - entries[0]["seconds"]) / (entries[-1]["step"] - entries[0]["step"])


def _optimizer_signature(optimizer) -> str:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    d = inner.defaults
    return (f"{type(inner).__module__}.{type(inner).__name__}(betas={tuple(d.get('betas', ()))}, eps={d.get('eps')}, "
            f"foreach={d.get('foreach')}, fused={d.get('fused')})")


def run_project(params, method: str, records: list[dict], collator, steps: int, batch_size: int,
                log_every: int, answer_logits: bool, held_out: list[dict] | None, skip: int,
                memory: bool = False, fast_dropout: bool = True) -> dict:
    model, processor = fresh_model(params, method)
    settings = TrainSettings(max_steps=steps, batch_size=batch_size, warmup_ratio=params.run.warmup_ratio,
                             weight_decay=params.run.weight_decay, max_grad_norm=params.run.max_grad_norm,
                             seed=params.run.seed, log_every=log_every, progress=False,
                             answer_logits=True if answer_logits else None, fast_dropout=fast_dropout)
    clock = StepClock(collator)
    built: list = []
    real_adamw = torch.optim.AdamW

    def spy(*a, **k):  # records the optimizer the loop builds (same object, untouched)
        opt = real_adamw(*a, **k)
        built.append(opt)
        return opt

    gc.collect()
    with (PeakMemory() if memory else contextlib.nullcontext()) as mem:
        torch.optim.AdamW = spy if real_adamw is _TORCH_ADAMW else real_adamw
        try:
            start, cpu = time.perf_counter(), time.thread_time()
            result = train_model(model, clock, records, param_groups(model, params), settings)
            seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu  # set-up included, as Trainer.train
        finally:
            torch.optim.AdamW = real_adamw
    wall_step, cpu_step = clock.per_step(skip, steps)
    return {"samples": result.samples, "seconds": seconds, "cpu": cpu, "final_loss": result.final_loss,
            "step_wall": wall_step, "step_cpu": cpu_step, "step_log": _steady_from_log(result.log, skip),
            "peak": mem.peak_bytes if memory else float("nan"),
            "optimizer": _optimizer_signature(built[0]) if built else "patched by a lever",
            "held_out": held_out_loss(model, processor, held_out) if held_out else float("nan")}


_TORCH_ADAMW = torch.optim.AdamW


class PerBatchCollator:
    """The frameworks' way: the processor runs on every batch (no cache), then ``forward_inputs`` position ids."""

    def __init__(self, processor, model):
        self.collator = Collator(processor, mode="train", cache=False)
        self.model = model

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        return forward_inputs(self.model, self.collator(records))


class PreEncodedCollator:
    """A competent user's collator: the project's prepared :class:`Collator` (records encoded once), then the same
    ``forward_inputs`` position ids as the project's loop adds."""

    def __init__(self, collator: Collator, model):
        self.collator = collator
        self.model = model

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        return forward_inputs(self.model, self.collator(records))


def run_trainer(params, method: str, records: list[dict], steps: int, batch_size: int, log_every: int,
                out_dir: str, held_out: list[dict] | None, skip: int, collator: Collator | None = None,
                memory: bool = False) -> dict:
    """``collator`` given: the fair set-up (that prepared collator, ``optim="adamw_torch"``); None: out of the box
    (per-batch processor, Trainer's default optimizer)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model, processor = fresh_model(params, method)
    losses: list[float] = []
    ends: dict[int, float] = {}

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

        def on_step_end(self, args, state, control, **kwargs):
            ends[state.global_step] = time.perf_counter()

    kwargs = dict(output_dir=out_dir, per_device_train_batch_size=batch_size, learning_rate=params.resolved_lr(),
                  lr_scheduler_type="cosine", max_steps=steps, logging_steps=log_every, report_to=[],
                  save_strategy="no", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                  remove_unused_columns=False, weight_decay=params.run.weight_decay,
                  max_grad_norm=params.run.max_grad_norm, seed=params.run.seed, disable_tqdm=True)
    if collator is not None:
        kwargs["optim"] = "adamw_torch"  # torch.optim.AdamW, torch defaults: what the project's loop builds
    fields = inspect.signature(TrainingArguments).parameters
    if "warmup_ratio" in fields:
        kwargs["warmup_ratio"] = params.run.warmup_ratio
    else:  # transformers 5: warmup_steps < 1 is a ratio of the total steps
        kwargs["warmup_steps"] = params.run.warmup_ratio
    if torch.cuda.is_available():
        kwargs["bf16" if torch.cuda.is_bf16_supported() else "fp16"] = True
    clock = StepClock(PreEncodedCollator(collator, model) if collator is not None
                      else PerBatchCollator(processor, model))
    set_seed(params.run.seed)
    trainer = Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=records,
                      data_collator=clock, callbacks=[KeepLoss()])
    trainer.remove_callback(PrinterCallback)
    gc.collect()
    with (PeakMemory() if memory else contextlib.nullcontext()) as mem:
        start, cpu = time.perf_counter(), time.thread_time()
        out = trainer.train()
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    samples = out.global_step * batch_size  # the last batch of an epoch may be short: count it exactly below
    if steps * batch_size > len(records):
        per_epoch = math.ceil(len(records) / batch_size)
        full, rest = divmod(out.global_step, per_epoch)
        samples = full * len(records) + min(rest * batch_size, len(records))
    wall_step, cpu_step = clock.per_step(skip, steps)
    last = max(ends) if ends else 0
    step_cb = (ends[last] - ends[skip]) / (last - skip) if skip in ends and last > skip else float("nan")
    return {"samples": samples, "seconds": seconds, "cpu": cpu, "final_loss": losses[-1] if losses else float("nan"),
            "step_wall": wall_step, "step_cpu": cpu_step, "step_log": step_cb,
            "peak": mem.peak_bytes if memory else float("nan"), "optimizer": _optimizer_signature(trainer.optimizer),
            "held_out": held_out_loss(trainer.model, processor, held_out) if held_out else float("nan")}


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max), NaNs dropped."""
    v = sorted(x for x in values if x == x)
    if not v:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(v), v[0], v[-1]


def fmt(values: list[float], width: int = 5) -> str:
    med, lo, hi = spread(values)
    return f"{med:{width}.2f} [{lo:.2f}-{hi:.2f}]"


def check_same_batches(processor, collator: Collator, records: list[dict], batch_size: int) -> bool:
    """The per-batch processor and the prepared collator give identical tensors (``torch.equal``, every key)."""
    per_batch = Collator(processor, mode="train", cache=False)
    for i in range(0, min(len(records), 4 * batch_size), batch_size):
        a, b = per_batch(records[i:i + batch_size]), collator(records[i:i + batch_size])
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


# ---------------------------------------------------------------------------------------------------- the limit


def step_flops(params, method: str, collator: Collator, records: list[dict], batch_size: int) -> float:
    """FLOPs of one training step (forward + backward of one batch; AdamW's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = fresh_model(params, method)
    model.train()
    batch = forward_inputs(model, collator(records[:batch_size]))
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    return float(counter.get_total_flops())


def matmul_gflops(m: int, k: int, n: int, threads: int, seconds: float = 0.3) -> float:
    """Best-of-5 GFLOP/s of an (m x k) @ (k x n) fp32 matmul on ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        reps = max(1, int(seconds / max(1e-6, _time(lambda: a @ b))))
        best = min(_time(lambda: [a @ b for _ in range(reps)]) / reps for _ in range(5))
        return 2 * m * k * n / best / 1e9
    finally:
        torch.set_num_threads(before)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_shapes(model, tokens: int) -> list[tuple[str, int, int, int]]:
    """The language model's main matmuls for a batch of ``tokens`` tokens: (name, m, k, n)."""
    cfg = getattr(model.config, "text_config", model.config)
    h, i, v = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), cfg.vocab_size
    return [(f"qkv/o proj {tokens}x{h}x{h}", tokens, h, h), (f"mlp up {tokens}x{h}x{i}", tokens, h, i),
            (f"mlp down {tokens}x{i}x{h}", tokens, i, h), (f"lm head {tokens}x{h}x{v}", tokens, h, v)]


def profile_steps(params, method: str, records: list[dict], collator: Collator, steps: int, batch_size: int,
                  top: int = 8) -> str:
    """torch.profiler table (CPU, top ``top`` by self CPU time) of ``steps`` steps of the project's loop."""
    from torch.profiler import ProfilerActivity, profile

    model, _ = fresh_model(params, method)
    settings = TrainSettings(max_steps=steps, batch_size=batch_size, warmup_ratio=params.run.warmup_ratio,
                             weight_decay=params.run.weight_decay, max_grad_norm=params.run.max_grad_norm,
                             seed=params.run.seed, log_every=steps, progress=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_model(model, collator, records, param_groups(model, params), settings)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


# ---------------------------------------------------------------------------------------------------- levers


@contextlib.contextmanager
def adamw_variant(kind: str):
    """Make ``torch.optim.AdamW`` (which the project's loop calls) build the plain, foreach or fused variant."""
    if kind == "plain":
        yield
        return

    class Variant(_TORCH_ADAMW):
        def __init__(self, *a, **k):
            k.setdefault(kind, True)
            super().__init__(*a, **k)

    torch.optim.AdamW = Variant
    try:
        yield
    finally:
        torch.optim.AdamW = _TORCH_ADAMW


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def adamw_step_ms(params, method: str, kind: str, reps: int = 20, rounds: int = 7) -> float:
    """Best-of-``rounds`` ms per ``AdamW.step()`` on the method's trainable parameters (random gradients), for the
    plain, foreach or fused implementation: the optimizer alone, robust to load (the fastest round)."""
    model, _ = fresh_model(params, method)
    groups = param_groups(model, params)
    for g in groups:
        for q in g["params"]:
            q.grad = torch.randn_like(q) * 1e-3
    opt = _TORCH_ADAMW([g for g in groups if g["params"]], **({} if kind == "plain" else {kind: True}))
    opt.step()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            opt.step()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def levers(args, paths, records, methods) -> dict:
    """Steady seconds per step of the project's loop, baseline vs each lever, alternating, median of repeats."""
    out: dict = {}
    for method in methods:
        base = load_params(profile=args.profile, overrides={**paths, "run.method": method})
        variants = {"baseline": (base, "plain", 1, True), "foreach AdamW": (base, "foreach", 1, True),
                    "fused AdamW": (base, "fused", 1, True), "2 threads": (base, "plain", 2, True)}
        if method in ("lora", "adapter"):
            variants["dropout 0"] = (load_params(profile=args.profile, overrides={
                **paths, "run.method": method, "run.method_params": {**base.run.method_params, "dropout": 0.0}}),
                "plain", 1, True)
            variants["torch dropout"] = (base, "plain", 1, False)
        if args.lever_names:
            variants = {k: v for k, v in variants.items() if k == "baseline" or k in args.lever_names}
        _, processor = base_model(base, progress=False)
        collator = Collator(processor, mode="train")
        collator.prepare(records)
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, (params, kind, n, fast) in variants.items():
                with adamw_variant(kind), threads(n):
                    r = run_project(params, method, records, collator, args.lever_steps, args.batch_size,
                                    args.log_every, False, None, args.skip, fast_dropout=fast)
                res[name].append((r["step_wall"], r["step_cpu"]))
        base_wall = [w for w, _ in res["baseline"]]
        base_cpu = [c for _, c in res["baseline"]]
        print(f"\n{method}: steady ms per step (steps {args.skip}-{args.lever_steps}), median [min-max] of "
              f"{args.repeats}; saving = 1 - lever / baseline, per repeat (alternating), median")
        print(f"  {'variant':14s} {'wall ms':>22s} {'CPU ms':>22s} {'wall saving':>12s} {'CPU saving':>11s}")
        out[method] = {"adamw_step_ms": {k: adamw_step_ms(base, method, k) for k in ("plain", "foreach", "fused")}}
        n_train = sum(q.numel() for g in param_groups(fresh_model(base, method)[0], base) for q in g["params"])
        print("  AdamW.step() alone, best of 7 rounds of 20, " + f"{n_train} trainable parameters: " +
              ", ".join(f"{k} {v:.2f} ms" for k, v in out[method]["adamw_step_ms"].items()))
        for name, vals in res.items():
            wall, cpu = [w * 1e3 for w, _ in vals], [c * 1e3 for _, c in vals]
            save_w = [1 - w / b for (w, _), b in zip(vals, base_wall)]
            save_c = [1 - c / b for (_, c), b in zip(vals, base_cpu)]
            out[method][name] = {"wall_ms": spread(wall), "cpu_ms": spread(cpu), "saving_wall": spread(save_w),
                                 "saving_cpu": spread(save_c)}
            print(f"  {name:14s} {fmt(wall, 6):>22s} {fmt(cpu, 6):>22s} {spread(save_w)[0]:11.1%} "
                  f"{spread(save_c)[0]:10.1%}", flush=True)
    return out


def encoding_table(processor, records: list[dict], batch_size: int) -> dict[str, float]:
    """Seconds to have every record encoded once, by each route (one epoch's worth of batches)."""
    from mllm_study.data import clear_encoding_cache, set_encoding_cache

    out: dict[str, float] = {}
    per_batch = Collator(processor, mode="train", cache=False)
    start = time.perf_counter()
    for i in range(0, len(records), batch_size):
        per_batch(records[i:i + batch_size])
    out["per batch, every epoch (Trainer side)"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as disk:
        clear_encoding_cache()
        set_encoding_cache(disk)
        try:
            start = time.perf_counter()
            Collator(processor, mode="train").prepare(records)
            out["prepare, cold (encode + write disk cache)"] = time.perf_counter() - start
            start = time.perf_counter()
            Collator(processor, mode="train").prepare(records)
            out["prepare, new collator in the same process"] = time.perf_counter() - start
            clear_encoding_cache()  # what a new process sees: only the disk
            start = time.perf_counter()
            Collator(processor, mode="train").prepare(records)
            out["prepare, new process (read disk cache)"] = time.perf_counter() - start
        finally:
            set_encoding_cache(None)
            clear_encoding_cache()
    start = time.perf_counter()
    Collator(processor, mode="train").prepare(records)
    out["prepare, cold without disk cache"] = time.perf_counter() - start
    return out


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def peak_table(model, tokens: int, threads=(1, 2)) -> dict[str, dict[int, float]]:
    """The machine's fp32 matmul GFLOP/s (best of 5) for 1024^3 and the model's own shapes, printed as a table."""
    print(f"\nmachine fp32 matmul peak, GFLOP/s (best of 5), {' and '.join(map(str, threads))} torch threads; "
          f"{_load()}; MKL_CBWR={os.environ.get('MKL_CBWR', '(unset)')}")
    out = {}
    for name, m, k, n in [("1024x1024x1024", 1024, 1024, 1024)] + model_shapes(model, tokens):
        out[name] = {t: matmul_gflops(m, k, n, t) for t in threads}
        print(f"  {name:28s} " + " ".join(f"{out[name][t]:7.1f}" for t in threads))
    return out


def limit_report(args, paths, records, methods, steady: dict) -> dict:
    """FLOPs per step, achieved GFLOP/s (steady), the matmul peak, and a profiled run's top ops."""
    out: dict = {"peak": {}, "methods": {}}
    base = load_params(profile=args.profile, overrides={**paths, "run.method": methods[0]})
    model, processor = base_model(base, progress=False)
    collator = Collator(processor, mode="train")
    collator.prepare(records)
    tokens = int(collator(records[:args.batch_size])["input_ids"].numel())
    out["peak"] = peak_table(model, tokens)
    peak1 = out["peak"]["1024x1024x1024"][1]
    print(f"\nachieved: FLOPs of one step (FlopCounterMode, forward + backward, batch {args.batch_size}, {tokens} "
          f"tokens) / steady seconds per step (median wall; CPU) of the project loop and Trainer (fair); share of "
          f"the 1-thread 1024^3 peak ({peak1:.1f} GFLOP/s)")
    print(f"  {'method':8s} {'GFLOP/step':>10s} {'proj GFLOP/s':>13s} {'(CPU)':>7s} {'share':>6s} "
          f"{'Trn GFLOP/s':>12s} {'share':>6s}")
    for method in methods:
        params = load_params(profile=args.profile, overrides={**paths, "run.method": method})
        flops = step_flops(params, method, collator, records, args.batch_size)
        st = steady.get(method, {})
        pw, pc, tw = (flops / st[k] / 1e9 if st.get(k) else float("nan") for k in ("proj_wall", "proj_cpu", "trn_wall"))
        out["methods"][method] = {"gflop_per_step": flops / 1e9, "project_gflops": pw, "project_gflops_cpu": pc,
                                  "trainer_gflops": tw, "share_of_peak": pw / peak1}
        print(f"  {method:8s} {flops / 1e9:10.2f} {pw:13.1f} {pc:7.1f} {pw / peak1:6.1%} {tw:12.1f} "
              f"{tw / peak1:6.1%}", flush=True)
    for method in methods:
        params = load_params(profile=args.profile, overrides={**paths, "run.method": method})
        table = profile_steps(params, method, records, collator, args.profile_steps, args.batch_size)
        out["methods"][method]["profile"] = table
        print(f"\n{method}: torch.profiler, {args.profile_steps} steps of the project loop, top 8 by self CPU time")
        print(table, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", help="params profile whose cached world and base model to use")
    ap.add_argument("--cache", default=None, help="world/model cache folder (default: the profile's paths.cache)")
    ap.add_argument("--dataset", default="iconqa_txt", help="world family (its train split)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--records", type=int, default=320, help="train records (seeded subsample)")
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps of the short runs")
    ap.add_argument("--long-steps", type=int, default=None,
                    help="optimiser steps of the long runs (default 4 x --steps: 160; 0: none)")
    ap.add_argument("--skip", type=int, default=10, help="steady state: per-step time after this step")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds per method and length (median)")
    ap.add_argument("--held-out", type=int, default=64, help="test records for the held-out loss after training")
    ap.add_argument("--no-out-of-the-box", action="store_true", help="skip the out-of-the-box Trainer side")
    ap.add_argument("--memory", action="store_true", help="also sample peak memory (a 5 ms sampling thread)")
    ap.add_argument("--encoding", action="store_true",
                    help="only time the record encoding routes (per batch, cold, in-process cache, disk cache)")
    ap.add_argument("--answer-logits", action="store_true",
                    help="project loop with TrainSettings(answer_logits=True) (on CPU: same loss up to rounding)")
    ap.add_argument("--limit", action="store_true",
                    help="also: FLOPs per step, achieved GFLOP/s vs the matmul peak, profiler top ops")
    ap.add_argument("--peak", action="store_true",
                    help="only the machine's fp32 matmul GFLOP/s on one thread (1024^3 and the model's shapes)")
    ap.add_argument("--profile-steps", type=int, default=12, help="steps of the profiled run (--limit)")
    ap.add_argument("--levers", action="store_true",
                    help="only measure levers on the project loop (dropout 0, torch dropout, foreach/fused AdamW, "
                         "2 threads)")
    ap.add_argument("--lever-steps", type=int, default=60, help="steps per lever run")
    ap.add_argument("--lever-names", nargs="+", default=None, choices=LEVERS,
                    help="only these levers (default: all) beside the baseline")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("MLLM_STUDY_THREADS", "1")))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    paths = {"paths.cache": args.cache} if args.cache else {}
    base = load_params(profile=args.profile, overrides=paths)
    folder = resolve_dataset(args.dataset, base, progress=False)
    records = load_split(folder, "train", args.records, seed=base.run.seed)
    held_out = load_split(folder, "test", args.held_out, seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; start: {_load()}")
    if args.peak:  # the matmul peak alone (e.g. beside MKL_CBWR=COMPATIBLE, MKL's reproducible code path)
        model, processor = base_model(base, progress=False)
        collator = Collator(processor, mode="train")
        tokens = int(collator(records[:args.batch_size])["input_ids"].numel())
        return peak_table(model, tokens, threads=(1,))
    if args.encoding:
        _, processor = base_model(base, progress=False)
        table = encoding_table(processor, records, args.batch_size)
        print(f"{args.dataset} train: {len(records)} records, batch {args.batch_size}, torch threads "
              f"{torch.get_num_threads()}: seconds to encode every record once")
        for route, seconds in table.items():
            print(f"  {route:45s} {seconds:7.3f} s  ({len(records) / seconds:8.0f} records/s)")
        return table
    if args.levers:
        print(f"{args.dataset} train: {len(records)} records, batch {args.batch_size}, levers on the project loop")
        out = levers(args, paths, records, args.methods)
        print(f"end: {_load()}")
        return out
    if args.long_steps is None:
        args.long_steps = 4 * args.steps
    lengths = [args.steps] + ([args.long_steps] if args.long_steps else [])
    print(f"{args.dataset} train: {len(records)} records, batch {args.batch_size}, {' and '.join(map(str, lengths))} "
          f"steps, device {device}, torch threads {torch.get_num_threads()}, {args.repeats} rounds alternating "
          f"project / Trainer fair / Trainer out of the box{', answer-only logits' if args.answer_logits else ''}")
    summary: dict = {}
    steady: dict = {}
    oob = not args.no_out_of_the_box
    with tempfile.TemporaryDirectory() as out_dir:
        for method in args.methods:
            params = load_params(profile=args.profile, overrides={**paths, "run.method": method})
            _, processor = base_model(params, progress=False)
            collator = Collator(processor, mode="train")  # one per processor, shared by the project and Trainer-fair
            collator.prepare(records)
            same = check_same_batches(processor, collator, records, args.batch_size)
            res: dict = {}
            for steps in lengths:
                for side in ("project", "fair", "oob"):
                    res[(side, steps)] = []
                for r in range(args.repeats):
                    last = r == args.repeats - 1 and steps == args.steps
                    h = held_out if last else None
                    res[("project", steps)].append(run_project(params, method, records, collator, steps,
                                                               args.batch_size, args.log_every, args.answer_logits,
                                                               h, args.skip, args.memory))
                    res[("fair", steps)].append(run_trainer(params, method, records, steps, args.batch_size,
                                                            args.log_every, out_dir, h, args.skip, collator,
                                                            args.memory))
                    if oob and steps == args.steps:
                        res[("oob", steps)].append(run_trainer(params, method, records, steps, args.batch_size,
                                                               args.log_every, out_dir, h, args.skip, None,
                                                               args.memory))

            def ratios(other: str, steps: int, key: str) -> list[float]:  # paired per round: project / other
                return [(p["samples"] / p[key]) / (o["samples"] / o[key])
                        for p, o in zip(res[("project", steps)], res[(other, steps)])]

            def step_ratios(steps: int, key: str) -> list[float]:  # Trainer s/step / project s/step
                return [o[key] / p[key] for p, o in zip(res[("project", steps)], res[("fair", steps)])]

            row = {"same_batches": same}
            for steps in lengths:
                row["short" if steps == args.steps else "long"] = {
                    "wall": spread(ratios("fair", steps, "seconds")), "cpu": spread(ratios("fair", steps, "cpu"))}
            sl = lengths[-1]  # steady state from the longest runs
            row["steady"] = {"steps": sl, "wall": spread(step_ratios(sl, "step_wall")),
                             "cpu": spread(step_ratios(sl, "step_cpu")), "log": spread(step_ratios(sl, "step_log")),
                             "ms": {s: spread([x["step_wall"] * 1e3 for x in res[(s, sl)]])
                                    for s in ("project", "fair")}}
            if oob:
                row["out_of_the_box"] = {"wall": spread(ratios("oob", args.steps, "seconds")),
                                         "cpu": spread(ratios("oob", args.steps, "cpu"))}
            shorts = {s: res[(s, args.steps)] for s in ("project", "fair", "oob") if res[(s, args.steps)]}
            row["project"] = spread([x["samples"] / x["seconds"] for x in shorts["project"]])[0]
            row["trainer"] = spread([x["samples"] / x["seconds"] for x in shorts["fair"]])[0]
            row["loss"] = {s: v[-1]["final_loss"] for s, v in shorts.items()}
            row["held_out"] = {("trainer" if s == "fair" else s): v[-1]["held_out"] for s, v in shorts.items()}
            row["held_out"]["project"] = shorts["project"][-1]["held_out"]
            row["optimizer"] = {s: v[-1]["optimizer"] for s, v in shorts.items()}
            if args.memory:
                row["mib"] = {s: max(x["peak"] for x in v) / 2**20 for s, v in shorts.items()}
            summary[method] = row
            steady[method] = {"proj_wall": row["steady"]["ms"]["project"][0] / 1e3,
                              "proj_cpu": spread([x["step_cpu"] for x in res[("project", sl)]])[0],
                              "trn_wall": row["steady"]["ms"]["fair"][0] / 1e3}
            print(f"{method}: done ({_load()})", flush=True)
    print_table(summary, args, lengths)
    if args.limit:
        summary["_limit"] = limit_report(args, paths, records, args.methods, steady)
    print(f"end: {_load()}")
    return summary


def print_table(summary: dict, args, lengths: list[int]) -> None:
    def cell(s) -> str:
        return f"{s[0]:.2f} [{s[1]:.2f}-{s[2]:.2f}]"

    long = len(lengths) > 1
    print(f"\nratio = project samples/s / Trainer samples/s, paired per round, median [min-max] of {args.repeats}; "
          f"wall clock and per CPU-second of the training thread")
    print(f"steady = Trainer s/step / project s/step, steps {args.skip}-{lengths[-1]} (fixed costs excluded)")
    head = (f"{'method':8s} | {'short wall':>17s} {'short CPU':>17s} | " +
            (f"{'long wall':>17s} {'long CPU':>17s} | " if long else "") +
            f"{'steady wall':>17s} {'steady CPU':>17s} {'ms/step proj Trn':>17s} | {'out of box wall':>17s} "
            f"{'oob CPU':>17s} | same")
    print(head)
    print("-" * len(head))
    for method, row in summary.items():
        if method.startswith("_"):
            continue
        oob = row.get("out_of_the_box")
        ms = row["steady"]["ms"]
        print(f"{method:8s} | {cell(row['short']['wall']):>17s} {cell(row['short']['cpu']):>17s} | " +
              (f"{cell(row['long']['wall']):>17s} {cell(row['long']['cpu']):>17s} | " if long else "") +
              f"{cell(row['steady']['wall']):>17s} {cell(row['steady']['cpu']):>17s} "
              f"{ms['project'][0]:8.1f} {ms['fair'][0]:7.1f} | "
              f"{cell(oob['wall']) if oob else '-':>17s} {cell(oob['cpu']) if oob else '-':>17s} | "
              f"{'yes' if row['same_batches'] else 'NO'}")
    print("\nsame = the per-batch processor and the prepared collator give identical tensors (torch.equal)")
    print("steady cross-check (train log 'seconds' / Trainer on_step_end), wall: " +
          ", ".join(f"{m} {r['steady']['log'][0]:.2f}" for m, r in summary.items() if not m.startswith("_")))
    print("loss (last logging interval, short runs) and held-out answer-token loss, project / fair / out of box:")
    for method, row in summary.items():
        if method.startswith("_"):
            continue
        ls, ho = row["loss"], row["held_out"]
        print(f"  {method:8s} loss " + " ".join(f"{ls[s]:.3f}" for s in ls) + "  held-out " +
              " ".join(f"{v:.3f}" for v in ho.values()))
    first = next(r for m, r in summary.items() if not m.startswith("_"))
    print("optimizers: " + "; ".join(f"{s}: {o}" for s, o in first["optimizer"].items()))


if __name__ == "__main__":
    main()
