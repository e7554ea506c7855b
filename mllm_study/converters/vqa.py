"""OK-VQA and VQAv2 (the VQA release format on COCO 2014 images) -> the OKVQA and VQAv2 columns (VQA score).

Usage: ``convert("vqav2", "vqa", "datasets/vqav2", image_folder="coco")``

Source layout (GT-Vision-Lab/VQA format): question files ``{questions: [{image_id, question, question_id}]}`` and
annotation files ``{annotations: [{question_id, answers: [{answer, answer_confidence, ...}] x10, ...}]}``:

- okvqa: ``OpenEnded_mscoco_{train,val}2014_questions.json`` + ``mscoco_{train,val}2014_annotations.json``
- vqav2: ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` + ``v2_mscoco_{train,val}2014_annotations.json``

in ``src`` (or ``src/Questions``, ``src/Annotations``, lower-case too); COCO images
``{train,val}2014/COCO_{train,val}2014_{image_id:012d}.jpg`` under the image folder (default: the first of ``src``,
``src/Images/mscoco`` -- the official VQA layout, ``Questions/ Annotations/ Images/mscoco/train2014`` --,
``src/images/mscoco``, ``src/Images``, ``src/coco``, ``src/images`` that holds them; a folder holding the
``COCO_*.jpg`` files directly also works).

VQA v1 and OK-VQA files have the same names; annotations with ``multiple_choice_answer`` or an ``answer_type`` of
``yes/no`` or ``number`` (VQA v1 has them, OK-VQA's are all ``other`` and carry no multiple-choice answer) are
rejected as OK-VQA with a ValueError that says so.

Splits: train = train2014; **test = val2014** (the test-dev answers are private). OK-VQA keeps the full splits
(9,009 / 5,046); VQAv2 is subsampled to the paper's 20k train / 5k test (seeded) unless sizes are given. Prompt,
LLaVA-1.5's: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.`` Gold = the most common of
the 10 ``answer`` strings (ties: first occurrence); references = the 10 answers as annotated.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import (VQA_SUFFIX, Item, conversation, find_source, human_turn, load_json, most_common_answer,
                   register_converter, require)

__all__ = ["build_vqa_format"]

_DIRS = ("", "Questions/", "Annotations/", "questions/", "annotations/")
_OKVQA = "OK-VQA release (OpenEnded_mscoco_*2014_questions.json + mscoco_*2014_annotations.json, COCO 2014 images)"
_VQAV2 = "VQAv2 release (v2_OpenEnded_mscoco_*2014_questions.json + v2_mscoco_*2014_annotations.json, COCO 2014 images)"


def build_vqa_format(src: Path, name: str, prefix: str, fmt: str) -> dict[str, list[Item]]:
    """Join a VQA-format release's questions and annotations into train (train2014) / test (val2014) items.

    Args:
        src: source folder.
        name: converter name (record id prefix).
        prefix: file-name prefix of the release (``""`` for OK-VQA, ``"v2_"`` for VQAv2).
        fmt: description of the release, for error messages.
    """
    out = {}
    for split, sub in (("train", "train2014"), ("test", "val2014")):
        q_name, a_name = f"{prefix}OpenEnded_mscoco_{sub}_questions.json", f"{prefix}mscoco_{sub}_annotations.json"
        q_path = find_source(src, [d + q_name for d in _DIRS], fmt)
        a_path = find_source(src, [d + a_name for d in _DIRS], fmt)
        questions = require(load_json(q_path), "questions", q_path, "the top-level object", list)
        annotations = require(load_json(a_path), "annotations", a_path, "the top-level object", list)
        if name == "okvqa":
            _reject_vqa_v1(annotations, a_path)
        answers_by_qid = {}
        for n, ann in enumerate(annotations):
            where = f"annotations[{n}]"
            answers = require(ann, "answers", a_path, where, list)
            answers_by_qid[require(ann, "question_id", a_path, where, (int, str))] = [
                str(require(a, "answer", a_path, f"{where} answers", (str, int, float))) for a in answers]
        items = []
        for n, q in enumerate(questions):
            where = f"questions[{n}]"
            qid = require(q, "question_id", q_path, where, (int, str))
            image_id = int(require(q, "image_id", q_path, where, (int, str)))
            question = require(q, "question", q_path, where, str)
            answers = answers_by_qid.get(qid)
            if not answers:
                raise DataError(f"{a_path}: no annotation with answers for question_id {qid} of {q_path.name}")
            record = {"id": f"{name}-{split}-{qid}",
                      "conversations": conversation(human_turn(question.strip(), VQA_SUFFIX),
                                                    most_common_answer(answers)),
                      "references": answers}
            file = f"COCO_{sub}_{image_id:012d}.jpg"
            items.append(Item(record, (f"{sub}/{file}", file)))
        out[split] = items
    return out


def _reject_vqa_v1(annotations: list, path: Path) -> None:
    """ValueError if ``annotations`` are VQA v1's (same file names as OK-VQA, different content)."""
    for ann in annotations[:1000]:
        if isinstance(ann, dict) and ("multiple_choice_answer" in ann or ann.get("answer_type") in ("yes/no",
                                                                                                     "number")):
            found = "'multiple_choice_answer'" if "multiple_choice_answer" in ann else \
                f"answer_type {ann['answer_type']!r}"
            raise DataError(f"{path}: these are VQA v1 annotations (question_id {ann.get('question_id')} has {found}),"
                            " not OK-VQA; OK-VQA's annotations (okvqa.allenai.org) have the same file names but only "
                            "answer_type 'other'")


_IMAGE_ROOTS = (".", "Images/mscoco", "images/mscoco", "Images", "coco", "images")


@register_converter("okvqa", family="okvqa", metric="vqa_score", group="seen", max_new_tokens=16,
                    source_format=_OKVQA, image_roots=_IMAGE_ROOTS)
def build_okvqa(src: Path, seed: int) -> dict[str, list[Item]]:
    """OK-VQA: full train2014 / val2014 splits (see the module docstring)."""
    return build_vqa_format(src, "okvqa", "", _OKVQA)


@register_converter("vqav2", family="vqav2", metric="vqa_score", group="seen", max_new_tokens=16,
                    source_format=_VQAV2, image_roots=_IMAGE_ROOTS,
                    default_sizes={"train": 20000, "test": 5000})
def build_vqav2(src: Path, seed: int) -> dict[str, list[Item]]:
    """VQAv2: train2014 / val2014, subsampled to 20k / 5k by default (see the module docstring)."""
    return build_vqa_format(src, "vqav2", "v2_", _VQAV2)
