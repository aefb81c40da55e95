"""Rendering the world's datasets: which samples a split has, each sample's scene and references,
and writing them as PNGs plus ``manifest.parquet``. Every sample's randomness is derived from
(seed, split, index), so the output does not depend on how many workers made it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .. import world
from ..config import ResourcesParams, SynthesizeParams
from ..fanout import fan_out
from ..io import atomic_dir
from .manifest import COLUMNS, MANIFEST

_SPLIT_CODE = {"single": 1, "standardize": 2, "multi": 3, "bench": 4, "wild": 5, "serial": 6}
_CHUNK = 32


def plan(cfg: SynthesizeParams, split: str) -> list[tuple[str, int, str | None]]:
    """(sample id, index, subset or None) for every sample of a split; a benchmark subset's
    index is its position within the subset."""
    if split == "bench":
        return [(f"bench-{t.lower()}-{i:04d}", i, t) for t in world.TASKS for i in range(cfg.bench_size(t))]
    if split == "wild":  # the first rows of each benchmark subset, their references redrawn
        return [(f"wild-{t.lower()}-{i:04d}", i, t) for t in world.TASKS for i in range(cfg.wild_size(t))]
    if split == "serial":  # serial_prompts rows per identity, one series after another
        return [(f"serial-{j:04d}-{p}", j * cfg.serial_prompts + p, None)
                for j in range(cfg.serial_identities) for p in range(cfg.serial_prompts)]
    n = getattr(cfg, split)
    return [(f"{split}-{i:06d}", i, None) for i in range(n)]


def make_sample(cfg: SynthesizeParams, split: str, index: int, subset: str | None) -> world.Sample:
    """The sample ``index`` of ``split`` (of ``subset`` for the benchmark), deterministically."""
    heldout = split in ("bench", "wild", "serial")
    pool = world.identity_pool("bench" if heldout else "train", cfg.heldout_fraction, cfg.identity_salt)
    if split == "wild":  # the benchmark's row, then its references redrawn from a rng of their own
        row = make_sample(cfg, "bench", index, subset)
        return world.with_wild_references(np.random.default_rng([cfg.seed, _SPLIT_CODE[split], index,
                                                                 world.TASKS.index(subset)]), row)
    if split == "serial":
        series, prompt = divmod(index, cfg.serial_prompts)
        categories = sorted({c for c, ids in pool.items() if ids})
        return world.serial_sample(np.random.default_rng([cfg.seed, _SPLIT_CODE[split], series]),
                                   np.random.default_rng([cfg.seed, _SPLIT_CODE[split], series, prompt + 1]), pool,
                                   categories[series % len(categories)])
    key = [cfg.seed, _SPLIT_CODE[split], index]
    if split == "bench":
        key.append(world.TASKS.index(subset))
    rng = np.random.default_rng(key)
    if split == "single":
        return world.sample_single(rng, pool, cfg.single_same_placement)
    if split == "standardize":
        return world.sample_standardize(rng, pool, cfg.character_fraction)
    if split == "multi":
        tasks = list(cfg.multi_tasks)
        weights = np.array([cfg.multi_tasks[t] for t in tasks], dtype=float)
        return world.sample_task(rng, str(rng.choice(tasks, p=weights / weights.sum())), pool)
    return world.sample_task(rng, subset, pool)


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, compress_level=1)


def write_sample(cfg: SynthesizeParams, split: str, sid: str, sample: world.Sample, root: Path,
                 references: list[tuple[np.ndarray, list[int], str]] | None = None) -> dict:
    """Render a sample into ``root/images`` and return its manifest row. ``references``
    (image, subject box, description) replace the rendered references (multisubject's
    bootstrapped ones)."""
    res, ss = cfg.resolution, cfg.supersample
    target = world.render(sample.target, res, res, ss)
    if any(b is None for b in target.boxes):
        raise RuntimeError(f"{sid}: a subject is fully hidden in the target")
    if references is None:
        refs = [world.render(s, res, res, ss) for s in sample.refs]
        references = [(r.image, list(r.boxes[0]), json.dumps(s.to_dict())) for r, s in zip(refs, sample.refs)]
    rel = {"target": f"images/{sid}.png", "mask": f"images/{sid}_mask.png"}
    _save(target.image, root / rel["target"])
    _save(target.labels, root / rel["mask"])
    ref_paths = []
    for k, (image, _, _) in enumerate(references):
        ref_paths.append(f"images/{sid}_ref{k + 1}.png")
        _save(image, root / ref_paths[-1])
    ps = sample.target.placements
    return {
        "id": sid, "split": split, "subset": sample.subset, "prompt": sample.prompt,
        "background": sample.target.background, "width": res, "height": res, "n_subjects": len(ps),
        "target": rel["target"], "mask": rel["mask"], "refs": ref_paths,
        "categories": [p.identity.category for p in ps], "identities": [p.identity.id for p in ps],
        "boxes": [list(b) for b in target.boxes], "ref_boxes": [[int(v) for v in box] for _, box, _ in references],
        "scene": json.dumps(sample.target.to_dict()),
        "ref_scenes": [desc for _, _, desc in references],
        "claims": json.dumps(sample.claims),
    }


def _work(job) -> list[dict]:
    cfg, split, items, root = job
    return [write_sample(cfg, split, sid, make_sample(cfg, split, i, sub), root) for sid, i, sub in items]


def synthesize_split(cfg: SynthesizeParams, split: str, dataset_dir: Path, resources: ResourcesParams) -> pd.DataFrame:
    """Write one dataset folder atomically, its chunks fanned out (``fanout.py``); returns its
    manifest."""
    items = plan(cfg, split)
    with atomic_dir(dataset_dir) as tmp:
        (tmp / "images").mkdir()
        # absolute: a remote Dask worker's working directory is not this process's
        jobs = [(cfg, split, items[i:i + _CHUNK], tmp.resolve()) for i in range(0, len(items), _CHUNK)]
        rows: list[dict] = []
        with tqdm(total=len(items), desc=f"synthesize {split}", unit="sample", mininterval=1.0) as bar:
            for chunk in fan_out(_work, jobs, resources):
                rows.extend(chunk)
                bar.update(len(chunk))
        manifest = pd.DataFrame(rows, columns=list(COLUMNS))
        manifest.to_parquet(tmp / MANIFEST, index=False)
    return manifest
