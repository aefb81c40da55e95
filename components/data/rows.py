"""A dataset's rows as the on-policy stages read them: prompts, references and the rewards'
``meta`` (references, categories, claims). RL rolls out from them; PatchDPO's data builder
draws the SFT model's images for them."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grids import load_rgb
from .manifest import read_manifest


@dataclass
class Rows:
    """Training rows: prompts, references (as the model reads them) and the rewards' ``meta``."""

    prompts: list[str]
    refs: list[list[np.ndarray]]
    meta: list[dict]
    ids: list[str]

    def by_ref_count(self) -> dict[int, np.ndarray]:
        counts = np.array([len(r) for r in self.refs])
        return {int(k): np.flatnonzero(counts == k) for k in np.unique(counts)}

    def take(self, idx: Sequence[int]) -> Rows:
        return Rows([self.prompts[i] for i in idx], [self.refs[i] for i in idx], [self.meta[i] for i in idx],
                    [self.ids[i] for i in idx])


def load_rows(dataset_dir: Path) -> Rows:
    """The dataset's prompts, references (as stored: as the SFT model read them) and meta."""
    m = read_manifest(dataset_dir)
    refs = [[load_rgb(Path(dataset_dir) / r) for r in rs] for rs in m.refs]
    meta = [{"refs": r, "categories": list(c), "claims": json.loads(cl)} for r, c, cl in zip(refs, m.categories, m.claims)]
    return Rows(list(m.prompt), refs, meta, list(m.id))
