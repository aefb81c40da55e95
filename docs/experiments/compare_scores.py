"""Paired bootstraps between generators scored in different runs of the benchmark (the same bench
rows and seed: sampling is deterministic, so a generator's stored per-row scores stand for it).

    python docs/experiments/compare_scores.py <candidate scores.csv>:<generator> <baseline scores.csv>:<generator> ...

Prints the Overall difference (candidate − baseline) with its 95 % interval for each baseline, as
the evaluate stage's compare.md computes it. Run from the repository root with its venv active.
"""
from __future__ import annotations

import sys

import pandas as pd

from components import world
from components.benchmark.report import compare


def scores(spec: str, as_name: str) -> pd.DataFrame:
    path, generator = spec.rsplit(":", 1)
    frame = pd.read_csv(path)
    frame = frame[frame.generator == generator]
    if frame.empty:
        raise SystemExit(f"{path} has no scores of {generator!r}")
    return frame.assign(generator=as_name)


def main(candidate: str, baselines: list[str]) -> None:
    cand = scores(candidate, "candidate")
    subsets = [t for t in world.TASKS if t in set(cand.subset)]
    print(f"candidate {candidate}")
    for spec in baselines:
        table = compare(pd.concat([scores(spec, "baseline"), cand]), "baseline", "candidate", subsets)
        overall = table[table.subset == "Overall"].set_index("dimension")
        cells = [f"{d} {r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]{'*' if r.low > 0 or r.high < 0 else ''}"
                 for d, r in overall.iterrows()]
        print(f"  − {spec}: " + ", ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
