"""Scoring generators on the benchmark: the rows of ``data/bench``, every generator's images for
them (batched by reference count, seeded per row), the judges' scores (Subject Consistency, PSR's
grounded pairwise reward; Semantic Alignment, the fraction of the prompt's claims that hold,
Position by box geometry; Aesthetic), and the reports (table, per-sample scores, paired
comparisons, charts, sample grids) that ``benchmark`` writes."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import world
from ..config import Params
from ..data.grids import grid, load_rgb
from ..data.manifest import read_manifest
from ..fanout import fan_out
from ..io import folder_hash
from ..judging.base import JudgeSet
from ..judging.rewards import make_reward, remember_references
from ..judging.sets import load_judge_set
from ..models.sampling import SamplingSettings
from ..pipeline.stage import TIMINGS
from . import report
from .cache import ScoreCache
from .generators import Generator, available, make_generator, trained_folder


@dataclass
class BenchRow:
    id: str
    subset: str
    prompt: str
    refs: list[np.ndarray]
    meta: dict


def load_bench(bench_dir: Path, per_subset: int | None = None) -> tuple[list[BenchRow], int]:
    """Benchmark rows (references loaded) in subset order, and the image side."""
    m = read_manifest(bench_dir)
    if per_subset is not None:
        m = m.groupby("subset", sort=False).head(per_subset)
    rows = []
    for r in m.itertuples(index=False):
        refs = [load_rgb(bench_dir / p) for p in r.refs]
        meta = {"refs": refs, "categories": list(r.categories), "claims": json.loads(r.claims), "scene": r.scene,
                "ref_boxes": [tuple(int(v) for v in b) for b in r.ref_boxes]}
        rows.append(BenchRow(r.id, r.subset, r.prompt, refs, meta))
    side = int(m["height"].iloc[0]) if len(m) else 32
    return rows, side


def score(rows: list[BenchRow], images: list[np.ndarray], judges: JudgeSet, crop_size: int) -> pd.DataFrame:
    """Per-row SC, SA, AES (plus misses, confusion) of the given images, scored in batches."""
    prompts, metas = [r.prompt for r in rows], [r.meta for r in rows]
    sc = make_reward("psr", judges, crop_size=crop_size)(images, prompts, metas)
    sa = make_reward("semantic", judges)(images, prompts, metas)
    aes = make_reward("aesthetic", judges)(images, prompts, metas)
    return pd.DataFrame({
        "id": [r.id for r in rows], "subset": [r.subset for r in rows],
        "n_subjects": [len(r.refs) for r in rows], "SC": sc.scores, "SA": sa.scores, "AES": aes.scores,
        "missing": sc.info["missing"], "confusion": sc.info["confusion"],
        **{f"claims_{k}": v for k, v in sa.info.items()},
    })


def generate_all(gen: Generator, rows: list[BenchRow], side: int, seed: int) -> list[np.ndarray]:
    """Every row's image: one call per row, or batched by reference count when the generator
    has ``generate_batch`` (trained generators)."""
    if not hasattr(gen, "generate_batch"):
        return [gen.generate(r.prompt, r.refs, height=side, width=side, seed=seed + i, meta=r.meta)
                for i, r in enumerate(rows)]
    images: list[np.ndarray | None] = [None] * len(rows)
    for k in sorted({len(r.refs) for r in rows}):
        idx = [i for i, r in enumerate(rows) if len(r.refs) == k]
        out = gen.generate_batch([rows[i].prompt for i in idx], [rows[i].refs for i in idx], height=side,
                                 width=side, seed=seed + idx[0])
        for i, img in zip(idx, out):
            images[i] = img
    return images


def _overrides(params: Params) -> dict:
    cfg = params.evaluate
    return {"steps": cfg.sample_steps, "guidance": cfg.guidance, "precision": cfg.sample_precision}


def draw_and_score(params: Params, rows: list[BenchRow], side: int, judges: JudgeSet, models: Path | None,
                   name: str) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
    """Generator ``name``'s image for every row and their scores, with the seconds each took."""
    t0 = time.perf_counter()
    gen = make_generator(name, models=models, **({} if name in available() else _overrides(params)))
    images = generate_all(gen, rows, side, params.evaluate.seed)
    t1 = time.perf_counter()
    scores = score(rows, images, judges, params.judges.crop_size)
    return scores, images, {"generate_seconds": round(t1 - t0, 3), "score_seconds": round(time.perf_counter() - t1, 3)}


def _draw_and_score_job(job) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
    """``draw_and_score`` on a fan-out worker: the rows and the judges loaded there, the
    references remembered as the stage's own process does."""
    params, bench_dir, judges_dir, models, name = job
    judges = load_judge_set(judges_dir / params.evaluate.judge_set, params.judges)
    rows, side = load_bench(bench_dir, params.evaluate.per_subset)
    remember_references(judges, [r.meta for r in rows], params.judges.crop_size)
    return draw_and_score(params, rows, side, judges, models, name)


