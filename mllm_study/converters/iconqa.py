"""IconQA (lupantech/IconQA) -> the IconQA-txt (multi-text-choice) and IconQA-blank (fill-in-the-blank) columns.

Usage: ``convert("iconqa_txt", "iconqa_data", "datasets/iconqa_txt")``

Source layout (the official ``iconqa_data.zip``): ``iconqa/{train,val,test}/{choose_txt,fill_in_blank}/{qid}/``
holding ``data.json`` (``{question, choices, answer, ques_type, ...}``; ``answer`` is the index of the right choice
for choose_txt and the answer text for fill_in_blank) and ``image.png``. ``src`` may be the folder holding
``iconqa_data``, ``iconqa_data`` itself, or its ``iconqa`` folder. Splits: official train and test (val unused);
records in numeric qid order.

Prompts (docs/study.md's suffixes, on their own line after the question; ``\\n`` = newline)::

    iconqa_txt:   <image>\\n{question}\\nChoices: {c1}, {c2}, {c3}. Choose an option from the choices to answer
                  the question.
    iconqa_blank: <image>\\n{question}\\nFill in the blanks in () or answer this question.

Gold = the right choice's text (iconqa_txt, with ``choices``) or the answer (iconqa_blank); metric: exact accuracy.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import Item, conversation, human_turn, load_json, register_converter, require

__all__ = ["TXT_SUFFIX", "BLANK_SUFFIX", "iconqa_txt_prompt"]

TXT_SUFFIX = "Choose an option from the choices to answer the question."
BLANK_SUFFIX = "Fill in the blanks in () or answer this question."
_ROOTS = ("iconqa_data/iconqa", "iconqa", ".")
_FORMAT = "IconQA release (iconqa_data/iconqa/{split}/{task}/{qid}/data.json + image.png)"


def iconqa_txt_prompt(question: str, choices: list[str]) -> str:
    """The human turn of one multi-text-choice item."""
    return human_turn(question.strip(), f"Choices: {', '.join(choices)}. {TXT_SUFFIX}")


def _qid_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _read(src: Path, task: str) -> dict[str, list[tuple[str, Path, dict]]]:
    """(qid, data.json path, data) per split, from the first root holding ``{split}/{task}``."""
    for rel in _ROOTS:
        root = src / rel
        if any((root / split / task).is_dir() for split in ("train", "test")):
            break
    else:
        raise FileNotFoundError(f"expected {task}/ folders of the {_FORMAT} under {src} "
                                f"(looked for {', '.join(str(src / r / 'train' / task) for r in _ROOTS)})")
    out = {}
    for split in ("train", "test"):
        folder = root / split / task
        if not folder.is_dir():
            raise FileNotFoundError(f"expected the folder {folder} of the {_FORMAT}")
        rows = []
        for qdir in sorted((d for d in folder.iterdir() if d.is_dir()), key=_qid_key):
            path = qdir / "data.json"
            if not path.is_file():
                raise FileNotFoundError(f"expected {path} (data.json of the {_FORMAT})")
            rows.append((qdir.name, path, load_json(path)))
        out[split] = rows
    return out


@register_converter("iconqa_txt", family="iconqa_txt", metric="accuracy", group="unseen", max_new_tokens=16,
                    source_format=_FORMAT, image_roots=_ROOTS)
def build_iconqa_txt(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read the choose_txt sub-task into train/test items (see the module docstring)."""
    out = {}
    for split, rows in _read(src, "choose_txt").items():
        items = []
        for qid, path, data in rows:
            where = f"question {qid}"
            choices = [str(c) for c in require(data, "choices", path, where, list)]
            answer = require(data, "answer", path, where, (int, str))
            if isinstance(answer, str) and not answer.isdigit() or not 0 <= int(answer) < len(choices):
                raise DataError(f"{path}: {where} has 'answer' {answer!r}, "
                                f"not an index into its {len(choices)} choices")
            gold = choices[int(answer)]
            prompt = iconqa_txt_prompt(require(data, "question", path, where, str), choices)
            record = {"id": f"iconqa_txt-{split}-{qid}", "conversations": conversation(prompt, gold),
                      "references": [gold], "choices": choices}
            items.append(Item(record, (f"{split}/choose_txt/{qid}/image.png",)))
        out[split] = items
    return out


@register_converter("iconqa_blank", family="iconqa_blank", metric="accuracy", group="unseen", max_new_tokens=8,
                    source_format=_FORMAT, image_roots=_ROOTS)
def build_iconqa_blank(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read the fill_in_blank sub-task into train/test items (see the module docstring)."""
    out = {}
    for split, rows in _read(src, "fill_in_blank").items():
        items = []
        for qid, path, data in rows:
            where = f"question {qid}"
            gold = str(require(data, "answer", path, where, (str, int, float))).strip()
            prompt = human_turn(require(data, "question", path, where, str).strip(), BLANK_SUFFIX)
            record = {"id": f"iconqa_blank-{split}-{qid}", "conversations": conversation(prompt, gold),
                      "references": [gold]}
            items.append(Item(record, (f"{split}/fill_in_blank/{qid}/image.png",)))
        out[split] = items
    return out
