"""Flickr30k (Karpathy split) -> the Flickr30k captioning column, scored with CIDEr against 5 references.

Usage: ``convert("flickr30k", "flickr30k", "datasets/flickr30k")``

Source layout: Karpathy's ``dataset_flickr30k.json`` (``{images: [{filename, split, sentences: [{raw, tokens,
...}] x5, ...}], dataset: "flickr30k"}``) in ``src`` (or ``src/karpathy``, ``src/annotations``); copies that name it
``dataset.json`` (e.g. Kaggle's) are read too, if their ``dataset`` key is ``flickr30k`` (Karpathy's COCO file is
also called ``dataset_coco.json``/``dataset.json``: rejected with a clear error). Images ``{filename}`` under the
image folder (default the first of ``src/flickr30k-images``, ``src/flickr30k_images``,
``src/flickr30k_images/flickr30k_images`` -- Kaggle's nested layout --, ``src/images``, ``src`` that holds them).
Splits: Karpathy train (29,000 images) and test (1,000); val unused.

One record per **image** (the paper's 29k training items): the gpt turn is one of its 5 captions and the prompt one
of :data:`CAPTION_PROMPTS`, both drawn by a RNG seeded with ``seed`` and the record id (so the choice does not move
when other records change); ``references`` = the 5 raw captions, on train and test records alike. Prompt:
``<image>\\n{one of CAPTION_PROMPTS}``.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import DataError
from .base import Item, conversation, find_source, human_turn, load_json, register_converter, require

__all__ = ["CAPTION_PROMPTS"]

# LLaVA's "brief description" instructions (Liu et al. 2023, the list used for its caption data): the ~10
# paraphrased "describe the image briefly" prompts of docs/study.md.
CAPTION_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
_FORMAT = "Flickr30k Karpathy split (dataset_flickr30k.json, images flickr30k-images/{filename})"


@register_converter("flickr30k", family="flickr30k", metric="cider", group="unseen", max_new_tokens=64,
                    source_format=_FORMAT, image_roots=("flickr30k-images", "flickr30k_images",
                                                        "flickr30k_images/flickr30k_images", "images", "."))
def build_flickr30k(src: Path, seed: int) -> dict[str, list[Item]]:
    """Read the Karpathy split into train/test items (see the module docstring)."""
    path = find_source(src, [f"{folder}{name}" for name in ("dataset_flickr30k.json", "dataset.json")
                             for folder in ("", "karpathy/", "annotations/")], _FORMAT)
    data = load_json(path)
    if isinstance(data, dict) and data.get("dataset", "flickr30k") != "flickr30k":
        raise DataError(f"{path}: this is Karpathy's {data['dataset']!r} split ('dataset' key), not flickr30k")
    images = require(data, "images", path, "the top-level object", list)
    out: dict[str, list[Item]] = {"train": [], "test": []}
    for n, entry in enumerate(images):
        where = f"images[{n}]"
        split = require(entry, "split", path, where, str)
        if split not in out:
            continue
        filename = require(entry, "filename", path, where, str)
        captions = [require(s, "raw", path, f"{where} sentence", str).strip()
                    for s in require(entry, "sentences", path, where, list)]
        if not captions:
            raise DataError(f"{path}: {where} has no sentences")
        rid = f"flickr30k-{split}-{Path(filename).stem}"
        rng = random.Random(f"{seed}/{rid}")
        prompt = rng.choice(CAPTION_PROMPTS)
        record = {"id": rid, "conversations": conversation(human_turn(prompt), rng.choice(captions)),
                  "references": captions}
        out[split].append(Item(record, (filename,)))
    return out
