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
