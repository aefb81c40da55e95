"""rl stage: PSR's reinforcement learning, Flow-GRPO on the SFT generator (PSR's third step).

The policy starts from ``models/sft``. Each iteration rolls out groups of G samples (a group is
one training prompt with its references) with an SDE window inside an ODE trajectory, scores them
with the **reward** judge set (``rl.rewards``: PSR's 0.4 psr + 0.4 semantic + 0.2 aesthetic by
default), normalises the rewards within groups and takes clipped policy-gradient steps with a KL
to the SFT model (``objectives/grpo.py``). The shared trainer runs it: exact resume, EMA of the
policy (the saved model), accelerate. A probe of held-out training rows, scored by the
**evaluation** judges too, watches for reward hacking (``grpo/probe.py``).
Prompts and references come from ``data/multisubject`` (training identities; never the
benchmark's). Output: a generator folder (``models/rl``) sampled by the benchmark with the ODE
and the settings the SFT model records, per-iteration logs, probe curves and grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Params
from .grpo.train import RL_ADAPTER, attach_rl_adapter, choose_output, load_rows, save_policy, split_probe
from .pipeline.stage import path_field, stage_main

__all__ = ["RL_ADAPTER", "RLPaths", "attach_rl_adapter", "choose_output", "load_rows", "main", "run", "save_policy",
           "split_probe"]


@dataclass
class RLPaths:
    data: Path = path_field("the bootstrapped multi-subject dataset whose prompts and references RL trains on")
    init: Path = path_field("the generator to start from (models/sft)")
    judges: Path = path_field("folder holding the judge sets (models/judges): reward gives the rewards, eval "
                              "watches the probe")
    out: Path = path_field("folder receiving the trained generator (models/rl)")
    reports: Path = path_field("folder for the iteration logs, probe curves and grids")
    checkpoints: Path = path_field("folder for resumable checkpoints, outside the DVC outputs (.checkpoints)")


def run(params: Params, paths: RLPaths) -> dict:
    """Flow-GRPO from ``paths.init`` on the prompts and references of ``paths.data``."""
    from .grpo.train import run_rl

    return run_rl(params, paths)


def main(argv=None) -> int:
    return stage_main("rl", run, RLPaths, argv)


if __name__ == "__main__":
    raise SystemExit(main())
