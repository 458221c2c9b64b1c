"""Rendered text pages: document images made offline, deterministic per seed.

scikit-image bundles only two document pictures. These pages are Python's own reference text
(`pydoc_data.topics`, shipped with CPython) set in the DejaVu fonts that matplotlib bundles, as
a page of justified-left paragraphs: dark text on a light, slightly noisy background, with a
random page size, font, size, margin, line spacing and paragraph breaks. They are synthetic
(born-digital pages, not scans), and are used as such: a second document set for checking a
model where it is confident, never in place of the real pictures.
"""

from __future__ import annotations

import functools
import os

import numpy as np

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


@functools.lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(" ".join(topics[key] for key in sorted(topics)).split())


def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", name),
                              size)


def text_page(seed: int) -> np.ndarray:
    """One rendered page as an HxWx3 uint8 RGB array (gray text, so the three channels are equal)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(600, 900)), int(rng.integers(800, 1200))
    page = Image.new("L", (width, height), int(rng.integers(220, 256)))
    draw = ImageDraw.Draw(page)
    font = _font(FONT_FILES[int(rng.integers(len(FONT_FILES)))], int(rng.integers(14, 26)))
    words = _words()
    margin = int(rng.integers(20, 60))
    spacing = rng.uniform(1.3, 1.8)
    ink = int(rng.integers(0, 60))
    i = int(rng.integers(0, len(words) - 4000))
    y = int(rng.integers(20, 60))
    while y < height - 2 * font.size:
        line = [words[i]]
        i += 1
        while draw.textlength(" ".join(line + [words[i]]), font=font) <= width - 2 * margin:
            line.append(words[i])
            i += 1
        draw.text((margin, y), " ".join(line), fill=ink, font=font)
        y += int(font.size * spacing) + (font.size if rng.random() < 0.08 else 0)
    pixels = np.asarray(page, np.float32) + rng.normal(0.0, 4.0, (height, width))
    gray = np.clip(pixels, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def text_line(seed: int) -> np.ndarray:
    """One rendered line of text as an HxWx3 uint8 RGB array, upright: a few words of the same text
    in a random font and size, dark on a light noisy background, with a little margin around."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    font = _font(FONT_FILES[int(rng.integers(len(FONT_FILES)))], int(rng.integers(18, 40)))
    words = _words()
    i = int(rng.integers(0, len(words) - 20))
    text = " ".join(words[i:i + int(rng.integers(2, 8))])
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 10))
    line = Image.new("L", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), int(rng.integers(200, 256)))
    ImageDraw.Draw(line).text((pad_x - left, pad_y - top), text, fill=int(rng.integers(0, 70)), font=font)
    pixels = np.asarray(line, np.float32) + rng.normal(0.0, 4.0, (line.height, line.width))
    gray = np.clip(pixels, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def text_pages(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` rendered pages; page k is `text_page(seed * 1000 + k)`, so different seeds give
    disjoint page sets (for counts up to 1000)."""
    return [text_page(seed * 1000 + k) for k in range(count)]
