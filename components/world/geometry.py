"""Vectorised 2-D primitives evaluated on local subject coordinates.

Every subject is drawn in its own frame: ``u`` points right, ``v`` points down, and the
subject fits in the square [-1, 1]². Each primitive takes arrays ``u, v`` of the same shape
and returns a boolean array: True where the point is inside.
"""
from __future__ import annotations

import numpy as np


def circle(u, v, cx: float, cy: float, r: float):
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def ellipse(u, v, cx: float, cy: float, rx: float, ry: float):
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def rect(u, v, x0: float, y0: float, x1: float, y1: float):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def polygon(u, v, points):
    """Even-odd point-in-polygon test for a closed polygon given as [(x, y), ...]."""
    inside = np.zeros(np.shape(u), dtype=bool)
    n = len(points)
    for i in range(n):
        x0, y0 = points[i]
        x1, y1 = points[(i + 1) % n]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x1 - x0) * (v - y0) / (y1 - y0 + 1e-12) + x0
        inside ^= crosses & (u < x_at)
    return inside


def capsule(u, v, ax: float, ay: float, bx: float, by: float, r: float):
    """Points within distance r of the segment a-b (a limb)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / length2, 0.0, 1.0)
    px, py = ax + t * dx - u, ay + t * dy - v
    return px * px + py * py <= r * r


def star_points(n: int = 5, r_outer: float = 0.95, r_inner: float = 0.42, cy: float = 0.06):
    pts = []
    for k in range(2 * n):
        r = r_outer if k % 2 == 0 else r_inner
        a = -np.pi / 2 + k * np.pi / n
        pts.append((r * np.cos(a), cy + r * np.sin(a)))
    return pts
