"""ScienceQA (lupantech/ScienceQA) -> the paper's "SQA (img)" column: image questions only, gold = option letter.

Usage: ``convert("scienceqa", "ScienceQA/data", "datasets/scienceqa")``

Source layout (the official release): ``problems.json`` (``{pid: {question, choices, answer (index), hint, image,
split, ...}}``) and ``pid_splits.json`` (``{"train": [pid, ...], "val": [...], "test": [...], ...}``), found in
``src``, ``src/scienceqa`` or ``src/data/scienceqa``; images at ``{split}/{pid}/image.png`` under the image folder
(the first of ``src``, ``src/data``, the parent of ``src``, ``src/images``, ``src/scienceqa/images`` and
``src/data/scienceqa/images`` that holds them: the repository's ``data/scienceqa/images/{split}/{pid}/`` is found
from ``--src ScienceQA``, ``--src ScienceQA/data`` and ``--src ScienceQA/data/scienceqa``).

Prompt (LLaVA-1.5's ScienceQA evaluation form, ``llava_test_CQM-A.json`` plus its ``--single-pred-prompt``)::

    <image>
    Context: {hint}            <- omitted when the hint is empty
    {question}
    A. {choice 0}
    B. {choice 1}
    Answer with the option's letter from the given choices directly.

This is docs/study.md's ``{question} A. c1, B. c2, ...`` with one option per line, as LLaVA-1.5 writes it, plus the
answer-format instruction so the base model answers with a letter before any fine-tuning. Splits: official train
and test (val unused); only problems with an image are kept (train 6,218 / test 2,017 in the full release).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import Item, conversation, find_source, human_turn, load_json, register_converter, require

__all__ = ["LETTERS", "SQA_SUFFIX", "sqa_prompt"]

LETTERS = "ABCDEFGHIJ"
SQA_SUFFIX = "Answer with the option's letter from the given choices directly."
_FORMAT = "ScienceQA release (problems.json + pid_splits.json, images {split}/{pid}/image.png)"


def sqa_prompt(question: str, choices: list[str], hint: str = "") -> str:
    """The human turn of one ScienceQA item (format in the module docstring)."""
    options = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    context = f"Context: {hint.strip()}" if hint and hint.strip() else ""
    return human_turn(context, question.strip(), *options, SQA_SUFFIX)


@register_converter("scienceqa", family="sqa", metric="mc_accuracy", group="unseen", max_new_tokens=8,
                    source_format=_FORMAT, image_roots=(".", "data", "..", "images", "scienceqa/images",
                                                           "data/scienceqa/images"))
def build_scienceqa(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read problems.json + pid_splits.json into train/test items with images (see the module docstring)."""
    problems_path = find_source(src, ["problems.json", "scienceqa/problems.json", "data/scienceqa/problems.json"],
                                _FORMAT)
    splits_path = find_source(problems_path.parent, ["pid_splits.json"], _FORMAT)
    problems = load_json(problems_path)
    pid_splits = load_json(splits_path)
    if not isinstance(problems, dict):
        raise DataError(f"{problems_path}: expected a JSON object {{problem id: problem}}")
    out: dict[str, list[Item]] = {}
    for split in ("train", "test"):
        items = []
        for pid in require(pid_splits, split, splits_path, "the split table", list):
            pid = str(pid)
            if pid not in problems:
                raise DataError(f"{problems_path}: problem {pid!r} listed in {splits_path.name} is missing")
            prob, where = problems[pid], f"problem {pid!r}"
            image = require(prob, "image", problems_path, where, (str, type(None)))
            if not image:  # text-only question: not part of SQA (img)
                continue
            choices = [str(c) for c in require(prob, "choices", problems_path, where, list)]
            answer = require(prob, "answer", problems_path, where, int)
            if not 0 <= answer < len(choices) or len(choices) > len(LETTERS):
                raise DataError(f"{problems_path}: {where} has answer index {answer} for {len(choices)} choices")
            hint = require(prob, "hint", problems_path, where, (str, type(None))) or ""
            question = require(prob, "question", problems_path, where, str)
            letter = LETTERS[answer]
            record = {"id": f"scienceqa-{split}-{pid}",
                      "conversations": conversation(sqa_prompt(question, choices, hint), letter),
                      "references": [letter], "choices": choices}
            items.append(Item(record, (f"{split}/{pid}/{image}",)))
        out[split] = items
    return out
