"""The on-policy collector of the RL stage: the trainer's ``collect`` hook.

Each collection is one RL iteration: pick a reference count, draw ``groups`` training rows with
that many references (a group is a prompt *with its references*: its key is the row), roll out
G samples of each from the current policy with an SDE window (``rollout.py``), score every image
with each reward of the **reward** judge set, normalise within groups (``group_advantages``) and
hand the trainer its batches, each exactly a batch the sampler drew. What it saw goes to
``history`` (rewards, spreads, grounding misses, seconds), which is checkpointed with the rest,
so a resumed run reports and continues the whole run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.rows import Rows as RLRows
from ..objectives.grpo import RolloutBatch, group_advantages
from .rollout import rollout


@dataclass
class RolloutSettings:
    group_size: int = 6
    groups_per_batch: int = 2  # a training batch is groups_per_batch * group_size samples
    batches: int = 2  # per iteration
    steps: int = 10  # rollout steps (the benchmark samples with more)
    window_size: int = 2
    window_range: tuple[int, int] = (0, 5)  # the window starts at a step drawn in [lo, hi)
    eta: float = 0.7
    guidance: float = 2.5
    precision: str = "bf16"  # must be the trainer's autocast, or the ratio starts away from 1
    advantage: str = "per_reward"
    advantage_scale: str = "group"


class Collector:
    """``collect(model, rng, generator) -> [RolloutBatch, ...]`` for the trainer (module docstring).
    ``rewards`` maps a reward name to its function, ``weights`` the mix; ``ref_count_probs`` how
    often an iteration uses each reference count; ``log(step, values)`` receives each
    iteration's figures."""

    def __init__(self, rows: RLRows, rewards: dict[str, Callable], weights: dict[str, float],
                 ref_count_probs: dict[int, float], settings: RolloutSettings, steps_per_iteration: int,
                 log: Callable[[int, dict], None] | None = None):
        self.rows, self.rewards, self.weights, self.s = rows, rewards, weights, settings
        groups = rows.by_ref_count()
        need = settings.groups_per_batch * settings.batches  # distinct rows of one reference count per iteration
        wanted = [k for k in sorted(ref_count_probs) if ref_count_probs[k] > 0]
        self.counts = [k for k in wanted if len(groups.get(k, ())) >= need]
        if not self.counts:
            raise ValueError(f"rl: an iteration draws {need} distinct training rows with one of {wanted} references; "
                             f"the data has {({k: len(groups.get(k, ())) for k in wanted})}")
        if len(self.counts) < len(wanted):  # e.g. the bootstrapping kept few 4-subject pairs: say so, use the rest
            print(f"rl: WARNING fewer than {need} training rows with {sorted(set(wanted) - set(self.counts))} "
                  "references; their probability goes to the others", flush=True)
        p = np.array([ref_count_probs[k] for k in self.counts], float)
        self.groups, self.probs = groups, p / p.sum()
        self.steps_per_iteration, self.log = steps_per_iteration, log
        self.iteration = 0
        self.history: list[dict] = []
        self.probe = None  # the stage's Probe, checkpointed with the collector (the trainer keeps one stateful source)
        self.seconds_elsewhere = 0.0  # probe time since the last collection (not training time)
        self._last_end: float | None = None

    def __call__(self, model, rng: np.random.Generator, gen: torch.Generator) -> list[RolloutBatch]:
        s = self.s
        t0 = time.perf_counter()
        record = {"step": self.iteration * self.steps_per_iteration, "iteration": self.iteration}
        if self._last_end is not None:  # the previous iteration's training (and logging) time
            record["seconds_training"] = t0 - self._last_end - self.seconds_elsewhere
        self.seconds_elsewhere = 0.0
        k = self.counts[int(rng.choice(len(self.counts), p=self.probs))]
        picked = self.groups[k][rng.choice(len(self.groups[k]), size=s.groups_per_batch * s.batches, replace=False)]
        start = int(rng.integers(s.window_range[0], s.window_range[1]))
        parts = []
        for b in range(s.batches):
            chunk = self.rows.take(picked[b * s.groups_per_batch:(b + 1) * s.groups_per_batch])
            parts.append(rollout(model, chunk.prompts, chunk.refs, s.group_size, s.steps, start, s.window_size,
                                 s.eta, s.guidance, s.precision, gen))
        t1 = time.perf_counter()
        rows = self.rows.take(np.repeat(picked, s.group_size))
        images = [im for r in parts for im in r.images]
        outs = {name: f(images, rows.prompts, rows.meta) for name, f in self.rewards.items()}
        scores = {name: o.scores for name, o in outs.items()}
        adv, keep = group_advantages(scores, self.weights, rows.ids, s.advantage, scale=s.advantage_scale)
        t2 = time.perf_counter()
        n = s.groups_per_batch * s.group_size
        batches = [RolloutBatch(r.states, r.log_probs, r.timesteps, torch.as_tensor(adv[b * n:(b + 1) * n]),
                                r.text, r.blank_text, r.refs, r.t_max, r.eta, r.guidance,
                                torch.as_tensor(keep[b * n:(b + 1) * n]), r.final)
                   for b, r in enumerate(parts)]
        mixed = sum(w * scores[name] for name, w in self.weights.items())
        record.update({"ref_count": k, "window_start": start, "reward": float(mixed.mean()),
                       "reward_std": float(mixed.std()), "advantage_std": float(adv[keep].std()) if keep.any() else 0.0,
                       "groups_kept": float(keep.reshape(-1, s.group_size)[:, 0].mean()),
                       "seconds_sampling": t1 - t0, "seconds_scoring": t2 - t1})
        for name, o in outs.items():
            record[f"{name}_mean"], record[f"{name}_std"] = float(o.scores.mean()), float(o.scores.std())
            if "missing" in o.info:  # the PSR reward's grounding misses: subjects not found in the output
                record[f"{name}_miss_rate"] = float(np.sum(o.info["missing"]) / (len(images) * k))
        self.history.append(record)
        if self.log:
            self.log(record["step"], record)
        self.iteration += 1
        self._last_end = time.perf_counter()
        return batches

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "history": self.history,
                "probe": self.probe.state_dict() if self.probe is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.history = int(state["iteration"]), list(state["history"])
        if self.probe is not None and state.get("probe") is not None:
            self.probe.load_state_dict(state["probe"])
