"""multisubject stage: PSR's multi-subject data bootstrapping.

PSR builds multi-subject training pairs without multi-subject references: a multi-subject image
is made first (here: rendered, ``data/multi``), then

1. the grounding judge finds each subject by its category in that image and crops it;
2. the single-subject model (``models/pretrain``) redraws each crop in a new scene (another
   background, named in a single-subject prompt), and those regenerations become the references.
   The crop is handed over either re-centred at a fixed size (``isolate``: the reference shows
   the subject somewhere, as a user's photo would) or, for a share ``in_place`` of the scenes,
   where it sits in the scene (``keep_in_place``): a single-subject model that learnt to keep a
   subject's placement then draws it there, and the pair teaches SFT to put each reference's
   subject where it already is while drawing several at once (the multi-subject counterpart of
   ``synthesize.single_same_placement``);
3. the reward judges compare each regeneration with the subject it came from (encoder cosine of
   the grounded crops); a pair keeps only if every one of its references reaches the threshold.

Steps 2-3 are rejection sampling, scene by scene: a subject is redrawn (other sampler seeds) until
a redraw passes, at most ``candidates`` times; a subject that never passes ends its scene, and the
scene's later subjects are not drawn at all. Since a k-subject pair needs k passing references,
this is what makes three- and four-subject pairs affordable: retries go where they are needed,
and no draws are spent on scenes already lost.

Each subject ends with a status: ``kept``, ``not_in_target`` (the grounder missed it in the
scene), ``not_in_reference`` (no redraw shows such a subject), ``inconsistent`` (every redraw's
cosine is below the threshold) or ``not_drawn`` (an earlier subject of its scene failed). The
bootstrapped dataset (``data/multisubject``, the same manifest layout, ``split = multisubject``)
must pass the validation gate before it is published. Reports:
per-subject statuses and similarities, kept fraction per subset, why pairs were dropped, the
similarity histogram with the threshold, and grids of kept and dropped pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .bootstrap import SPLIT
from .bootstrap.pairs import bootstrap
from .config import Params
from .pipeline.stage import path_field, stage_main


@dataclass
class MultisubjectPaths:
    data: Path = path_field("the rendered multi-subject dataset (data/multi)")
    bench: Path = path_field("the benchmark dataset (data/bench), for the gate's leakage check")
    generator: Path = path_field("the single-subject generator (models/pretrain)")
    judges: Path = path_field("the judges stage's output (models/judges)")
    out: Path = path_field("folder receiving the bootstrapped dataset (data/multisubject)")
    reports: Path = path_field("folder for statuses, summary, grids and the gate's reports")


def run(params: Params, paths: MultisubjectPaths) -> dict:
    """Bootstrap multi-subject pairs from ``paths.data`` with the single-subject generator,
    filter them with the reward judges, validate and publish them to ``paths.out``."""
    return bootstrap(params, paths.data, paths.bench, paths.generator, paths.judges, paths.out, paths.reports)


def main(argv=None) -> int:
    return stage_main(SPLIT, run, MultisubjectPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
