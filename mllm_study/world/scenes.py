"""Scene graphs of the synthetic world: seeded sampling and deterministic 32x32 rendering.

Usage: ``scene = sample_scene(item_rng(0, "vqav2", "test", 3)); image = render_scene(scene)``

A scene is a JSON-able dict, the ground truth stored in every record::

    {"objects": [{"shape": "circle", "color": "red", "position": "top left",
                  "bbox": [x0, y0, x1, y1], "center": [cx, cy]}, ...],   # bbox end exclusive, canonical order
     "text": None | "cat" | "12",  # + "text_kind", "text_row", "text_bbox" when text is present
     "degradation": None | {"type": "blur", "radius"} | {"type": "noise", "std", "seed"}
                    | {"type": "occlusion", "position", "bbox"},
     "background": [r, g, b], "theme": None | theme name,
     "query": {...}}               # added by the task families: question type and parameters

The image is a 2x2 grid of 16 px cells (top left, top right, bottom left, bottom right), at most one object per cell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError
from .font import draw_text, text_size

__all__ = [
    "IMAGE_SIZE", "CELL_SIZE", "OBJECT_SIZE", "SHAPES", "COLORS", "COLOR_RGB", "POSITIONS", "CELL_ORIGIN",
    "BACKGROUND_RGB", "TEXT_RGB", "OCCLUDER_RGB", "WORDS", "NUMBERS", "OBJECT_TYPES", "POPULAR_OBJECTS", "THEMES",
    "DEGRADATIONS", "stable_int", "item_rng", "pick", "pick_weighted", "shuffled", "object_at", "sample_scene",
    "sample_degradation", "render_scene",
]

T = TypeVar("T")

IMAGE_SIZE = 32
CELL_SIZE = 16
OBJECT_SIZE = 12  # px; objects are jittered by 1-3 px inside their cell, so they never touch a cell border
SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
COLOR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 200, 20),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CELL_ORIGIN = {"top left": (0, 0), "top right": (16, 0), "bottom left": (0, 16), "bottom right": (16, 16)}
BACKGROUND_RGB = (236, 234, 226)
BACKGROUND_JITTER = 6  # the same seeded shift in [-6, 6] is added to the three channels of each image
TEXT_RGB = (24, 24, 24)
OCCLUDER_RGB = (128, 128, 128)
WORDS = ("cat", "dog", "sun", "car", "hat", "cup", "bus", "pen", "fox", "map")
NUMBERS = tuple(str(i) for i in range(1, 21))
OBJECT_TYPES = tuple((c, s) for c in COLORS for s in SHAPES)  # 24 (colour, shape) object types

# Co-occurrence structure (fixed, part of the world's definition). Outside themes, four "popular" objects are drawn
# POPULAR_WEIGHT times more often than the rest; inside a theme the scene takes its objects from the theme's four.
# Popular objects never belong to a theme, so POPE's "popular" negatives (most frequent overall) differ from its
# "adversarial" ones (most co-occurring with what is present, i.e. theme mates) and from uniform random ones.
POPULAR_OBJECTS = (("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "cross"))
THEMES = {
    "garden": (("green", "circle"), ("yellow", "square"), ("purple", "triangle"), ("orange", "cross")),
    "harbour": (("orange", "circle"), ("purple", "square"), ("red", "triangle"), ("blue", "cross")),
    "workshop": (("purple", "circle"), ("red", "square"), ("blue", "triangle"), ("green", "cross")),
    "market": (("yellow", "circle"), ("green", "square"), ("orange", "triangle"), ("red", "cross")),
}
THEME_PROB = 0.5
THEME_SWAP_PROB = 0.25  # chance that one theme object is replaced by a draw from the global distribution
POPULAR_WEIGHT = 5.0
N_OBJECT_WEIGHTS = {0: 0.15, 1: 0.25, 2: 0.3, 3: 0.25, 4: 0.2}
DEGRADATIONS = ("blur", "noise", "occlusion")

_GLOBAL_CDF = np.cumsum([POPULAR_WEIGHT if t in POPULAR_OBJECTS else 1.0 for t in OBJECT_TYPES])
_THEME_NAMES = tuple(sorted(THEMES))


def stable_int(*parts: Any) -> int:
    """A 128-bit integer derived from ``parts`` with SHA-256 (stable across processes, unlike ``hash()``).

    Args:
        *parts: values joined by their ``str``.

    Returns:
        Non-negative integer.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:16], "big")


