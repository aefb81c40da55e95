"""sft stage: multi-subject supervised fine-tuning (PSR's second step).

Starts from the pretrained single-subject generator (``models/pretrain``) and trains it with the
shared loop on the bootstrapped pairs (``data/multisubject``), so that one sequence carries 2, 3
or 4 references. Each batch has one reference count, drawn with ``sft.ref_count_probs``; count 1
means a batch of single-subject pairs (``data/single``) replayed, so that the model keeps
practising the task it started with while it learns several references from few bootstrapped
pairs.
With ``sft.standardize_refs`` (SerialGen's stage II) every reference is first standardized by the
frozen ``models/standardizer``, and the model folder carries it (``standardizer/``), so whatever
samples the model standardizes the references the same way.
Output: a ``save_pretrained`` generator folder (``models/sft``) whose ``sampling.json`` records the
reference layout of its data (see ``models/layout.py``), loss history and sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .models.layout import load_layout
from .pipeline.stage import path_field, stage_main
from .training.fit import run_fit


@dataclass
class SftPaths:
    data: Path = path_field("the bootstrapped multi-subject dataset (data/multisubject)")
    single: Path = path_field("single-subject pairs replayed in 1-reference batches (data/single)")
    init: Path = path_field("the generator to start from (models/pretrain)")
    standardizer: Path = path_field("the standardizer (models/standardizer), used when sft.standardize_refs")
    out: Path = path_field("folder receiving the trained generator (models/sft)")
    reports: Path = path_field("folder for the loss history and sample grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run(params: Params, paths: SftPaths) -> dict:
    """Fine-tune ``paths.init`` on the multi-subject pairs in ``paths.data``."""
    cfg = params.sft
    replay = paths.single if cfg.ref_count_probs.get(1, 0) > 0 else None
    # the model expects its references as its data showed them (multisubject.recompose_layout)
    return run_fit("sft", params, paths.data, paths.out, paths.reports, paths.checkpoints, init=paths.init,
                   ref_count_probs=dict(cfg.ref_count_probs), replay=replay, reference_layout=load_layout(paths.data),
                   standardizer=paths.standardizer if cfg.standardize_refs else None)


def main(argv=None) -> int:
    return stage_main("sft", run, SftPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
