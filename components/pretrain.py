"""pretrain stage: single-subject personalization (PSR's starting point).

The generator learns to redraw the subject of its one reference in the scene the prompt
describes, on the ``single`` dataset, with the shared training loop. Output: a
``save_pretrained`` generator folder (``models/pretrain``), loss history and sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .pipeline.stage import path_field, stage_main
from .training.fit import run_fit


@dataclass
class PretrainPaths:
    data: Path = path_field("the single-subject dataset (data/single)")
    out: Path = path_field("folder receiving the trained generator (models/pretrain)")
    reports: Path = path_field("folder for the loss history and sample grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run(params: Params, paths: PretrainPaths) -> dict:
    """Train the single-subject generator on ``paths.data``."""
    return run_fit("pretrain", params, paths.data, paths.out, paths.reports, paths.checkpoints)


def main(argv=None) -> int:
    return stage_main("pretrain", run, PretrainPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
