"""Batched greedy generation (KV cache, left padding, stop at EOS) and scoring with each task's metric.

Usage: ``result = evaluate_records(model, processor, records, metric="vqa_score", max_new_tokens=8)``

Per-item records (id, prompt, prediction, references, score) are returned for ``predictions.jsonl``, so reports
can bootstrap over items and pair runs item by item.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import ConfigError, DataError, PredictionFileError
from .captions import chair_synonyms  # noqa: F401 (re-exported: also this module's API)
from .data import Collator, prompt_messages

__all__ = ["EvalResult", "generate_predictions", "choose_by_likelihood", "evaluate_records", "evaluate_dataset",
           "evaluate_world", "evaluate_loss", "score_predictions", "PredictionFileError", "references_of", "rescore",
           "variant_for", "chair_synonyms"]


@dataclass
class EvalResult:
    """Scores of one model on one split."""

    metric: str
    value: float
    extra: dict[str, float]
    items: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    variant: str | None = None  # the metric variant that scored it (None: the metric has no variants)

    def summary(self) -> dict[str, Any]:
        out = {"metric": self.metric, "value": self.value, **self.extra, "n": len(self.items),
               "seconds": round(self.seconds, 3)}
        if self.variant is not None:
            out["variant"] = self.variant
        return out


def variant_for(metric: str, metric_variants: dict[str, str] | None) -> str | None:
    """The variant ``metric`` is scored with: ``metric_variants[metric]`` if given, else the metric's default."""
    from .metrics import resolve_variant

    return resolve_variant(metric, (metric_variants or {}).get(metric))


def references_of(record: dict) -> list[str]:
    """The references a prediction is scored against: ``references`` or the last assistant answer."""
    if record.get("references"):
        return list(record["references"])
    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    if not answers:
        raise DataError(f"record {record['id']}: no references and no gpt answer to score against")
    return [answers[-1]]


