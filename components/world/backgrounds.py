"""Named backgrounds, drawn procedurally. Each takes (rng, height, width) and returns a float
image in [0, 1] of shape (H, W, 3). The rng only varies details (horizon height, where trees
and stars are), never what the background is."""
from __future__ import annotations

import numpy as np

# How prompts name each background.
PHRASES: dict[str, str] = {
    "beach": "on a beach",
    "forest": "in a forest",
    "snow": "in the snow",
    "desert": "in a desert",
    "night": "under a night sky",
    "ocean": "in the ocean",
    "meadow": "in a meadow",
    "city": "in a city",
    "plain": "on a plain background",
}
SCENE_BACKGROUNDS = tuple(k for k in PHRASES if k != "plain")
PLAIN = "plain"


def _c(*rgb):
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _grid(h, w):
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    return np.meshgrid(x, y)


def _split(h, w, top, bottom, horizon):
    x, y = _grid(h, w)
    img = np.where((y < horizon)[..., None], top, bottom)
    return img.astype(np.float32), x, y


def _dots(img, rng, x, y, colour, n, radius, y_range=(0.0, 1.0)):
    """n round dots at random places; each is drawn in its own small window, not the frame."""
    h, w = x.shape
    for cx, cy in rng.random((n, 2)):
        cy = y_range[0] + (y_range[1] - y_range[0]) * cy
        x0, x1 = max(int((cx - radius) * w) - 1, 0), min(int((cx + radius) * w) + 2, w)
        y0, y1 = max(int((cy - radius) * h) - 1, 0), min(int((cy + radius) * h) + 2, h)
        xs, ys = x[y0:y1, x0:x1], y[y0:y1, x0:x1]
        img[y0:y1, x0:x1][(xs - cx) ** 2 + (ys - cy) ** 2 < radius**2] = colour


def _beach(rng, h, w):
    horizon = 0.5 + 0.08 * rng.random()
    img, x, y = _split(h, w, _c(135, 200, 240), _c(232, 210, 150), horizon + 0.1)
    img[(y >= horizon) & (y < horizon + 0.1)] = _c(40, 120, 200)
    return img


def _forest(rng, h, w):
    img, x, y = _split(h, w, _c(50, 110, 55), _c(70, 140, 60), 0.7)
    for cx in rng.random(4):
        img[(np.abs(x - cx) < 0.035) & (y > 0.25)] = _c(95, 65, 40)
    return img


def _snow(rng, h, w):
    img, x, y = _split(h, w, _c(200, 215, 232), _c(245, 248, 252), 0.45 + 0.1 * rng.random())
    _dots(img, rng, x, y, _c(255, 255, 255), 12, 0.012)
    return img


def _desert(rng, h, w):
    x, y = _grid(h, w)
    dune = 0.5 + 0.06 * np.sin(2 * np.pi * (x * (1 + rng.random()) + rng.random()))
    img = np.where((y < dune)[..., None], _c(250, 225, 170), _c(225, 165, 85)).astype(np.float32)
    return img


def _night(rng, h, w):
    x, y = _grid(h, w)
    img = (_c(10, 15, 50) * (1 - y[..., None]) + _c(35, 40, 90) * y[..., None]).astype(np.float32)
    _dots(img, rng, x, y, _c(250, 245, 200), 10, 0.012)
    return img


def _ocean(rng, h, w):
    x, y = _grid(h, w)
    img = (_c(40, 110, 190) * (1 - y[..., None]) + _c(10, 45, 110) * y[..., None]).astype(np.float32)
    phase = rng.random()
    img[np.sin(2 * np.pi * (6 * y + 0.3 * np.sin(2 * np.pi * (x + phase)))) > 0.85] = _c(120, 180, 230)
    return img


def _meadow(rng, h, w):
    img, x, y = _split(h, w, _c(150, 210, 245), _c(90, 180, 70), 0.4 + 0.1 * rng.random())
    _dots(img, rng, x, y, _c(250, 240, 120), 10, 0.012, y_range=(0.55, 1.0))
    return img


def _city(rng, h, w):
    img, x, y = _split(h, w, _c(175, 190, 210), _c(110, 110, 115), 0.85)
    left = 0.0
    while left < 1.0:
        width = 0.12 + 0.12 * rng.random()
        top = 0.2 + 0.35 * rng.random()
        shade = 0.35 + 0.25 * rng.random()
        img[(x >= left) & (x < left + width - 0.02) & (y >= top) & (y < 0.85)] = shade
        left += width
    return img


def _plain(rng, h, w):
    return np.full((h, w, 3), 0.82, dtype=np.float32)


_DRAW = {
    "beach": _beach, "forest": _forest, "snow": _snow, "desert": _desert, "night": _night,
    "ocean": _ocean, "meadow": _meadow, "city": _city, "plain": _plain,
}


def draw(name: str, seed: int, height: int, width: int) -> np.ndarray:
    """The background ``name`` at (height, width), its details fixed by ``seed``."""
    if name not in _DRAW:
        raise KeyError(f"unknown background {name!r}; known: {', '.join(_DRAW)}")
    return _DRAW[name](np.random.default_rng(seed), height, width)
