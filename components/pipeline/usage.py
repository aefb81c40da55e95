"""A command's wrong input: the exception every command raises for it, and the project check."""
from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """A command's input is wrong (an argument, the project folder, a file named): ``main`` prints
    the message, one line saying what to fix, and exits 2."""


def _project(args) -> Path:
    root = Path(args.project).resolve()
    for name in ("dvc.yaml", "params.yaml"):
        if not (root / name).is_file():
            raise UsageError(f"{root}: no {name} here; run from the project folder or pass --project")
    return root