def item_rng(seed: int, family: str, split: str, index: int) -> np.random.Generator:
    """The random generator of one item: a function of (seed, family, split, index) only, not of generation order.

    Args:
        seed: world seed.
        family: family name (``vqav2``, ``pope``...), or any other stream name.
        split: split name.
        index: item index in the split.

    Returns:
        A fresh numpy ``Generator``.
    """
    return np.random.default_rng(np.random.SeedSequence(stable_int(int(seed), family, split, int(index))))


def pick(rng: np.random.Generator, seq: Sequence[T]) -> T:
    """One element of ``seq`` chosen uniformly (keeps Python types, unlike ``rng.choice``)."""
    return seq[int(rng.integers(len(seq)))]


def shuffled(rng: np.random.Generator, seq: Sequence[T]) -> list[T]:
    """A shuffled copy of ``seq``."""
    return [seq[int(i)] for i in rng.permutation(len(seq))]


def pick_weighted(rng: np.random.Generator, seq: Sequence[T], weights: Sequence[float]) -> T:
    """One element of ``seq`` drawn with probability proportional to ``weights`` (faster than ``rng.choice``)."""
    cdf = np.cumsum(weights)
    return seq[int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))]


def _global_type(rng: np.random.Generator) -> tuple[str, str]:
    return OBJECT_TYPES[int(np.searchsorted(_GLOBAL_CDF, rng.random() * _GLOBAL_CDF[-1], side="right"))]


def object_at(scene: dict, position: str) -> dict | None:
    """The object at ``position`` in ``scene``, or None if the cell is empty."""
    return next((o for o in scene["objects"] if o["position"] == position), None)


