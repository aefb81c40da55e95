"""Multi-subject SFT (PSR's second step), shared by the ``sft`` stage and ``sft_std`` (the same
SFT on standardized references, SerialGen's stage II): their paths and their run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Params
from ..models.layout import load_layout
from ..pipeline.stage import path_field
from .fit import run_fit


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
    ``standardize`` (None: ``sft.standardize_refs``) standardizes every reference first."""
    cfg = params.sft
    standardize = cfg.standardize_refs if standardize is None else standardize
    replay = paths.single if cfg.ref_count_probs.get(1, 0) > 0 else None
    # the model expects its references as its data showed them (multisubject.recompose_layout)
    return run_fit("sft", params, paths.data, paths.out, paths.reports, paths.checkpoints, init=paths.init,
                   ref_count_probs=dict(cfg.ref_count_probs), replay=replay, reference_layout=load_layout(paths.data),
                   standardizer=paths.standardizer if standardize else None, name=name)
