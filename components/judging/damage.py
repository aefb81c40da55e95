"""Image damages: the failure modes an aesthetic judge must rank below a clean render.

Each damage is a pure function ``(image uint8 (H, W, 3), rng) -> damaged uint8 (H, W, 3)``:
all of its randomness comes from ``rng``, so the same rng state gives the same damage. Damages
are visible but not total: the scene stays recognisable. Local damages try a few candidate
places and keep the one that changes the image most, because on a flat background (snow, a
plain sky) a seam or a pasted patch can otherwise land where it changes nothing.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Damage = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_CANDIDATES = 6  # candidate placements tried by the local damages


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _best(image: np.ndarray, candidates: list[np.ndarray]) -> np.ndarray:
    """The candidate that differs most from ``image`` (ties: the first)."""
    diffs = [np.abs(c.astype(np.int16) - image).sum() for c in candidates]
    return candidates[int(np.argmax(diffs))]


def _span(rng, n: int, lo: float, hi: float) -> tuple[int, int]:
    """A random [start, end) range of length in [lo, hi] * n inside [0, n)."""
    length = int(rng.integers(max(int(lo * n), 1), max(int(hi * n), 1) + 1))
    start = int(rng.integers(0, n - length + 1))
    return start, start + length


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample float ``image`` at fractional pixel coordinates, edges replicated."""
    h, w = image.shape[:2]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive per-pixel Gaussian noise (sigma 14-28 of 255): grainy, content still clear."""
    sigma = rng.uniform(14.0, 28.0)
    return _u8(image.astype(np.float32) + rng.normal(0.0, sigma, image.shape))


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Separable Gaussian blur (sigma 0.8-1.4 px, i.e. a tenth of a subject): soft edges."""
    sigma = rng.uniform(0.8, 1.4)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = image.astype(np.float32)
    pad = np.pad(x, ((r, r), (0, 0), (0, 0)), mode="edge")
    x = sum(k[i] * pad[i:i + x.shape[0]] for i in range(2 * r + 1))
    pad = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")
    x = sum(k[i] * pad[:, i:i + x.shape[1]] for i in range(2 * r + 1))
    return _u8(x)


def seams(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A band of rows (or columns) shifted sideways by 3-8 px: a visible discontinuity."""
    h, w = image.shape[:2]
    out = []
    for _ in range(_CANDIDATES):
        vertical = rng.random() < 0.5
        a, b = _span(rng, w if vertical else h, 0.15, 0.4)
        shift = int(rng.integers(3, 9)) * (1 if rng.random() < 0.5 else -1)
        img = image.copy()
        if vertical:
            img[:, a:b] = np.roll(image[:, a:b], shift, axis=0)
        else:
            img[a:b] = np.roll(image[a:b], shift, axis=1)
        out.append(img)
    return _best(image, out)


def pasted_patch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rectangle copied from elsewhere (flipped or rotated, so it is foreign there) and pasted
    with a hard edge: the copy-paste artefact."""
    h, w = image.shape[:2]
    out = []
    for _ in range(_CANDIDATES):
        side = int(rng.integers(min(h, w) // 4, int(0.4 * min(h, w)) + 1))
        sy, sx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = image[sy:sy + side, sx:sx + side]
        patch = np.rot90(patch, int(rng.integers(1, 4))) if rng.random() < 0.5 else patch[::-1, ::-1]
        dy, dx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = image.copy()
        img[dy:dy + side, dx:dx + side] = patch
        out.append(img)
    return _best(image, out)


def colour_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Channel swap or hue rotation, over the whole image or a rectangle of it."""
    h, w = image.shape[:2]
    out = []
    for _ in range(_CANDIDATES):
        x = image.astype(np.float32)
        if rng.random() < 0.5:
            perm = [(1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)][int(rng.integers(5))]
            shifted = x[..., perm]
        else:  # hue rotation about the grey axis (Rodrigues), 60-180 degrees
            a = np.deg2rad(rng.uniform(60, 180)) * (1 if rng.random() < 0.5 else -1)
            k = np.ones(3) / np.sqrt(3)
            kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
            rot = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
            shifted = x @ rot.T
        img = x.copy()
        if rng.random() < 0.4:
            img = shifted
        else:
            (y0, y1), (x0, x1) = _span(rng, h, 0.35, 0.7), _span(rng, w, 0.35, 0.7)
            img[y0:y1, x0:x1] = shifted[y0:y1, x0:x1]
        out.append(_u8(img))
    return _best(image, out)


def melted_shapes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A local smooth warp (a swirl plus low-frequency waves, 1-3 px) centred where the image is most
    detailed, i.e. on a subject: shapes lose their outline, colours stay."""
    h, w = image.shape[:2]
    x = image.astype(np.float32)
    # Detail map: gradient magnitude, so the warp lands on a subject, not on flat background.
    g = np.abs(np.diff(x, axis=0, append=x[-1:])).sum(-1) + np.abs(np.diff(x, axis=1, append=x[:, -1:])).sum(-1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(_CANDIDATES // 2):
        p = g.ravel() + 1e-3
        c = int(rng.choice(h * w, p=p / p.sum()))
        cy, cx = c // w, c % w
        radius = rng.uniform(0.18, 0.3) * min(h, w)
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        swirl = rng.uniform(0.5, 1.0) * (1 if rng.random() < 0.5 else -1)  # radians at the centre
        ang = swirl * bump
        dy, dx = yy - cy, xx - cx
        sy = cy + np.sin(ang) * dx + np.cos(ang) * dy
        sx = cx + np.cos(ang) * dx - np.sin(ang) * dy
        # Smooth random displacement field (a few low-frequency waves) makes it look smeared.
        for _k in range(2):
            fy, fx, ph = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.45), rng.uniform(0, 2 * np.pi)
            amp = rng.uniform(1.0, 3.0)
            sy = sy - amp * bump * np.sin(fx * xx + ph)
            sx = sx + amp * bump * np.cos(fy * yy + ph)
        out.append(_u8(_bilinear(x, sy, sx)))
    return _best(image, out)


DAMAGES: dict[str, Damage] = {
    "noise": gaussian_noise,
    "blur": blur,
    "seams": seams,
    "pasted_patch": pasted_patch,
    "colour_shift": colour_shift,
    "melted": melted_shapes,
}


def damage(image: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Apply damage ``kind`` (one of ``DAMAGES``), or one drawn from ``rng`` when None."""
    if kind is None:
        kind = list(DAMAGES)[int(rng.integers(len(DAMAGES)))]
    if kind not in DAMAGES:
        raise KeyError(f"unknown damage {kind!r}; known: {sorted(DAMAGES)}")
    return DAMAGES[kind](image, rng)
