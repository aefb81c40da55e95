"""patchdpo stage: PatchDPO (arXiv 2412.03177) on the SFT generator.

Trains ``models/sft`` further on the pairs of ``data/patchdpo`` (the model's own images with their
patch weights, and the references they were drawn from) with ``patchdpo.objective``: PatchDPO's
patch-weighted loss (``objectives/patchdpo.py``), the same pairs with every weight 1 (the
same-compute control), or image-level Diffusion-DPO. The shared trainer runs it (exact resume,
EMA, accelerate). Output: a generator folder (``models/patchdpo``) that samples with the SFT
model's recorded settings, the loss history and sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .pipeline.stage import path_field, stage_main


@dataclass
class PatchDPOPaths:
    pairs: Path = path_field("the images, quality maps and weights of patchdpo_data (data/patchdpo)")
    data: Path = path_field("the dataset the pairs' rows come from: prompts and references (data/multisubject)")
    init: Path = path_field("the generator to start from, the one that drew the pairs (models/sft)")
    out: Path = path_field("folder receiving the trained generator (models/patchdpo)")
    reports: Path = path_field("folder for the loss history and sample grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run(params: Params, paths: PatchDPOPaths) -> dict:
    """Train ``paths.init`` on the pairs of ``paths.pairs`` with ``patchdpo.objective``."""
    from .preference.train import run_patchdpo

    return run_patchdpo(params, paths)


def main(argv=None) -> int:
    return stage_main("patchdpo", run, PatchDPOPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
