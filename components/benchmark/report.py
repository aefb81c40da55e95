"""Benchmark reports: the table (CSV), a radar chart like PSR's and per-subset bars (PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DIMENSIONS = {"SC": "Subject Consistency", "SA": "Semantic Alignment", "AES": "Aesthetic"}


def summarise(scores: pd.DataFrame, subsets: list[str]) -> pd.DataFrame:
    """Per (generator, subset) means of SC, SA and AES, plus an 'Overall' row per generator
    (the mean over subsets, as PSRBench reports it) and the grounding miss rate."""
    g = scores.groupby(["generator", "subset"], sort=False)
    table = g[list(DIMENSIONS)].mean()
    table["missing_rate"] = g["missing"].sum() / g["n_subjects"].sum()
    table["samples"] = g.size()
    table = table.reset_index()
    overall = table.groupby("generator", sort=False)[list(DIMENSIONS) + ["missing_rate"]].mean().reset_index()
    overall["subset"] = "Overall"
    overall["samples"] = table.groupby("generator", sort=False)["samples"].sum().values
    out = pd.concat([table, overall], ignore_index=True)
    # Generators in the order they were scored, subsets in benchmark order, Overall last.
    out["subset"] = pd.Categorical(out["subset"], categories=subsets + ["Overall"], ordered=True)
    out["generator"] = pd.Categorical(out["generator"], categories=list(dict.fromkeys(scores["generator"])), ordered=True)
    out = out.sort_values(["generator", "subset"]).reset_index(drop=True)
    out[["generator", "subset"]] = out[["generator", "subset"]].astype(str)
    return out


def markdown(table: pd.DataFrame) -> str:
    """The Overall rows and per-subset SC as a Markdown table (for notes and Prefect)."""
    overall = table[table["subset"] == "Overall"]
    lines = ["| generator | SC | SA | AES | miss rate |", "|---|---|---|---|---|"]
    lines += [f"| {r.generator} | {r.SC:.3f} | {r.SA:.3f} | {r.AES:.3f} | {r.missing_rate:.3f} |"
              for r in overall.itertuples()]
    return "\n".join(lines) + "\n"


def compare(scores: pd.DataFrame, baseline: str, candidate: str, subsets: list[str], resamples: int = 2000,
            seed: int = 0) -> pd.DataFrame:
    """candidate − baseline on the same bench rows: per subset and dimension the mean difference
    and a 95% percentile interval from a paired bootstrap (rows resampled with replacement, both
    generators' scores of a row kept together). 'Overall' is the mean over subsets, as in
    :func:`summarise`, its bootstrap resampling each subset's rows separately (stratified)."""
    keys = ["id", "subset"]
    a = scores[scores["generator"] == baseline].set_index(keys)
    b = scores[scores["generator"] == candidate].set_index(keys)
    if len(a) != len(b) or not a.index.equals(b.index):
        raise ValueError(f"{baseline} and {candidate} were not scored on the same rows")
    rng = np.random.default_rng(seed)
    subset_of = a.index.get_level_values("subset")
    out = []
    for dim in DIMENSIONS:
        diff = (b[dim] - a[dim]).to_numpy(float)
        boots, means = [], []
        for sub in subsets:
            d = diff[subset_of == sub]
            boot = d[rng.integers(len(d), size=(resamples, len(d)))].mean(axis=1)
            boots.append(boot)
            means.append(d.mean())
            out.append((sub, dim, len(d), d.mean(), *np.percentile(boot, [2.5, 97.5])))
        overall = np.mean(boots, axis=0)
        out.append(("Overall", dim, len(diff), float(np.mean(means)), *np.percentile(overall, [2.5, 97.5])))
    table = pd.DataFrame(out, columns=["subset", "dimension", "samples", "difference", "low", "high"])
    table.insert(0, "candidate", candidate)
    table.insert(0, "baseline", baseline)
    return table


def compare_markdown(comparisons: pd.DataFrame, subsets: list[str]) -> str:
    """One Markdown table per comparison: rows are dimensions, columns subsets, each cell the
    mean difference and its 95% interval; a * marks an interval that excludes 0."""
    lines = []
    for (base, cand), c in comparisons.groupby(["baseline", "candidate"], sort=False):
        cols = subsets + ["Overall"]
        lines += [f"{cand} − {base}, paired bootstrap 95% intervals (* excludes 0)", "",
                  "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for dim in DIMENSIONS:
            cells = c[c["dimension"] == dim].set_index("subset")
            lines.append(f"| {dim} | " + " | ".join(
                f"{r.difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}]{'*' if r.low > 0 or r.high < 0 else ''}"
                for r in (cells.loc[s] for s in cols)) + " |")
        lines.append("")
    return "\n".join(lines)


def radar(table: pd.DataFrame, subsets: list[str], path: Path, dimension: str = "SC") -> None:
    """One polygon per generator over the subsets, for one dimension (PSR's figure 1 style)."""
    angles = np.linspace(0, 2 * np.pi, len(subsets), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(5, 5), subplot_kw={"polar": True})
    for gen, rows in table[table["subset"] != "Overall"].groupby("generator", sort=False):
        vals = [float(rows[rows["subset"] == s][dimension].iloc[0]) for s in subsets]
        ax.plot(angles + angles[:1], vals + vals[:1], label=gen)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(subsets)
    ax.set_title(DIMENSIONS[dimension])
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def bars(table: pd.DataFrame, subsets: list[str], path: Path) -> None:
    """Grouped bars per subset (and Overall) for each dimension, one panel per dimension."""
    gens = list(dict.fromkeys(table["generator"]))
    cols = subsets + ["Overall"]
    fig, axes = plt.subplots(len(DIMENSIONS), 1, figsize=(10, 3 * len(DIMENSIONS)), sharex=True)
    width = 0.8 / max(len(gens), 1)
    x = np.arange(len(cols))
    for ax, dim in zip(axes, DIMENSIONS):
        for i, gen in enumerate(gens):
            rows = table[table["generator"] == gen].set_index("subset")
            ax.bar(x + i * width, [float(rows.loc[c, dim]) for c in cols], width, label=gen)
        ax.set_ylabel(dim)
        ax.set_title(DIMENSIONS[dim], fontsize=9)
    axes[0].legend(fontsize=8, ncol=len(gens))
    axes[-1].set_xticks(x + width * (len(gens) - 1) / 2)
    axes[-1].set_xticklabels(cols)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
