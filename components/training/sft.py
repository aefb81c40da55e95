"""Multi-subject SFT (PSR's second step), shared by the ``sft`` stage and ``sft_std`` (the same
SFT on standardized references, SerialGen's stage II): their paths and their run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..bootstrap import is_recomposed
from ..config import Params
from ..data.manifest import read_manifest
from ..judging.base import isolate, keep_in_place
from ..models.layout import load_layout
from ..pipeline.stage import path_field
from .fit import Pairs, load_pairs, run_fit


@dataclass
class SftPaths:
    data: Path = path_field("the bootstrapped multi-subject dataset (data/multisubject)")
    single: Path = path_field("single-subject pairs replayed in 1-reference batches (data/single)")
    init: Path = path_field("the generator to start from (models/pretrain)")
    standardizer: Path = path_field("the standardizer (models/standardizer), used when references are standardized")
    out: Path = path_field("folder receiving the trained generator (models/sft)")
    reports: Path = path_field("folder for the loss history and sample grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run_sft(params: Params, paths: SftPaths, name: str = "sft", standardize: bool | None = None) -> dict:
    """Fine-tune ``paths.init`` on the multi-subject pairs in ``paths.data`` with ``params.sft``;
    ``standardize`` (None: ``sft.standardize_refs``) standardizes every reference first, read from
    what ``sft.standardize_from`` names, then arranged as the data arranges it (``Pairs.layouts``)."""
    cfg = params.sft
    standardize = cfg.standardize_refs if standardize is None else standardize
    replay = paths.single if cfg.ref_count_probs.get(1, 0) > 0 else None
    data = extra = None
    keep = cfg.standardize_placement == "keep"
    if standardize and cfg.standardize_from == "target":
        data = target_references(paths.data, params.multisubject.subject_size, in_place=keep)
        extra = {"standardize_from": "target", "subject_size": params.multisubject.subject_size}
    elif standardize and not keep:  # a centred view undoes the stored packing: pack it again
        data = load_pairs(paths.data)
        data.layouts = packed_layouts(paths.data, data.ids)
    # the model expects its references as its data showed them (multisubject.recompose_layout)
    return run_fit("sft", params, paths.data, paths.out, paths.reports, paths.checkpoints, init=paths.init,
                   ref_count_probs=dict(cfg.ref_count_probs), replay=replay, reference_layout=load_layout(paths.data),
                   standardizer=paths.standardizer if standardize else None, placement=cfg.standardize_placement,
                   min_extent=cfg.standardize_min_extent,
                   data=data, extra=extra, name=name)


def packed_layouts(dataset_dir: Path, ids: list[str]) -> list[str]:
    """Per row, the layout the dataset packed its references in: its own for the pairs it
    recomposed (``bootstrap/recompose.py``), as given for the rest."""
    packed = load_layout(dataset_dir)
    return [packed if is_recomposed(i) else "as_given" for i in ids]


def target_references(dataset_dir: Path, subject_size: int, in_place: bool = False) -> Pairs:
    """The dataset's pairs with reference k replaced by subject k as the target renders it (its
    manifest box), as PSR's redraw was handed it: isolated at ``subject_size`` or, with
    ``in_place``, where it sits in the target for the references the bootstrapping drew in place
    (their ``ref_scenes`` provenance says so; ``judging.base.keep_in_place``). The
    standardizer's input when SFT trains on standardized references from the target
    (``sft.standardize_from``). The rows the data packed into the ``slots`` layout (the recomposed
    pairs) are to be packed again once standardized (``Pairs.layouts``), the rest as they are, so
    each subject's reference stands where the data's does. The replayed single-subject pairs keep
    their rendered references."""
    manifest = read_manifest(dataset_dir)
    data = load_pairs(dataset_dir, manifest)
    data.layouts = packed_layouts(dataset_dir, data.ids)

    def source(target, box, scene: str):
        box = tuple(int(v) for v in box)
        if in_place and json.loads(scene).get("in_place", False):
            return keep_in_place(target, box)
        return isolate(target, box, subject_size)

    data.refs = [[source(target, box, scene) for box, scene in zip(boxes, scenes)]
                 for target, boxes, scenes in zip(data.targets, manifest.boxes, manifest.ref_scenes)]
    return data
