"""standardizer stage: SerialGen's standardization model (stage I).

Maps a reference in any pose, size, place and background to its standardized view (the world's
canonical pose, front-facing, centred, large, plain background). First a small reference
analyser (segmenter and pose estimator) is trained on the standardization sources; then the
standardizer, an in-context generator of the pipeline's family trained from scratch with the
shared trainer and flow matching, reads the reference through it: FBDM's analogue (foreground /
background embeddings by the analyser's mask) and RPIM's (its pose estimate), each switchable
(``standardizer.fbdm``, ``standardizer.rpim``). Both come from the analyser at inference too,
never from the renderer, so it standardizes any reference image.
Output: a generator folder (``models/standardizer``) holding the analyser and the conditioning,
and its accuracy on held-out identities (pixel error and the evaluation encoder's cosine against
the true standard view, per category, the person apart) with a grid
(reference, standardized | ground truth). ``sft.standardize_refs`` trains SFT on its outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .pipeline.stage import path_field, stage_main


@dataclass
class StandardizerPaths:
    data: Path = path_field("the standardization pairs (data/standardize)")
    judges: Path = path_field("folder holding the judge sets (models/judges): the eval encoder scores the standardizer")
    out: Path = path_field("folder receiving the standardizer (models/standardizer)")
    reports: Path = path_field("folder for the analyser's and the standardizer's held-out accuracy and grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run(params: Params, paths: StandardizerPaths) -> dict:
    from .standardize.train import run_standardizer

    return run_standardizer(params, paths)


def main(argv=None) -> int:
    return stage_main("standardizer", run, StandardizerPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
