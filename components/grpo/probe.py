"""The RL stage's probe and reward-hacking guard.

Every ``probe_every`` steps the EMA model (what the stage would save) samples a fixed set of
held-out training prompts with the ODE, as the benchmark samples, and the images are scored twice:
by the **reward** judges (each reward and their mix, what RL optimises) and by the **evaluation**
judges (SC, SA, AES and PSR's 0.4 / 0.4 / 0.2 mix of them, which RL never sees). The guard flags
reward hacking when the reward judges' mix has risen since the best evaluation score while the
evaluation mix has fallen more than ``threshold`` below that best: the reward is being won in a way
the independent judges do not agree with (PSR's copy-paste hacking with the PSR reward alone).
The EMA weights that scored best on the evaluation mix are kept, so the stage can save them.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..judging.rewards import PSR_WEIGHTS
from ..models.sampling import SamplingSettings
from .collect import RLRows

EVAL_NAMES = {"psr": "SC", "semantic": "SA", "aesthetic": "AES"}


def trained_state(model: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """A detached copy of the parameters named in ``names`` (the ones RL trains)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


class Probe:
    """``probe(model, step)`` samples and scores the probe rows, updates the guard and the best
    weights, and returns the record it logged."""

    def __init__(self, rows: RLRows, sampling: SamplingSettings, reward_fns: dict[str, Callable],
                 weights: dict[str, float], eval_fns: dict[str, Callable], threshold: float, trained: set[str],
                 seed: int = 0, log: Callable[[int, dict], None] | None = None):
        self.rows, self.sampling, self.reward_fns, self.weights = rows, sampling, reward_fns, weights
        self.eval_fns, self.threshold, self.trained, self.seed, self.log = eval_fns, threshold, trained, seed, log
        self.history: list[dict] = []
        self.best: dict | None = None  # {"step", "score", "reward", "state"}
        self.flagged_at: int | None = None
        self.images: dict[int, list[np.ndarray]] = {}  # step -> probe images (for the report's grids)

    @torch.no_grad()
    def __call__(self, model, step: int) -> dict:
        t0 = time.perf_counter()
        model.eval()
        images: list[np.ndarray] = [None] * len(self.rows.prompts)
        for k, idx in self.rows.by_ref_count().items():  # one batch per reference count, seeded by it
            part = self.rows.take(idx)
            out = model.sample(part.prompts, part.refs, steps=self.sampling.steps, guidance=self.sampling.guidance,
                               seed=self.seed + k, precision=self.sampling.precision)["images"]
            for i, im in zip(idx, out):
                images[i] = im
        record: dict = {"step": step}
        reward = {n: f(images, self.rows.prompts, self.rows.meta) for n, f in self.reward_fns.items()}
        for n, o in reward.items():
            record[f"reward_judges/{n}"] = float(o.scores.mean())
        record["reward_judges/mix"] = float(sum(w * reward[n].scores.mean() for n, w in self.weights.items()))
        evals = {n: f(images, self.rows.prompts, self.rows.meta) for n, f in self.eval_fns.items()}
        for n, o in evals.items():
            record[f"eval_judges/{EVAL_NAMES.get(n, n)}"] = float(o.scores.mean())
        record["eval_judges/mix"] = float(sum(w * evals[n].scores.mean() for n, w in PSR_WEIGHTS.items()))
        self._guard(record, model, step)
        record["seconds_probe"] = time.perf_counter() - t0
        self.history.append(record)
        self.images[step] = images
        if self.log:
            self.log(step, record)
        return record

    def _guard(self, record: dict, model, step: int) -> None:
        score, reward = record["eval_judges/mix"], record["reward_judges/mix"]
        if self.best is None or score > self.best["score"]:
            self.best = {"step": step, "score": score, "reward": reward, "state": trained_state(model, self.trained)}
        hacking = reward > self.best["reward"] + self.threshold and score < self.best["score"] - self.threshold
        if hacking and self.flagged_at is None:
            self.flagged_at = step
            print(f"rl: REWARD HACKING suspected at step {step}: the reward judges' mix rose "
                  f"{self.best['reward']:.4f} -> {reward:.4f} since step {self.best['step']} while the evaluation "
                  f"judges' mix fell {self.best['score']:.4f} -> {score:.4f} (threshold {self.threshold}); "
                  f"the stage will keep step {self.best['step']}'s weights", flush=True)
        record["guard/hacking"] = float(hacking)
        record["guard/best_step"] = float(self.best["step"])
        record["guard/eval_drop"] = self.best["score"] - score
        record["guard/reward_rise"] = reward - self.best["reward"]

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "flagged_at": self.flagged_at}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best, self.flagged_at = list(state["history"]), state["best"], state["flagged_at"]
