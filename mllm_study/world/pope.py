"""POPE-style object-existence probes with random, popular and adversarial negatives, from the scene graphs.

Usage: ``item = build_pope_item(seed=0, split="adversarial", index=3)``

Protocol (after Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models"): the probed
object is a colour + shape pair ("Is there a red circle in the image?"); even indices are positives (an object that
is present), odd indices negatives (an absent object type), so every split is exactly 50/50 when its size is even.
The three splits share their images (scene ``i`` is the same in all three) and differ only in how negatives are
drawn: uniformly among absent types (random), among the 3 most frequent absent types (popular), or among the 3
absent types that co-occur most with the present ones (adversarial). Frequencies and co-occurrences are measured
on a fixed sample of ``STAT_SCENES`` scenes drawn with the same sampler.
"""

from __future__ import annotations

import functools
from collections import Counter
from itertools import permutations

import numpy as np

from ..errors import ConfigError
from .language import article, object_name
from .scenes import OBJECT_TYPES, item_rng, pick, sample_scene, stable_int

__all__ = ["STRATEGIES", "STAT_SCENES", "TOP_K", "object_statistics", "sample_negative", "build_pope_item"]

STRATEGIES = ("random", "popular", "adversarial")
STAT_SCENES = 4000
TOP_K = 3
_SUFFIX = "Answer the question using a single word or phrase."


@functools.lru_cache(maxsize=8)
def object_statistics(seed: int, n_scenes: int = STAT_SCENES) -> tuple[dict, dict]:
    """Object frequencies and pairwise co-occurrences measured on ``n_scenes`` sampled scenes.

    Args:
        seed: world seed.
        n_scenes: sample size.

    Returns:
        ``(freq, cooc)``: ``freq[(colour, shape)]`` = number of scenes containing the type;
        ``cooc[(a, b)]`` = number of scenes containing both ``a`` and ``b`` (a != b).
    """
    rng = np.random.default_rng(np.random.SeedSequence(stable_int(int(seed), "pope", "statistics")))
    freq: Counter = Counter()
    cooc: Counter = Counter()
    for _ in range(n_scenes):
        present = {(o["color"], o["shape"]) for o in sample_scene(rng)["objects"]}
        freq.update(present)
        cooc.update(permutations(sorted(present), 2))
    return dict(freq), dict(cooc)


def sample_negative(rng: np.random.Generator, present: set, strategy: str, seed: int) -> tuple[str, str]:
    """An absent (colour, shape) type chosen by ``strategy``.

    Args:
        rng: the item's generator.
        present: set of present (colour, shape) types.
        strategy: ``random``, ``popular`` or ``adversarial``.
        seed: world seed (selects the statistics).

    Returns:
        The negative object type.
    """
    absent = [t for t in OBJECT_TYPES if t not in present]
    if strategy == "random":
        return pick(rng, absent)
    freq, cooc = object_statistics(int(seed))
    if strategy == "popular":
        ranked = sorted(absent, key=lambda t: (-freq.get(t, 0), OBJECT_TYPES.index(t)))
    elif strategy == "adversarial":
        ranked = sorted(absent, key=lambda t: (-sum(cooc.get((p, t), 0) for p in present), -freq.get(t, 0),
                                               OBJECT_TYPES.index(t)))
    else:
        raise ConfigError(f"unknown POPE strategy {strategy!r}; expected one of {STRATEGIES}")
    return pick(rng, ranked[:TOP_K])


def build_pope_item(seed: int, split: str, index: int) -> dict:
    """One POPE probe (prompt, label, scene) for split ``split`` (= negative strategy).

    Args:
        seed: world seed.
        split: ``random``, ``popular`` or ``adversarial``.
        index: probe index; even = positive, odd = negative.

    Returns:
        Item dict with ``scene``, ``prompt``, ``answer``, ``references``, ``objects`` and ``label``.
    """
    if split not in STRATEGIES:
        raise ConfigError(f"unknown POPE split {split!r}; expected one of {STRATEGIES}")
    scene_rng = item_rng(seed, "pope", "scene", index)  # shared by the three splits
    scene = sample_scene(scene_rng)
    present = {(o["color"], o["shape"]) for o in scene["objects"]}
    if index % 2 == 0:
        probe, label = pick(scene_rng, sorted(present)), "yes"
    else:
        probe, label = sample_negative(item_rng(seed, "pope", split, index), present, split, seed), "no"
    color, shape = probe
    scene["query"] = {"type": "pope", "object": object_name(probe), "strategy": split, "label": label}
    return {
        "scene": scene,
        "prompt": f"Is there {article(color)} {color} {shape} in the image?\n{_SUFFIX}",
        "answer": label,
        "references": [label],
        "objects": sorted(object_name(t) for t in present),
        "label": label,
    }
