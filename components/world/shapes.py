"""How each category is drawn: a list of (mask, role) layers in paint order.

Roles are resolved to colours by ``render``: objects use "primary" (patterned), "secondary",
"detail" (eyes, doors) and "mark"; the person uses "skin", "hair", "shirt" (patterned),
"trousers", "detail" and "hat".
"""
from __future__ import annotations

import numpy as np

from . import geometry as g

# Named poses of the person: limb angles in degrees from straight down, positive = away from
# the body, as (left arm, right arm, left leg, right leg). "standing" is the canonical pose.
POSES: dict[str, tuple[float, float, float, float]] = {
    "standing": (20.0, 20.0, 8.0, 8.0),
    "waving": (20.0, 150.0, 8.0, 8.0),
    "cheering": (145.0, 145.0, 8.0, 8.0),
    "jumping": (115.0, 115.0, 32.0, 32.0),
    "running": (70.0, -25.0, 40.0, -15.0),
    "kicking": (45.0, 45.0, 5.0, 85.0),
}
CANONICAL_POSE = "standing"

# Object actions are rotations in degrees, clockwise on screen.
ROTATIONS: dict[str, float] = {
    "upright": 0.0,
    "tilted left": -35.0,
    "tilted right": 35.0,
    "upside down": 180.0,
}
CANONICAL_ROTATION = "upright"


def _star(u, v):
    return [(g.polygon(u, v, g.star_points()), "primary"), (g.circle(u, v, 0.0, 0.06, 0.16), "secondary")]


def _heart(u, v):
    body = g.circle(u, v, -0.42, -0.3, 0.46) | g.circle(u, v, 0.42, -0.3, 0.46)
    body |= g.polygon(u, v, [(-0.86, -0.16), (0.86, -0.16), (0.0, 0.92)])
    return [(body, "primary"), (g.circle(u, v, -0.45, -0.42, 0.14), "secondary")]


def _cat(u, v):
    ears = g.polygon(u, v, [(-0.8, -0.2), (-0.62, -0.95), (-0.2, -0.55)])
    ears |= g.polygon(u, v, [(0.8, -0.2), (0.62, -0.95), (0.2, -0.55)])
    head = g.circle(u, v, 0.0, 0.12, 0.78)
    eyes = g.circle(u, v, -0.3, 0.0, 0.13) | g.circle(u, v, 0.3, 0.0, 0.13)
    return [(ears, "secondary"), (head, "primary"), (eyes, "detail"), (g.polygon(u, v, [(-0.12, 0.3), (0.12, 0.3), (0.0, 0.45)]), "secondary")]


def _fish(u, v):
    tail = g.polygon(u, v, [(0.45, 0.0), (0.98, -0.6), (0.98, 0.6)])
    body = g.ellipse(u, v, -0.15, 0.0, 0.75, 0.5)
    return [(tail, "secondary"), (body, "primary"), (g.circle(u, v, -0.55, -0.1, 0.1), "detail"),
            (g.polygon(u, v, [(-0.2, -0.45), (0.2, -0.45), (0.0, -0.85)]), "secondary")]


def _mushroom(u, v):
    cap = g.ellipse(u, v, 0.0, -0.15, 0.95, 0.7) & (v <= -0.05)
    stem = g.rect(u, v, -0.28, -0.1, 0.28, 0.9)
    return [(stem, "secondary"), (cap, "primary")]


def _robot(u, v):
    antenna = g.rect(u, v, -0.06, -0.95, 0.06, -0.6) | g.circle(u, v, 0.0, -0.9, 0.12)
    head = g.rect(u, v, -0.75, -0.6, 0.75, 0.8)
    eyes = g.rect(u, v, -0.5, -0.3, -0.15, 0.0) | g.rect(u, v, 0.15, -0.3, 0.5, 0.0)
    mouth = g.rect(u, v, -0.4, 0.35, 0.4, 0.5)
    return [(antenna, "secondary"), (head, "primary"), (eyes, "detail"), (mouth, "secondary")]


def _flower(u, v):
    petals = np.zeros(np.shape(u), dtype=bool)
    for k in range(6):
        a = k * np.pi / 3
        petals |= g.circle(u, v, 0.55 * np.cos(a), 0.55 * np.sin(a), 0.4)
    return [(petals, "primary"), (g.circle(u, v, 0.0, 0.0, 0.35), "secondary")]


def _house(u, v):
    roof = g.polygon(u, v, [(-0.95, -0.15), (0.0, -0.95), (0.95, -0.15)])
    wall = g.rect(u, v, -0.72, -0.18, 0.72, 0.9)
    door = g.rect(u, v, -0.18, 0.3, 0.18, 0.9)
    return [(wall, "primary"), (roof, "secondary"), (door, "detail")]


def _moon(u, v):
    crescent = g.circle(u, v, 0.0, 0.0, 0.92) & ~g.circle(u, v, 0.45, -0.25, 0.72)
    return [(crescent, "primary"), (g.circle(u, v, -0.55, 0.2, 0.12), "secondary")]


def _tree(u, v):
    trunk = g.rect(u, v, -0.18, 0.35, 0.18, 0.95)
    crown = g.polygon(u, v, [(-0.85, 0.45), (0.0, -0.95), (0.85, 0.45)])
    return [(trunk, "secondary"), (crown, "primary")]


def _limb_end(ox: float, oy: float, angle_deg: float, length: float, side: int):
    a = np.deg2rad(angle_deg)
    return ox + side * length * np.sin(a), oy + length * np.cos(a)


def _person(u, v, pose):
    la, ra, ll, rl = pose
    layers = []
    for side, angle in ((-1, ll), (1, rl)):
        hx = side * 0.13
        ex, ey = _limb_end(hx, 0.22, angle, 0.62, side)
        layers.append((g.capsule(u, v, hx, 0.22, ex, ey, 0.1), "trousers"))
    for side, angle in ((-1, la), (1, ra)):
        sx = side * 0.27
        ex, ey = _limb_end(sx, -0.36, angle, 0.5, side)
        layers.append((g.capsule(u, v, sx, -0.36, ex, ey, 0.085), "skin"))
        mx, my = _limb_end(sx, -0.36, angle, 0.2, side)
        layers.append((g.capsule(u, v, sx, -0.36, mx, my, 0.1), "shirt"))
    layers.append((g.rect(u, v, -0.27, -0.45, 0.27, 0.26), "shirt"))
    layers.append((g.circle(u, v, 0.0, -0.66, 0.22), "skin"))
    layers.append((g.circle(u, v, 0.0, -0.7, 0.23) & (v <= -0.72), "hair"))
    layers.append((g.circle(u, v, -0.08, -0.64, 0.045) | g.circle(u, v, 0.08, -0.64, 0.045), "detail"))
    return layers


_OBJECTS = {
    "star": _star, "heart": _heart, "cat": _cat, "fish": _fish, "mushroom": _mushroom,
    "robot": _robot, "flower": _flower, "house": _house, "moon": _moon, "tree": _tree,
}


def layers(category: str, u, v, pose=None):
    """Paint layers of one subject in local coordinates (u, v)."""
    if category == "person":
        return _person(u, v, pose if pose is not None else POSES[CANONICAL_POSE])
    return _OBJECTS[category](u, v)


def hat_layer(u, v):
    """The person's 'hat' mark: a brim and crown above the head."""
    return g.rect(u, v, -0.3, -0.9, 0.3, -0.82) | g.rect(u, v, -0.18, -1.0, 0.18, -0.84)
