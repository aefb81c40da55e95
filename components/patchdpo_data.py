"""patchdpo_data stage: PatchDPO's training data, built from the SFT model's own images.

The SFT model (``models/sft``) draws images for training rows of ``data/multisubject`` (never the
benchmark's identities); the **reward** judge set's subject encoder scores every generated
subject's patches against that subject's own reference, grounded by category as the PSR reward
grounds; a threshold calibrated on the rows' own targets turns the quality maps into PatchDPO's
loss weights (``components/preference/data.py``). Output ``data/patchdpo``; reports: the weight
statistics and quality maps over sample outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .pipeline.stage import path_field, stage_main


@dataclass
class PatchDPODataPaths:
    data: Path = path_field("the bootstrapped multi-subject dataset whose rows are drawn for (data/multisubject)")
    init: Path = path_field("the generator whose own images are scored (models/sft)")
    judges: Path = path_field("folder holding the judge sets (models/judges): the reward set scores the patches")
    out: Path = path_field("folder receiving the images, quality maps and weights (data/patchdpo)")
    reports: Path = path_field("folder for the weight statistics and the quality maps over sample outputs")


def run(params: Params, paths: PatchDPODataPaths) -> dict:
    """Draw images for training rows with ``paths.init``, score their patches, weight them."""
    from .preference.data import build

    return build(params, paths.data, paths.init, paths.judges, paths.out, paths.reports)


def main(argv=None) -> int:
    return stage_main("patchdpo_data", run, PatchDPODataPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
