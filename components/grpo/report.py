"""The RL stage's reports: the metrics it returns, the per-iteration and probe tables, the
guard's verdict, reward and probe curves, and a grid of probe rows before and after."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..data.grids import grid
from .collect import Collector
from .probe import Probe


def summarise(collector: Collector, probe: Probe, result, chosen: int, cfg) -> dict:
    it = pd.DataFrame(collector.history)
    pr = pd.DataFrame(probe.history)
    first, last = it.head(5), it.tail(5)
    row = lambda step: pr[pr.step == step].iloc[-1]
    probe_of = lambda r: {"reward_mix": round(float(r["reward_judges/mix"]), 4), "eval_mix": round(float(r["eval_judges/mix"]), 4),
                          **{k: round(float(r[f"eval_judges/{k}"]), 4) for k in ("SC", "SA", "AES")}}
    return {"steps": result.step, "iterations": len(it), "resumed_from_step": result.resumed_from or 0,
            "rewards": dict(cfg.rewards), "advantage": cfg.advantage,
            "reward_first_iterations": round(float(first.reward.mean()), 4),
            "reward_last_iterations": round(float(last.reward.mean()), 4),
            "probe_start": probe_of(row(0)), "probe_end": probe_of(row(result.step)), "probe_output": probe_of(row(chosen)),
            "output_step": chosen, "reward_hacking_flagged_at": probe.flagged_at,
            "timings": {"train_seconds": round(result.seconds, 2),
                        "sampling_seconds": round(float(it.seconds_sampling.sum()), 2),
                        "scoring_seconds": round(float(it.seconds_scoring.sum()), 2),
                        "training_seconds": round(float(it.get("seconds_training", pd.Series(dtype=float)).sum()), 2),
                        "probe_seconds": round(float(pr.seconds_probe.sum()), 2)}}


def write_reports(reports: Path, collector: Collector, probe: Probe, result, chosen: int, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports.mkdir(parents=True, exist_ok=True)
    it, pr = pd.DataFrame(collector.history), pd.DataFrame(probe.history)
    it.to_csv(reports / "iterations.csv", index=False)
    pr.to_csv(reports / "probe.csv", index=False)
    pd.DataFrame(result.history).to_csv(reports / "history.csv", index=False)
    (reports / "guard.json").write_text(json.dumps({"flagged_at": probe.flagged_at, "output_step": chosen,
                                                    "best_probe_step": probe.best["step"] if probe.best else None},
                                                   indent=2) + "\n")
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(it.step, it.reward, label="mixed reward (rollouts)")
    for n in metrics["rewards"]:
        ax[0].plot(it.step, it[f"{n}_mean"], alpha=0.6, label=n)
    ax[0].set_xlabel("step"), ax[0].legend(fontsize=7), ax[0].set_title("rollout rewards (reward judges)")
    ax[1].plot(pr.step, pr["reward_judges/mix"], "o-", label="reward judges: mix")
    ax[1].plot(pr.step, pr["eval_judges/mix"], "o-", label="eval judges: PSR mix")
    for k in ("SC", "SA", "AES"):
        ax[1].plot(pr.step, pr[f"eval_judges/{k}"], alpha=0.5, label=f"eval judges: {k}")
    ax[1].axvline(chosen, color="k", ls=":", label=f"saved (step {chosen})")
    ax[1].set_xlabel("step"), ax[1].legend(fontsize=7), ax[1].set_title("probe (held-out prompts, ODE)")
    fig.tight_layout()
    fig.savefig(reports / "curves.png", dpi=90)
    plt.close(fig)
    steps = sorted(probe.images)
    if len(steps) >= 2:  # references | first probe (SFT) and | the saved model's
        first, saved = probe.images[steps[0]], probe.images.get(chosen, probe.images[steps[-1]])
        n = min(8, len(first))
        grid([(list(probe.rows.refs[i]) + [first[i]], saved[i], f"{probe.rows.prompts[i]}  [refs | sft | rl]")
              for i in range(n)], max_refs=5).save(reports / "probe_grid.png")
