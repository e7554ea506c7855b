"""A built-in 3x5 bitmap font, scaled x2, so rendered text is pixel-identical on every machine.

Usage: ``draw_text(ImageDraw.Draw(img), "cat", x=5, y=3, fill=(24, 24, 24))``
"""

from __future__ import annotations

from PIL import ImageDraw

__all__ = ["GLYPHS", "SCALE", "GAP", "text_size", "draw_text"]

SCALE = 2  # each font pixel becomes a SCALE x SCALE block: glyphs are 6x10 px, readable at 32 px
GAP = 2  # px between glyphs (after scaling)

# 3 columns x 5 rows per glyph, '#' = ink. Hand-drawn so that every glyph differs from every other one.
_FONT = {
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "### ..# ### #.. ###",
    "3": "### ..# ### ..# ###",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###",
    "7": "### ..# ..# ..# ..#",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###",
    "a": ".#. #.# ### #.# #.#",
    "b": "##. #.# ##. #.# ##.",
    "c": ".## #.. #.. #.. .##",
    "d": "##. #.# #.# #.# ##.",
    "e": "### #.. ##. #.. ###",
    "f": "### #.. ##. #.. #..",
    "g": ".## #.. #.# #.# .##",
    "h": "#.# #.# ### #.# #.#",
    "i": "### .#. .#. .#. ###",
    "j": "..# ..# ..# #.# .#.",
    "k": "#.# #.# ##. #.# #.#",
    "l": "#.. #.. #.. #.. ###",
    "m": "#.# ### ### #.# #.#",
    "n": "##. #.# #.# #.# #.#",
    "o": ".#. #.# #.# #.# .#.",
    "p": "##. #.# ##. #.. #..",
    "q": ".#. #.# #.# ##. .##",
    "r": "##. #.# ##. #.# #.#",
    "s": ".## #.. .#. ..# ##.",
    "t": "### .#. .#. .#. .#.",
    "u": "#.# #.# #.# #.# ###",
    "v": "#.# #.# #.# #.# .#.",
    "w": "#.# #.# ### ### #.#",
    "x": "#.# #.# .#. #.# #.#",
    "y": "#.# #.# .#. .#. .#.",
    "z": "### ..# .#. #.. ###",
}

#: glyph -> tuple of (column, row) ink cells in font units.
GLYPHS: dict[str, tuple[tuple[int, int], ...]] = {
    ch: tuple((c, r) for r, row in enumerate(rows.split()) for c, v in enumerate(row) if v == "#")
    for ch, rows in _FONT.items()
}


def text_size(text: str) -> tuple[int, int]:
    """Pixel size of ``text`` when drawn with :func:`draw_text`.

    Args:
        text: lowercase letters and digits.

    Returns:
        ``(width, height)`` in pixels.
    """
    n = len(text)
    return (n * 3 * SCALE + max(n - 1, 0) * GAP, 5 * SCALE)


def draw_text(draw: ImageDraw.ImageDraw, text: str, x: int, y: int, fill: tuple[int, int, int]) -> None:
    """Draw ``text`` with its top-left corner at ``(x, y)``.

    Args:
        draw: Pillow drawing context.
        text: lowercase letters and digits (anything else raises ``KeyError``).
        x: left pixel.
        y: top pixel.
        fill: RGB ink colour.
    """
    for i, ch in enumerate(text):
        gx = x + i * (3 * SCALE + GAP)
        for c, r in GLYPHS[ch]:
            x0, y0 = gx + c * SCALE, y + r * SCALE
            draw.rectangle([x0, y0, x0 + SCALE - 1, y0 + SCALE - 1], fill=fill)
