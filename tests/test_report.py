"""The benchmark's paired comparison (report.compare): differences on the same rows with
bootstrap intervals, per subset and over the subsets."""
import numpy as np
import pandas as pd
import pytest

from components.benchmark import report
from components.config import ParamsError, load_params

SUBSETS = ["Attribute", "Three", "Four"]
SHIFT = {"Attribute": 0.3, "Three": 0.0, "Four": -0.1}  # candidate − baseline per subset


def _scores(rows_per_subset=(40, 60, 80), noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for sub, n in zip(SUBSETS, rows_per_subset):
        base = rng.uniform(0, 1, (n, 3))
        for gen, x in (("base", base), ("cand", base + SHIFT[sub] + rng.normal(0, noise, (n, 3)))):
            frames.append(pd.DataFrame({"generator": gen, "id": [f"{sub}-{i}" for i in range(n)], "subset": sub,
                                        **{d: x[:, k] for k, d in enumerate(report.DIMENSIONS)}}))
    return pd.concat(frames, ignore_index=True)


def test_paired_differences_and_intervals():
    scores = _scores()
    table = report.compare(scores, "base", "cand", SUBSETS, resamples=1000)
    c = table.set_index(["subset", "dimension"])
    for sub in SUBSETS:
        for d in report.DIMENSIONS:
            r = c.loc[(sub, d)]
            # pairing removes the rows' spread (uniform 0..1): the interval is as narrow as the noise
            assert r.low < r.difference < r.high and r.high - r.low < 0.05, (sub, d, r)
            assert r.difference == pytest.approx(SHIFT[sub], abs=0.03)
    overall = c.loc[("Overall", "SC")]
    assert overall.difference == pytest.approx(np.mean([c.loc[(s, "SC")].difference for s in SUBSETS]))
    assert overall.samples == 180 and overall.low < overall.difference < overall.high
    md = report.compare_markdown(table, SUBSETS)
    sc_row = next(line for line in md.splitlines() if line.startswith("| SC |"))
    cells = sc_row.strip("|").split("|")[1:]
    assert cells[0].strip().endswith("]*") and not cells[1].strip().endswith("*") and cells[2].strip().endswith("]*")


def test_unpaired_rows_are_refused():
    scores = _scores()
    scores = scores.drop(scores.index[(scores.generator == "cand")][:1])
    with pytest.raises(ValueError, match="same rows"):
        report.compare(scores, "base", "cand", SUBSETS)


def test_compare_must_name_scored_generators(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("evaluate:\n  generators: [oracle, noise]\n  compare: [[noise, sft]]\n")
    with pytest.raises(ParamsError, match=r"evaluate.compare.*\['sft'\]"):
        load_params(f)
