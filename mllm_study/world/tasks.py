"""The task families of the synthetic world: one question generator per paper column, plus stage-1 alignment.

Usage: ``record, image = build_item("vqav2", seed=0, split="test", index=17)``

Each generator draws a scene from the item's own generator and returns the prompt (without ``<image>\\n``), the gold
answer and the scoring keys of docs/data_format.md. The scene gets a ``query`` entry (question type and parameters)
for per-type breakdowns. POPE probes live in ``pope.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .language import (
    ALIGN_PROMPTS, CAPTION_PROMPTS, COLOR_VARIANTS, DESCRIPTION_PROMPTS, KB_KEY, KNOWLEDGE_BASE, NUMBER_WORDS, POSITION_VARIANTS,
    PLURALS, SHAPE_NOUNS, article, caption_set, describe_scene, object_name, plural, vqa_answers,
)
from .scenes import COLORS, NUMBERS, OBJECT_TYPES, POSITIONS, SHAPES, WORDS, item_rng, object_at, pick, \
    pick_weighted, render_scene, sample_degradation, sample_scene, shuffled

__all__ = ["FamilyInfo", "FAMILIES", "ALIGN", "POPE", "FAMILY_ORDER", "SHORT_ANSWER", "VIZWIZ_SUFFIX", "FORMATS_SPLIT",
           "TRAINING_SPLITS",
           "family_info", "build_item", "GENERATORS"]

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_SUFFIX = 'When the information is insufficient, respond with "Unanswerable". ' + SHORT_ANSWER
ICONQA_TXT_SUFFIX = "Choose an option from the choices to answer the question."
ICONQA_BLANK_SUFFIX = "Fill in the blanks in () or answer this question."
#: ``formats``: the seen families' (and the descriptions') questions asked mostly in the unseen columns' answer
#: formats, for pre-training stage 3 (``pretrain.format_steps``); like ``pretrain`` and ``train``, never evaluated.
FORMATS_SPLIT = "formats"
SEEN_SPLITS = ("pretrain", "train", "test", FORMATS_SPLIT)
#: splits that are trained on only: not evaluation columns
TRAINING_SPLITS = ("train", "pretrain", FORMATS_SPLIT)
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
               "multiple choice: a rule in the context applied to the image; lettered options, answered with the "
               "option's text (the tiny model cannot bind letters: README; a letter is read as its option)"),
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
ALIGN = FamilyInfo("align", "align", "cider", "pretrain", 48, "", ("pretrain", FORMATS_SPLIT),
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


# ------------------------------------------------------------------------------------------ balanced sampling
# Every generator picks its question first, then a target answer uniformly from the question's answer space, then
# draws scenes until one gives that answer (rejection sampling). So the question text carries no information about
# the answer: a model that ignores the image scores chance (checked by ``world.audit``).
MAX_TRIES = 20000


def _draw(rng: np.random.Generator, sample: Callable[[], dict], accept: Callable[[dict], bool]) -> dict:
    """The first scene from ``sample()`` for which ``accept(scene)`` holds (deterministic given ``rng``)."""
    for _ in range(MAX_TRIES):
        scene = sample()
        if accept(scene):
            return scene
    raise RuntimeError(f"no scene satisfied the question after {MAX_TRIES} draws")  # a bug in a generator


def _with(objs: list[dict], **attrs) -> list[dict]:
    return [o for o in objs if all(o[k] == v for k, v in attrs.items())]


def _count_answers(rng, n: int) -> list[str]:
    return vqa_answers(rng, str(n), (NUMBER_WORDS[n],), [str(max(n - 1, 0)), str(n + 1)])


def _counts(lo: int, hi: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(lo, hi + 1))


def _referent(rng: np.random.Generator, by: str) -> tuple[str, Callable[[dict], dict | None]]:
    """A way to refer to one object that hides attribute ``by`` ("color" or "shape"), and its resolver.

    Colour questions refer by shape ("the square", only when that shape is unique) or by position; shape questions
    by colour ("the red object", unique) or by position.
    """
    if rng.random() < 0.5:
        pos = pick(rng, POSITIONS)
        return f"object at the {pos}", lambda s: object_at(s, pos)
    if by == "color":
        shape = pick(rng, SHAPES)
        return shape, lambda s: (lambda f: f[0] if len(f) == 1 else None)(_with(s["objects"], shape=shape))
    color = pick(rng, COLORS)
    return f"{color} object", lambda s: (lambda f: f[0] if len(f) == 1 else None)(_with(s["objects"], color=color))


def _attribute_question(rng: np.random.Generator, attr: str) -> tuple[str, str, dict, dict]:
    """(referring phrase, target value, scene, referred object) for a question about ``attr`` of one object."""
    ref, resolve = _referent(rng, attr)
    target = pick(rng, COLORS if attr == "color" else SHAPES)
    scene = _draw(rng, lambda: sample_scene(rng), lambda s: (o := resolve(s)) is not None and o[attr] == target)
    return ref, target, scene, resolve(scene)


# ---------------------------------------------------------------------------------------------- seen families
#: question types of the VQAv2-like family and their shares. Yes/no questions are the most frequent, and most of them
#: ask whether an object exists ("Is there a red circle in the image?"): binding a colour and a shape to a cell is
#: the hardest skill for the tiny model, and it is the one the POPE probe measures.
VQAV2_TYPES = {"color": 0.15, "shape": 0.15, "count": 0.15, "position": 0.15, "yesno": 0.4}
#: the ``formats`` split's mix: more counting, so that the fill-in-the-blank format gets enough number questions
STAGE3_VQAV2_TYPES = {"color": 0.1, "shape": 0.1, "count": 0.4, "position": 0.1, "yesno": 0.3}
#: share of the ``formats`` split's "no" existence questions asked about an object whose color (or shape) the image
#: holds on another object: random negatives let "is the color there?" stand in for "is that object there?", the
#: shortcut the base model took (every POPE probe whose color was present answered "yes")
STAGE3_HARD_NEGATIVES = 0.7
#: share of "yes" among the ``formats`` split's existence questions ("Is there a red circle in the image?"): below
#: half, like the negative instructions of LRV-Instruction (Liu et al. 2023). A prior, not binding: the base model
#: answers "yes" whenever the asked colour is anywhere in the image, so on 50/50 existence questions it said "yes"
#: to 67% of 50/50 POPE probes; at 0.4 66%, at 0.3 65% (recall 0.98 -> 0.96; README, "Base model")
STAGE3_EXISTS_YES_SHARE = 0.3


def _vqav2(rng: np.random.Generator, types: dict[str, float] = VQAV2_TYPES, hard_negatives: float = 0.0,
           exists_yes: float = 0.5) -> dict:
    """A VQAv2-style question; ``hard_negatives``: share of the "no" existence questions whose image holds the asked
    color on another shape or the asked shape in another color (else any image without the asked object);
    ``exists_yes``: share of "yes" among the existence questions (the other yes/no questions are 50/50)."""
    qtype = pick_weighted(rng, tuple(types), tuple(types.values()))
    query: dict = {"type": qtype}
    if qtype == "color":
        ref, gold, scene, _ = _attribute_question(rng, "color")
        q, space = f"What color is the {ref}?", COLORS
        refs = vqa_answers(rng, gold, COLOR_VARIANTS[gold], COLORS)
    elif qtype == "shape":
        ref, gold, scene, _ = _attribute_question(rng, "shape")
        q = f"What shape is at the {ref[len('object at the '):]}?" if ref.startswith("object at") else \
            f"What shape is the {ref}?"
        space, refs = SHAPES, vqa_answers(rng, gold, SHAPE_NOUNS[gold][1:], SHAPES)
    elif qtype == "count":
        sub = pick(rng, ("total", "shape", "color"))
        if sub == "total":
            space = _counts(1, 4)
            n = int(pick(rng, space))
            q, scene = "How many objects are there?", sample_scene(rng, n_objects=n)
        else:
            space = _counts(0, 3)
            n, key = int(pick(rng, space)), pick(rng, SHAPES if sub == "shape" else COLORS)
            q = f"How many {plural(key)} are there?" if sub == "shape" else f"How many {key} objects are there?"
            scene = _draw(rng, lambda: sample_scene(rng), lambda s: len(_with(s["objects"], **{sub: key})) == n)
        query["sub"], gold, refs = sub, str(n), _count_answers(rng, n)
    elif qtype == "position":
        color, shape = pick(rng, OBJECT_TYPES)
        gold, space = pick(rng, POSITIONS), POSITIONS
        q = f"Where is the {color} {shape}?"
        scene = _draw(rng, lambda: sample_scene(rng),
                      lambda s: [o["position"] for o in _with(s["objects"], color=color, shape=shape)] == [gold])
        refs = vqa_answers(rng, gold, POSITION_VARIANTS[gold], POSITIONS)
    else:
        sub = pick_weighted(rng, ("exists", "shape_at", "color_at"), (0.6, 0.2, 0.2))
        yes, space = bool(rng.random() < (exists_yes if sub == "exists" else 0.5)), ("yes", "no")
        if sub == "exists":
            color, shape = pick(rng, OBJECT_TYPES)
            q = f"Is there {article(color)} {color} {shape} in the image?"
            near = None  # a hard negative: the asked color (or shape) is on another object
            if not yes and hard_negatives and rng.random() < hard_negatives:
                near = query["hard"] = pick(rng, ("color", "shape"))
            held = {"color": color, "shape": shape}
            scene = _draw(rng, lambda: sample_scene(rng),
                          lambda s: bool(_with(s["objects"], **held)) == yes and
                          (near is None or bool(_with(s["objects"], **{near: held[near]}))))
        elif sub == "shape_at":
            pos, shape = pick(rng, POSITIONS), pick(rng, SHAPES)
            q = f"Is there {article(shape)} {shape} at the {pos}?"
            scene = _draw(rng, lambda: sample_scene(rng),
                          lambda s: ((o := object_at(s, pos)) is not None and o["shape"] == shape) == yes)
        else:
            pos, color = pick(rng, POSITIONS), pick(rng, COLORS)
            q = f"Is the object at the {pos} {color}?"
            scene = _draw(rng, lambda: sample_scene(rng),
                          lambda s: (o := object_at(s, pos)) is not None and (o["color"] == color) == yes)
        query["sub"], gold = sub, "yes" if yes else "no"
        refs = vqa_answers(rng, gold, (), ("no" if yes else "yes",))
    query["space"] = list(space)
    scene["query"] = query
    return {"scene": scene, "prompt": f"{q}\n{SHORT_ANSWER}", "answer": gold, "references": refs}


def _okvqa(rng: np.random.Generator) -> dict:
    relation = pick(rng, tuple(KNOWLEDGE_BASE))
    ref, key, scene, obj = _attribute_question(rng, KB_KEY[relation])
    q = {
        "fruit": f"Which fruit has the same color as the {ref}?",
        "feeling": f"Which feeling is often linked to the color of the {ref}?",
        "looks_like": f"Which everyday thing has the same shape as the {ref}?",
        "corners": f"How many corners does the {ref} have?",
    }[relation]
    gold, *variants = KNOWLEDGE_BASE[relation][key]
    wrong = [v[0] for v in KNOWLEDGE_BASE[relation].values()]
    scene["query"] = {"type": relation, "position": obj["position"], "space": wrong}
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
    scene["query"] = {"type": scene["text_kind"], "space": list(WORDS if scene["text_kind"] == "word" else NUMBERS)}
    return {"scene": scene, "prompt": f"{q}\n{SHORT_ANSWER}", "answer": scene["text"], "references": [scene["text"]]}


# -------------------------------------------------------------------------------------------- unseen families
_RULE_PAIRS = (("hot", "cold"), ("heavy", "light"), ("soft", "hard"), ("wet", "dry"))


def _sqa(rng: np.random.Generator) -> dict:
    rule = pick(rng, ("color_rule", "shape_rule", "safe", "crowded"))
    pa, pb = pick(rng, _RULE_PAIRS)
    if rule == "color_rule":
        ref, obj_color, scene, _ = _attribute_question(rng, "color")
        color = obj_color if rng.random() < 0.5 else pick(rng, [c for c in COLORS if c != obj_color])
        context = f"In this world, {color} things are {pa} and all other things are {pb}."
        question = f"Is the {ref} {pa} or {pb}?"
        gold = pa if obj_color == color else pb
        options = [pa, pb] + ([pick(rng, [p[0] for p in _RULE_PAIRS if p[0] != pa])] if rng.random() < 0.5 else [])
    elif rule == "shape_rule":
        shape, gold = pick(rng, SHAPES), pick(rng, COLORS)
        scene = _draw(rng, lambda: sample_scene(rng), lambda s: (lambda f: bool(f) and {o["color"] for o in f} == {
            gold})(_with(s["objects"], shape=shape)))
        context = f"In this world, {plural(shape)} are {pa} and all other shapes are {pb}."
        question = f"What color is the {pa} object?"
        options = [gold] + shuffled(rng, [c for c in COLORS if c != gold])[:2]
    elif rule == "safe":
        color, gold = pick(rng, COLORS), pick(rng, ("yes", "no"))
        scene = _draw(rng, lambda: sample_scene(rng),
                      lambda s: bool(_with(s["objects"], color=color)) == (gold == "no"))
        context = f"In this world, a room is safe only if it has no {color} objects."
        question, options = "Is this room safe?", ["yes", "no"]
    else:
        k, gold = int(rng.integers(2, 4)), pick(rng, ("yes", "no"))
        scene = _draw(rng, lambda: sample_scene(rng), lambda s: (len(s["objects"]) >= k) == (gold == "yes"))
        context = f"In this world, a picture is crowded when it shows at least {k} objects."
        question, options = "Is this picture crowded?", ["yes", "no"]
    # Lettered options as in ScienceQA, but the answer taught and expected is the option's text: the tiny model
    # cannot bind an answer to its letter (README, "Base model"); a letter is still read as its option
    # (metrics.extract_choice), so the base model's lettered zero-shot answers are parsed and score at chance.
    choices = shuffled(rng, options)
    opts = ", ".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))
    scene["query"] = {"type": rule, "space": list(choices)}
    return {"scene": scene, "prompt": f"Context: {context}\nQuestion: {question}\nOptions: {opts}",
            "answer": gold, "references": [gold], "choices": choices}


def _vizwiz(rng: np.random.Generator) -> dict:
    qtype = "count" if rng.random() < 0.15 else pick(rng, ("color", "shape", "exists"))
    pos = None if qtype == "count" else pick(rng, POSITIONS)
    space = {"count": _counts(1, 4), "color": COLORS, "shape": SHAPES, "exists": ("yes", "no")}[qtype]
    gold = pick(rng, (*space, "unanswerable"))  # "unanswerable" as likely as any answer: no shortcut

    def sample() -> dict:
        s = sample_scene(rng)
        s["degradation"] = sample_degradation(rng, s)
        return s

    def accept(s: dict) -> bool:
        hidden = s["degradation"].get("position")
        if gold == "unanswerable":
            return hidden is not None and (pos is None or hidden == pos)
        if qtype == "count":
            return hidden is None and str(len(s["objects"])) == gold
        if hidden == pos:
            return False
        obj = object_at(s, pos)
        if qtype == "exists":
            return (obj is not None) == (gold == "yes")
        return obj is not None and obj[qtype] == gold

    scene = _draw(rng, sample, accept)
    q = {"count": "How many objects are there?", "color": f"What color is the object at the {pos}?",
         "shape": f"What shape is at the {pos}?", "exists": f"Is there an object at the {pos}?"}[qtype]
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
    scene["query"] = {"type": qtype, "position": pos, "answerable": gold != "unanswerable",
                      "space": [*space, "unanswerable"]}
    return {"scene": scene, "prompt": f"{q}\n{VIZWIZ_SUFFIX}", "answer": gold, "references": refs}


def _iconqa_txt(rng: np.random.Generator) -> dict:
    qtype = pick(rng, ("count", "most", "compare"))
    pool = shuffled(rng, SHAPES)[:2]
    if qtype == "count":
        shape, start = pick(rng, pool), int(rng.integers(0, 3))
        choices = [str(start + i) for i in range(3)]
        gold = pick(rng, choices)
        q = f"How many {plural(shape)} are there?"
        accept = lambda s: str(len(_with(s["objects"], shape=shape))) == gold  # noqa: E731
    elif qtype == "most":
        # both shapes in the picture are offered (with one absent shape), so that seeing which shapes are present
        # is not enough: the two must be counted
        gold = pick(rng, SHAPES)
        pool = [gold, pick(rng, [s for s in SHAPES if s != gold])]
        choices = shuffled(rng, [*pool, pick(rng, [s for s in SHAPES if s not in pool])])
        # not "most often": "often" is a word of OKVQA's seen feeling question, which the base model then answers
        q = "Which shape appears the most?"
        accept = lambda s: (lambda c: c[gold] > c[pool[1]])(Counter(o["shape"] for o in s["objects"]))  # noqa: E731
    else:
        a, b = pool
        gold, choices = pick(rng, ("yes", "no")), shuffled(rng, ["yes", "no"])
        q = f"Are there more {plural(a)} than {plural(b)}?"
        accept = lambda s: (lambda c: c[a] != c[b] and (c[a] > c[b]) == (gold == "yes"))(  # noqa: E731
            Counter(o["shape"] for o in s["objects"]))
    scene = _draw(rng, lambda: sample_scene(rng, min_objects=2, shape_pool=pool), accept)
    scene["query"] = {"type": qtype, "space": choices}
    return {"scene": scene, "prompt": f"{q}\nChoices: {', '.join(choices)}. {ICONQA_TXT_SUFFIX}", "answer": gold,
            "references": [gold], "choices": choices}


#: answer range of each fill-in-the-blank question type (targets are drawn uniformly from it)
_BLANK_RANGES = {"shape": (0, 3), "color": (0, 2), "total": (1, 4), "empty": (0, 3), "plus_one": (1, 4)}


def _iconqa_blank(rng: np.random.Generator) -> dict:
    qtype = pick(rng, tuple(_BLANK_RANGES))
    space = _counts(*_BLANK_RANGES[qtype])
    n = int(pick(rng, space))
    pool = shuffled(rng, SHAPES)[:2]
    shape, color = pick(rng, pool), pick(rng, COLORS)
    q, value = {
        "shape": (f"Count the {plural(shape)}. There are () {plural(shape)}.",
                  lambda s: len(_with(s["objects"], shape=shape))),
        "color": (f"There are () {color} objects in the picture.", lambda s: len(_with(s["objects"], color=color))),
        "total": ("There are () objects in the picture in total.", lambda s: len(s["objects"])),
        "empty": ("() of the four cells are empty.", lambda s: 4 - len(s["objects"])),
        "plus_one": (f"If one more {shape} is added, there will be () {plural(shape)}.",
                     lambda s: len(_with(s["objects"], shape=shape)) + 1),
    }[qtype]
    scene = _draw(rng, lambda: sample_scene(rng, min_objects=1, shape_pool=pool), lambda s: value(s) == n)
    scene["query"] = {"type": qtype, "space": list(space)}
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


# ----------------------------------------------------------------------------- answer formats for stage 2
# The seen families' pre-training split also asks its own questions in the answer formats of the unseen columns
# (lettered options with a context line, a list of choices, the fill-in-the-blank and VizWiz instructions), so the
# base model answers those columns in the right format zero-shot; their skills (rules in a context, icon counting,
# blanks, unanswerable questions) stay unseen. Test and train splits keep the plain format.
FORMAT_SHARES = {"plain": 0.35, "letters": 0.2, "choices": 0.25, "blank": 0.1, "vizwiz": 0.1}
#: fill-in-the-blank statements of the seen number questions (IconQA-blank's own templates stay unseen)
_BLANK_REWRITES = ((r"How many corners does the (.+) have\?", r"The \1 has () corners."),
                   (r"How many (.+) are there\?", r"The number of \1 in the picture is ()."),
                   (r"(What|Which) .*number.*\?", "The number written in the image is ()."))
NEUTRAL_CONTEXTS = ("The picture shows a few simple objects.", "Look at the objects in the picture.",
                    "This is a small picture of shapes.")


_SINGULARS = {p: s for s, p in PLURALS.items()}


def _singular(phrase: str) -> str:
    """``"red square"`` for ``"red squares"``: the noun of ``phrase`` (its last word) in the singular."""
    *words, noun = phrase.split()
    return " ".join([*words, _SINGULARS.get(noun, noun.removesuffix("s"))])


#: the ``formats`` split (stage 3): the same formats, fewer plain questions, varied blank statements and wordings
STAGE3_FORMAT_SHARES = {"plain": 0.15, "letters": 0.15, "choices": 0.4, "blank": 0.15, "vizwiz": 0.15}
_STAGE3_BLANK_REWRITES = ((r"How many corners does the (.+) have\?", (r"The \1 has () corners.",)),
                          (r"How many (.+) are there\?", (r"The number of \1 in the picture is ().",
                                                           r"There are () \1 in the image.",
                                                           r"() \1 are in the picture.",
                                                           r"Count the \1. There are () \1 in the image.",
                                                           r"There are () \1.",
                                                           r"If zero more \1 are added, there will be () \1.",
                                                           lambda m: f"If one more {_singular(m[1])} is added to the "
                                                                     f"() {m[1]}, there will be more {m[1]}.")),
                          (r"(What|Which) .*number.*\?", ("The number written in the image is ().",
                                                           "The image shows the number ().")))
#: question rewordings of the ``formats`` split (pattern, replacement, share): "which" for "what" (IconQA-txt asks
#: "Which shape ...?"), existence asked in the plural ("Are there ...?", which the base model otherwise reads as a
#: count) and as "Are there more than zero ...?" (a yes/no question with "more ... than", which it read as a count
#: after the "one more" blank statements; the IconQA comparison of two counts stays unseen), and OKVQA's feeling
#: question without "often"
_STAGE3_WORDINGS = ((r"What color is", "Which color is", 0.5), (r"What shape is", "Which shape is", 0.5),
                    (r"Is there an? (\w+) (\w+) in the image\?",
                     lambda m: f"Are there {m[1]} {plural(m[2])} in the image?", 0.5),
                    (r"Is there an? (\w+) (\w+) in the image\?",
                     lambda m: f"Are there more than zero {m[1]} {plural(m[2])} in the image?", 0.5),
                    (r"is often linked", "is linked", 1.0))
#: share of the ``formats`` split's number questions asked as a blank statement
STAGE3_BLANK_SHARE = 0.6


def _in_format(rng: np.random.Generator, item: dict, stage3: bool = False) -> dict:
    """``item`` (a seen-family question) asked in one of ``FORMAT_SHARES``' formats (``STAGE3_FORMAT_SHARES``' for
    the ``formats`` split); ``item["format"]`` says which."""
    shares = STAGE3_FORMAT_SHARES if stage3 else FORMAT_SHARES
    fmt = pick_weighted(rng, tuple(shares), tuple(shares.values()))
    if stage3 and item["answer"].isdigit() and rng.random() < STAGE3_BLANK_SHARE:
        fmt = "blank"
    q, gold = item["prompt"].split("\n")[0], item["answer"]
    if stage3:
        for pattern, replacement, share in _STAGE3_WORDINGS:
            if re.search(pattern, q) and rng.random() < share:
                q = re.sub(pattern, replacement, q)
        item = {**item, "prompt": item["prompt"].replace(item["prompt"].split("\n")[0], q, 1)}
    space = [a for a in item["scene"]["query"].get("space", []) if a != gold]
    if fmt == "blank" and not gold.isdigit():
        fmt = "vizwiz"
    if fmt in ("letters", "choices") and not space:
        fmt = "plain"
    if fmt == "plain":
        return item
    out = {**item, "format": fmt, "answer": gold}
    if fmt in ("letters", "choices"):
        choices = shuffled(rng, [gold, *shuffled(rng, space)[:int(rng.integers(1, 3))]])
        out["choices"] = choices
        if fmt == "letters":
            letter = "ABCDE"[choices.index(gold)]
            opts = ", ".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))
            out.update(prompt=f"Context: {pick(rng, NEUTRAL_CONTEXTS)}\nQuestion: {q}\nOptions: {opts}",
                       answer=letter, references=[letter])
        else:
            out.update(prompt=f"{q}\nChoices: {', '.join(choices)}. {ICONQA_TXT_SUFFIX}", references=[gold])
    elif fmt == "blank":
        for pattern, statement in (_STAGE3_BLANK_REWRITES if stage3 else _BLANK_REWRITES):
            if re.fullmatch(pattern, q):
                q = re.sub(pattern, pick(rng, statement) if stage3 else statement, q)
                break
        out.update(prompt=f"{q}\n{ICONQA_BLANK_SUFFIX}", references=[gold])
    else:
        out.update(prompt=f"{q}\n{VIZWIZ_SUFFIX}")
    return out


GENERATORS: dict[str, Callable[[np.random.Generator], dict]] = {
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
    elif family in GENERATORS:
        rng = item_rng(seed, family, split, index)
        item = _vqav2(rng, STAGE3_VQAV2_TYPES, STAGE3_HARD_NEGATIVES, STAGE3_EXISTS_YES_SHARE) \
            if (family, split) == ("vqav2", FORMATS_SPLIT) else GENERATORS[family](rng)
        if split == "pretrain" and family in FAMILIES and FAMILIES[family].group == "seen":
            item = _in_format(item_rng(seed, family, "format", index), item)
        elif split == FORMATS_SPLIT and family == "align":
            item["prompt"] = pick(item_rng(seed, family, "formats-prompt", index), DESCRIPTION_PROMPTS)
        elif split == FORMATS_SPLIT:
            item = _in_format(item_rng(seed, family, "formats-choice", index), item, stage3=True)
    else:
        raise KeyError(f"unknown family {family!r}; available: {', '.join(FAMILY_ORDER)}")
    record = {
        "id": f"{family}-{split}-{index:06d}",
        "image": f"{split}/{index:06d}.png",
        "conversations": [{"from": "human", "value": "<image>\n" + item["prompt"]},
                          {"from": "gpt", "value": item["answer"]}],
    }
    for key in ("references", "choices", "objects", "label", "format"):
        if key in item:
            record[key] = item[key]
    record["scene"] = item["scene"]
    return record, render_scene(item["scene"])
