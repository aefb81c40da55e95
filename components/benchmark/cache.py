"""The benchmark's per-generator cache: a generator's images and scores, keyed by everything they
depend on, so the evaluate stage samples and scores again only the generators that changed.

A generator's benchmark scores depend only on its weights (a trained folder's content; a reference
generator's name), how it samples (``sampling.json`` with any override), the judges (the judge
set's files and ``params.judges``), the benchmark rows (the ``data/bench`` files and
``evaluate.per_subset``), the seed, and the code that samples and scores (every ``components``
source file: stricter than the stage's import closure, never looser). The key is a sha256 of all
of them, with the versions of the libraries that compute them and the CPU's kernel level; an
entry holds ``scores.parquet`` (dtypes kept: a cached score is bit for bit the computed one) and
``images.npy``. When ``sft`` alone changes, DVC reruns the evaluate stage, and the stage draws and
scores ``sft`` while the reference generators and ``pretrain`` come from here.

The cache lives outside the DVC outputs (``.cache/evaluate`` beside ``.checkpoints``), written
atomically; after a benchmark only the entries it used are kept, and an entry that cannot be read
is computed again. Not in the key: the content of weights a folder only names (the real profile's
FLUX base, a hub encoder or grounder): delete the folder to recompute after replacing those.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_dir, folder_hash

PACKAGE = Path(__file__).resolve().parents[1]  # components/
LIBRARIES = ("torch", "diffusers", "transformers", "numpy", "pandas", "pillow", "scipy")
ENTRY = re.compile(r"[0-9a-f]{20}")  # an entry's folder name: its key


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
        import torch

        self.folder = Path(folder)
        self.common = {**context, "bench_files": folder_hash(bench_dir), "judge_files": folder_hash(judges_dir),
                       "code": code_hash(), "libraries": {name: _version(name) for name in LIBRARIES},
                       "cpu": torch.backends.cpu.get_cpu_capability()}
        self.used: set[str] = set()

    def key(self, generator: str, weights: str | None, sampling: dict | None) -> str:
        """The entry of ``generator`` (a name), whose weights hash to ``weights`` (None: a reference
        generator, defined by its name and the code) and which samples with ``sampling``."""
        parts = {**self.common, "generator": generator, "weights": weights, "sampling": sampling}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.used.add(key)
        return key

    def load(self, key: str) -> tuple[pd.DataFrame, list[np.ndarray]] | None:
        """The entry's (scores, images); None when there is none, or it cannot be read (it is then
        removed, to be computed again)."""
        entry = self.folder / key
        if not entry.is_dir():
            return None
        try:
            return pd.read_parquet(entry / "scores.parquet"), list(np.load(entry / "images.npy"))
        except (OSError, ValueError, EOFError) as e:  # a partial or damaged entry (pyarrow's errors are ValueErrors)
            print(f"evaluate: cache entry {key} unreadable ({type(e).__name__}: {e}); computing it again", flush=True)
            shutil.rmtree(entry, ignore_errors=True)
            return None

    def store(self, key: str, scores: pd.DataFrame, images: list[np.ndarray]) -> None:
        with atomic_dir(self.folder / key) as tmp:
            scores.to_parquet(tmp / "scores.parquet", index=False)
            np.save(tmp / "images.npy", np.stack(images))

    def prune(self) -> list[str]:
        """Remove every entry this benchmark did not use (only entries: other files and a writer's
        temporary folders are left alone); returns their keys."""
        gone = [p.name for p in self.folder.iterdir() if p.is_dir() and ENTRY.fullmatch(p.name)
                and p.name not in self.used] if self.folder.is_dir() else []
        for name in gone:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        return gone


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
