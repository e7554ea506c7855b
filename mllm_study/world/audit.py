"""Shortcut audit of the world's generators: can a model that never looks at the image beat chance?

Usage: ``python -m mllm_study.world.audit`` (prints a table) or ``audit_world(seed=0, n_train=1000, n_test=500)``

For every family it draws ``n_train`` and ``n_test`` items straight from the generators (no rendering) and scores,
by exact match of the gold answer on the test items:
- ``chance``: the expected score of a uniform guess over the item's answer space (the offered options for multiple
  choice, the question type's possible answers otherwise: ``scene["query"]["space"]``);
- ``majority``: always the most frequent training answer;
- ``question_only``: the most frequent training answer for the same question text (the majority answer where the
  text was never seen in training), the baseline of docs/study.md's "no shortcuts" rule.
The world is free of shortcuts when ``question_only <= chance + 0.05`` in every family (``tests/test_world.py``).
Captions are open-ended (no answer space) and are left out.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .scenes import item_rng
from .tasks import GENERATORS, FAMILIES

__all__ = ["SHORTCUT_MARGIN", "audit_family", "audit_world"]

SHORTCUT_MARGIN = 0.05


def _items(family: str, seed: int, split: str, n: int) -> list[dict]:
    return [GENERATORS[family](item_rng(seed, family, split, i)) for i in range(n)]


def audit_family(family: str, seed: int = 0, n_train: int = 1000, n_test: int = 500) -> dict[str, float]:
    """Chance, majority and question-only scores (exact match of the gold) of one family."""
    train, test = _items(family, seed, "train", n_train), _items(family, seed, "test", n_test)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for item in train:
        by_text[item["prompt"]][item["answer"]] += 1
    overall = Counter(item["answer"] for item in train).most_common(1)[0][0]

    def guess(item: dict) -> str:
        seen = by_text.get(item["prompt"])
        return seen.most_common(1)[0][0] if seen else overall

    n = len(test)
    return {
        "chance": sum(1 / len(it["scene"]["query"]["space"]) for it in test) / n,
        "majority": sum(it["answer"] == overall for it in test) / n,
        "question_only": sum(it["answer"] == guess(it) for it in test) / n,
        "seen_texts": sum(it["prompt"] in by_text for it in test) / n,
    }


def audit_world(seed: int = 0, n_train: int = 1000, n_test: int = 500) -> dict[str, dict[str, float]]:
    """:func:`audit_family` for every family with an answer space (all but captions)."""
    return {f: audit_family(f, seed, n_train, n_test) for f in FAMILIES if f != "flickr30k"}


if __name__ == "__main__":
    print(f"{'family':14s} {'chance':>7s} {'majority':>9s} {'q-only':>7s} {'seen texts':>11s}  verdict")
    for fam, row in audit_world().items():
        ok = row["question_only"] <= row["chance"] + SHORTCUT_MARGIN
        print(f"{fam:14s} {row['chance']:7.3f} {row['majority']:9.3f} {row['question_only']:7.3f} "
              f"{row['seen_texts']:11.2f}  {'ok' if ok else 'SHORTCUT'}")
