"""Does the e9de63f full run's table (2026-12-02) fall inside another run's 95% bootstrap intervals?
    python docs/experiments/compare_full_runs.py reports/evaluate/scores.csv"""
import sys
import numpy as np
import pandas as pd

OLD = {"oracle": (0.766, 0.901, 0.676), "copy_paste": (0.620, 0.653, 0.230), "background_only": (0.001, 0.233, 0.039),
       "noise": (0.019, 0.259, 0.000), "pretrain": (0.160, 0.490, 0.238), "sft": (0.250, 0.534, 0.306)}
df = pd.read_csv(sys.argv[1])
rng = np.random.default_rng(0)
print("| generator | dim | this run | 95% interval | last run (e9de63f) | inside |")
print("|---|---|---|---|---|---|")
for gen, old in OLD.items():
    g = df[df.generator == gen]
    for dim, o in zip(("SC", "SA", "AES"), old):
        groups = [s[dim].to_numpy(float) for _, s in g.groupby("subset")]
        point = np.mean([x.mean() for x in groups])
        boots = np.mean([[x[rng.integers(len(x), size=len(x))].mean() for x in groups] for _ in range(2000)], axis=1)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        print(f"| {gen} | {dim} | {point:.3f} | [{lo:.3f}, {hi:.3f}] | {o:.3f} | {'yes' if lo - 5e-4 <= o <= hi + 5e-4 else 'NO'} |")
