"""The training fast path changes speed, not results: caches on/off give identical runs; the opt-in parts behave."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os

import pytest
import torch

from mllm_study import data as data_mod
from mllm_study.data import Collator, clear_encoding_cache, load_split, processor_fingerprint, set_encoding_cache
from mllm_study.train import (TrainSettings, _first_answer_keep, _LengthGroupedBatches, mixed_precision_setting,
                              train_model)


@pytest.fixture(scope="module")
def smoke_base(smoke_model_dir):
    from mllm_study.models import load_checkpoint

    return load_checkpoint(smoke_model_dir)


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_encoding_cache()
    set_encoding_cache(None)
    yield
    clear_encoding_cache()
    set_encoding_cache(None)


def _train_records(smoke_world, n=32):
    return load_split(smoke_world / "iconqa_txt", "train", n, seed=1)


def _lora(base):
    from mllm_study.methods import apply_method

    torch.manual_seed(3)
    return apply_method(copy.deepcopy(base), "lora", {"r": 4, "alpha": 8})


def _train(base, collator, records, **settings):
    model = _lora(base)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}]
    result = train_model(model, collator, records, groups,
                         TrainSettings(max_steps=6, batch_size=8, log_every=1, seed=5, progress=False, **settings))
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return [e["loss"] for e in result.log if "loss" in e], weights, model, result


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_dir_contents(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("seconds", "samples_per_second", "tokens_per_second", "peak_memory_mb"):  # timings and memory
        metrics["train"].pop(key)
    for epoch in metrics["train"].get("epochs", []):
        epoch.pop("seconds", None)
    log = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
           for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return metrics, log, (run_dir / "predictions.jsonl").read_text()


@pytest.mark.slow
def test_run_metrics_identical_with_and_without_caches(smoke_params, smoke_model_dir, tmp_path, monkeypatch):
    """A whole run (train with per-epoch evaluation, then metrics and predictions) with every encoding cache off,
    with the memory caches and a cold disk cache, and with a warm disk cache: identical results."""
    from mllm_study.runs import execute_run

    def params_for(name):
        run = dataclasses.replace(smoke_params.run, method="lora", dataset="iconqa_txt", test_size=16,
                                  eval_every_epoch=True, method_params={"r": 4, "alpha": 8})
        return dataclasses.replace(smoke_params, run=run,
                                   paths=dataclasses.replace(smoke_params.paths, runs=str(tmp_path / name)))

    original_init = Collator.__init__

    def without_cache(self, processor, mode="train", blank_images=False, cache=True):
        original_init(self, processor, mode, blank_images, cache=False)

    with monkeypatch.context() as m:
        m.setattr(Collator, "__init__", without_cache)
        plain = _run_dir_contents(execute_run(params_for("plain"), progress=False))

    set_encoding_cache(tmp_path / "encodings")
    cold = _run_dir_contents(execute_run(params_for("cold"), progress=False))
    assert list((tmp_path / "encodings").rglob("*.safetensors")), "the disk cache was not written"

    clear_encoding_cache()  # a new process: only the disk cache is left
    encoded_train_ids = []
    original_encode = Collator.encode_many

    def counting(self, records):
        encoded_train_ids.extend(r["id"] for r in records if "-train-" in r["id"])
        return original_encode(self, records)

    monkeypatch.setattr(Collator, "encode_many", counting)
    warm = _run_dir_contents(execute_run(params_for("warm"), progress=False))
    assert encoded_train_ids == [], "training records were encoded again despite the disk cache"

    assert plain[0]["train"]["steps"] > 0 and len(plain[1]) > 1
    assert plain == cold == warm


@pytest.mark.slow
def test_training_identical_with_and_without_collator_cache(smoke_base, smoke_world):
    model, processor = smoke_base
    records = _train_records(smoke_world)
    losses_off, weights_off, _, _ = _train(model, Collator(processor, "train", cache=False), records)
    losses_on, weights_on, trained, _ = _train(model, Collator(processor, "train"), records)
    assert losses_off == losses_on and _same_weights(weights_off, weights_on)
    # a second run in the process reuses the shared encodings (new collator, nothing encoded) and still matches
    again = Collator(processor, "train")
    again.encode_many = None  # would fail if called
    losses_again, weights_again, _, _ = _train(model, again, records)
    assert losses_again == losses_off and _same_weights(weights_again, weights_off)


def test_disk_cache_keys_cover_processor_and_image(smoke_base, smoke_world, tmp_path):
    _, processor = smoke_base
    records = [dict(r) for r in _train_records(smoke_world, 8)]
    copied = tmp_path / "image.png"  # a copy whose modification time the test may change
    copied.write_bytes(open(records[0]["image_path"], "rb").read())
    records[0]["image_path"] = str(copied)
    set_encoding_cache(tmp_path / "enc")
    first = Collator(processor, "train")
    first.prepare(records)
    expected = first.encode_many(records)

    clear_encoding_cache()
    calls = []
    second = Collator(processor, "train")
    second.encode_many = lambda recs: calls.append(len(recs)) or Collator.encode_many(second, recs)
    second.prepare(records)
    assert calls == []
    for got, want in zip(second._encode_cached(records), expected):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

    # another mode or image setting is another shard; a touched image file is a miss for that record only
    clear_encoding_cache()
    os.utime(records[0]["image_path"], ns=(1, 1))
    third = Collator(processor, "train")
    third.encode_many = lambda recs: calls.append(len(recs)) or Collator.encode_many(third, recs)
    third.prepare(records)
    assert calls == [1]
    blank = Collator(processor, "train", blank_images=True)
    assert blank._scope != third._scope


def test_processor_fingerprint_changes_with_content(smoke_base, smoke_model_dir):
    from mllm_study.models import load_checkpoint

    _, processor = smoke_base
    _, same = load_checkpoint(smoke_model_dir)
    assert processor_fingerprint(processor) == processor_fingerprint(same)
    _, other = load_checkpoint(smoke_model_dir)
    other.chat_template = other.chat_template.replace("assistant :", "bot :")
    assert processor_fingerprint(other) != processor_fingerprint(processor)


def test_shared_cache_is_bounded(smoke_base, smoke_world, monkeypatch):
    _, processor = smoke_base
    records = _train_records(smoke_world, 16)
    monkeypatch.setenv("MLLM_STUDY_ENCODING_CACHE_MB", "0.02")  # ~20 kB: a couple of records
    collator = Collator(processor, "train")
    collator.prepare(records)
    assert 1 <= len(data_mod.SHARED) < len(records)
    assert len(collator._cache) == len(records)  # the collator keeps its own for its lifetime


@pytest.mark.slow
def test_answer_logits_give_the_same_loss_up_to_rounding(smoke_base, smoke_world):
    model, processor = smoke_base
    records = _train_records(smoke_world)
    collator = Collator(processor, "train")
    full, _, _, res_full = _train(model, collator, records, answer_logits=False)
    fast, _, _, res_fast = _train(model, collator, records, answer_logits=True)
    assert not res_full.answer_logits and res_fast.answer_logits
    assert fast == pytest.approx(full, rel=1e-4)


def test_first_answer_keep_covers_every_labelled_prediction():
    labels = torch.full((2, 10), -100)
    labels[0, 7:] = 5  # one answer at the end
    labels[1, 4:6] = 6  # an earlier answer in the other row (multi-turn)
    labels[1, 9] = 7
    keep = _first_answer_keep(labels)
    assert keep == 10 - 4 + 1  # predictions from position 3 on (position 3 predicts label 4)
    assert _first_answer_keep(torch.full((1, 5), -100)) == 5


def test_length_grouped_batches_are_deterministic_permutations():
    lengths = [5, 40, 7, 38, 6, 41, 8, 39, 9, 37] * 4
    batches = list(_LengthGroupedBatches(lengths, 4, torch.Generator().manual_seed(0), window=2))
    again = list(_LengthGroupedBatches(lengths, 4, torch.Generator().manual_seed(0), window=2))
    assert batches == again
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(s < 10 for s in spread) >= len(batches) // 2  # most batches hold similar lengths


def test_group_by_length_trains(smoke_base, smoke_world):
    model, processor = smoke_base
    losses, _, _, result = _train(model, Collator(processor, "train"), _train_records(smoke_world),
                                  group_by_length=True)
    assert result.steps == 6 and all(x == x for x in losses)


def test_mixed_precision_setting(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("MLLM_STUDY_MIXED_PRECISION", "auto")
    # auto on each kind of machine, whatever this one is (the CUDA probes are replaced)
    for cuda, bf16, expected in ((False, False, "no"), (True, True, "bf16"), (True, False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert mixed_precision_setting() == expected, (cuda, bf16)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch chose: auto leaves it to it
    assert mixed_precision_setting() is None
    for choice in ("no", "bf16", "fp16"):  # an explicit choice wins over both (case and spaces ignored)
        monkeypatch.setenv("MLLM_STUDY_MIXED_PRECISION", f" {choice.upper()} ")
        assert mixed_precision_setting() == choice
    monkeypatch.setenv("MLLM_STUDY_MIXED_PRECISION", "fp8")
    expected = r"^MLLM_STUDY_MIXED_PRECISION must be auto, no, bf16 or fp16 \(got 'fp8'\)$"
    with pytest.raises(ValueError, match=expected):
        mixed_precision_setting()


@pytest.mark.slow
def test_train_throughput_benchmark_runs(smoke_params, smoke_model_dir, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--profile", "smoke", "--cache", smoke_params.paths.cache, "--methods", "ia3",
                          "--steps", "2", "--batch-size", "4", "--records", "16", "--held-out", "8",
                          "--repeats", "1", "--log-every", "1"])
    out = capsys.readouterr().out
    assert "ia3" in out and "ratio" in out
    row = summary["ia3"]
    assert row["project"] > 0 and row["trainer"] > 0 and row["same_batches"]
    held = row["held_out"]  # answer-token loss on 8 test records after training, per side
    assert set(held) == {"project", "trainer", "oob"} and all(math.isfinite(v) and v > 0 for v in held.values())
    # Trainer fair and out of the box see the same batches in the same order (same seed, same tensors): only the
    # AdamW implementation differs (for-loop vs fused), so the same maths up to rounding
    assert held["oob"] == pytest.approx(held["trainer"], rel=1e-5)
    # the project loop trains the same recipe but draws its own batch order: close, not equal (measured 0.45 %)
    assert held["project"] == pytest.approx(held["trainer"], rel=0.05)
    assert row["loss"]["oob"] == pytest.approx(row["loss"]["fair"], rel=1e-5)


def test_study_time_phase_clock_counts_each_second_once():
    import importlib.util
    import time
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "study_time.py"
    spec = importlib.util.spec_from_file_location("study_time", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clock = bench.PhaseClock()
    evaluate = clock.wrap("eval", lambda: time.sleep(0.05), absorbs=False)
    train = clock.wrap("train", lambda: (time.sleep(0.05), evaluate()), absorbs=False)
    pretrain = clock.wrap("pretrain", lambda: (time.sleep(0.02), train()), absorbs=True)
    train()
    pretrain()
    assert clock.seconds["eval"] == pytest.approx(0.05, abs=0.03)  # the one outside pre-training
    assert clock.seconds["train"] == pytest.approx(0.05, abs=0.03)  # without the evaluation inside it
    assert clock.seconds["pretrain"] == pytest.approx(0.12, abs=0.04)  # absorbs its training
    assert clock.calls == {"eval": 1, "train": 1, "pretrain": 1}


_BF16_SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
from mllm_study.data import Collator, load_split
from mllm_study.methods import apply_method
from mllm_study.models import load_checkpoint
from mllm_study.train import TrainSettings, train_model
model, processor = load_checkpoint(sys.argv[1])
model = apply_method(model, "lora", {"r": 4, "alpha": 8})
records = load_split(sys.argv[2], "train", 16, seed=1)
plain = []
def on_epoch_end(epoch, m):
    plain.append(m.forward.__func__ is type(m).forward)
    return {}
groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}]
result = train_model(model, Collator(processor, "train"), records, groups,
                     TrainSettings(epochs=2, batch_size=8, log_every=1, progress=False), on_epoch_end=on_epoch_end)
assert result.mixed_precision == "bf16" and result.answer_logits, result
assert plain == [True, True], plain
assert "_original_forward" not in model.__dict__
assert all(l == l for l in (e["loss"] for e in result.log if "loss" in e))
print("ok")
"""


