"""What makes a module a stage: ``run(params, paths) -> metrics`` plus ``main()``, the command
DVC calls (``python -m components.<stage> --params params.yaml --<path> ...``).

Paths always come in as arguments (a dataclass per stage, one field per path), never from
inside the stage, so tests and the flow can point a stage anywhere.

Metrics JSON files are DVC outputs, and some are dependencies of later stages (register depends
on metrics/evaluate.json): they hold only what the stage computed, never wall-clock figures, so
a rerun that changes nothing but timings changes no file. A stage's ``run`` puts its timings
under one top-level key, ``"timings"`` (a nested dict); ``stage_main`` takes them out, adds the
process's peak memory and writes them to the run record (``$SUBJECTFLOW_STAGE_RECORD``), which
the flow logs to the stage's MLflow run as ``timing.*`` metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ..config import Params, ParamsError, load_params
from ..io import write_json_atomic

EXIT_PARAMS = 2
EXIT_DATA_INVALID = 3
# Set by the flow: where the stage process records that it really ran, its compute time, exit
# status and timings (DVC may instead skip the stage or restore it from its run cache).
RECORD_ENV = "SUBJECTFLOW_STAGE_RECORD"
# The key of a stage's metrics under which its wall-clock figures go (to the record, not the file).
TIMINGS = "timings"


class DataValidationError(RuntimeError):
    """Input data failed a quality gate; retrying will not help."""


def stage_main(name: str, run: Callable[[Params, object], dict], paths_cls, argv=None) -> int:
    """Parse the stage's path arguments, run it, and write its metrics JSON (``--metrics``)."""
    parser = argparse.ArgumentParser(prog=f"python -m components.{name}", description=run.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    for f in dataclasses.fields(paths_cls):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=Path, required=True,
                            nargs="+" if f.metadata.get("many") else None, help=f.metadata.get("help", ""))
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON written for `dvc metrics`")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return EXIT_PARAMS
    paths = paths_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(paths_cls)})
    t0 = time.perf_counter()
    code, timings = 0, {}
    try:
        metrics = run(params, paths)
        timings = dict(metrics.pop(TIMINGS, None) or {})
        write_json_atomic(args.metrics, metrics)
    except DataValidationError as e:
        print(f"\n{name}: data validation failed\n{e}", file=sys.stderr)
        code = EXIT_DATA_INVALID
    except BaseException:
        code = 1
        raise
    finally:
        record = os.environ.get(RECORD_ENV)
        if record:
            with open(record, "w") as f:
                json.dump({"stage": name, "seconds": time.perf_counter() - t0, "exit_code": code,
                           TIMINGS: {**timings, "peak_rss_mb": peak_rss_mb()}}, f)
    return code


def peak_rss_mb() -> float:
    """Peak resident memory of this process or any worker it waited for, in MiB (Linux)."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(kib / 1024, 1)


def path_field(help: str, many: bool = False):
    """A path argument of a stage, documented for its --help; ``many``: one or more paths
    (``--model models/sft models/rl``), given to the stage as a list."""
    return dataclasses.field(metadata={"help": help, "many": many})
