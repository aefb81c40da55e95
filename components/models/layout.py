"""Reference layout: where the subjects of three or four references go.

A Three or Four prompt names its subjects but not where they stand, and the tiny generator
does not learn to invent a layout for four subjects from a few hundred pairs: sampled with the
benchmark's references (each subject large and centred), it draws them over one another. What
it does learn is to draw each reference's subject where that reference shows it (the in-place
pairs of ``multisubject``). The ``slots`` layout turns one skill into the other: with ``n`` of
3 or 4 references, reference ``k`` is shrunk by ``SCALE[n]`` and centred on slot ``k`` of a fixed
arrangement (reading order), the surround continued from its edges; the training pairs
recomposed with that layout (``multisubject.recompose_layout``) put subject ``k`` in slot ``k``
and hand it the same packed reference. A trained generator's folder records the layout it
expects (``sampling.json``, see ``models/sampling.py``; a dataset's folder records its layout in
``reference_layout.json``); the benchmark, the registered model and ``subjectflow generate`` pack
the references accordingly, so a caller always passes the plain
references. Fewer references (or ``as_given``) pass through unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

LAYOUTS = ("as_given", "slots")
FILE = "reference_layout.json"
# Slot centres (x, y as fractions of the side), reading order; far enough apart for the
# world's default sizes (Three: medium 0.4, Four: small 0.3), jitter included.
SLOTS: dict[int, tuple[tuple[float, float], ...]] = {
    3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
    4: ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)),
}
# Shrink factor of a reference in its slot: a centred subject of 0.4-0.52 of the side (the
# world's reference sizes) lands near the target's default size for that many subjects.
SCALE: dict[int, float] = {3: 0.8, 4: 0.6}


def check_layout(layout: str, where: str = "") -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{where}unknown reference layout {layout!r}; known: {LAYOUTS}")
    return layout


def _window(n: int, k: int, side: int) -> tuple[int, int, int]:
    """(x0, y0, s): the shrunk reference's square in the frame (may reach past the borders)."""
    s = int(round(side * SCALE[n]))
    cx, cy = SLOTS[n][k]
    return int(round(cx * side - s / 2)), int(round(cy * side - s / 2)), s


def pack(image: np.ndarray, k: int, n: int) -> np.ndarray:
    """Reference ``k`` of ``n`` shrunk into its slot; what lies outside the frame is cut, the
    rest of the frame continues the shrunk image's edges."""
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"references are square, got {h}x{w}")
    x0, y0, s = _window(n, k, h)
    small = np.asarray(Image.fromarray(image).resize((s, s), Image.BICUBIC))
    sx0, sy0, sx1, sy1 = max(-x0, 0), max(-y0, 0), min(s, w - x0), min(s, h - y0)
    part = small[sy0:sy1, sx0:sx1]
    top, left = y0 + sy0, x0 + sx0
    return np.pad(part, ((top, h - top - part.shape[0]), (left, w - left - part.shape[1]), (0, 0)), mode="edge")


def pack_box(box: Sequence[int], k: int, n: int, side: int) -> list[int]:
    """Where a subject box (x0, y0, x1, y1) of reference ``k`` lands after :func:`pack`."""
    x0, y0, s = _window(n, k, side)
    f = s / side
    out = [x0 + box[0] * f, y0 + box[1] * f, x0 + box[2] * f, y0 + box[3] * f]
    # Clipped to the frame (the window may reach past it): a box cut off entirely becomes a
    # one-pixel box on the border, never one whose far side is before its near side.
    lo = [min(max(int(np.floor(v)), 0), side - 1) for v in out[:2]]
    hi = [min(max(int(np.ceil(v)), a + 1), side) for v, a in zip(out[2:], lo)]
    return [lo[0], lo[1], hi[0], hi[1]]


def slot_centres(n: int, rng: np.random.Generator, jitter: float = 0.04) -> list[tuple[float, float]]:
    """The slots of ``n`` subjects, each moved by up to ``jitter`` of the side."""
    return [(float(x + rng.uniform(-jitter, jitter)), float(y + rng.uniform(-jitter, jitter))) for x, y in SLOTS[n]]


def arrange(refs: Sequence[np.ndarray], layout: str) -> list[np.ndarray]:
    """The references as a generator trained with ``layout`` expects them."""
    refs = list(refs)
    if check_layout(layout) == "as_given" or len(refs) not in SLOTS:
        return refs
    return [pack(r, k, len(refs)) for k, r in enumerate(refs)]


def save_layout(folder: str | Path, layout: str) -> None:
    (Path(folder) / FILE).write_text(json.dumps({"layout": check_layout(layout)}) + "\n")


def load_layout(folder: str | Path) -> str:
    """The layout a generator or dataset folder records; ``as_given`` when it records none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return "as_given"
    return check_layout(json.loads(path.read_text())["layout"], f"{path}: ")
