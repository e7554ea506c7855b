"""VizWiz VQA -> the VizWiz column: questions from blind users, 10 answers each, some unanswerable.

Usage: ``convert("vizwiz", "VizWiz", "datasets/vizwiz")``

Source layout (the official VizWiz-VQA release): annotations ``train.json`` and ``val.json`` in ``src`` or
``src/Annotations`` (a list of ``{image, question, answers: [{answer, answer_confidence}] x10, answerable,
answer_type}``); images ``train/{image}`` and ``val/{image}`` under the image folder (default ``src``).

Splits: train = official train; **test = official val**, because the official test answers are not public (the
test server scores them). Prompt, LLaVA-1.5's VizWiz prompt (docs/study.md), the last line being :data:`VIZWIZ_SUFFIX`::

    <image>
    {question}
    When the information is insufficient, respond with "Unanswerable". Answer the question using a single word or
    phrase.

Gold (gpt turn) = the most common of the 10 answers, ties broken by first occurrence (so an unanswerable item
usually gets ``unanswerable``, as annotated, lower case). References = the 10 answers as annotated (the VQA score
normalises them). ``answerable`` and ``answer_type`` are not used.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import (VQA_SUFFIX, Item, conversation, find_source, human_turn, load_json, most_common_answer,
                   register_converter, require)

__all__ = ["VIZWIZ_SUFFIX"]

VIZWIZ_SUFFIX = f'When the information is insufficient, respond with "Unanswerable". {VQA_SUFFIX}'
_FORMAT = "VizWiz-VQA release (train.json/val.json annotations, images train/ and val/)"


@register_converter("vizwiz", family="vizwiz", metric="vqa_score", group="unseen", max_new_tokens=16,
                    source_format=_FORMAT)
def build_vizwiz(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read the train and val annotations into train/test items (see the module docstring)."""
    out: dict[str, list[Item]] = {}
    for split, official in (("train", "train"), ("test", "val")):
        path = find_source(src, [f"{official}.json", f"Annotations/{official}.json", f"annotations/{official}.json"],
                           _FORMAT)
        rows = load_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of annotations")
        items = []
        for n, row in enumerate(rows):
            where = f"annotation #{n}"
            image = require(row, "image", path, where, str)
            question = require(row, "question", path, where, str)
            answers = [str(require(a, "answer", path, f"{where} answers", (str, int, float)))
                       for a in require(row, "answers", path, where, list)]
            if not answers:
                raise DataError(f"{path}: {where} has an empty 'answers' list")
            gold = most_common_answer(answers)
            record = {"id": f"vizwiz-{split}-{Path(image).stem}",
                      "conversations": conversation(human_turn(question.strip(), VIZWIZ_SUFFIX), gold),
                      "references": answers}
            items.append(Item(record, (f"{official}/{image}", image)))
        out[split] = items
    return out
