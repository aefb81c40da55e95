"""Named colours of the subject world. Names never appear in prompts: appearance must come
from the reference images, so prompts only use categories."""
from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (60, 170, 60),
    "teal": (30, 170, 170),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 30),
}
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "light": (250, 215, 185),
    "tan": (215, 165, 120),
    "brown": (150, 100, 65),
    "dark": (90, 60, 40),
}
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "blond": (235, 200, 90),
    "auburn": (160, 70, 30),
    "brunette": (90, 55, 30),
    "raven": (20, 20, 20),
    "silver": (190, 190, 200),
}
TROUSER_COLORS = ("blue", "black", "green", "purple", "orange", "teal")


def rgb(name: str) -> np.ndarray:
    """RGB of any named colour as a float array in [0, 1]."""
    for table in (COLORS, SKIN_TONES, HAIR_COLORS):
        if name in table:
            return np.asarray(table[name], dtype=np.float32) / 255.0
    raise KeyError(f"unknown colour {name!r}")
