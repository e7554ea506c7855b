"""The task families of the synthetic world: one question generator per paper column, plus stage-1 alignment.

Usage: ``record, image = build_item("vqav2", seed=0, split="test", index=17)``

Each generator draws a scene from the item's own generator and returns the prompt (without ``<image>\\n``), the gold
answer and the scoring keys of docs/data_format.md. The scene gets a ``query`` entry (question type and parameters)
for per-type breakdowns. POPE probes live in ``pope.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .language import (
    ALIGN_PROMPTS, CAPTION_PROMPTS, COLOR_VARIANTS, KB_KEY, KNOWLEDGE_BASE, NUMBER_WORDS, POSITION_VARIANTS,
    SHAPE_NOUNS, article, caption_set, describe_scene, object_name, plural, vqa_answers,
)
from .scenes import COLORS, OBJECT_TYPES, POSITIONS, SHAPES, item_rng, object_at, pick, render_scene, \
    sample_degradation, sample_scene, shuffled

__all__ = ["FamilyInfo", "FAMILIES", "ALIGN", "POPE", "FAMILY_ORDER", "SHORT_ANSWER", "VIZWIZ_SUFFIX",
           "family_info", "build_item"]

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_SUFFIX = 'When the information is insufficient, respond with "Unanswerable". ' + SHORT_ANSWER
ICONQA_TXT_SUFFIX = "Choose an option from the choices to answer the question."
ICONQA_BLANK_SUFFIX = "Fill in the blanks in () or answer this question."
SEEN_SPLITS = ("pretrain", "train", "test")
UNSEEN_SPLITS = ("train", "test")


@dataclass(frozen=True)
class FamilyInfo:
    """Static description of one dataset family.

    Attributes:
        name: family name, also the dataset folder name.
        column: the paper's column label ("SQA (img)").
        metric: metric registry name (``mc_accuracy``, ``vqa_score``, ``accuracy``, ``cider``, ``pope``).
        group: ``seen``, ``unseen``, ``pretrain`` (align) or ``probe`` (POPE).
        max_new_tokens: generation limit (whitespace words; a generous bound on the longest answer).
        prompt_suffix: the paper's prompt suffix/template appended to the question (informational for SQA/Flickr30k).
        splits: split names written for this family.
        description: one line on the task.
    """

    name: str
    column: str
    metric: str
    group: str
    max_new_tokens: int
    prompt_suffix: str
    splits: tuple[str, ...]
    description: str


FAMILIES: dict[str, FamilyInfo] = {f.name: f for f in (
    FamilyInfo("sqa", "SQA (img)", "mc_accuracy", "unseen", 4, "{question} A. c1, B. c2, ...", UNSEEN_SPLITS,
               "multiple choice: a rule in the context applied to the image; answer the letter"),
    FamilyInfo("vizwiz", "VizWiz", "vqa_score", "unseen", 6, VIZWIZ_SUFFIX, UNSEEN_SPLITS,
               "VQA on blurred / noisy / occluded images; questions about occluded cells are unanswerable"),
    FamilyInfo("iconqa_txt", "IconQA-txt", "accuracy", "unseen", 6, ICONQA_TXT_SUFFIX, UNSEEN_SPLITS,
               "choose the option text about counted icons"),
    FamilyInfo("iconqa_blank", "IconQA-blank", "accuracy", "unseen", 4, ICONQA_BLANK_SUFFIX, UNSEEN_SPLITS,
               "fill in a number"),
    FamilyInfo("flickr30k", "Flickr30k", "cider", "unseen", 40, "one of 10 'describe the image briefly' prompts",
               UNSEEN_SPLITS, "captioning with 5 paraphrased references"),
    FamilyInfo("okvqa", "OKVQA", "vqa_score", "seen", 6, SHORT_ANSWER, SEEN_SPLITS,
               "VQA needing a fact from a small fixed knowledge base"),
    FamilyInfo("ocrvqa", "OCRVQA", "accuracy", "seen", 4, SHORT_ANSWER, SEEN_SPLITS, "read the rendered word/number"),
    FamilyInfo("vqav2", "VQAv2", "vqa_score", "seen", 6, SHORT_ANSWER, SEEN_SPLITS,
               "colour / shape / count / position / yes-no questions"),
)}
ALIGN = FamilyInfo("align", "align", "cider", "pretrain", 48, "", ("pretrain",),
                   "stage-1 connector alignment: canonical descriptions of objects, positions, count and text")
POPE = FamilyInfo("pope", "POPE", "pope", "probe", 3, SHORT_ANSWER, ("random", "popular", "adversarial"),
                  "object-existence probes 'Is there a <colour> <shape> in the image?', 50/50 yes/no")
FAMILY_ORDER = ("align", *FAMILIES, "pope")


def family_info(name: str) -> FamilyInfo:
    """The :class:`FamilyInfo` of ``name`` (the 8 families, ``align`` or ``pope``)."""
    infos = {**FAMILIES, "align": ALIGN, "pope": POPE}
    if name not in infos:
        raise KeyError(f"unknown family {name!r}; available: {', '.join(FAMILY_ORDER)}")
    return infos[name]


def _unique(objs: list[dict], key: str) -> list[dict]:
    """Objects whose ``key`` attribute (color/shape) is unique in the scene."""
    counts = Counter(o[key] for o in objs)
    return [o for o in objs if counts[o[key]] == 1]


def _color_ref(rng, objs) -> tuple[dict, str]:
    """Refer to an object in a way that does not reveal its colour: by unique shape or by position."""
    options = [(o, f"{o['shape']}") for o in _unique(objs, "shape")] + [(o, f"object at the {o['position']}")
                                                                       for o in objs]
    return pick(rng, options)


def _shape_ref(rng, objs) -> tuple[dict, str]:
    """Refer to an object without revealing its shape: by unique colour or by position."""
    options = [(o, f"{o['color']} object") for o in _unique(objs, "color")] + [(o, f"object at the {o['position']}")
                                                                              for o in objs]
    return pick(rng, options)


def _count_answers(rng, n: int) -> list[str]:
    return vqa_answers(rng, str(n), (NUMBER_WORDS[n],), [str(max(n - 1, 0)), str(n + 1)])


# ---------------------------------------------------------------------------------------------- seen families
def _vqav2(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    objs = scene["objects"]
    unique_types = [o for o in objs if sum(object_name(p) == object_name(o) for p in objs) == 1]
    qtype = pick(rng, ("color", "shape", "count", "position", "yesno") if unique_types else
                 ("color", "shape", "count", "yesno"))
    query = {"type": qtype}
    if qtype == "color":
        obj, ref = _color_ref(rng, objs)
        q, gold = f"What color is the {ref}?", obj["color"]
        refs = vqa_answers(rng, gold, COLOR_VARIANTS[gold], COLORS)
    elif qtype == "shape":
        obj, ref = _shape_ref(rng, objs)
        q, gold = (f"What shape is at the {obj['position']}?" if ref.startswith("object at") else
                   f"What shape is the {ref}?"), obj["shape"]
        refs = vqa_answers(rng, gold, SHAPE_NOUNS[gold][1:], SHAPES)
    elif qtype == "count":
        sub = pick(rng, ("total", "shape", "color"))
        if sub == "total":
            q, n = "How many objects are there?", len(objs)
        elif sub == "shape":
            shape = pick(rng, [o["shape"] for o in objs]) if rng.random() < 0.8 else pick(rng, SHAPES)
            q, n = f"How many {plural(shape)} are there?", sum(o["shape"] == shape for o in objs)
        else:
            color = pick(rng, [o["color"] for o in objs]) if rng.random() < 0.8 else pick(rng, COLORS)
            q, n = f"How many {color} objects are there?", sum(o["color"] == color for o in objs)
        query["sub"], gold = sub, str(n)
        refs = _count_answers(rng, n)
    elif qtype == "position":
        obj = pick(rng, unique_types)
        q, gold = f"Where is the {object_name(obj)}?", obj["position"]
        refs = vqa_answers(rng, gold, POSITION_VARIANTS[gold], POSITIONS)
    else:
        sub, yes = pick(rng, ("exists", "shape_at", "color_at")), bool(rng.random() < 0.5)
        if sub == "exists":
            present = {(o["color"], o["shape"]) for o in objs}
            c, s = (pick(rng, sorted(present)) if yes else pick(rng, [t for t in OBJECT_TYPES if t not in present]))
            q = f"Is there {article(c)} {c} {s} in the image?"
        elif sub == "shape_at":
            pos = pick(rng, POSITIONS)
            here = object_at(scene, pos)
            if yes and here is None:
                here = pick(rng, objs)
                pos = here["position"]
            shape = here["shape"] if yes else pick(rng, [s for s in SHAPES if not here or s != here["shape"]])
            q = f"Is there {article(shape)} {shape} at the {pos}?"
        else:
            obj = pick(rng, objs)
            color = obj["color"] if yes else pick(rng, [c for c in COLORS if c != obj["color"]])
            q = f"Is the object at the {obj['position']} {color}?"
        query["sub"], gold = sub, "yes" if yes else "no"
        refs = vqa_answers(rng, gold, (), ("no" if yes else "yes",))
    scene["query"] = query
    return {"scene": scene, "prompt": f"{q}\n{SHORT_ANSWER}", "answer": gold, "references": refs}


def _okvqa(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    relation = pick(rng, tuple(KNOWLEDGE_BASE))
    if KB_KEY[relation] == "color":
        obj, ref = _color_ref(rng, scene["objects"])
    else:
        obj, ref = _shape_ref(rng, scene["objects"])
    q = {
        "fruit": f"Which fruit has the same color as the {ref}?",
        "feeling": f"Which feeling is often linked to the color of the {ref}?",
        "looks_like": f"Which everyday thing has the same shape as the {ref}?",
        "corners": f"How many corners does the {ref} have?",
    }[relation]
    gold, *variants = KNOWLEDGE_BASE[relation][obj[KB_KEY[relation]]]
    wrong = [v[0] for v in KNOWLEDGE_BASE[relation].values()]
    scene["query"] = {"type": relation, "position": obj["position"]}
    return {"scene": scene, "prompt": f"{q}\n{SHORT_ANSWER}", "answer": gold,
            "references": vqa_answers(rng, gold, variants, wrong)}


def _ocrvqa(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng, text="any", min_objects=0)
    if scene["text_kind"] == "word":
        q = pick(rng, ("What word is written in the image?", "What is the word in the image?",
                       "Which word can you read in the image?"))
    else:
        q = pick(rng, ("What number is shown in the image?", "What is the number in the image?",
                       "Which number is written in the image?"))
    scene["query"] = {"type": scene["text_kind"]}
    return {"scene": scene, "prompt": f"{q}\n{SHORT_ANSWER}", "answer": scene["text"], "references": [scene["text"]]}


# -------------------------------------------------------------------------------------------- unseen families
_RULE_PAIRS = (("hot", "cold"), ("heavy", "light"), ("soft", "hard"), ("wet", "dry"))


def _sqa(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    objs = scene["objects"]
    colors_present = sorted({o["color"] for o in objs})
    # shape rule needs a shape whose objects share one colour, so "the <property> object" has one colour
    shape_ok = [s for s in SHAPES if len({o["color"] for o in objs if o["shape"] == s}) == 1]
    rule = pick(rng, ("color_rule", "shape_rule", "safe", "crowded") if shape_ok else ("color_rule", "safe", "crowded"))
    pa, pb = pick(rng, _RULE_PAIRS)
    if rule == "color_rule":
        obj, ref = _color_ref(rng, objs)
        color = obj["color"] if rng.random() < 0.5 else pick(rng, [c for c in COLORS if c != obj["color"]])
        context = f"In this world, {color} things are {pa} and all other things are {pb}."
        question = f"Is the {ref} {pa} or {pb}?"
        gold = pa if obj["color"] == color else pb
        options = [pa, pb] + ([pick(rng, [p[0] for p in _RULE_PAIRS if p[0] != pa])] if rng.random() < 0.5 else [])
    elif rule == "shape_rule":
        shape = pick(rng, shape_ok)
        gold = next(o["color"] for o in objs if o["shape"] == shape)
        context = f"In this world, {plural(shape)} are {pa} and all other shapes are {pb}."
        question = f"What color is the {pa} object?"
        others = shuffled(rng, [c for c in colors_present if c != gold]) + shuffled(
            rng, [c for c in COLORS if c not in colors_present])
        options = [gold] + others[:2]
    elif rule == "safe":
        color = pick(rng, colors_present) if rng.random() < 0.5 else pick(rng, COLORS)
        context = f"In this world, a room is safe only if it has no {color} objects."
        question, options = "Is this room safe?", ["yes", "no"]
        gold = "no" if color in colors_present else "yes"
    else:
        k = int(rng.integers(2, 4))
        context = f"In this world, a picture is crowded when it shows at least {k} objects."
        question, options = "Is this picture crowded?", ["yes", "no"]
        gold = "yes" if len(objs) >= k else "no"
    choices = shuffled(rng, options)
    letter = "ABCDE"[choices.index(gold)]
    opts = ", ".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))
    scene["query"] = {"type": rule}
    return {"scene": scene, "prompt": f"Context: {context}\nQuestion: {question}\nOptions: {opts}",
            "answer": letter, "references": [letter], "choices": choices}


def _vizwiz(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    objs = scene["objects"]
    deg = scene["degradation"] = sample_degradation(rng, scene)
    hidden = deg.get("position")  # occluded cell, if any
    if rng.random() < 0.15:
        qtype, q, pos = "count", "How many objects are there?", None
        gold = "unanswerable" if hidden else str(len(objs))
    else:
        occupied = [o["position"] for o in objs if o["position"] != hidden]
        if hidden and rng.random() < 0.6:
            pos = hidden
        elif occupied and rng.random() < 0.7:
            pos = pick(rng, occupied)
        else:
            pos = pick(rng, [p for p in POSITIONS if p != hidden])
        obj = object_at(scene, pos)
        qtype = pick(rng, ("color", "shape", "exists")) if obj else "exists"
        q = {"color": f"What color is the object at the {pos}?", "shape": f"What shape is at the {pos}?",
             "exists": f"Is there an object at the {pos}?"}[qtype]
        if pos == hidden:
            gold = "unanswerable"
        else:
            gold = {"color": obj and obj["color"], "shape": obj and obj["shape"],
                    "exists": "yes" if obj else "no"}[qtype]
    if gold == "unanswerable":
        refs = vqa_answers(rng, gold, ("unsuitable",), {"color": COLORS, "shape": SHAPES}.get(qtype, ("yes", "no")))
    elif qtype == "count":
        refs = _count_answers(rng, int(gold))
    elif qtype == "color":
        refs = vqa_answers(rng, gold, COLOR_VARIANTS[gold], (*COLORS, "unanswerable"))
    elif qtype == "shape":
        refs = vqa_answers(rng, gold, SHAPE_NOUNS[gold][1:], (*SHAPES, "unanswerable"))
    else:
        refs = vqa_answers(rng, gold, (), ("no" if gold == "yes" else "yes", "unanswerable"))
    scene["query"] = {"type": qtype, "position": pos, "answerable": gold != "unanswerable"}
    return {"scene": scene, "prompt": f"{q}\n{VIZWIZ_SUFFIX}", "answer": gold, "references": refs}


def _icon_scene(rng: np.random.Generator, min_objects: int) -> tuple[dict, list[str]]:
    pool = shuffled(rng, SHAPES)[:2]
    return sample_scene(rng, min_objects=min_objects, shape_pool=pool), pool


def _iconqa_txt(rng: np.random.Generator) -> dict:
    scene, pool = _icon_scene(rng, 2)
    counts = Counter(o["shape"] for o in scene["objects"])
    top = counts.most_common()
    types = ["count"]
    if len(top) == 1 or top[0][1] > top[1][1]:
        types.append("most")
    if counts[pool[0]] != counts[pool[1]]:  # ties would make "no" the majority answer
        types.append("compare")
    qtype = pick(rng, types)
    if qtype == "count":
        shape = pick(rng, pool)
        n = counts[shape]
        start = max(0, n - int(rng.integers(0, 3)))
        q, gold, choices = f"How many {plural(shape)} are there?", str(n), [str(start + i) for i in range(3)]
    elif qtype == "most":
        gold = top[0][0]
        q = "Which shape appears most often?"
        choices = shuffled(rng, [gold] + shuffled(rng, [s for s in SHAPES if s != gold])[:2])
    else:
        a, b = shuffled(rng, pool)
        q, gold = f"Are there more {plural(a)} than {plural(b)}?", "yes" if counts[a] > counts[b] else "no"
        choices = shuffled(rng, ["yes", "no"])
    scene["query"] = {"type": qtype}
    return {"scene": scene, "prompt": f"{q}\nChoices: {', '.join(choices)}. {ICONQA_TXT_SUFFIX}", "answer": gold,
            "references": [gold], "choices": choices}


def _iconqa_blank(rng: np.random.Generator) -> dict:
    scene, pool = _icon_scene(rng, 1)
    objs = scene["objects"]
    qtype = pick(rng, ("shape", "color", "total", "empty", "plus_one"))
    if qtype == "shape":
        shape = pick(rng, pool)
        q, n = f"Count the {plural(shape)}. There are () {plural(shape)}.", sum(o["shape"] == shape for o in objs)
    elif qtype == "color":
        color = pick(rng, [o["color"] for o in objs]) if rng.random() < 0.8 else pick(rng, COLORS)
        q, n = f"There are () {color} objects in the picture.", sum(o["color"] == color for o in objs)
    elif qtype == "total":
        q, n = "There are () objects in the picture in total.", len(objs)
    elif qtype == "empty":
        q, n = "() of the four cells are empty.", 4 - len(objs)
    else:
        shape = pick(rng, pool)
        q = f"If one more {shape} is added, there will be () {plural(shape)}."
        n = sum(o["shape"] == shape for o in objs) + 1
    scene["query"] = {"type": qtype}
    return {"scene": scene, "prompt": f"{q}\n{ICONQA_BLANK_SUFFIX}", "answer": str(n), "references": [str(n)]}


def _flickr30k(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    refs = caption_set(rng, scene, 5)
    scene["query"] = {"type": "caption"}
    return {"scene": scene, "prompt": pick(rng, CAPTION_PROMPTS), "answer": refs[0], "references": refs,
            "objects": sorted({object_name(o) for o in scene["objects"]})}


def _align(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng, text="any", min_objects=0) if rng.random() < 0.3 else sample_scene(rng)
    scene["query"] = {"type": "description"}
    return {"scene": scene, "prompt": pick(rng, ALIGN_PROMPTS), "answer": describe_scene(scene)}


_GENERATORS: dict[str, Callable[[np.random.Generator], dict]] = {
    "align": _align, "sqa": _sqa, "vizwiz": _vizwiz, "iconqa_txt": _iconqa_txt, "iconqa_blank": _iconqa_blank,
    "flickr30k": _flickr30k, "okvqa": _okvqa, "ocrvqa": _ocrvqa, "vqav2": _vqav2,
}


def build_item(family: str, seed: int, split: str, index: int) -> tuple[dict, Image.Image]:
    """Build one record (docs/data_format.md) and its image; a pure function of its arguments.

    Args:
        family: one of ``FAMILY_ORDER``.
        seed: world seed.
        split: split name (any string; the split is part of the item's random stream).
        index: item index.

    Returns:
        ``(record, image)``; ``record["image"]`` is ``"<split>/<index:06d>.png"`` relative to ``images/``.
    """
    if family == "pope":
        from .pope import build_pope_item  # local import: pope builds on this module

        item = build_pope_item(seed, split, index)
    elif family in _GENERATORS:
        item = _GENERATORS[family](item_rng(seed, family, split, index))
    else:
        raise KeyError(f"unknown family {family!r}; available: {', '.join(FAMILY_ORDER)}")
    record = {
        "id": f"{family}-{split}-{index:06d}",
        "image": f"{split}/{index:06d}.png",
        "conversations": [{"from": "human", "value": "<image>\n" + item["prompt"]},
                          {"from": "gpt", "value": item["answer"]}],
    }
    for key in ("references", "choices", "objects", "label"):
        if key in item:
            record[key] = item[key]
    record["scene"] = item["scene"]
    return record, render_scene(item["scene"])
