"""Judge training and test data, read from the synthesized datasets.

Every image of a dataset — targets and references alike — becomes a ``SceneRecord`` with the
ground truth the judges learn from (background; per subject its category, identity, box, size
and action). ``pairs`` links each subject in a target to its reference: two views of the same
identity, in different contexts, which is what the subject encoder must match.

The reward judges and the evaluation judges read disjoint halves (``parity`` 0 and 1 of the
row index), so a model tuned against one set is judged by the other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.manifest import read_manifest
from .base import Box


@dataclass(frozen=True)
class SubjectFact:
    category: str
    identity: str
    box: Box
    size: str
    action: str


@dataclass
class SceneRecord:
    image: np.ndarray  # (H, W, 3) uint8
    background: str
    subjects: list[SubjectFact]
    sample_id: str
    role: str  # "target" or "ref<k>"


@dataclass
class JudgeData:
    scenes: list[SceneRecord] = field(default_factory=list)
    # (target scene index, subject index in it, reference scene index): same identity, two views
    pairs: list[tuple[int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scenes)


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _facts(scene_json: str, boxes) -> list[SubjectFact]:
    scene = json.loads(scene_json)
    return [SubjectFact(p["identity"].split("|")[0], p["identity"], tuple(int(v) for v in box), p["size"], p["action"])
            for p, box in zip(scene["placements"], boxes)]


def load(dataset_dirs: list[str | Path], parity: int | None = None, limit: int | None = None) -> JudgeData:
    """Scenes and view pairs of the given datasets; with ``parity`` only rows whose index has
    that parity, with ``limit`` at most that many rows per dataset."""
    data = JudgeData()
    for d in map(Path, dataset_dirs):
        m = read_manifest(d)
        if parity is not None:
            m = m.iloc[parity::2]
        if limit is not None:
            m = m.head(limit)
        for rec in m.itertuples(index=False):
            t = len(data.scenes)
            data.scenes.append(SceneRecord(_load(d / rec.target), rec.background, _facts(rec.scene, rec.boxes),
                                           rec.id, "target"))
            for k, (ref, ref_scene, ref_box) in enumerate(zip(rec.refs, rec.ref_scenes, rec.ref_boxes)):
                data.pairs.append((t, k, len(data.scenes)))
                bg = json.loads(ref_scene)["background"]
                data.scenes.append(SceneRecord(_load(d / ref), bg, _facts(ref_scene, [ref_box]), rec.id, f"ref{k + 1}"))
    return data
