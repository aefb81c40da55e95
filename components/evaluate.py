"""evaluate stage: the PSRBench-style benchmark.

Every generator draws every benchmark row (7 subsets, held-out identities); the evaluation judge
set scores each image on Subject Consistency (PSR's grounded pairwise reward), Semantic Alignment
(the fraction of the prompt's claims that hold; Position by box geometry) and Aesthetic. Outputs:
metrics per generator, subset and overall; a CSV table; per-sample scores; a radar chart per
dimension and per-subset bars; a sample grid per generator (references | output). The same for
the rows with wild references (``reports/evaluate/wild``) and the serial consistency of each
generator (``reports/evaluate/serial``); ``table.md`` holds all of it per generator. A generator
unchanged since the last benchmark is read from the cache, not sampled again (benchmark/cache.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .benchmark.scoring import benchmark
from .benchmark.variants import add_variants
from .config import Params
from .pipeline.stage import path_field, stage_main


@dataclass
class EvaluatePaths:
    bench: Path = path_field("the benchmark dataset folder (data/bench)")
    wild: Path = path_field("the benchmark's rows with wild references (data/wild)")
    serial: Path = path_field("the serial set: per held-out identity one reference, several prompts (data/serial)")
    judges: Path = path_field("folder holding the judge sets (models/judges)")
    models: Path = path_field("folder holding trained generators by name (models/)")
    reports: Path = path_field("folder for the table, charts and sample grids")
    cache: Path = path_field("folder for each generator's cached images and scores, outside the DVC outputs "
                             "(.cache/evaluate): an unchanged generator is not sampled again")


def run(params: Params, paths: EvaluatePaths) -> dict:
    """The benchmark for every generator in params.evaluate.generators: the standard rows, then
    the wild-reference rows and the serial set (SerialGen's views, ``benchmark/variants.py``)."""
    metrics = benchmark(params, paths.bench, paths.judges, paths.reports, models=paths.models, cache=paths.cache)
    return add_variants(params, metrics, paths.wild, paths.serial, paths.judges, paths.reports, paths.models,
                        paths.cache)


def main(argv=None) -> int:
    return stage_main("evaluate", run, EvaluatePaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
