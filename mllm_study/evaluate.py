"""Batched greedy generation (KV cache, left padding, stop at EOS) and scoring with each task's metric.

Usage: ``result = evaluate_records(model, processor, records, metric="vqa_score", max_new_tokens=8)``

Per-item records (id, prompt, prediction, references, score) are returned for ``predictions.jsonl``, so reports
can bootstrap over items and pair runs item by item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import Collator, prompt_messages

__all__ = ["EvalResult", "generate_predictions", "choose_by_likelihood", "evaluate_records", "references_of"]


@dataclass
class EvalResult:
    """Scores of one model on one split."""

    metric: str
    value: float
    extra: dict[str, float]
    items: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, **self.extra, "n": len(self.items),
                "seconds": round(self.seconds, 3)}


def references_of(record: dict) -> list[str]:
    """The references a prediction is scored against: ``references`` or the last assistant answer."""
    if record.get("references"):
        return list(record["references"])
    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    if not answers:
        raise ValueError(f"record {record['id']}: no references and no gpt answer to score against")
    return [answers[-1]]


def _sorted_batches(records: list[dict], batch_size: int) -> list[list[int]]:
    """Index batches grouped by prompt length (less padding), in a fixed order."""
    order = sorted(range(len(records)), key=lambda i: sum(len(t["value"]) for t in records[i]["conversations"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


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
    collator = Collator(processor, mode="generate", blank_images=blank_images)
    tok = processor.tokenizer
    model.eval()
    predictions: list[str] = [""] * len(records)
    batches = _sorted_batches(records, batch_size)
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        batch = collator([records[i] for i in idx])
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=collator.pad_id, eos_token_id=tok.eos_token_id, use_cache=True)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            predictions[i] = text.strip()
    return predictions


def _candidates(record: dict, metric: str) -> list[str]:
    choices = record.get("choices") or []
    if not choices:
        raise ValueError(f"record {record['id']}: likelihood scoring needs 'choices'")
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
    from .train import forward_inputs

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
    for start in tqdm(range(0, len(expanded), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collator(expanded[start:start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
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
                     progress: bool = True, desc: str = "evaluate", scoring: str = "generate") -> EvalResult:
    """Answer ``records`` and score them with ``metric`` (a :mod:`mllm_study.metrics` name).

    Args:
        scoring: ``generate`` (greedy generation, the paper's protocol and the default) or ``likelihood``
            (multiple-choice records only: pick the most likely option, see :func:`choose_by_likelihood`).
    """
    from .metrics import compute_metric

    start = time.perf_counter()
    if scoring == "generate":
        preds = generate_predictions(model, processor, records, max_new_tokens, batch_size, blank_images,
                                     progress, desc)
    elif scoring == "likelihood":
        preds = choose_by_likelihood(model, processor, records, metric, batch_size, blank_images, progress, desc)
    else:
        raise ValueError(f"scoring must be 'generate' or 'likelihood', got {scoring!r}")
    refs = [references_of(r) for r in records]
    kwargs: dict[str, Any] = {}
    if metric == "mc_accuracy":
        kwargs["choices"] = [r.get("choices") or [] for r in records]
    if metric == "chair":
        kwargs["objects"] = [r.get("objects") or [] for r in records]
    result = compute_metric(metric, preds, refs, **kwargs)
    items = []
    for rec, pred, ref, score in zip(records, preds, refs, result.per_item):
        prompt = " ".join(c.get("text", "<image>") for m in prompt_messages(rec) for c in m["content"])
        items.append({"id": rec["id"], "prompt": prompt, "prediction": pred, "references": ref,
                      "score": float(score)})
    return EvalResult(metric=metric, value=float(result.value), extra={k: float(v) for k, v in result.extra.items()},
                      items=items, seconds=time.perf_counter() - start)
