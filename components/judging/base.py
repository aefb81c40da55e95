"""What a judge is: the interfaces behind every reward and benchmark metric.

Images cross these interfaces as uint8 arrays of shape (H, W, 3) (a batch is a list of them or
an array (B, H, W, 3)), boxes as (x0, y0, x1, y1) in pixels with exclusive ends, as the
manifests store them. Small world-trained judges and real pretrained models (DINO, CLIP, a
zero-shot detector) implement the same protocols, so rewards and the benchmark never know which
they got.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Grounding:
    """Where a grounder found a category: the box, or None when it found nothing, and its
    confidence. ``candidate`` is the top box even when its confidence is below the grounder's
    threshold (None when the grounder proposed nothing): graded rewards read it."""

    box: Box | None
    score: float
    candidate: Box | None = None

    @property
    def found(self) -> bool:
        return self.box is not None


@runtime_checkable
class SubjectEncoder(Protocol):
    """The DINO ViT-S/16 analogue: identity embeddings of subject crops."""

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) float32, each row L2-normalised, for crops made by ``crop_subject``."""

    def patch_features(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, P, D) float32 per-patch features (P patches in raster order), L2-normalised."""


@runtime_checkable
class Grounder(Protocol):
    """The Grounding DINO analogue: (image, category) -> box of that subject, or not found."""

    def ground(self, images: Sequence[np.ndarray], categories: Sequence[str]) -> list[Grounding]:
        """One Grounding per (image, category) pair: the top box for that category."""


@runtime_checkable
class SemanticJudge(Protocol):
    """The VLM analogue: reads the facts a prompt can claim, so claims are checked one by one."""

    def background(self, images: Sequence[np.ndarray]) -> list[str]:
        """The background name of each image."""

    def describe(self, images: Sequence[np.ndarray], boxes: Sequence[Box], categories: Sequence[str]) -> list[dict]:
        """For each (image, box, category): {"size": small|medium|large, "action": word}."""


@runtime_checkable
class AestheticJudge(Protocol):
    """The HPS analogue: higher for clean renders than for damaged ones."""

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) float32 scores, calibrated so that clean renders score about +1 and damaged
        ones about -1 (the aesthetic reward maps them to (0, 1))."""


@dataclass
class JudgeSet:
    """The four judges that score together: one set for rewards, an independent one for
    evaluation."""

    encoder: SubjectEncoder
    grounder: Grounder
    semantic: SemanticJudge
    aesthetic: AestheticJudge


def crop_window(box: Box, pad: float = 0.1) -> tuple[int, int, int]:
    """(left, top, side) in pixels of the square ``crop_subject`` reads around ``box``."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * pad)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), max(int(round(side)), 1)


def crop_subject(image: np.ndarray, box: Box, size: int = 32, pad: float = 0.1) -> np.ndarray:
    """The square crop around ``box`` (padded by ``pad`` of its longer side, edges replicated),
    resized to (size, size, 3) uint8. Square, so the subject's shape is not distorted."""
    h, w = image.shape[:2]
    left, top, n = crop_window(box, pad)
    ys = np.clip(np.arange(top, top + n), 0, h - 1)
    xs = np.clip(np.arange(left, left + n), 0, w - 1)
    patch = image[ys][:, xs]
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR))


def isolate(image: np.ndarray, box: Box, subject_size: int) -> np.ndarray:
    """The subject in ``box`` as a single-subject model's reference looks: its square crop
    scaled to ``subject_size`` pixels, centred in an image of the same size as ``image``, the
    surround continued from the crop's edges. PSR's bootstrapping hands it to the single-subject
    model to redraw; SerialGen's SFT hands it to the standardizer (``training/sft.py``)."""
    h, w = image.shape[:2]
    side = min(subject_size, h, w)
    crop = crop_subject(image, box, size=side, pad=0.1)
    top, left = (h - side) // 2, (w - side) // 2
    return np.pad(crop, ((top, h - side - top), (left, w - side - left), (0, 0)), mode="edge")


def keep_in_place(image: np.ndarray, box: Box, pad: float = 0.1) -> np.ndarray:
    """The subject in ``box`` where it sits in ``image``, alone: the box (padded by ``pad`` of its
    longer side) kept as it is, everything around it continued from the box's edges, so the other
    subjects of the scene are gone. The in-place counterpart of :func:`isolate`."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    p = int(round(max(x1 - x0, y1 - y0) * pad))
    x0, y0, x1, y1 = max(x0 - p, 0), max(y0 - p, 0), min(max(x1 + p, x0 + 1), w), min(max(y1 + p, y0 + 1), h)
    return np.pad(image[y0:y1, x0:x1], ((y0, h - y1), (x0, w - x1), (0, 0)), mode="edge")


def as_batch(images: Sequence[np.ndarray]) -> np.ndarray:
    """A list of equally sized uint8 images as one (B, H, W, 3) array."""
    return images if isinstance(images, np.ndarray) and images.ndim == 4 else np.stack(list(images))


def iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two boxes (0 when either is missing)."""
    if a is None or b is None:
        return 0.0
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