def _sorted_batches(records: list[dict], batch_size: int) -> list[list[int]]:
    """Index batches grouped by prompt length (less padding), in a fixed order."""
    order = sorted(range(len(records)), key=lambda i: sum(len(t["value"]) for t in records[i]["conversations"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


#: generation settings that make ``generate`` greedy whatever the checkpoint's generation_config says
_GREEDY = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "temperature": None, "top_k": None, "top_p": None}


@torch.no_grad()
def generate_predictions(model: torch.nn.Module, processor: Any, records: list[dict], max_new_tokens: int,
                         batch_size: int = 64, blank_images: bool = False, progress: bool = True,
                         desc: str = "evaluate") -> list[str]:
    """Greedy answers for ``records``, in their order.

    Args:
        model: any image-text-to-text model (PEFT-wrapped or not).
        processor: its processor (chat template, tokenizer, image processor).
        records: records from :func:`~mllm_study.data.load_split`.
        max_new_tokens: answer length limit.
        batch_size: prompts per ``generate`` call (left-padded).
        blank_images: replace every image by a blank one (image-use check).
        progress: show a progress bar.
        desc: progress bar label.

    Returns:
        Decoded predictions (special tokens removed, stripped).
    """
    from .train import precision_context

    collator = Collator(processor, mode="generate", blank_images=blank_images)
    tok = processor.tokenizer
    model.eval()
    predictions: list[str] = [""] * len(records)
    batches = _sorted_batches(records, batch_size)
    for idx in tqdm(batches, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True):
        batch = collator([records[i] for i in idx])
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        with precision_context(model):
            # truly greedy: a checkpoint's generation config may sample or penalise repetitions (Qwen2-VL: 1.05)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=collator.pad_id, eos_token_id=tok.eos_token_id, use_cache=True,
                                 **_GREEDY)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            predictions[i] = text.strip()
    return predictions


def _candidates(record: dict, metric: str) -> list[str]:
    choices = record.get("choices") or []
    if not choices:
        raise DataError(f"record {record['id']}: likelihood scoring needs 'choices'")
    # SQA-style items are answered with the option letter; IconQA-style ones with the option text.
    return [chr(ord("A") + i) for i in range(len(choices))] if metric == "mc_accuracy" else list(choices)


@torch.no_grad()
def choose_by_likelihood(model: torch.nn.Module, processor: Any, records: list[dict], metric: str,
                         batch_size: int = 64, blank_images: bool = False, progress: bool = True,
                         desc: str = "evaluate") -> list[str]:
    """For multiple-choice records: the candidate answer with the highest total log-likelihood.

    Each candidate replaces the final answer turn and is scored on its answer tokens (end-of-turn included), the
    way lm-evaluation-harness scores multiple choice. Faster than generation and needs no answer parsing.
    """
    from .data import IGNORE_INDEX
    from .train import forward_inputs, precision_context

    collator = Collator(processor, mode="train", blank_images=blank_images)
    expanded, owner = [], []
    for i, rec in enumerate(records):
        for cand in _candidates(rec, metric):
            turns = [dict(t) for t in rec["conversations"]]
            if turns[-1]["from"] == "gpt":
                turns[-1]["value"] = cand
            else:
                turns.append({"from": "gpt", "value": cand})
            expanded.append({**rec, "id": f"{rec['id']}::{cand}", "conversations": turns})
            owner.append((i, cand))
    scores: list[float] = []
    model.eval()
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(expanded), batch_size), desc=desc, disable=None if progress else True, leave=False):
        batch = collator(expanded[start:start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with precision_context(model):
            logits = model(**forward_inputs(model, batch)).logits[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        scores.extend((logp * (target != IGNORE_INDEX)).sum(-1).tolist())
    best: dict[int, tuple[float, str]] = {}
    for (i, cand), score in zip(owner, scores):
        if i not in best or score > best[i][0]:
            best[i] = (score, cand)
    return [best[i][1] for i in range(len(records))]


def evaluate_records(model: torch.nn.Module, processor: Any, records: list[dict], metric: str,
                     max_new_tokens: int, batch_size: int = 64, blank_images: bool = False,
                     progress: bool = True, desc: str = "evaluate", scoring: str = "generate",
                     metric_variant: str | None = None) -> EvalResult:
    """Answer ``records`` and score them with ``metric`` (a :mod:`mllm_study.metrics` name).

    Args:
        scoring: ``generate`` (greedy generation, the paper's protocol and the default) or ``likelihood``
            (multiple-choice records only: pick the most likely option, see :func:`choose_by_likelihood`).
        metric_variant: a named variant of ``metric`` (e.g. ``official-2021`` of ``vqa_score``); None = its
            default. Checked before generating.
    """
    from .metrics import compute_metric, resolve_variant

    metric_variant = resolve_variant(metric, metric_variant)
    start = time.perf_counter()
    if scoring == "generate":
        preds = generate_predictions(model, processor, records, max_new_tokens, batch_size, blank_images,
                                     progress, desc)
    elif scoring == "likelihood":
        preds = choose_by_likelihood(model, processor, records, metric, batch_size, blank_images, progress, desc)
    else:
        raise ConfigError(f"scoring must be 'generate' or 'likelihood', got {scoring!r}")
    refs = [references_of(r) for r in records]
    result = compute_metric(metric, preds, refs, variant=metric_variant, **_metric_kwargs(metric, records))
    items = []
    for rec, pred, ref, score in zip(records, preds, refs, result.per_item):
        prompt = " ".join(c.get("text", "<image>") for m in prompt_messages(rec) for c in m["content"])
        items.append({"id": rec["id"], "prompt": prompt, "prediction": pred, "references": ref,
                      "score": float(score)})
    return EvalResult(metric=metric, value=float(result.value), extra={k: float(v) for k, v in result.extra.items()},
                      items=items, seconds=time.perf_counter() - start, variant=result.variant)


def _metric_kwargs(metric: str, records: list[dict]) -> dict[str, Any]:
    """The per-item inputs a metric needs beside predictions and references (choices, objects)."""
    kwargs: dict[str, Any] = {}
    if metric == "mc_accuracy":
        kwargs["choices"] = [r.get("choices") or [] for r in records]
    if metric == "chair":
        kwargs["objects"] = [r.get("objects") or [] for r in records]
    return kwargs


def rescore(records: list[dict], predictions: list[str], metric: str, info: dict, variant: str | None = None):
    """Score stored ``predictions`` of ``records`` with ``metric`` exactly as evaluation did (CHAIR with the
    dataset's object synonyms); returns the :class:`~mllm_study.metrics.MetricResult`. Used after a metric changed."""
    from .metrics import compute_metric

    if metric == "chair" and info["metric"] == "cider":
        return compute_metric("chair", predictions, [[""]] * len(predictions),
                              objects=[r["objects"] for r in records], synonyms=chair_synonyms(info))
    return compute_metric(metric, predictions, [references_of(r) for r in records], variant=variant,
                          **_metric_kwargs(metric, records))


def evaluate_dataset(model: torch.nn.Module, processor: Any, dataset_dir: str | Path, split: str = "test",
                     size: int | None = None, batch_size: int = 64, max_new_tokens: int | None = None,
                     progress: bool = True, scoring: str = "generate",
                     metric_variants: dict[str, str] | None = None) -> dict[str, EvalResult]:
    """Evaluate one split of a dataset folder with its paper metric (``dataset.json``'s ``metric``).

    Captioning datasets whose records list ground-truth ``objects`` are also scored with CHAIR (on the same
    generated captions). ``metric_variants`` ({metric: variant}, e.g. ``{"vqa_score": "lmms-eval"}``) picks
    named metric variants; metrics it does not name use their default. Returns ``{metric_name: EvalResult}``.
    """
    from .data import load_dataset_info, load_split
    from .metrics import compute_metric

    info = load_dataset_info(dataset_dir)
    records = load_split(dataset_dir, split, size, seed=0)
    limit = max_new_tokens or info.get("max_new_tokens", 16)
    main = evaluate_records(model, processor, records, info["metric"], limit, batch_size, progress=progress,
                            desc=f"{info['name']}/{split}", scoring=scoring,
                            metric_variant=(metric_variants or {}).get(info["metric"]))
    results = {info["metric"]: main}
    synonyms = chair_synonyms(info)
    if info["metric"] == "cider" and synonyms and all(r.get("objects") is not None for r in records):
        preds = [item["prediction"] for item in main.items]
        chair = compute_metric("chair", preds, [[""]] * len(preds), objects=[r["objects"] for r in records],
                               synonyms=synonyms)
        items = [{**item, "score": float(s)} for item, s in zip(main.items, chair.per_item)]
        results["chair"] = EvalResult("chair", float(chair.value), {k: float(v) for k, v in chair.extra.items()},
                                      items, 0.0)
    return results


def evaluate_world(model: torch.nn.Module, processor: Any, world_dir: str | Path, size: int | None = None,
                   batch_size: int = 64, progress: bool = True) -> dict[str, dict[str, EvalResult]]:
    """Every family of a synthetic world (test splits) and the three POPE splits, each with its paper metric.

    Returns ``{"<family>" or "pope/<strategy>": {metric: EvalResult}}``.
    """
    from .world import FAMILIES, POPE_STRATEGIES

    world_dir = Path(world_dir)
    out = {}
    for family in FAMILIES:
        out[family] = evaluate_dataset(model, processor, world_dir / family, "test", size, batch_size,
                                       progress=progress)
    for strategy in POPE_STRATEGIES:
        out[f"pope/{strategy}"] = evaluate_dataset(model, processor, world_dir / "pope", strategy, size, batch_size,
                                                   progress=progress)
    return out


def score_predictions(predictions_path: str | Path, dataset_dir: str | Path, split: str = "test",
                      metric: str | None = None, variant: str | None = None) -> EvalResult:
    """Score a JSON-lines predictions file (``{"id": ..., "prediction": ...}`` per line) against a dataset split.

    A null or empty prediction counts as wrong. Every record of the split must have exactly one prediction.
    ``variant`` picks a named variant of the metric (None: its default); the result records which.

    Raises:
        PredictionFileError: unreadable lines, missing keys, unknown, duplicate or missing ids.
    """
    from .data import load_dataset_info, load_split
    from .metrics import compute_metric

    path = Path(predictions_path)
    if not path.exists():
        raise PredictionFileError(f"predictions file not found: {path}")
    info = load_dataset_info(dataset_dir)
    records = load_split(dataset_dir, split, check_images=False)
    by_id = {r["id"]: r for r in records}
    preds: dict[Any, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionFileError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
            raise PredictionFileError(f"{path}:{n}: each line needs 'id' and 'prediction'")
        if row["id"] not in by_id:
            raise PredictionFileError(f"{path}:{n}: id {row['id']!r} is not in {dataset_dir}/{split}.json")
        if row["id"] in preds:
            raise PredictionFileError(f"{path}:{n}: duplicate prediction for id {row['id']!r}")
        pred = row["prediction"]
        if pred is not None and not isinstance(pred, str):
            raise PredictionFileError(f"{path}:{n}: prediction must be a string or null, got {type(pred).__name__}")
        preds[row["id"]] = pred or ""
    missing = [i for i in by_id if i not in preds]
    if missing:
        raise PredictionFileError(f"{path}: {len(missing)} of {len(by_id)} records have no prediction "
                                  f"(first: {missing[0]!r})")
    name = metric or info["metric"]
    refs = [references_of(r) for r in records]
    kwargs: dict[str, Any] = {}
    if name == "mc_accuracy":
        kwargs["choices"] = [r.get("choices") or [] for r in records]
    result = compute_metric(name, [preds[r["id"]] for r in records], refs, variant=variant, **kwargs)
    items = [{"id": r["id"], "prediction": preds[r["id"]], "references": ref, "score": float(s)}
             for r, ref, s in zip(records, refs, result.per_item)]
    return EvalResult(name, float(result.value), {k: float(v) for k, v in result.extra.items()}, items,
                      variant=result.variant)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, processor: Any, records: list[dict], batch_size: int = 64) -> float:
    """Mean answer-token cross-entropy on ``records`` (held-out loss), token-weighted over the whole set."""
    from .data import IGNORE_INDEX
    from .train import forward_inputs, precision_context

    collator = Collator(processor, mode="train")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(device) for k, v in collator(records[start:start + batch_size]).items()}
        labels = batch.pop("labels")
        with precision_context(model):
            logits = model(**forward_inputs(model, batch)).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(loss)
        count += int((target != IGNORE_INDEX).sum())
    return total / max(count, 1)
