"""The project's training loop vs transformers' ``Trainer`` + peft (how LLaVA, LLaMA-Factory and ms-swift train).

Usage: ``python benchmarks/train_throughput.py --profile quick --methods lora ia3 prefix adapter --steps 40``

Both sides train a fresh copy of the same pre-trained tiny LLaVA, adapted by the same method
(``apply_method``: peft for LoRA, IA3 and prefix tuning; the bottleneck adapter, which peft lacks, is the
project's module under both), on the same records with the same batch size, learning rate, warm-up + cosine
schedule, gradient clipping and number of optimiser steps. They differ in what the project changes:

- project: ``train_model`` with one :class:`~mllm_study.data.Collator` per processor: records are encoded once
  (chat template, tokenisation, image loading and preprocessing) and only padded per batch;
- Trainer: ``Trainer(TrainingArguments(...))`` (its defaults, e.g. fused AdamW) with a data collator that runs the
  processor on each batch's records every time they are drawn, as those frameworks do, and the same explicit
  ``position_ids`` (:func:`mllm_study.train.forward_inputs`).

The two alternate in one process (A B A B ..., ``--repeats`` rounds, fresh model copies each time). Reported per
method: the best samples/s of each by wall clock and their ratio project / Trainer; the same ratio per CPU-second
of the training thread (steadier when other processes share the machine); the first project run's samples/s
("cold": it encodes the records); peak memory above the run's start (``torch.cuda.max_memory_allocated`` on GPU;
on CPU the malloc heap in use, glibc ``mallinfo2``, sampled every 5 ms); and, to check both learn alike, the
training loss of the last logging interval and the answer-token loss on ``--held-out`` test records after
training (same data and schedule, different shuffle and dropout draws: similar, not identical).

``--answer-logits`` runs the project loop with ``TrainSettings(answer_logits=True)`` (logits only where answers
are; on CPU off by default because it changes the loss in the last float bits).

One torch thread (``MLLM_STUDY_THREADS``, default 1): on this 2-core machine, shared with other processes, two
threads make tiny-model steps slower and erratic.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import inspect
import math
import os
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
from mllm_study.runs import _param_groups, base_model, resolve_dataset  # noqa: E402
from mllm_study.train import TrainSettings, forward_inputs, set_seed, train_model  # noqa: E402

METHODS = ("lora", "ia3", "prefix", "adapter")


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


def run_project(params, method: str, records: list[dict], collator: Collator, steps: int, batch_size: int,
                log_every: int, answer_logits: bool, held_out: list[dict]) -> dict:
    model, processor = fresh_model(params, method)
    settings = TrainSettings(max_steps=steps, batch_size=batch_size, warmup_ratio=params.run.warmup_ratio,
                             weight_decay=params.run.weight_decay, max_grad_norm=params.run.max_grad_norm,
                             seed=params.run.seed, log_every=log_every, progress=False,
                             answer_logits=True if answer_logits else None)
    gc.collect()
    with PeakMemory() as mem:
        start, cpu = time.perf_counter(), time.thread_time()
        result = train_model(model, collator, records, _param_groups(model, params), settings)
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu  # set-up included, as in Trainer.train
    return {"samples": result.samples, "seconds": seconds, "cpu": cpu, "final_loss": result.final_loss,
            "peak": mem.peak_bytes, "held_out": held_out_loss(model, processor, held_out)}


class PerBatchCollator:
    """The frameworks' way: the processor runs on every batch (no cache), then ``forward_inputs`` position ids."""

    def __init__(self, processor, model):
        self.collator = Collator(processor, mode="train", cache=False)
        self.model = model

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        return forward_inputs(self.model, self.collator(records))


