"""The renderer: plays both the camera and the text-to-image model of the world.

``render(scene, height, width)`` draws a scene exactly and returns the image together with the
ground truth per subject (visible mask, box, category). Shapes are evaluated on a supersampled
grid and averaged down, so edges are anti-aliased at any resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import backgrounds, geometry, shapes
from .palette import rgb
from .subjects import Identity

SIZES: dict[str, float] = {"small": 0.3, "medium": 0.4, "large": 0.52}
CANONICAL_SIZE = "large"


@dataclass(frozen=True)
class Placement:
    """One subject in a scene: who, where (centre as a fraction of width/height), how big, and
    its action (a rotation word for objects, a pose word for the person). ``scale``,
    ``rotation`` and ``pose`` are the exact values the words were jittered to."""

    identity: Identity
    cx: float
    cy: float
    size: str
    action: str
    scale: float
    rotation: float = 0.0
    pose: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Scene:
    background: str
    background_seed: int
    placements: tuple[Placement, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        for p, src in zip(d["placements"], self.placements):
            p["identity"] = src.identity.id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        placements = tuple(
            Placement(**{**p, "identity": Identity.from_id(p["identity"]),
                         "pose": tuple(p["pose"]) if p.get("pose") is not None else None})
            for p in d["placements"]
        )
        return cls(d["background"], int(d["background_seed"]), placements)


@dataclass
class Rendered:
    image: np.ndarray          # (H, W, 3) uint8
    labels: np.ndarray         # (H, W) uint8: 0 background, k+1 where subject k is visible
    boxes: list[tuple[int, int, int, int] | None]  # per subject (x0, y0, x1, y1), exclusive ends
    visible: list[float]       # fraction of each subject's own area left visible

    def mask(self, k: int) -> np.ndarray:
        return self.labels == k + 1


def _pattern(pattern: str, u, v):
    if pattern == "stripes":
        return np.sin(np.pi * 3.0 * (u + v)) > 0.2
    if pattern == "dots":
        return (np.mod(u * 2.2 + 10, 1.0) - 0.5) ** 2 + (np.mod(v * 2.2 + 10, 1.0) - 0.5) ** 2 < 0.06
    if pattern == "checker":
        return (np.floor(u * 2.0) + np.floor(v * 2.0)) % 2 == 0
    return np.zeros(np.shape(u), dtype=bool)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour binary erosion, ``steps`` times (pixels beyond the window count as outside)."""
    m = mask.copy()
    for _ in range(steps):
        inner = np.zeros_like(m)
        inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        m = inner
    return m


def _colours(identity: Identity) -> dict[str, np.ndarray]:
    c = identity.colors
    if identity.is_character:
        skin, hair, shirt, trousers = (rgb(x) for x in c)
        return {"skin": skin, "hair": hair, "shirt": shirt, "trousers": trousers, "hat": trousers,
                "detail": rgb("black"), "pattern": rgb("white") if c[2] != "white" else rgb("black")}
    primary, secondary = rgb(c[0]), rgb(c[1])
    detail = rgb("black") if c[0] != "black" and c[1] != "black" else rgb("white")
    return {"primary": primary, "secondary": secondary, "detail": detail, "pattern": secondary,
            "mark": rgb("white") if c[0] != "white" else rgb("black")}


def _paint_subject(canvas, owner, k, p: Placement, ss_h: int, ss_w: int, ss: int, unit: float):
    """Paint placement ``p`` onto the supersampled canvas; returns its own pixel count."""
    half = p.scale * unit / 2.0 * ss                        # half-size in supersampled pixels
    cx, cy = p.cx * ss_w, p.cy * ss_h
    reach = half * 1.45
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)), ss_w)
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)), ss_h)
    if x0 >= x1 or y0 >= y1:
        return 0
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
    dx, dy = np.meshgrid(xs, ys)
    th = np.deg2rad(p.rotation)
    u = (np.cos(th) * dx + np.sin(th) * dy) / half
    v = (-np.sin(th) * dx + np.cos(th) * dy) / half
    colours = _colours(p.identity)
    window = canvas[y0:y1, x0:x1]
    ident = p.identity
    layers = shapes.layers(ident.category, u, v, p.pose)
    if ident.is_character and ident.mark == "hat":
        layers.append((shapes.hat_layer(u, v), "hat"))
    patterned = "shirt" if ident.is_character else "primary"
    silhouette = np.zeros(u.shape, dtype=bool)
    for mask, role in layers:
        window[mask] = colours[role]
        if role == patterned and ident.pattern != "solid":
            window[mask & _pattern(ident.pattern, u, v)] = colours["pattern"]
        silhouette |= mask
    if not ident.is_character and ident.mark == "spot":
        window[silhouette & geometry.circle(u, v, 0.3, 0.3, 0.2)] = colours["mark"]
    elif not ident.is_character and ident.mark == "outline":
        edge = silhouette & ~_erode(silhouette, max(1, ss // 2))
        window[edge] = rgb("black") if ident.colors[0] != "black" else rgb("white")
    owner[y0:y1, x0:x1][silhouette] = k + 1
    return int(silhouette.sum())


def render(scene: Scene, height: int = 32, width: int = 32, supersample: int = 4) -> Rendered:
    """Draw ``scene`` at (height, width). Subjects are painted in order (later ones in front).

    Returns the uint8 image, a label map of visible subjects, each subject's box (the tight box
    of its visible mask, or None if nothing of it is visible) and its visible fraction.
    """
    ss = int(supersample)
    ss_h, ss_w = height * ss, width * ss
    canvas = backgrounds.draw(scene.background, scene.background_seed, ss_h, ss_w).copy()
    owner = np.zeros((ss_h, ss_w), dtype=np.uint8)
    unit = float(min(height, width))
    areas = [_paint_subject(canvas, owner, k, p, ss_h, ss_w, ss, unit) for k, p in enumerate(scene.placements)]
    image = canvas.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    # A pixel belongs to whatever covers most of it (background included).
    n = len(scene.placements)
    counts = np.stack([(owner == k).reshape(height, ss, width, ss).sum(axis=(1, 3)) for k in range(n + 1)])
    labels = counts.argmax(axis=0).astype(np.uint8)
    boxes, visible = [], []
    for k in range(n):
        m = labels == k + 1
        visible.append(float((owner == k + 1).sum()) / areas[k] if areas[k] else 0.0)
        if not m.any():
            boxes.append(None)
            continue
        ys, xs = np.nonzero(m)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return Rendered(image=image, labels=labels, boxes=boxes, visible=visible)
