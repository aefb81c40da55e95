"""A fresh project folder from this checkout: dvc.yaml, the code, the DVC config, a params.yaml,
a git repository with one commit. Used by the tests and the perf scripts to run the real
pipeline somewhere disposable."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

SOURCE = Path(__file__).resolve().parents[2]


def default_params() -> dict:
    """This checkout's params.yaml as a dict."""
    return yaml.safe_load((SOURCE / "params.yaml").read_text())


# Settings over params.yaml. quick: every stage, report and registry step in a few minutes on 2
# cores, with datasets of a few dozen rows and a few dozen training steps: to see the whole
# pipeline work, not to judge a model (the promotion floors are 0 so it ends with a champion).
_QUICK_TRAIN = {"steps": 30, "batch_size": 8, "warmup_steps": 3, "log_every": 10, "sample_every": 15,
                "checkpoint_every": 15, "grid_rows": 2, "compile": False}
PROFILES: dict[str, dict] = {
    "default": {},
    "quick": {
        "synthesize": {"single": 48, "standardize": 12, "multi": 48, "bench_per_subset": 4, "bench_rows": {"Four": 4},
                       "serial_identities": 4, "serial_prompts": 2, "grid_samples": 8},
        # 30-step judges: a grounder this young finds few subjects at the usual threshold, and
        # bootstrapping would drop nearly every pair as "not in target"
        "judges": {"width": 8, "embed_dim": 16, "batch_size": 16, "encoder_steps": 30, "grounder_steps": 30,
                   "semantic_steps": 30, "aesthetic_steps": 30, "grounding_threshold": 1e-6},
        "generator": {"sample_steps": 4},
        "pretrain": _QUICK_TRAIN,
        "standardizer": {**_QUICK_TRAIN, "analyser_steps": 30, "eval_rows": 8, "grid_rows": 2},
        "multisubject": {"threshold": -1.0, "sample_steps": 4, "grid_rows": 2, "recompose": {"Three": 4, "Four": 4},
                         "candidates": 1},
        "sft": _QUICK_TRAIN,
        "rl": {"steps": 6, "probe_every": 3, "checkpoint_every": 3, "group_size": 3, "groups_per_batch": 2,
               "batches": 1, "grad_accum": 1, "rollout_steps": 4, "window_size": 1, "window_range": [0, 2],
               "probe_rows": 4},
        "patchdpo": {**_QUICK_TRAIN, "rows": 8, "steps": 10, "sample_every": 10, "checkpoint_every": 10},
        "evaluate": {"per_subset": 2, "grid_rows": 2},
        "promote": {"floors": {"SC": 0.0, "SA": 0.0, "AES": 0.0}},
        "pipeline": {"system_metrics_seconds": 5},
    },
}


def set_training(params: dict, stage: str, **settings) -> dict:
    """Put flat training settings where params.yaml keeps them: the generator's sampling
    settings in ``generator``, a stage's own (steps, lr, ema_decay, checkpoint_every,
    sample_every, ref_count_probs, compile: off unless given) in its section, the rest in the shared
    ``training``."""
    from ..config import Params

    own = type(getattr(Params(), stage)).model_fields  # the stage's section's own keys (PretrainParams, SftParams)
    settings.setdefault("compile", False)  # tiny runs: a compilation would cost more than the run
    for key, value in settings.items():
        section = "generator" if key in ("sample_steps", "guidance", "sample_precision") else stage if key in own \
            else "training"
        params[section][key] = value
    return params


def profile_params(name: str) -> dict:
    """params.yaml with profile ``name``'s settings over it (KeyError naming the profiles)."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    params = default_params()
    for section, values in PROFILES[name].items():
        if section in ("pretrain", "standardizer", "sft", "patchdpo"):
            set_training(params, section, **values)
        else:
            params[section].update(values)
    return params


def scaffold(dest: str | Path, params: dict | None = None) -> Path:
    """Create a runnable project in ``dest`` with ``params`` (default: this checkout's)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "prefect.yaml"):
        shutil.copy(SOURCE / name, dest / name)
    for code in ("components", "flows"):
        shutil.copytree(SOURCE / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SOURCE / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (dest / "params.yaml").write_text(yaml.safe_dump(params or default_params(), sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "subjectflow", "GIT_AUTHOR_EMAIL": "subjectflow@localhost",
           "GIT_COMMITTER_NAME": "subjectflow", "GIT_COMMITTER_EMAIL": "subjectflow@localhost"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "scaffold"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return dest