def run_trainer(params, method: str, records: list[dict], steps: int, batch_size: int, log_every: int,
                out_dir: str, held_out: list[dict]) -> dict:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    model, processor = fresh_model(params, method)
    losses: list[float] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    kwargs = dict(output_dir=out_dir, per_device_train_batch_size=batch_size, learning_rate=params.resolved_lr(),
                  lr_scheduler_type="cosine", max_steps=steps, logging_steps=log_every, report_to=[],
                  save_strategy="no", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                  remove_unused_columns=False, weight_decay=params.run.weight_decay,
                  max_grad_norm=params.run.max_grad_norm, seed=params.run.seed, disable_tqdm=True)
    fields = inspect.signature(TrainingArguments).parameters
    if "warmup_ratio" in fields:
        kwargs["warmup_ratio"] = params.run.warmup_ratio
    else:  # transformers 5: warmup_steps < 1 is a ratio of the total steps
        kwargs["warmup_steps"] = params.run.warmup_ratio
    if torch.cuda.is_available():
        kwargs["bf16" if torch.cuda.is_bf16_supported() else "fp16"] = True
    set_seed(params.run.seed)
    trainer = Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=records,
                      data_collator=PerBatchCollator(processor, model), callbacks=[KeepLoss()])
    trainer.remove_callback(PrinterCallback)
    gc.collect()
    with PeakMemory() as mem:
        start, cpu = time.perf_counter(), time.thread_time()
        out = trainer.train()
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    samples = out.global_step * batch_size  # the last batch of an epoch may be short: count it exactly below
    if steps * batch_size > len(records):
        per_epoch = math.ceil(len(records) / batch_size)
        full, rest = divmod(out.global_step, per_epoch)
        samples = full * len(records) + min(rest * batch_size, len(records))
    return {"samples": samples, "seconds": seconds, "cpu": cpu, "final_loss": losses[-1] if losses else float("nan"),
            "peak": mem.peak_bytes, "held_out": held_out_loss(trainer.model, processor, held_out)}


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", help="params profile whose cached world and base model to use")
    ap.add_argument("--cache", default=None, help="world/model cache folder (default: the profile's paths.cache)")
    ap.add_argument("--dataset", default="iconqa_txt", help="world family (its train split)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--records", type=int, default=320, help="train records (seeded subsample)")
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="A B rounds per method (best of each is reported)")
    ap.add_argument("--held-out", type=int, default=64, help="test records for the held-out loss after training")
    ap.add_argument("--encoding", action="store_true",
                    help="only time the record encoding routes (per batch, cold, in-process cache, disk cache)")
    ap.add_argument("--answer-logits", action="store_true",
                    help="project loop with TrainSettings(answer_logits=True) (on CPU: same loss up to rounding)")
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
    if args.encoding:
        _, processor = base_model(base, progress=False)
        table = encoding_table(processor, records, args.batch_size)
        print(f"{args.dataset} train: {len(records)} records, batch {args.batch_size}, torch threads "
              f"{torch.get_num_threads()}: seconds to encode every record once")
        for route, seconds in table.items():
            print(f"  {route:45s} {seconds:7.3f} s  ({len(records) / seconds:8.0f} records/s)")
        return table
    print(f"{args.dataset} train: {len(records)} records, batch {args.batch_size}, {args.steps} steps, "
          f"device {device}, torch threads {torch.get_num_threads()}, best of {args.repeats} (A B alternating)"
          f"{', answer-only logits' if args.answer_logits else ''}")
    print("samples/s: wall clock (and per CPU-second of the training thread, steadier when the machine is shared);")
    print("cold = the first project run, which encodes the records; memory = peak above the run's start\n")
    head = (f"{'method':8s} {'project':>8s} {'Trainer':>8s} {'ratio':>6s} | {'CPU-s ratio':>11s} | {'cold':>6s} | "
            f"{'proj MiB':>8s} {'Trn MiB':>8s} | {'loss: project':>13s} {'Trn':>6s} | {'held-out: proj':>14s} "
            f"{'Trn':>6s}")
    print(head)
    print("-" * len(head))
    summary = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for method in args.methods:
            params = load_params(profile=args.profile, overrides={**paths, "run.method": method})
            _, processor = base_model(params, progress=False)
            collator = Collator(processor, mode="train")  # one per processor, reused by every project run
            res: dict[str, list[dict]] = {"project": [], "trainer": []}
            for _ in range(args.repeats):
                res["project"].append(run_project(params, method, records, collator, args.steps, args.batch_size,
                                                  args.log_every, args.answer_logits, held_out))
                res["trainer"].append(run_trainer(params, method, records, args.steps, args.batch_size,
                                                  args.log_every, out_dir, held_out))
            rate = {k: max(r["samples"] / r["seconds"] for r in v) for k, v in res.items()}
            cpu_rate = {k: max(r["samples"] / r["cpu"] for r in v) for k, v in res.items()}
            cold = res["project"][0]["samples"] / res["project"][0]["seconds"]
            mib = {k: max(r["peak"] for r in v) / 2**20 for k, v in res.items()}
            loss = {k: v[-1]["final_loss"] for k, v in res.items()}
            held = {k: v[-1]["held_out"] for k, v in res.items()}
            ratio, cpu_ratio = rate["project"] / rate["trainer"], cpu_rate["project"] / cpu_rate["trainer"]
            summary[method] = {"project": rate["project"], "trainer": rate["trainer"], "ratio": ratio,
                               "cpu_ratio": cpu_ratio, "cold": cold, "loss": loss, "held_out": held, "mib": mib}
            print(f"{method:8s} {rate['project']:8.1f} {rate['trainer']:8.1f} {ratio:5.2f}x | {cpu_ratio:10.2f}x | "
                  f"{cold:6.1f} | {mib['project']:8.1f} {mib['trainer']:8.1f} | {loss['project']:6.3f} "
                  f"{loss['trainer']:6.3f} | {held['project']:6.3f} {held['trainer']:6.3f}", flush=True)
    ratios = [v["ratio"] for v in summary.values()]
    print(f"\nratio = project samples/s / Trainer samples/s (wall clock): min {min(ratios):.2f}x, geometric mean "
          f"{math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}x")
    print("loss = training loss, mean of the last logging interval; held-out = answer-token loss on "
          f"{len(held_out)} test records after training (same data and schedule, different shuffle and dropout "
          "draws: similar, not identical)")
    return summary


if __name__ == "__main__":
    main()