@pytest.mark.slow
def test_mixed_precision_path_on_cpu(smoke_model_dir, smoke_world, tmp_path):
    """The CUDA path's mechanics, run with bf16 autocast on CPU in a fresh process (one accelerator per process):
    answer-only logits by default, per-epoch evaluation on the plain forward, the autocast wrapper removed."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "MLLM_STUDY_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    script = tmp_path / "bf16.py"
    script.write_text(_BF16_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(smoke_model_dir), str(smoke_world / "iconqa_txt")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_mask_dropout_drops_at_rate_p_and_keeps_the_mean():
    """Drop share within 4 binomial standard errors of round(p * 65536) / 65536; kept values scaled by 1 / (1 - p);
    the gradient is the same mask; eval mode and p = 0 are the identity; the same seed gives the same mask."""
    from mllm_study.train import MaskDropout

    n = 400_000
    for p in (0.05, 0.1, 0.5):
        layer = MaskDropout(p).train()
        x = torch.ones(n, requires_grad=True)
        torch.manual_seed(0)
        y = layer(x)
        dropped = float((y == 0).float().mean())
        q = round(p * 65536) / 65536
        assert abs(dropped - q) < 4 * math.sqrt(q * (1 - q) / n), (p, dropped)
        assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # d(sum y)/dx = mask * scale = y for x = 1
        torch.manual_seed(0)
        assert torch.equal(layer(x.detach()), y.detach())
    x = torch.randn(3, 7)
    assert torch.equal(MaskDropout(0.3).eval()(x), x) and torch.equal(MaskDropout(0.0).train()(x), x)
    assert MaskDropout(0.2).train()(x.to(torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dropout probability"):
        MaskDropout(1.0)


def test_mask_dropout_masks_are_independent_of_position():
    """Every position is dropped at the same rate (the int16 view takes all four 16-bit words of each draw)."""
    from mllm_study.train import MaskDropout

    torch.manual_seed(1)
    layer = MaskDropout(0.25).train()
    rates = torch.stack([(layer(torch.ones(8)) == 0).float() for _ in range(20_000)]).mean(0)
    assert torch.all((rates - 0.25).abs() < 4 * math.sqrt(0.25 * 0.75 / 20_000)), rates


def test_training_swaps_dropout_on_cpu_and_puts_it_back(smoke_base, smoke_world):
    """LoRA's dropouts are MaskDropout while the loop runs and nn.Dropout after; fast_dropout=False keeps torch's
    masks (another loss, same model code); the fast path is deterministic for a seed."""
    from mllm_study.train import MaskDropout

    model, processor = smoke_base
    records = _train_records(smoke_world)
    collator = Collator(processor, "train")
    seen = []

    def spy(epoch, m):
        seen.append(sum(isinstance(x, MaskDropout) for x in m.modules()))

    lora = _lora(model)
    n_dropout = sum(type(x) is torch.nn.Dropout and x.p > 0 for x in lora.modules())
    assert n_dropout > 0
    groups = [{"params": [p for p in lora.parameters() if p.requires_grad], "lr": 1e-3}]
    train_model(lora, collator, records, groups, TrainSettings(max_steps=4, batch_size=8, seed=5, progress=False),
                on_epoch_end=spy)
    assert seen and seen[0] == n_dropout
    assert sum(type(x) is torch.nn.Dropout and x.p > 0 for x in lora.modules()) == n_dropout
    assert not any(isinstance(x, MaskDropout) for x in lora.modules())
    fast_a, weights_a, _, _ = _train(model, collator, records)
    fast_b, weights_b, _, _ = _train(model, collator, records)
    torch_masks, _, _, _ = _train(model, collator, records, fast_dropout=False)
    assert fast_a == fast_b and _same_weights(weights_a, weights_b)
    assert torch_masks != fast_a and torch_masks == pytest.approx(fast_a, rel=0.05)
