"""Synthesis throughput with 1 and 2 worker processes, measured side by side.

    python perf/synthesis_throughput.py [--split multi] [--samples 800] [--repeats 2]

Prints samples per second for each worker count (median over repeats, runs interleaved so
machine noise hits both alike) and the 2-worker / 1-worker ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from components.config import Params
from components.config import ResourcesParams
from components.data.synthesis import synthesize_split
from components.pipeline.project import default_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="multi", choices=["single", "standardize", "multi"])
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    raw = default_params()
    raw["synthesize"][args.split] = args.samples
    cfg = Params.model_validate(raw).synthesize
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, 2):
                t0 = time.perf_counter()
                synthesize_split(cfg, args.split, Path(tmp) / f"{workers}-{r}", ResourcesParams(workers=workers))
                rates[workers].append(args.samples / (time.perf_counter() - t0))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"synthesis of '{args.split}' ({args.samples} samples, {cfg.resolution}px, median of {args.repeats})")
    print(f"  1 worker : {one:8.1f} samples/s")
    print(f"  2 workers: {two:8.1f} samples/s")
    print(f"  ratio 2 workers / 1 worker = {two / one:.2f}")


if __name__ == "__main__":
    main()
