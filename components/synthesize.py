"""synthesize stage: the subject world → four datasets (PNGs + manifest.parquet each).

- single:      a reference of one subject in a random context → a target scene with it
- standardize: a subject or person in a random pose and background → its standardized view
- multi:       multi-subject target scenes (PSR's task types) with one reference per subject
- bench:       the 7 PSRBench subsets, a fixed size each, only held-out identities

Every sample's randomness is derived from (seed, split, index), so the output does not depend
on how many workers made it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .data.grids import dataset_grid
from .data.manifest import SPLITS
from .data.synthesis import synthesize_split
from .fanout import engine_workers
from .pipeline.stage import path_field, stage_main


@dataclass
class SynthesizePaths:
    out: Path = path_field("folder that receives one dataset folder per split")
    reports: Path = path_field("folder for the sample grid of each dataset")


def run(params: Params, paths: SynthesizePaths) -> dict:
    """Render every dataset of the world into ``paths.out/<split>`` and a sample grid of each
    into ``paths.reports``; returns counts (and throughput, under "timings")."""
    cfg = params.synthesize
    workers = engine_workers(params.resources)
    paths.reports.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"workers": workers, "engine": params.resources.engine}
    total, t0 = 0, time.perf_counter()
    for split in SPLITS:
        manifest = synthesize_split(cfg, split, paths.out / split, params.resources)
        dataset_grid(paths.out / split, manifest, cfg.grid_samples).save(paths.reports / f"grid_{split}.png")
        n_images = int(len(manifest) * 2 + manifest["n_subjects"].sum())
        metrics[split] = {
            "samples": len(manifest),
            "images": n_images,
            "identities": int(len({i for ids in manifest["identities"] for i in ids})),
            "subjects_per_sample": float(manifest["n_subjects"].mean()) if len(manifest) else 0.0,
            "per_subset": {k: int(v) for k, v in manifest["subset"].value_counts().sort_index().items()},
        }
        total += len(manifest)
    seconds = time.perf_counter() - t0
    metrics.update(samples=total,
                   timings={"seconds": round(seconds, 3), "samples_per_second": round(total / seconds, 2)})
    return metrics


def main(argv=None) -> int:
    return stage_main("synthesize", run, SynthesizePaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
