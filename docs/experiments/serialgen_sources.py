"""What the standardizer reads for SFT's training references (docs/experiments/serialgen.md, section 5).

For a sample of data/multisubject's rows, every subject standardized from three inputs: PSR's
redraw (the dataset's reference, drawn by models/pretrain), the target's own subject isolated at
multisubject.subject_size (``sft.standardize_from: target``), and the target's subject kept in
place; each scored by the eval encoder's cosine against the identity's true standard view (both
cropped at the true view's subject box, as the standardizer stage scores itself).

    python docs/experiments/serialgen_sources.py <finished project> [rows]

Run from the repository root with its venv active.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from components import world
from components.config import load_params
from components.data.grids import load_rgb
from components.judging.base import crop_subject, isolate, keep_in_place
from components.judging.sets import load_judge_set
from components.models.standardizer import Standardizer
from components.standardize.train import mask_box
from components.world.scenes import standard_view
from components.world.subjects import Identity


def identity(key: str) -> Identity:
    category, *colors, pattern, mark = key.split("|")
    return Identity(category, tuple(colors), pattern, mark)


def main(project: Path, rows: int) -> None:
    params = load_params(project / "params.yaml")
    data = project / "data" / "multisubject"
    manifest = pd.read_parquet(data / "manifest.parquet").sample(rows, random_state=0)
    res, crop = params.synthesize.resolution, params.judges.crop_size
    inputs = {"redraw": [], "target, isolated": [], "target, in place": []}
    truth, boxes, categories = [], [], []
    for r in manifest.itertuples():
        target = load_rgb(data / r.target)
        for key, ref, b in zip(r.identities, r.refs, r.boxes):
            view = world.render(standard_view(identity(key)), res, res, params.synthesize.supersample)
            boxes.append(mask_box(view.mask(0)))
            truth.append(crop_subject(view.image, boxes[-1], crop))
            categories.append(key.split("|")[0])
            b = tuple(int(v) for v in b)
            inputs["redraw"].append(load_rgb(data / ref))
            inputs["target, isolated"].append(isolate(target, b, params.multisubject.subject_size))
            inputs["target, in place"].append(keep_in_place(target, b))
    encoder = load_judge_set(project / "models" / "judges" / "eval", params.judges).encoder
    true = encoder.embed(truth)
    standardizer = Standardizer.load(project / "models" / "standardizer")
    cos = {}
    for name, images in inputs.items():
        out = standardizer(images)
        cos[name] = (encoder.embed([crop_subject(im, b, crop) for im, b in zip(out, boxes)]) * true).sum(1)
    table = pd.DataFrame({"person": np.array(categories) == world.CHARACTER, **cos})
    summary = table.groupby("person")[list(cos)].mean().rename(index={True: "person", False: "objects"})
    summary.loc["all"] = table[list(cos)].mean()
    print(f"{len(table)} references of {rows} rows; eval encoder cosine to the true standard view")
    print(summary.round(3).to_markdown())


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 120)
