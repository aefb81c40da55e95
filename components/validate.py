"""validate stage: the Great Expectations gate (``data/gate.py``) on every dataset the synthesize
stage wrote. The data is only read; reports go to ``paths.reports``, and a failed expectation
stops the pipeline (DataValidationError, exit code 3) naming the expectation and the sample ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .data.checks import Benchmark, load_benchmark
from .data.gate import validate_datasets
from .data.manifest import SPLITS
from .pipeline.stage import path_field, stage_main


@dataclass
class ValidatePaths:
    data: Path = path_field("folder holding one dataset folder per split (read only)")
    reports: Path = path_field("folder for the GX results, summary.md, report.html and html/ data docs")


def run(params: Params, paths: ValidatePaths) -> dict:
    """Validate every dataset in ``paths.data`` with Great Expectations and write the reports
    to ``paths.reports``; raises DataValidationError listing failed expectations and row ids."""
    try:
        bench = load_benchmark(paths.data / "bench")
    except Exception:  # noqa: BLE001 - an unreadable bench is reported by the gate itself
        bench = Benchmark()
    return validate_datasets(params, {s: paths.data / s for s in SPLITS}, paths.reports, bench)


def main(argv=None) -> int:
    return stage_main("validate", run, ValidatePaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
