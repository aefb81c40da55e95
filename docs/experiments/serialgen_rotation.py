"""How far off the reference analyser's object rotation is, by true rotation and by the length of
its (sin, cos) output (a confidence), on held-out standardization sources of benchmark identities
(section 8 of docs/experiments/serialgen.md).

    python docs/experiments/serialgen_rotation.py <finished project> [<rows>]

Reads the project's params.yaml and models/standardizer; renders <rows> (600) held-out pairs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components import world  # noqa: E402
from components.config import load_params  # noqa: E402
from components.models.conditioning import subject_crops  # noqa: E402
from components.models.generator import to_model  # noqa: E402
from components.models.standardizer import Standardizer  # noqa: E402
from components.standardize.analyser import _angle_errors, heldout_pairs  # noqa: E402


def main(project: Path, rows: int) -> None:
    params = load_params(project / "params.yaml")
    data = heldout_pairs(rows, params.synthesize.character_fraction, params.synthesize, 123)
    net = Standardizer.load(project / "models/standardizer").model.ref_analyser
    x = to_model(data.sources)
    with torch.no_grad():
        logits = net.segment(x)
        pose = net.pose(subject_crops(x, logits > 0)).numpy()
    obj = np.array([c != world.CHARACTER for c in data.categories])
    err = _angle_errors(pose[obj, 8:10], data.poses[obj, 8:10])[:, 0]
    truth = np.degrees(np.arctan2(data.poses[obj, 8], data.poses[obj, 9]))
    norm = np.linalg.norm(pose[obj, 8:10], axis=1)
    never = _angle_errors(np.tile([[0.0, 1.0]], (int(obj.sum()), 1)), data.poses[obj, 8:10])[:, 0]
    print(f"{obj.sum()} held-out objects: mean error {err.mean():.1f} deg (never turning: {never.mean():.1f})")
    for name, lo, hi in (("upright", -20, 20), ("tilted right", 20, 60), ("tilted left", -60, -20)):
        m = (truth > lo) & (truth < hi)
        print(f"  {name}: {m.sum()} rows, error {err[m].mean():.1f}")
    m = np.abs(truth) > 150
    print(f"  upside down: {m.sum()} rows, error {err[m].mean():.1f}")
    for q in (0.5, 0.8, 0.9):
        m = norm > q
        print(f"  (sin, cos) length over {q}: {m.mean():.2f} of objects, error {err[m].mean():.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 600)
