"""Words of the synthetic world: object synonyms (CHAIR), knowledge base, answer variation, descriptions, captions.

Usage: ``captions = caption_set(rng, scene)``; ``answers = vqa_answers(rng, "red", COLOR_VARIANTS["red"], ["blue"])``
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scenes import COLORS, POSITIONS, SHAPES, pick, shuffled

__all__ = [
    "NUMBER_WORDS", "SHAPE_NOUNS", "PLURALS", "OBJECT_SYNONYMS", "COLOR_VARIANTS", "POSITION_VARIANTS",
    "KNOWLEDGE_BASE", "KB_KEY", "CAPTION_PROMPTS", "ALIGN_PROMPTS", "DESCRIPTION_PROMPTS", "article", "plural", "object_name",
    "vqa_answers", "describe_scene", "caption_set",
]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")

#: shape -> nouns used for it in captions (the first is the canonical shape name).
SHAPE_NOUNS = {
    "circle": ("circle", "disc", "ring", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus"),
}
PLURALS = {
    "circle": "circles", "disc": "discs", "ring": "rings", "dot": "dots",
    "square": "squares", "box": "boxes", "block": "blocks",
    "triangle": "triangles", "wedge": "wedges",
    "cross": "crosses", "plus": "pluses",
}
#: CHAIR vocabulary: canonical object word (shape name) -> every word that names it in captions, plurals included.
#: Captions and references use no other object words.
OBJECT_SYNONYMS: dict[str, list[str]] = {
    shape: [w for noun in nouns for w in (noun, PLURALS[noun])] for shape, nouns in SHAPE_NOUNS.items()
}

# Realistic answer variation for VQA-scored families (not normalised away by the VQA metric, except number words).
COLOR_VARIANTS = {
    "red": ("dark red", "crimson"), "green": ("dark green", "lime"), "blue": ("dark blue", "navy"),
    "yellow": ("gold", "light yellow"), "purple": ("violet", "lilac"), "orange": ("dark orange", "amber"),
}
POSITION_VARIANTS = {
    "top left": ("upper left", "top left corner"), "top right": ("upper right", "top right corner"),
    "bottom left": ("lower left", "bottom left corner"), "bottom right": ("lower right", "bottom right corner"),
}

#: Outside knowledge for the OKVQA-like family: relation -> key (colour or shape) -> (gold answer, *synonyms).
KNOWLEDGE_BASE: dict[str, dict[str, tuple[str, ...]]] = {
    "fruit": {
        "red": ("apple", "apples"), "green": ("pear", "pears"), "blue": ("blueberry", "blueberries"),
        "yellow": ("banana", "bananas"), "purple": ("grape", "grapes"), "orange": ("orange", "oranges"),
    },
    "feeling": {
        "red": ("anger", "angry"), "green": ("envy", "jealousy"), "blue": ("calm", "peace"),
        "yellow": ("joy", "happiness"), "purple": ("mystery", "magic"), "orange": ("excitement", "energy"),
    },
    "looks_like": {
        "circle": ("coin", "coins"), "square": ("window", "windows"), "triangle": ("pyramid", "tent"),
        "cross": ("hospital", "first aid"),
    },
    "corners": {"circle": ("0", "zero", "none"), "square": ("4", "four"), "triangle": ("3", "three"),
                "cross": ("12", "twelve")},
}
#: which attribute of the referred object is the knowledge-base key of each relation
KB_KEY = {"fruit": "color", "feeling": "color", "looks_like": "shape", "corners": "shape"}

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "Write a brief caption for this picture.",
    "Summarize the picture in a few words.",
    "What does the image show? Answer briefly.",
    "Provide a short caption for the image.",
    "Briefly describe what you see.",
    "Describe this picture in one sentence.",
    "Write a short caption for the image.",
    "What is in this image? Describe it briefly.",
)
ALIGN_PROMPTS = ("Describe the image.", "What is in the image?", "List everything in the image.")
#: The ``formats`` split's description prompts (pre-training stage 3), varied in form ("summarize", "in a few
#: words", "a sentence") so that the base model describes the scene for any description request rather than reading
#: "one" or "a few" as a number question; Flickr30k's own prompts (``CAPTION_PROMPTS``) stay unseen.
DESCRIPTION_PROMPTS = (*ALIGN_PROMPTS, "Describe the picture.", "What is in this picture?",
                       "Give a description of the image.", "Summarize the image.", "Describe the image in a sentence.",
                       "Write a description of the picture.", "Provide a description of this image.",
                       "What can you see in the picture?", "Describe the picture in a few words.")


def article(word: str) -> str:
    """``a`` or ``an`` for ``word`` ("an orange circle")."""
    return "an" if word[0] in "aeiou" else "a"


def plural(noun: str) -> str:
    """Plural of a shape noun."""
    return PLURALS[noun]


def object_name(obj: dict | tuple[str, str]) -> str:
    """``"red circle"`` for an object dict or a (colour, shape) pair."""
    color, shape = (obj["color"], obj["shape"]) if isinstance(obj, dict) else obj
    return f"{color} {shape}"


def vqa_answers(
    rng: np.random.Generator, gold: str, variants: Sequence[str] = (), wrong: Sequence[str] = ()
) -> list[str]:
    """Ten human-like answers: 6-10 exact gold, the rest synonyms and at most two wrong answers.

    The gold answer is always the strict majority of the raw strings (at least 6 of 10).

    Args:
        rng: the item's generator.
        gold: the correct answer.
        variants: acceptable variations of the gold answer ("two" for "2", "crimson" for "red").
        wrong: pool of plausible wrong answers.

    Returns:
        Ten answers in random order.
    """
    wrong = [w for w in wrong if w != gold and w not in variants]
    n_exact = int(rng.integers(6, 11))
    rest = 10 - n_exact
    n_wrong = min(rest, int(rng.integers(0, 3))) if wrong else 0
    answers = [gold] * n_exact
    answers += [pick(rng, variants) if variants else gold for _ in range(rest - n_wrong)]
    answers += [pick(rng, wrong) for _ in range(n_wrong)]
    return shuffled(rng, answers)


def describe_scene(scene: dict) -> str:
    """Canonical stage-1 description: every object with colour, shape and position, the count and any text.

    Example: ``"a red circle at the top left and an orange square at the bottom right . two objects in total .
    the word cat is written at the top"``.

    Args:
        scene: scene dict.

    Returns:
        The description (lowercase, ``.`` as a separate token).
    """
    objs = scene["objects"]
    parts = []
    if objs:
        parts.append(" and ".join(f"{article(o['color'])} {o['color']} {o['shape']} at the {o['position']}"
                                  for o in objs))
    parts.append(f"{NUMBER_WORDS[len(objs)]} {'object' if len(objs) == 1 else 'objects'} in total")
    if scene.get("text"):
        parts.append(f"the {scene['text_kind']} {scene['text']} is written at the {scene['text_row']}")
    return " . ".join(parts)


def _groups(scene: dict) -> list[tuple[str, str, list[str]]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for o in scene["objects"]:
        groups.setdefault((o["color"], o["shape"]), []).append(o["position"])
    return [(c, s, pos) for (c, s), pos in groups.items()]


def _phrase(color: str, noun: str, count: int) -> str:
    if count == 1:
        return f"{article(color)} {color} {noun}"
    return f"{NUMBER_WORDS[count]} {color} {plural(noun)}"


def caption_set(rng: np.random.Generator, scene: dict, k: int = 5) -> list[str]:
    """``k`` paraphrased captions of a scene with at least one object (Flickr30k-like references).

    Each caption names every present object (colour + a shape noun from ``SHAPE_NOUNS``) and nothing else; captions
    differ in template, word order, synonyms and counting ("two red discs" vs listing each with its position).

    Args:
        rng: the item's generator.
        scene: scene dict with at least one object.
        k: number of captions (at most 6 templates).

    Returns:
        ``k`` distinct-template captions in random order.
    """
    objs, groups = scene["objects"], _groups(scene)
    if not objs:
        raise ValueError("caption_set needs a scene with at least one object")  # internal

    def noun(shape: str) -> str:
        return pick(rng, SHAPE_NOUNS[shape])

    def counted(order: list) -> str:
        return " and ".join(_phrase(c, noun(s), len(p)) for c, s, p in order)

    def positions() -> str:
        return " and ".join(f"{article(o['color'])} {o['color']} {o['shape']} at the {o['position']}" for o in objs)

    def corners() -> str:
        return " and ".join(f"{article(o['color'])} {o['color']} {noun(o['shape'])} in the {o['position']} corner"
                            for o in reversed(objs))

    def there() -> str:
        order = shuffled(rng, groups)
        verb = "is" if len(order[0][2]) == 1 else "are"
        return f"there {verb} {counted(order)}"

    templates = [
        positions,
        corners,
        lambda: counted(groups),
        there,
        lambda: f"a picture of {counted(shuffled(rng, groups))}",
        lambda: f"a light background with {counted(groups)}",
    ]
    chosen = [int(i) for i in rng.permutation(len(templates))[:k]]
    return [templates[i]() for i in chosen]


# Sanity of the vocabulary: synonym lists must not overlap (CHAIR maps each word to exactly one object).
assert len({w for ws in OBJECT_SYNONYMS.values() for w in ws}) == sum(len(ws) for ws in OBJECT_SYNONYMS.values())
assert set(SHAPE_NOUNS) == set(SHAPES) and set(COLOR_VARIANTS) == set(COLORS)
assert set(POSITION_VARIANTS) == set(POSITIONS)
