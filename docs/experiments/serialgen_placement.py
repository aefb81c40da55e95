"""Where a standardized reference shows its subject (`sft.standardize_placement`): centre against
keep, on the references SFT trains on and on the benchmark's wild ones.

    python docs/experiments/serialgen_placement.py <finished project> [<rows> [<grid.png>]]

Reads the project's models/standardizer and data/multisubject. For the first <rows> pairs (150),
each reference the bootstrapping drew in place is read from its target as PSR's redraw was
(`training.sft.target_references`), standardized both ways, and its subject's box (the pixels off
the plain background) compared with subject k's box in the target (IoU): the layout channel the
generator reads. The dataset's own reference (PSR's redraw, what `sft` trains on, its grounded
box) is the baseline. The grid (<grid.png>) shows wild benchmark references and in-place training
references: reference, centre, keep.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.config import load_params  # noqa: E402
from components.data.grids import grid, load_rgb  # noqa: E402
from components.data.manifest import read_manifest  # noqa: E402
from components.judging.base import iou  # noqa: E402
from components.models.generator import to_model  # noqa: E402
from components.models.standardizer import Standardizer, plain_background, view_mask  # noqa: E402
from components.training.sft import target_references  # noqa: E402


def subject_box(image: np.ndarray):
    ys, xs = np.nonzero(view_mask(to_model([image]), plain_background())[0].numpy())
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(ys) >= 4 else None


def main(project: Path, rows: int = 150, grid_path: Path | None = None) -> None:
    params = load_params(project / "params.yaml")
    data_dir = project / "data/multisubject"
    manifest = read_manifest(data_dir).iloc[:rows]
    pairs = target_references(data_dir, params.multisubject.subject_size, in_place=True)
    picked = [(i, k) for i in range(len(manifest)) for k, s in enumerate(manifest.ref_scenes.iloc[i])
              if json.loads(s).get("in_place", False)]
    inputs = [pairs.refs[i][k] for i, k in picked]
    truth = [tuple(int(v) for v in manifest.boxes.iloc[i][k]) for i, k in picked]
    redraw = [None if b is None else tuple(int(v) for v in b)
              for b in (manifest.ref_boxes.iloc[i][k] for i, k in picked)]
    folder = project / "models/standardizer"
    views = {p: Standardizer.load(folder).placed(p)(inputs) for p in ("centre", "keep")}
    print(f"{len(picked)} in-place references of {len(manifest)} pairs; IoU of the reference's subject box with "
          f"the target's\n\n| reference | mean IoU | IoU > 0.5 |\n|---|---|---|")
    for name, boxes in (("PSR's redraw (sft's reference)", redraw),
                        ("standardized, placement centre", [subject_box(v) for v in views["centre"]]),
                        ("standardized, placement keep", [subject_box(v) for v in views["keep"]])):
        ious = np.array([iou(b, t) for b, t in zip(boxes, truth)])
        print(f"| {name} | {ious.mean():.3f} | {np.mean(ious > 0.5):.3f} |")
    if grid_path is not None:
        wild = read_manifest(project / "data/wild").iloc[:6]
        wild_refs = [load_rgb(project / "data/wild" / r[0]) for r in wild.refs]
        shown = [(wild_refs, "wild reference")] + [([inputs[j] for j in range(6)], "in-place training reference")]
        rows_out = []
        for refs, label in shown:
            centre, keep = (Standardizer.load(folder).placed(p)(refs) for p in ("centre", "keep"))
            rows_out += [([r, c], k, f"{label}, centre | keep") for r, c, k in zip(refs, centre, keep)]
        grid(rows_out, max_refs=2).save(grid_path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 150,
         Path(sys.argv[3]) if len(sys.argv) > 3 else None)