def benchmark(params: Params, bench_dir: Path, judges_dir: Path, reports: Path,
              generators: list[str] | None = None, models: Path | None = None, cache: Path | None = None) -> dict:
    """Score ``generators`` (default: params.evaluate.generators; reference generators by name,
    trained ones as folders under ``models``) and write the reports. Returns the scores, and
    each generator's generate/score seconds under ``"timings"``. With ``cache`` (a folder), a
    generator whose weights, sampling, judges, rows and code are unchanged since a previous
    benchmark is not sampled or scored again (``benchmark/cache.py``)."""
    cfg = params.evaluate
    judges = load_judge_set(judges_dir / cfg.judge_set, params.judges)
    rows, side = load_bench(bench_dir, cfg.per_subset)
    subsets = [t for t in world.TASKS if any(r.subset == t for r in rows)]
    reports.mkdir(parents=True, exist_ok=True)
    frames, timing, sampling = [], {}, {}
    store = ScoreCache(cache, bench_dir, judges_dir / cfg.judge_set,
                       {"judges_params": params.judges.model_dump(), "per_subset": cfg.per_subset, "seed": cfg.seed}) \
        if cache is not None else None
    names, keys, drawn = list(generators or cfg.generators), {}, {}
    for name in names:
        folder = None if name in available() else trained_folder(name, models)
        if folder is not None:  # a trained generator: how it was sampled goes with its scores
            sampling[name] = asdict(SamplingSettings.load(folder).override(**_overrides(params)))
        keys[name] = store.key(name, folder_hash(folder) if folder else None, sampling.get(name)) if store else None
        hit = store.load(keys[name]) if store else None
        if hit is not None:
            drawn[name] = hit
            print(f"evaluate: {name} unchanged since a previous benchmark (cache {keys[name]}): not sampled again",
                  flush=True)
            timing[name] = {"generate_seconds": 0.0, "score_seconds": 0.0, "cached": 1}
    todo = [name for name in names if name not in drawn]
    if todo and params.resources.engine == "dask":  # one job per generator, each worker loading its own judges
        jobs = [(params, bench_dir.resolve(), judges_dir.resolve(), models.resolve() if models else None, name)
                for name in todo]
        done = fan_out(_draw_and_score_job, jobs, params.resources)
    else:
        if todo:  # before the first generator scored, whichever it is: see remember_references
            remember_references(judges, [r.meta for r in rows], params.judges.crop_size)
        done = (draw_and_score(params, rows, side, judges, models, name) for name in todo)
    for name, (scores, images, seconds) in zip(todo, done):
        drawn[name] = scores, images
        timing[name] = {**seconds, "cached": 0}
        if store:
            store.store(keys[name], scores, images)
    for name in names:
        scores, images = drawn[name]
        scores.insert(0, "generator", name)
        frames.append(scores)
        picked = list(range(0, len(rows), max(len(rows) // cfg.grid_rows, 1)))[:cfg.grid_rows]
        grid([(rows[i].refs, images[i], f"{rows[i].subset}: {rows[i].prompt}  [SC {scores.SC[i]:.2f} "
               f"SA {scores.SA[i]:.2f} AES {scores.AES[i]:.2f}]") for i in picked]).save(reports / f"grid_{name}.png")
    per_sample = pd.concat(frames, ignore_index=True)
    table = report.summarise(per_sample, subsets)
    per_sample.to_csv(reports / "scores.csv", index=False)
    table.to_csv(reports / "table.csv", index=False, float_format="%.4f")
    (reports / "table.md").write_text(report.markdown(table))
    for dim in report.DIMENSIONS:
        report.radar(table, subsets, reports / f"radar_{dim}.png", dim)
    report.bars(table, subsets, reports / "subsets.png")
    metrics: dict = {"judge_set": cfg.judge_set, "samples": len(rows), "sampling": sampling}
    scored = set(per_sample["generator"])
    pairs = [(base, cand) for base, cand in cfg.compare if base in scored and cand in scored]
    if pairs:  # `subjectflow benchmark` scores one generator: nothing to compare
        comparisons = pd.concat([report.compare(per_sample, base, cand, subsets, cfg.bootstrap, cfg.seed)
                                 for base, cand in pairs], ignore_index=True)
        comparisons.to_csv(reports / "compare.csv", index=False, float_format="%.4f")
        (reports / "compare.md").write_text(report.compare_markdown(comparisons, subsets))
        for r in comparisons.itertuples():
            metrics.setdefault("compare", {}).setdefault(r.candidate, {}).setdefault(r.baseline, {}).setdefault(
                r.subset, {})[r.dimension] = {"difference": round(float(r.difference), 4),
                                              "low": round(float(r.low), 4), "high": round(float(r.high), 4)}
    for r in table.itertuples():
        metrics.setdefault(r.generator, {})[str(r.subset)] = {
            "SC": round(float(r.SC), 4), "SA": round(float(r.SA), 4), "AES": round(float(r.AES), 4),
            "missing_rate": round(float(r.missing_rate), 4)}
    if store:
        store.prune()
    metrics[TIMINGS] = timing  # wall clock: to MLflow, not to metrics/evaluate.json (a dependency of register)
    return metrics
