"""The benchmark's per-generator cache: a generator's images and scores, keyed by everything they
depend on, so the evaluate stage samples and scores again only the generators that changed.

A generator's benchmark scores depend only on its weights (a trained folder's content; a reference
generator's name), how it samples (``sampling.json`` with any override), the judges (the judge
set's files and ``params.judges``), the benchmark rows (the ``data/bench`` files and
``evaluate.per_subset``), the seed, and the code that samples and scores (every ``components``
source file: stricter than the stage's import closure, never looser). The key is a sha256 of all
of them; an entry holds ``scores.csv`` and ``images.npy``. When ``sft`` alone changes, DVC reruns
the evaluate stage, and the stage draws and scores ``sft`` while the reference generators and
``pretrain`` come from here.

The cache lives outside the DVC outputs (``.cache/evaluate`` beside ``.checkpoints``), written
atomically; after a benchmark only the entries it used are kept.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_dir, folder_hash

PACKAGE = Path(__file__).resolve().parents[1]  # components/


def code_hash(package: Path = PACKAGE) -> str:
    """sha256 over every source file of ``package`` (paths and contents)."""
    digest = hashlib.sha256()
    for f in sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix()):
        digest.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


class ScoreCache:
    """Cached (scores, images) of benchmark runs under ``folder``, keyed by ``key(...)``."""

    def __init__(self, folder: str | Path, bench_dir: Path, judges_dir: Path, context: dict):
        """``context``: what every entry depends on besides the generator (params of the judges and
        the benchmark, the seed); the bench rows, judges and code are hashed here once."""
        self.folder = Path(folder)
        self.common = {"bench": folder_hash(bench_dir), "judges": folder_hash(judges_dir), "code": code_hash(),
                       **context}
        self.used: set[str] = set()

    def key(self, generator: str, weights: str | None, sampling: dict | None) -> str:
        """The entry of ``generator`` (a name), whose weights hash to ``weights`` (None: a reference
        generator, defined by its name and the code) and which samples with ``sampling``."""
        parts = {**self.common, "generator": generator, "weights": weights, "sampling": sampling}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.used.add(key)
        return key

    def load(self, key: str) -> tuple[pd.DataFrame, list[np.ndarray]] | None:
        entry = self.folder / key
        if not (entry / "scores.csv").is_file() or not (entry / "images.npy").is_file():
            return None
        return pd.read_csv(entry / "scores.csv"), list(np.load(entry / "images.npy"))

    def store(self, key: str, scores: pd.DataFrame, images: list[np.ndarray]) -> None:
        with atomic_dir(self.folder / key) as tmp:
            scores.to_csv(tmp / "scores.csv", index=False)
            np.save(tmp / "images.npy", np.stack(images))

    def prune(self) -> list[str]:
        """Remove every entry this benchmark did not use; returns their keys."""
        gone = [p.name for p in self.folder.iterdir() if p.is_dir() and p.name not in self.used] \
            if self.folder.is_dir() else []
        for name in gone:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        return gone
