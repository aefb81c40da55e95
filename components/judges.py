"""judges stage: trains the two independent judge sets and reports their held-out accuracy.

The reward set reads the even rows of the training datasets with ``reward_seed``; the
evaluation set the odd rows with ``eval_seed``. Nothing is shared, so a generator tuned against
the reward judges is scored by judges that never saw its reward signal. Held-out accuracy is
measured on the benchmark dataset, whose identities no judge has seen.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .config import Params  # noqa: E402
from .io import atomic_dir, write_json_atomic  # noqa: E402
from .judging import data as judge_data  # noqa: E402
from .judging.aesthetic import evaluate_aesthetic, train_aesthetic  # noqa: E402
from .judging.encoder import evaluate_encoder, train_encoder  # noqa: E402
from .judging.grounding import evaluate_grounder, train_grounder  # noqa: E402
from .judging.semantic import evaluate_semantic, train_semantic  # noqa: E402
from .pipeline.stage import path_field, stage_main  # noqa: E402

SETS = {"reward": 0, "eval": 1}  # set name -> row parity it trains on
TRAIN_SPLITS = ("multi", "single")
JUDGES = {
    "encoder": (train_encoder, evaluate_encoder),
    "grounder": (train_grounder, evaluate_grounder),
    "semantic": (train_semantic, evaluate_semantic),
    "aesthetic": (train_aesthetic, evaluate_aesthetic),
}


@dataclass
class JudgesPaths:
    data: Path = path_field("folder holding the datasets (data/)")
    out: Path = path_field("folder receiving models/judges/<set>/<judge>/")
    reports: Path = path_field("folder for loss curves")


def _plot_losses(histories: dict[str, dict[str, list[float]]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(JUDGES), figsize=(4 * len(JUDGES), 3))
    for ax, judge in zip(axes, JUDGES):
        for set_name, h in histories.items():
            ax.plot(h[judge], label=set_name, linewidth=0.8)
        ax.set_title(judge)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(params: Params, paths: JudgesPaths) -> dict:
    """Train both judge sets into ``paths.out`` and return their held-out metrics."""
    cfg = params.judges
    heldout = judge_data.load([paths.data / "bench"])
    metrics: dict = {}
    timings: dict = {}
    histories: dict[str, dict[str, list[float]]] = {}
    trained_on: dict[str, set[str]] = {}
    with atomic_dir(paths.out) as tmp:
        for set_name, parity in SETS.items():
            seed = cfg.reward_seed if set_name == "reward" else cfg.eval_seed
            train = judge_data.load([paths.data / s for s in TRAIN_SPLITS], parity=parity, limit=cfg.max_rows)
            trained_on[set_name] = {s.sample_id for s in train.scenes}
            histories[set_name] = {}
            metrics[set_name] = {"train_scenes": len(train), "seed": seed}
            for judge, (fit, evaluate) in JUDGES.items():
                t0 = time.perf_counter()
                model, losses = fit(train, cfg, seed)
                model.save(tmp / set_name / judge)
                timings.setdefault(set_name, {})[judge] = {"train_seconds": round(time.perf_counter() - t0, 2)}
                metrics[set_name][judge] = {**evaluate(model, heldout),
                                            "final_loss": round(losses[-1], 4) if losses else None}
                histories[set_name][judge] = losses
                shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics[set_name][judge].items()}
                print(f"judges {set_name}/{judge}: {shown}", flush=True)
            write_json_atomic(tmp / set_name / "trained_on.json",
                              {"seed": seed, "parity": parity, "sample_ids": sorted(trained_on[set_name])})
    shared = trained_on["reward"] & trained_on["eval"]
    metrics["independence"] = {"shared_training_samples": len(shared), "seeds_differ": cfg.reward_seed != cfg.eval_seed}
    paths.reports.mkdir(parents=True, exist_ok=True)
    _plot_losses(histories, paths.reports / "losses.png")
    return {**metrics, "timings": timings}


def main(argv=None) -> int:
    return stage_main("judges", run, JudgesPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
