"""Paired bootstraps between generators scored in different runs of the benchmark (the same bench
rows and seed: sampling is deterministic, so a generator's stored per-row scores stand for it).

    python docs/experiments/compare_scores.py <candidate scores.csv>:<generator> <baseline scores.csv>:<generator> ...

A side may name several runs' tables joined by ``+`` (``a/scores.csv+b/scores.csv:sft``): each
row's scores are averaged over them before pairing. ``--person <data dir>`` (first) keeps only the
rows of that benchmark folder whose subjects include the person (the table's "person rows"):

    python docs/experiments/compare_scores.py --person data/wild <candidate>:<g> <baseline>:<g>

Prints the Overall difference (candidate − baseline) with its 95 % interval for each baseline, as
the evaluate stage's compare.md computes it. Run from the repository root with its venv active.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from components import world
from components.benchmark.report import compare
from components.benchmark.variants import person_ids


def scores(spec: str, as_name: str) -> pd.DataFrame:
    """One generator's per-row scores; ``a.csv+b.csv:<generator>``: each row's scores averaged over
    the runs (the same model trained with other seeds, say)."""
    paths, generator = spec.rsplit(":", 1)
    frames = []
    for path in paths.split("+"):
        frame = pd.read_csv(path)
        frame = frame[frame.generator == generator].set_index("id")
        if frame.empty:
            raise SystemExit(f"{path} has no scores of {generator!r}")
        frames.append(frame)
    numeric = [c for c in frames[0].columns if c != "n_subjects" and pd.api.types.is_numeric_dtype(frames[0][c])]
    out = frames[0].copy()
    out[numeric] = sum(f.loc[out.index, numeric] for f in frames) / len(frames)
    return out.reset_index().assign(generator=as_name)


def main(candidate: str, baselines: list[str], keep: set[str] | None = None) -> None:
    cand = scores(candidate, "candidate")
    if keep is not None:
        cand = cand[cand.id.isin(keep)]
    subsets = [t for t in world.TASKS if t in set(cand.subset)]
    print(f"candidate {candidate}")
    for spec in baselines:
        base = scores(spec, "baseline")
        table = compare(pd.concat([base[base.id.isin(cand.id)], cand]), "baseline", "candidate", subsets)
        overall = table[table.subset == "Overall"].set_index("dimension")
        cells = [f"{d} {r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]{'*' if r.low > 0 or r.high < 0 else ''}"
                 for d, r in overall.iterrows()]
        print(f"  − {spec}: " + ", ".join(cells))


if __name__ == "__main__":
    args = sys.argv[1:]
    keep = None
    if args[0] == "--person":
        keep, args = person_ids(Path(args[1])), args[2:]
    main(args[0], args[1:], keep)