def _sample_types(rng: np.random.Generator, n: int, shape_pool: Sequence[str] | None, scene: dict) -> list[tuple]:
    if n == 0:
        return []
    if shape_pool is not None:  # icon scenes: uniform colours, shapes from a small pool (for counting questions)
        return [(pick(rng, COLORS), pick(rng, shape_pool)) for _ in range(n)]
    if rng.random() < THEME_PROB:
        theme = pick(rng, _THEME_NAMES)
        scene["theme"] = theme
        types = shuffled(rng, THEMES[theme])[:n]
        if rng.random() < THEME_SWAP_PROB:
            types[int(rng.integers(n))] = _global_type(rng)
        return types
    return [_global_type(rng) for _ in range(n)]


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    *,
    min_objects: int = 1,
    max_objects: int = 4,
    text: str | None = None,
    shape_pool: Sequence[str] | None = None,
) -> dict:
    """Sample a scene graph.

    Args:
        rng: the item's generator (see :func:`item_rng`).
        n_objects: exact number of objects; default drawn from ``N_OBJECT_WEIGHTS`` within the bounds.
        min_objects: lower bound when ``n_objects`` is None.
        max_objects: upper bound (at most 4, at most 2 with text).
        text: None for no text, ``"word"``, ``"number"`` or ``"any"``; the text fills the top or bottom row and the
            objects go in the other row.
        shape_pool: if given, shapes are drawn uniformly from it and colours uniformly (no themes).

    Returns:
        The scene dict (see module docstring), objects sorted in reading order.
    """
    shift = int(rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1))
    scene: dict[str, Any] = {
        "objects": [],
        "text": None,
        "degradation": None,
        "background": [c + shift for c in BACKGROUND_RGB],
        "theme": None,
    }
    cells = list(POSITIONS)
    if text:
        kind = pick(rng, ("word", "number")) if text == "any" else text
        value = pick(rng, WORDS if kind == "word" else NUMBERS)
        row = pick(rng, ("top", "bottom"))
        w, h = text_size(value)
        x0 = (IMAGE_SIZE - w) // 2 + int(rng.integers(-1, 2))
        y0 = (0 if row == "top" else CELL_SIZE) + (CELL_SIZE - h) // 2
        scene.update(text=value, text_kind=kind, text_row=row, text_bbox=[x0, y0, x0 + w, y0 + h])
        cells = [p for p in POSITIONS if not p.startswith(row)]
    max_objects = min(max_objects, len(cells))
    min_objects = min(min_objects, max_objects)
    if n_objects is None:
        counts = list(range(min_objects, max_objects + 1))
        n_objects = pick_weighted(rng, counts, [N_OBJECT_WEIGHTS[c] for c in counts])
    if not 0 <= n_objects <= len(cells):
        raise ConfigError(f"n_objects={n_objects} does not fit in {len(cells)} free cells")
    types = _sample_types(rng, n_objects, shape_pool, scene)
    positions = [cells[int(i)] for i in rng.permutation(len(cells))[:n_objects]]
    objects = []
    for (color, shape), pos in zip(types, positions):
        ox, oy = (int(v) for v in rng.integers(1, 4, size=2))  # 1..3 px inside the cell
        cx0, cy0 = CELL_ORIGIN[pos]
        x0, y0 = cx0 + ox, cy0 + oy
        objects.append({
            "shape": shape, "color": color, "position": pos,
            "bbox": [x0, y0, x0 + OBJECT_SIZE, y0 + OBJECT_SIZE],
            "center": [x0 + OBJECT_SIZE // 2, y0 + OBJECT_SIZE // 2],
        })
    scene["objects"] = sorted(objects, key=lambda o: POSITIONS.index(o["position"]))
    return scene


def sample_degradation(rng: np.random.Generator, scene: dict, kind: str | None = None) -> dict:
    """Sample a VizWiz-like degradation for ``scene`` (not applied: :func:`render_scene` applies it).

    Args:
        rng: the item's generator.
        scene: the scene (occlusions prefer occupied cells, 3 times out of 4).
        kind: ``blur``, ``noise`` or ``occlusion``; default drawn with probabilities 0.3 / 0.3 / 0.4.

    Returns:
        The degradation dict.
    """
    if kind is None:
        kind = pick_weighted(rng, DEGRADATIONS, (0.3, 0.3, 0.4))
    if kind == "blur":
        return {"type": "blur", "radius": round(float(rng.uniform(0.6, 1.1)), 2)}
    if kind == "noise":
        return {"type": "noise", "std": round(float(rng.uniform(10.0, 28.0)), 1), "seed": int(rng.integers(2**31))}
    if kind == "occlusion":
        occupied = [o["position"] for o in scene["objects"]]
        pos = pick(rng, occupied) if occupied and rng.random() < 0.75 else pick(rng, POSITIONS)
        x, y = CELL_ORIGIN[pos]
        return {"type": "occlusion", "position": pos, "bbox": [x, y, x + CELL_SIZE, y + CELL_SIZE]}
    raise ConfigError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict) -> None:
    x0, y0, x1, y1 = obj["bbox"]
    x1, y1 = x1 - 1, y1 - 1  # Pillow boxes include their end pixel
    fill = COLOR_RGB[obj["color"]]
    shape = obj["shape"]
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], fill=fill)
    elif shape == "triangle":
        mid = (x0 + x1) // 2
        draw.polygon([(mid, y0), (mid + 1, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        a, b = x0 + 4, x0 + 7
        draw.rectangle([a, y0, b, y1], fill=fill)
        draw.rectangle([x0, y0 + 4, x1, y0 + 7], fill=fill)
    else:
        raise ConfigError(f"unknown shape {shape!r}")


def render_scene(scene: dict) -> Image.Image:
    """Render a scene graph to a 32x32 RGB image (a pure function of ``scene``: noise has its own seed).

    Args:
        scene: scene dict as produced by :func:`sample_scene` (possibly with a degradation).

    Returns:
        The image.
    """
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(scene.get("background", BACKGROUND_RGB)))
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        _draw_object(draw, obj)
    if scene.get("text"):
        x0, y0 = scene["text_bbox"][:2]
        draw_text(draw, scene["text"], x0, y0, TEXT_RGB)
    deg = scene.get("degradation")
    if deg:
        if deg["type"] == "occlusion":
            x0, y0, x1, y1 = deg["bbox"]
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=OCCLUDER_RGB)
        elif deg["type"] == "blur":
            img = img.filter(ImageFilter.GaussianBlur(deg["radius"]))
        elif deg["type"] == "noise":
            noise = np.random.default_rng(deg["seed"]).normal(0.0, deg["std"], (IMAGE_SIZE, IMAGE_SIZE, 3))
            arr = np.clip(np.rint(np.asarray(img, dtype=np.float64) + noise), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr, "RGB")
        else:
            raise ConfigError(f"unknown degradation {deg['type']!r}")
    return img
