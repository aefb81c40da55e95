"""The benchmark's two SerialGen views, beside the standard rows (``scoring.benchmark``):

- **wild**: the first rows of each subset again, the same targets and prompts, every reference
  redrawn as a user might photograph it (small, off-centre, rotated or oddly posed, on a busy
  background; ``data/wild``). Scored exactly as the standard rows, with the same comparisons,
  into ``<reports>/wild/``; the rows with the person are also summarised apart.
- **serial**: SerialGen's consistency across a series (``data/serial``): per held-out identity
  one wild reference and several single-subject prompts; the serial consistency of a series is
  the mean pairwise cosine (evaluation encoder) of the subject as grounded in its outputs, a
  subject the grounder misses counting 0 in its pairs. Each row's SC is kept too.

``add_variants`` runs both after the standard benchmark and puts their figures in its metrics
(``<generator>.wild``, ``<generator>.serial``; the registry's ``bench.wild.*`` / ``bench.serial.*``
tags) and in the stage's main table.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Params
from ..judging.rewards import subject_embeddings, remember_references
from ..judging.sets import load_judge_set
from ..pipeline.stage import TIMINGS
from ..world.subjects import CHARACTER
from .scoring import benchmark, draw_and_score, load_bench


def serial_consistency(rows, images, judges, crop_size: int) -> pd.DataFrame:
    """Per series (rows grouped by their one reference's identity, in order): its rows, the
    mean pairwise cosine of the grounded subject across its outputs (a miss: 0 in its pairs)."""
    meta = [r.meta for r in rows]
    out, _, _, _ = subject_embeddings(judges, images, meta, crop_size)
    series: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        series.setdefault(r.id.rsplit("-", 1)[0], []).append(i)
    recs = []
    for name, idx in series.items():
        sims = [float(out[i][0] @ out[j][0]) if out[i][0] is not None and out[j][0] is not None else 0.0
                for i, j in combinations(idx, 2)]
        recs.append({"series": name, "category": meta[idx[0]]["categories"][0], "rows": len(idx),
                     "consistency": float(np.mean(sims)) if sims else np.nan,
                     "found": float(np.mean([out[i][0] is not None for i in idx]))})
    return pd.DataFrame(recs)


def serial_benchmark(params: Params, serial_dir: Path, judges_dir: Path, reports: Path, generators: list[str],
                     models: Path | None) -> pd.DataFrame:
    """Every generator's serial consistency, overall and the person apart; per series to
    ``reports/series.csv``, the summary to ``reports/table.csv``."""
    judges = load_judge_set(judges_dir / params.evaluate.judge_set, params.judges)
    rows, side = load_bench(serial_dir)
    remember_references(judges, [r.meta for r in rows], params.judges.crop_size)
    reports.mkdir(parents=True, exist_ok=True)
    per_series, summary = [], []
    for name in generators:
        scores, images, _ = draw_and_score(params, rows, side, judges, models, name)
        s = serial_consistency(rows, images, judges, params.judges.crop_size)
        s.insert(0, "generator", name)
        per_series.append(s)
        person = s[s.category == CHARACTER]
        summary.append({"generator": name, "serial": s.consistency.mean(),
                        "serial_person": person.consistency.mean() if len(person) else np.nan,
                        "SC": scores.SC.mean(), "series": len(s)})
    pd.concat(per_series, ignore_index=True).to_csv(reports / "series.csv", index=False, float_format="%.4f")
    table = pd.DataFrame(summary)
    table.to_csv(reports / "table.csv", index=False, float_format="%.4f")
    return table


def person_ids(bench_dir: Path) -> set[str]:
    """The ids of a benchmark folder's rows whose subjects include the person."""
    manifest = pd.read_parquet(bench_dir / "manifest.parquet")
    return set(manifest.id[[CHARACTER in list(c) for c in manifest.categories]])


def person_rows(reports: Path, bench_dir: Path) -> pd.DataFrame:
    """Per generator, the mean SC / SA / AES of the rows whose subjects include the person."""
    scores = pd.read_csv(reports / "scores.csv")
    sub = scores[scores.id.isin(person_ids(bench_dir))]
    return sub.groupby("generator", sort=False)[["SC", "SA", "AES"]].mean().assign(rows=sub.groupby(
        "generator", sort=False).size())


def add_variants(params: Params, metrics: dict, wild_dir: Path, serial_dir: Path, judges_dir: Path, reports: Path,
                 models: Path | None, cache: Path | None) -> dict:
    """Score the wild rows and the serial set (module docstring) for params.evaluate.generators,
    write their reports and the combined table (``reports/table.md``), and return ``metrics``
    with their figures added."""
    cfg = params.evaluate
    names = list(cfg.generators)
    wild = benchmark(params, wild_dir, judges_dir, reports / "wild", names, models,
                     cache / "wild" if cache is not None else None)
    wild.pop(TIMINGS, None)
    person = person_rows(reports / "wild", wild_dir)
    serial = serial_benchmark(params, serial_dir, judges_dir, reports / "serial", names, models).set_index("generator")
    for name in names:
        w = dict(wild.get(name, {}))
        if name in person.index:
            w["person"] = {k: round(float(person.loc[name, k]), 4) for k in ("SC", "SA", "AES")}
        metrics.setdefault(name, {})["wild"] = w
        metrics[name]["serial"] = {k: round(float(serial.loc[name, k]), 4) for k in ("serial", "serial_person", "SC")
                                   if not np.isnan(serial.loc[name, k])}
    metrics["compare_wild"] = wild.get("compare", {})
    metrics["wild_samples"], metrics["serial_series"] = wild["samples"], int(serial.series.iloc[0]) if len(serial) else 0
    table = pd.read_csv(reports / "table.csv")
    overall = table[table.subset == "Overall"].set_index("generator")
    wild_table = pd.read_csv(reports / "wild" / "table.csv")
    wild_overall = wild_table[wild_table.subset == "Overall"].set_index("generator")
    lines = ["| generator | SC | SA | AES | miss rate | SC wild | SC wild, person rows | serial | serial, person |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in overall.index:
        r = overall.loc[name]
        cells = [r.SC, r.SA, r.AES, r.missing_rate, wild_overall.SC.get(name, np.nan),
                 person.SC.get(name, np.nan), serial.serial.get(name, np.nan), serial.serial_person.get(name, np.nan)]
        lines.append(f"| {name} | " + " | ".join("–" if pd.isna(c) else f"{c:.3f}" for c in cells) + " |")
    (reports / "table.md").write_text("\n".join(lines) + "\n")
    return metrics
