"""OCR-VQA (Mishra et al. 2019) -> the OCRVQA column: questions about book covers, exact-match accuracy.

Usage: ``convert("ocrvqa", "ocr_vqa", "datasets/ocrvqa")``

Source layout (the official release): ``dataset.json`` (``{book_id: {imageURL, questions: [...], answers: [...],
title, authorName, genre, split}}`` with split 1 = train, 2 = val, 3 = test) in ``src`` (or ``src/ocr_vqa``);
images ``images/{book_id}{ext}`` as the release's download script saves them (``ext`` from ``imageURL``; ``.jpg``,
``.png`` and ``.gif`` are also tried, since LLaVA's copy re-saved everything as ``.jpg``).

One record per **question** (not one multi-turn record per image), so the 20k / 5k subsample the paper uses counts
question-answer pairs; sampling is seeded over all questions of the split. Splits: train = split 1, test = split 3
(val unused). Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.``;
gold = references[0] = the single annotated answer.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlparse

from ..errors import DataError
from .base import VQA_SUFFIX, Item, conversation, find_source, human_turn, load_json, register_converter, require

__all__ = ["OCRVQA_SPLITS"]

OCRVQA_SPLITS = {1: "train", 3: "test"}  # 2 (val) is not used
_FORMAT = "OCR-VQA release (dataset.json + images/{book_id}.jpg)"


def _image_candidates(book_id: str, url: str) -> tuple[str, ...]:
    ext = posixpath.splitext(urlparse(url).path)[1].lower()
    exts = dict.fromkeys([e for e in (ext, ".jpg", ".png", ".gif") if e])
    return tuple(f"{folder}{book_id}{e}" for folder in ("images/", "") for e in exts)


@register_converter("ocrvqa", family="ocrvqa", metric="accuracy", group="seen", max_new_tokens=32,
                    source_format=_FORMAT, image_roots=(".", "ocr_vqa", "OCR-VQA"),
                    default_sizes={"train": 20000, "test": 5000})
def build_ocrvqa(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read dataset.json into one train/test item per question (see the module docstring)."""
    path = find_source(src, ["dataset.json", "ocr_vqa/dataset.json", "OCR-VQA/dataset.json"], _FORMAT)
    books = load_json(path)
    if not isinstance(books, dict):
        raise DataError(f"{path}: expected a JSON object {{book id: entry}} ({_FORMAT})")
    out: dict[str, list[Item]] = {"train": [], "test": []}
    for book_id, book in books.items():
        where = f"book {book_id!r}"
        split = OCRVQA_SPLITS.get(require(book, "split", path, where, int))
        if split is None:
            continue
        questions = require(book, "questions", path, where, list)
        answers = require(book, "answers", path, where, list)
        if len(questions) != len(answers):
            raise DataError(f"{path}: {where} has {len(questions)} 'questions' but {len(answers)} 'answers'")
        images = _image_candidates(book_id, require(book, "imageURL", path, where, str))
        for k, (question, answer) in enumerate(zip(questions, answers)):
            answer = str(answer).strip()
            record = {"id": f"ocrvqa-{split}-{book_id}-{k}",
                      "conversations": conversation(human_turn(str(question).strip(), VQA_SUFFIX), answer),
                      "references": [answer]}
            out[split].append(Item(record, images))
    return out
