"""POPE (Li et al. 2023) object-existence probes on COCO val2014 -> a ``pope`` dataset with three probe splits.

Usage: ``convert("pope", "POPE/output/coco", "datasets/pope", image_folder="coco/val2014")``

Source layout (RUCAIBox/POPE ``output/coco``): ``coco_pope_{random,popular,adversarial}.json``, JSON lines of
``{question_id, image, text, label}`` (label ``yes``/``no``), in ``src`` (or ``src/output/coco``, ``src/coco``);
images ``{image}`` (``COCO_val2014_*.jpg``) under the image folder (default: the first of ``src``, ``src/val2014``,
``src/coco/val2014``, ``src/images``, ``src/output/coco`` and, for ``src`` = ``POPE/output/coco`` or LLaVA's
``.../pope/coco``, the ``val2014`` folders one to three levels up that holds them; ``val2014/{image}`` is also
tried, so the COCO root works as ``image_folder``). POPE ships no images: when COCO val2014 is elsewhere, pass
``--image-folder``.

Output splits ``random``, ``popular``, ``adversarial`` (no train split; ``test_size`` subsamples each of them).
Prompt, as LLaVA-1.5 evaluates POPE: ``<image>\\n{text}\\nAnswer the question using a single word or phrase.``;
gold = ``label``; ``references`` = [label] and ``label`` is kept for the POPE metric (group ``probe``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import VQA_SUFFIX, Item, conversation, find_source, human_turn, load_json_lines, register_converter, \
    require

__all__ = ["POPE_SPLITS"]

POPE_SPLITS = ("random", "popular", "adversarial")
_FORMAT = "POPE question files (coco_pope_{random,popular,adversarial}.json, JSON lines; COCO val2014 images)"


@register_converter("pope", family="pope", metric="pope", group="probe", max_new_tokens=8, source_format=_FORMAT,
                    splits=POPE_SPLITS, image_roots=(".", "val2014", "coco/val2014", "images", "output/coco", "..",
                                                     "../..", "../../..", "../../coco"))
def build_pope(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read the three POPE question files (see the module docstring)."""
    out = {}
    for split in POPE_SPLITS:
        name = f"coco_pope_{split}.json"
        path = find_source(src, [name, f"output/coco/{name}", f"coco/{name}"], _FORMAT)
        items = []
        for n, row in enumerate(load_json_lines(path)):
            where = f"line {n + 1}"
            qid = require(row, "question_id", path, where, (int, str))
            image = require(row, "image", path, where, str)
            label = require(row, "label", path, where, str).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{path}: {where} has 'label' {label!r}, expected 'yes' or 'no'")
            prompt = human_turn(require(row, "text", path, where, str).strip(), VQA_SUFFIX)
            record = {"id": f"pope-{split}-{qid}", "conversations": conversation(prompt, label),
                      "references": [label], "label": label}
            items.append(Item(record, (image, f"val2014/{image}")))
        out[split] = items
    return out
