"""Dataset layout shared by every stage that reads or writes one.

A dataset is a folder holding ``manifest.parquet`` and ``images/``. Each manifest row is one
sample; list columns hold one entry per subject, in reference order (subject k is "image k+1"
in the prompt). Paths in the manifest are relative to the dataset folder, so a dataset can be
copied or moved as a whole.

Columns:
    id            str        unique sample id ("multi-000042", "bench-position-007")
    split         str        single | standardize | multi | bench | wild | serial | multisubject
    subset        str        single | standardize | serial | one of world.TASKS
    prompt        str        the text condition
    background    str        the target's background name
    width, height int        size of every image of the sample
    n_subjects    int        number of subjects in the target (= number of references)
    target        str        target PNG
    mask          str        label-map PNG of the target: 0 background, k+1 subject k
    refs          list[str]  one reference PNG per subject
    categories    list[str]  category per subject
    identities    list[str]  identity id per subject (world.Identity.id)
    boxes         list[list[int]]  (x0, y0, x1, y1) per subject in the target, exclusive ends
    ref_boxes     list[list[int]]  the same in each reference
    scene         str        JSON of the target scene (re-renders it exactly)
    ref_scenes    list[str]  JSON of each reference scene
    claims        str        JSON list of what the prompt states (present, size, action,
                             relation, background)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

MANIFEST = "manifest.parquet"
SPLITS = ("single", "standardize", "multi", "bench", "wild", "serial")
TRAIN_SPLITS = ("single", "standardize", "multi")
# Datasets later stages build (the multisubject stage's bootstrapped pairs): training data too,
# so the same leakage check applies; their rows keep the PSR task as subset.
DERIVED_SPLITS = ("multisubject",)
TASK_SPLITS = ("multi", "bench", "wild", "multisubject")
COLUMNS = (
    "id", "split", "subset", "prompt", "background", "width", "height", "n_subjects", "target", "mask",
    "refs", "categories", "identities", "boxes", "ref_boxes", "scene", "ref_scenes", "claims",
)


def read_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    """The manifest of the dataset in ``dataset_dir``."""
    return pd.read_parquet(Path(dataset_dir) / MANIFEST)


def subjects_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, subject): sample_id, k, category, identity, ref, the target box as
    x0..y1 and the reference box as ref_x0..ref_y1. Rows whose list columns disagree in length
    are kept with missing values, so a validator can report them."""
    rows = []
    for rec in manifest.itertuples(index=False):
        lists = [list(getattr(rec, c)) if getattr(rec, c) is not None else [] for c in
                 ("categories", "identities", "refs", "boxes", "ref_boxes")]
        n = max(len(x) for x in lists) if lists else 0
        for k in range(n):
            cat, ident, ref, box, rbox = (x[k] if k < len(x) else None for x in lists)
            box = list(box) if box is not None else [None] * 4
            rbox = list(rbox) if rbox is not None else [None] * 4
            rows.append({
                "sample_id": rec.id, "k": k, "category": cat, "identity": ident, "ref": ref,
                "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                "ref_x0": rbox[0], "ref_y0": rbox[1], "ref_x1": rbox[2], "ref_y1": rbox[3],
            })
    return pd.DataFrame(rows, columns=["sample_id", "k", "category", "identity", "ref", "x0", "y0", "x1", "y1",
                                       "ref_x0", "ref_y0", "ref_x1", "ref_y1"])
